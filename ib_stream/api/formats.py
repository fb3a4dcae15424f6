"""Result serialisation for the query routes: a table streamed as JSON, CSV, Arrow IPC or Parquet.

Every format is produced batch by batch from an Arrow table, so a large result leaves the
service as a stream of chunks (a `StreamingResponse`) instead of one bytes object built in memory.
Times are exact in every format: Arrow and Parquet keep `timestamp[ns, UTC]`; JSON and CSV write
ISO-8601 with nanoseconds and `Z` (`2025-01-10T14:30:00.123456789Z`), and JSON rows also carry
`ts`, the row's `timestamp` as integer nanoseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from starlette.responses import StreamingResponse

ResultFormat = Literal["json", "csv", "arrow", "parquet"]
FORMATS: Final[tuple[str, ...]] = ("json", "csv", "arrow", "parquet")
MEDIA_TYPES: Final[dict[str, str]] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
EXTENSIONS: Final[dict[str, str]] = {"json": "json", "csv": "csv", "arrow": "arrows", "parquet": "parquet"}
ISO_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"  # %S carries the fraction of the unit: 9 digits for ns
TEXT_BATCH_ROWS: Final = 8_192  # rows per chunk for JSON and CSV (Python objects per row)
BINARY_BATCH_ROWS: Final = 65_536  # rows per record batch / row group for Arrow and Parquet


def frame_to_table(frame: pd.DataFrame, limit: int | None = None) -> pa.Table:
    """Convert a query result to Arrow (first `limit` rows), keeping pandas dtypes in the schema metadata."""
    if limit is not None and len(frame) > limit:
        frame = frame.iloc[:limit]
    return pa.Table.from_pandas(frame, preserve_index=False)


def iter_arrow(table: pa.Table, batch_rows: int = BINARY_BATCH_ROWS) -> Iterator[bytes]:
    """Yield the table as an Arrow IPC stream (schema message, one message per batch, end marker)."""
    sink = _ChunkSink()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        yield sink.drain()
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
            yield sink.drain()
    yield sink.drain()


def iter_parquet(table: pa.Table, batch_rows: int = BINARY_BATCH_ROWS) -> Iterator[bytes]:
    """Yield the table as one Parquet file (zstd), one row group per batch."""
    sink = _ChunkSink()
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch, row_group_size=batch_rows)
            yield sink.drain()
    yield sink.drain()


def iter_csv(table: pa.Table, batch_rows: int = TEXT_BATCH_ROWS) -> Iterator[bytes]:
    """Yield the table as CSV with a header row; times as ISO-8601 with nanoseconds and Z."""
    schema = pa.schema([_text_field(f) for f in table.schema])
    sink = _ChunkSink()
    with pa_csv.CSVWriter(sink, schema, write_options=pa_csv.WriteOptions(include_header=True)) as writer:
        yield sink.drain()  # the header row
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(pa.RecordBatch.from_arrays(_iso_columns(batch), schema=schema))
            yield sink.drain()
    yield sink.drain()


def iter_json(header: Mapping[str, Any], table: pa.Table, batch_rows: int = TEXT_BATCH_ROWS) -> Iterator[bytes]:
    """Yield `{**header, "data": [rows]}`; each row is an object, times as ISO strings plus `ts` (int ns)."""
    yield orjson.dumps(dict(header))[:-1] + b',"data":['
    first = True
    for batch in table.to_batches(max_chunksize=batch_rows):
        if batch.num_rows == 0:
            continue
        rows = orjson.dumps(json_rows(batch), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        yield rows if first else b"," + rows
        first = False
    yield b"]}"


def json_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows of a batch as JSON-ready dicts: timestamps as ISO strings, `timestamp` also as `ts` ns."""
    names: list[str] = []
    arrays: list[pa.Array] = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_timestamp(field.type):
            names.append(field.name)
            arrays.append(pc.strftime(column, format=ISO_FORMAT))
            if field.name == "timestamp":
                names.append("ts")
                arrays.append(column.cast(pa.int64()))
        else:
            names.append(field.name)
            arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=names).to_pylist()


def streaming_response(
    fmt: str,
    table: pa.Table,
    *,
    json_header: Mapping[str, Any],
    filename: str,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """Stream `table` in `fmt` with the right media type (and a download file name for binary/CSV)."""
    out_headers = dict(headers or {})
    if fmt == "json":
        body: Iterator[bytes] = iter_json(json_header, table)
    else:
        out_headers["Content-Disposition"] = f'attachment; filename="{filename}.{EXTENSIONS[fmt]}"'
        body = {"csv": iter_csv, "arrow": iter_arrow, "parquet": iter_parquet}[fmt](table)
    # A sync iterator: Starlette pulls each chunk in its thread pool, so encoding never blocks the loop.
    return StreamingResponse(_non_empty(body), media_type=MEDIA_TYPES[fmt], headers=out_headers)


def _non_empty(chunks: Iterator[bytes]) -> Iterator[bytes]:
    return (chunk for chunk in chunks if chunk)


def _text_field(field: pa.Field) -> pa.Field:
    return field.with_type(pa.string()) if pa.types.is_timestamp(field.type) else field


def _iso_columns(batch: pa.RecordBatch) -> list[pa.Array]:
    return [
        pc.strftime(column, format=ISO_FORMAT) if pa.types.is_timestamp(column.type) else column
        for column in batch.columns
    ]


class _ChunkSink:
    """A write-only file object that collects what a pyarrow writer wrote since the last `drain`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
