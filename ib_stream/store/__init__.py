"""The tick store (storage layer): JSONL buffer -> Parquet archive -> SQLite catalog, range reads, and the
derived files (book snapshots, 1-second rollups). Public Python API: `ib_stream.storage`."""
