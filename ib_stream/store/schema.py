"""Arrow schemas of each stream and the conversions JSONL ⇄ Arrow ⇄ Parquet (lossless)."""

from __future__ import annotations

import hashlib
import io
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ib_stream.domain import TICK_FIELDS, TickType
from ib_stream.errors import CorruptFileError
from ib_stream.store.layout import fsync_dir, temp_path

TS_TYPE = pa.timestamp("ns", tz="UTC")
_KIND_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int32(),
    "str": pa.string(),
    "bool": pa.bool_(),
    "side": pa.int8(),
    "depth_side": pa.string(),
    "operation": pa.string(),
}
# Parquet encodings chosen by measurement (bench/RESULTS.md, "encodings"): delta for the monotone
# integer columns, dictionary for prices, sizes and strings (few distinct values per row group).
_DELTA_COLUMNS = ("seq", "ts", "recv_ts")
META_JSONL_BYTES = b"ib_stream.jsonl_bytes"
META_SOURCES = b"ib_stream.sources"


@cache
def arrow_schema(tick_type: TickType) -> pa.Schema:
    """The stored schema of a stream: seq, ts, recv_ts, source, then the type's fields."""
    fields = [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("recv_ts", TS_TYPE, nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
    fields += [pa.field(s.name, _KIND_TYPES[s.kind], nullable=s.nullable) for s in TICK_FIELDS[tick_type]]
    return pa.schema(fields)


@cache
def _json_schema(tick_type: TickType) -> pa.Schema:
    # JSON lines hold timestamps as integers; they are cast to timestamps after parsing.
    schema = arrow_schema(tick_type)
    return pa.schema([f.with_type(pa.int64()) if f.name in ("ts", "recv_ts") else f for f in schema])


def table_to_records(table: pa.Table) -> list[dict[str, Any]]:
    """Convert stored rows back to canonical records (timestamps as int ns), as the buffer writes them."""
    columns = {
        name: (col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col).to_pylist()
        for name, col in zip(table.column_names, table.columns, strict=True)
    }
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def empty_table(tick_type: TickType) -> pa.Table:
    return arrow_schema(tick_type).empty_table()


def jsonl_to_table(data: bytes, tick_type: TickType) -> pa.Table:
    """Parse JSON lines the buffer wrote (known good) into the stream's Arrow schema."""
    options = pajson.ParseOptions(explicit_schema=_json_schema(tick_type), unexpected_field_behavior="error")
    table = pajson.read_json(
        io.BytesIO(data), parse_options=options, read_options=pajson.ReadOptions(block_size=1 << 20, use_threads=False)
    )
    return table.cast(arrow_schema(tick_type))


def parse_jsonl(data: bytes, tick_type: TickType, source: str) -> tuple[pa.Table, np.ndarray]:
    """Parse complete JSON lines into a table plus each line's byte length (incomplete tail ignored)."""
    end = data.rfind(b"\n") + 1
    data = data[:end]
    if not data:
        return empty_table(tick_type), np.zeros(0, dtype=np.int64)
    options = pajson.ParseOptions(explicit_schema=_json_schema(tick_type), unexpected_field_behavior="error")
    try:
        table = pajson.read_json(
            io.BytesIO(data), parse_options=options, read_options=pajson.ReadOptions(block_size=1 << 24)
        )
    except pa.ArrowInvalid as e:
        raise CorruptFileError(source, f"invalid JSON line: {e}") from e
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    lengths = np.diff(newlines, prepend=-1)
    if len(lengths) != table.num_rows:
        raise CorruptFileError(source, f"{len(lengths)} lines but {table.num_rows} records (blank line?)")
    return table.cast(arrow_schema(tick_type)), lengths


def read_segment_file(path: Path, tick_type: TickType) -> tuple[pa.Table, np.ndarray]:
    """Read a buffer segment (complete lines only)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(str(path), str(e)) from e
    return parse_jsonl(data, tick_type, str(path))


def segment_last_seq(path: Path, tick_type: TickType) -> int:
    """The seq of a segment's last complete line (0 when it has none), read from its tail."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 65_536))
        tail = handle.read()
    end = tail.rfind(b"\n")
    if end < 0:
        return 0
    line = tail[:end].rsplit(b"\n", 1)[-1]
    try:
        return int(orjson.loads(line)["seq"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        table, _ = read_segment_file(path, tick_type)
        return int(table.column("seq")[-1].as_py()) if table.num_rows else 0


def sort_table(table: pa.Table) -> pa.Table:
    """Sort by (ts, seq), the archive order (a no-op when already sorted)."""
    if is_sorted(table):
        return table
    indices = pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("seq", "ascending")])
    return table.take(indices)


def write_parquet_atomic(
    table: pa.Table,
    final: Path,
    *,
    compression: str,
    compression_level: int,
    row_group_size: int,
    metadata: dict[bytes, bytes],
) -> tuple[int, str]:
    """Write `table` to `final` via temp file → fsync → rename → fsync dir; return (size, sha256)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(final)
    schema_meta = {**(table.schema.metadata or {}), **metadata}
    table = table.replace_schema_metadata(schema_meta)
    names = table.column_names
    dictionary = [n for n in names if n not in _DELTA_COLUMNS]
    level = compression_level if compression in ("zstd", "gzip", "brotli") else None
    with open(temp, "wb") as handle:
        pq.write_table(
            table,
            handle,
            compression=None if compression == "none" else compression,
            compression_level=level,
            row_group_size=row_group_size,
            use_dictionary=dictionary,
            column_encoding={n: "DELTA_BINARY_PACKED" for n in _DELTA_COLUMNS if n in names},
            write_statistics=True,
            write_page_checksum=True,
            sorting_columns=[pq.SortingColumn(names.index("ts")), pq.SortingColumn(names.index("seq"))],
        )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_dir(final.parent)
    return final.stat().st_size, file_sha256(final)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_parquet(path: Path, tick_type: TickType, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """Read an archive file (needed columns and row groups only), raising a storage error naming it."""
    try:
        table = pq.read_table(
            path, columns=columns, filters=filters, partitioning=None, page_checksum_verification=True
        )
    except (OSError, pa.ArrowException, ValueError) as e:
        raise CorruptFileError(str(path), str(e)) from e
    if columns is None and table.schema.remove_metadata() != arrow_schema(tick_type):
        raise CorruptFileError(str(path), f"schema {table.schema} is not the {tick_type.value} schema")
    return table


def read_parquet_range(
    path: Path,
    tick_type: TickType,
    start_ns: int,
    end_ns: int,
    *,
    columns: list[str] | None = None,
    below_seq: int | None = None,
) -> pa.Table:
    """Rows with start_ns <= ts < end_ns (and seq < below_seq) of an archive file, in file order.

    Archive files are sorted by (ts, seq): row groups are chosen from their ts statistics and the
    rows are cut by binary search on ts, which decodes far less than a row filter expression.
    """
    read_cols = (
        None if columns is None else sorted(set(columns) | {"ts", "seq"}, key=arrow_schema(tick_type).names.index)
    )
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        if columns is None and parquet.schema_arrow.remove_metadata() != arrow_schema(tick_type):
            raise CorruptFileError(str(path), f"schema {parquet.schema_arrow} is not the {tick_type.value} schema")
        groups = _row_groups_overlapping(parquet, start_ns, end_ns)
        if not groups:
            return (
                arrow_schema(tick_type)
                if read_cols is None
                else pa.schema([arrow_schema(tick_type).field(c) for c in read_cols])
            ).empty_table()
        table = parquet.read_row_groups(groups, columns=read_cols)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise CorruptFileError(str(path), str(e)) from e
    table = table.replace_schema_metadata(None)
    ts = table.column("ts").to_numpy().view(np.int64)
    lo, hi = np.searchsorted(ts, [start_ns, end_ns], side="left")
    table = table.slice(lo, hi - lo)
    if below_seq is not None:
        seq = table.column("seq").to_numpy()
        if seq.size and seq.max() >= below_seq:
            table = table.filter(pa.array(seq < below_seq))
    return table


def _row_groups_overlapping(parquet: pq.ParquetFile, start_ns: int, end_ns: int) -> list[int]:
    metadata = parquet.metadata
    ts_index = parquet.schema_arrow.get_field_index("ts")
    groups = []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(ts_index).statistics
        if stats is None or not stats.has_min_max:
            groups.append(i)
            continue
        low, high = _ts_ns(stats.min), _ts_ns(stats.max)
        if low < end_ns and high >= start_ns:
            groups.append(i)
    return groups


def _ts_ns(value: Any) -> int:
    # Statistics of a timestamp column come back as datetime / pandas Timestamp / int by version.
    if isinstance(value, int):
        return value
    nanos = getattr(value, "value", None)
    if isinstance(nanos, int):
        return nanos
    return int(pa.scalar(value, TS_TYPE).cast(pa.int64()).as_py())


def is_sorted(table: pa.Table) -> bool:
    """Whether rows are in (ts, seq) order already (cheap: two vectorised passes)."""
    if table.num_rows < 2:
        return True
    ts = _int64s(table.column("ts"))
    if (ts[1:] < ts[:-1]).any():
        return False
    ties = np.flatnonzero(ts[1:] == ts[:-1])
    if not len(ties):
        return True
    seq = _int64s(table.column("seq"))
    return bool((seq[ties + 1] > seq[ties]).all())


def _int64s(column: pa.ChunkedArray) -> np.ndarray:
    # Chunks joined in Arrow and viewed without a copy: ChunkedArray.to_numpy is several times slower.
    if column.null_count or column.num_chunks < 2:
        return column.to_numpy().view(np.int64)
    return column.combine_chunks().to_numpy().view(np.int64)
