"""Importers: CSV and JSON-lines files (plain or gzip) into ticks, through a column mapping (a recipe).

A `Recipe` names, for each stream the file feeds (`Output`), the column that gives each tick
field, how times are written, constant fields and a row filter. Named recipes for known vendor
layouts are in `presets`; `parse_mapping` builds one from `col=field,...`.

Mapping targets are `ts`, any field of the tick type (see `ib_stream.domain.TICK_FIELDS`) and
`buyer_maker` (a "buyer was the maker" flag: true → side −1, false → +1). Values are read by the
field's kind: numbers from numbers or numeric text, flags from true/false/1/0, trade sides from
buy/sell, b/s, B/A (bid/ask aggressor), ±1 (empty, N or 0: unknown), depth sides from bid/ask or
IB's 1/0, depth operations from insert/update/delete or IB's 0/1/2. A column path with dots reads
inside JSON objects (`tickAttribLast.pastLimit`).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

import orjson

from ib_stream.domain import TICK_FIELDS, StreamKey, TickType
from ib_stream.errors import ValidationError
from ib_stream.importers.values import (
    TIME_UNITS,
    BadValue,
    buyer_maker_side,
    depth_operation,
    depth_side,
    is_missing,
    time_parser,
    to_bool,
    to_float,
    to_int,
    trade_side,
)
from ib_stream.importers.writer import (
    DEFAULT_BATCH_TICKS,
    DEFAULT_FUTURE_SKEW_NS,
    ImportReport,
    ImportWriter,
    Progress,
    StreamSink,
    checked_ts,
)
from ib_stream.store.tickstore import TickStore

RECIPE_VERSION: Final = 1  # bump when the same file and recipe would give different ticks
FORMATS: Final = ("csv", "tsv", "jsonl", "json")
PSEUDO_FIELDS: Final = ("ts", "buyer_maker")
_GZIP_MAGIC: Final = b"\x1f\x8b"
_CONVERTERS: Final[dict[str, Callable[[Any], Any]]] = {
    "float": to_float,
    "int": to_int,
    "bool": to_bool,
    "str": lambda v: v if isinstance(v, str) else str(v),
    "side": trade_side,
    "depth_side": depth_side,
    "operation": depth_operation,
}
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Output:
    """One stream a file feeds: its tick type, the column of each field, how times read, constants, a filter."""

    tick_type: TickType
    columns: Mapping[str, str]  # field -> column (or dotted path into a JSON object)
    time_unit: str = "auto"  # auto | s | ms | us | ns | iso | a strptime pattern (times without offset are UTC)
    constants: Mapping[str, Any] = field(default_factory=dict)  # field -> value for every tick
    where: Mapping[str, str] = field(default_factory=dict)  # column -> value a row must hold (as text)


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to read a file: its format and the streams it feeds."""

    name: str
    description: str
    outputs: tuple[Output, ...]
    file_format: str | None = None  # csv | tsv | jsonl | json; None: from the file name
    header: tuple[str, ...] | None = None  # column names of a CSV that has no header row

    def digest(self, output: Output) -> str:
        """A hash of everything that decides the ticks `output` reads from a file (the ledger's recipe key)."""
        spec = {
            "importer": "tabular",
            "version": RECIPE_VERSION,
            "header": self.header,
            "tick_type": output.tick_type.value,
            "columns": dict(output.columns),
            "time_unit": output.time_unit,
            "constants": dict(output.constants),
            "where": dict(output.where),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def parse_mapping(text: str, option: str = "--map") -> dict[str, str]:
    """Parse `col=field,col=field` into {field: column}."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        column, sep, target = (s.strip() for s in item.partition("="))
        if not sep or not column or not target:
            raise ValidationError(option, item, "is not COLUMN=FIELD")
        if target in mapping:
            raise ValidationError(option, item, f"maps a second column to {target} (first: {mapping[target]})")
        mapping[target] = column
    if not mapping:
        raise ValidationError(option, text, "maps no column")
    return mapping


def parse_pairs(text: str | None, option: str) -> dict[str, str]:
    """Parse `key=value,key=value` (for --set and --where)."""
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if item:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValidationError(option, item, "is not NAME=VALUE")
            pairs[key.strip()] = value.strip()
    return pairs


def file_format(path: Path, recipe: Recipe) -> str:
    """The format of a file: the recipe's, else from its name (a .gz suffix is looked through)."""
    if recipe.file_format is not None:
        return recipe.file_format
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".txt", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(suffix):
            return fmt
    if name.endswith(".json"):
        return "json"
    raise ValidationError(
        "FILE",
        str(path),
        "has an unknown format: name it .csv, .tsv, .jsonl or .json (or .gz of those), or give --format",
    )


def check_recipe(recipe: Recipe, columns: list[str] | None, option: str) -> None:
    """Raise ValidationError if a recipe cannot make ticks: unknown fields, required ones unmapped, missing columns."""
    subject = recipe.name if option == "--preset" else None
    for output in recipe.outputs:
        specs = {s.name: s for s in TICK_FIELDS[output.tick_type]}
        for name in (*output.columns, *output.constants):
            if name not in specs and name not in PSEUDO_FIELDS:
                allowed = ", ".join((*PSEUDO_FIELDS, *specs))
                raise ValidationError(
                    option, subject or name, f"names no field of {output.tick_type.value}: use {allowed}"
                )
        if "ts" not in output.columns:
            raise ValidationError(option, subject or ",".join(output.columns), "maps no column to ts")
        given = set(output.columns) | set(output.constants)
        if "buyer_maker" in given:
            given.add("side")
        missing = [s.name for s in specs.values() if s.required and s.name not in given]
        if missing:
            raise ValidationError(
                option,
                subject or ",".join(output.columns),
                f"leaves {', '.join(missing)} of {output.tick_type.value} unmapped",
            )
        if "%" not in output.time_unit and output.time_unit not in TIME_UNITS:
            raise ValidationError(
                "--time-unit", output.time_unit, f"is not one of {', '.join(TIME_UNITS)} or a strptime pattern"
            )
        if columns is not None:
            for column in (*output.columns.values(), *output.where):
                if column not in columns:
                    raise ValidationError(
                        option,
                        subject or column,
                        f"needs column {column}, which the file lacks (columns: {', '.join(columns)})",
                    )


def scan_file(path: Path, recipe: Recipe) -> tuple[str, int | None, list[str] | None]:
    """Hash the file's (decompressed) content; return (sha256, data rows or None if unknown, CSV columns or None)."""
    fmt = file_format(path, recipe)
    digest = hashlib.sha256()
    lines = 0
    last = b"\n"
    with _open_binary(path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    columns = None
    if fmt in ("csv", "tsv"):
        columns = list(recipe.header) if recipe.header else _csv_header(path, fmt)
        lines -= 0 if recipe.header else 1
    return digest.hexdigest(), None if fmt == "json" else max(lines, 0), columns


def import_file(
    store: TickStore,
    path: Path,
    recipe: Recipe,
    contract_id: int,
    *,
    option: str = "--preset",
    only: tuple[TickType, ...] = (),
    batch_size: int = DEFAULT_BATCH_TICKS,
    progress: Progress | None = None,
    future_skew_ns: int = DEFAULT_FUTURE_SKEW_NS,
) -> ImportReport:
    """Import a CSV / JSON-lines file through `recipe` into `contract_id` (idempotent: a re-run stores nothing)."""
    if not path.is_file():
        raise ValidationError("FILE", str(path), "does not exist")
    outputs = tuple(o for o in recipe.outputs if not only or o.tick_type in only)
    if not outputs:
        raise ValidationError("--only", ",".join(t.value for t in only), f"selects none of {recipe.name}'s streams")
    sha, _, columns = scan_file(path, recipe)
    check_recipe(recipe, columns, option)
    writer = ImportWriter(store, str(path), sha, batch_size, progress, describe(recipe, option, only), future_skew_ns)
    try:
        readers = [
            _OutputReader(o, writer.sink(StreamKey(contract_id, o.tick_type), recipe.digest(o))) for o in outputs
        ]
        for number, row in _rows(path, file_format(path, recipe), recipe.header):
            writer.row_read()
            if isinstance(row, BadValue):
                writer.skip(f"file: {row.reason}", f"row {number}", row.value)
                continue
            for reader in readers:
                try:
                    left_out = reader.read(row)
                except BadValue as e:
                    writer.skip(f"{reader.name}: {e.reason}", f"row {number}", e.value)
                    continue
                if left_out is not None:
                    writer.filtered(f"{reader.name}: {left_out[0]}", f"row {number}", left_out[1])
        return writer.finish()
    finally:
        writer.close()


def describe(recipe: Recipe, option: str, only: tuple[TickType, ...] = ()) -> str:
    """How a file was read, as the options that say it (shown by `import list`)."""
    if option == "--preset":
        chosen = f" --only {','.join(t.value for t in only)}" if only else ""
        return f"--preset {recipe.name}{chosen}"
    parts = []
    for output in recipe.outputs:
        mapping = ",".join(f"{column}={name}" for name, column in output.columns.items())
        text = f"--tick-type {output.tick_type.value} --map {mapping}"
        if output.time_unit != "auto":
            text += f" --time-unit {output.time_unit}"
        if output.constants:
            text += " --set " + ",".join(f"{k}={v}" for k, v in output.constants.items())
        if output.where:
            text += " --where " + ",".join(f"{k}={v}" for k, v in output.where.items())
        parts.append(text)
    return "; ".join(parts)


class _OutputReader:
    """Turns rows into ticks of one output and hands them to the stream's sink."""

    def __init__(self, output: Output, sink: StreamSink) -> None:
        self.name = output.tick_type.value
        self.sink = sink
        self.where = [(column, _getter(column), value) for column, value in output.where.items()]
        specs = {s.name: s for s in TICK_FIELDS[output.tick_type]}
        parse_time = time_parser(output.time_unit)
        self.get_ts = _getter(output.columns["ts"])
        self.parse_ts = parse_time
        # (field, getter, converter, required, empty text is a value)
        self.fields: list[tuple[str, Callable[[Row], Any], Callable[[Any], Any], bool, bool]] = []
        for name, column in output.columns.items():
            if name == "ts":
                continue
            if name == "buyer_maker":
                self.fields.append(("side", _getter(column), buyer_maker_side, False, False))
            else:
                spec = specs[name]
                self.fields.append((name, _getter(column), _CONVERTERS[spec.kind], spec.required, spec.kind == "str"))
        self.constants = {name: _constant(specs[name].kind, value) for name, value in output.constants.items()}

    def read(self, row: Row) -> tuple[str, Any] | None:
        """Hand the row's tick to the sink; return (reason, value) when a --where filter leaves the row out."""
        for column, get, value in self.where:
            found = get(row)
            if found is None or str(found).strip() != value:
                return f"{column} is not {value} (--where)", found
        raw_ts = self.get_ts(row)
        if is_missing(raw_ts):
            raise BadValue("missing timestamp", raw_ts)
        tick: dict[str, Any] = {"ts": checked_ts(self.parse_ts(raw_ts)), **self.constants}
        for name, get, convert, required, text in self.fields:
            value = get(row)
            if value is None or (not text and is_missing(value)):
                if required:
                    raise BadValue(f"missing {name}", value)
                continue
            try:
                tick[name] = convert(value)
            except BadValue as e:
                raise BadValue(f"{name} is {e.reason}", value) from None
        self.sink.add(tick)
        return None


def _constant(kind: str, value: Any) -> Any:
    if isinstance(value, str) and kind != "str":
        try:
            return _CONVERTERS[kind](value)
        except BadValue as e:
            raise ValidationError("--set", value, e.reason) from None
    return value


def _getter(path: str) -> Callable[[Row], Any]:
    if "." not in path:
        return lambda row: row.get(path)
    parts = path.split(".")

    def get(row: Row) -> Any:
        if path in row:
            return row[path]
        value: Any = row
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return get


# ---- reading ---------------------------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    # The caller closes what is returned.
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", errors="replace", newline="")


def _csv_header(path: Path, fmt: str) -> list[str]:
    with _open_text(path) as handle:
        header = next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), [])
    return [c.strip().lstrip("\ufeff") for c in header]


def _rows(path: Path, fmt: str, header: tuple[str, ...] | None) -> Iterator[tuple[int, Row | BadValue]]:
    with _open_text(path) as handle:
        if fmt in ("csv", "tsv"):
            yield from _csv_rows(handle, "\t" if fmt == "tsv" else ",", header)
        elif fmt == "json" and _starts_with_array(handle):
            yield from _json_array_rows(handle)
        else:
            yield from _jsonl_rows(handle)


def _csv_rows(handle: IO[str], delimiter: str, header: tuple[str, ...] | None) -> Iterator[tuple[int, Row | BadValue]]:
    reader = csv.reader(handle, delimiter=delimiter)
    columns = list(header) if header else [c.strip().lstrip("\ufeff") for c in next(reader, [])]
    width = len(columns)
    for number, values in enumerate(reader, start=1):
        if len(values) != width:
            if not values:
                continue
            yield number, BadValue(f"row has {len(values)} columns, the header {width}", ",".join(values))
            continue
        yield number, dict(zip(columns, values, strict=True))


def _jsonl_rows(handle: IO[str]) -> Iterator[tuple[int, Row | BadValue]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield number, BadValue("line is not JSON", line.strip())
            continue
        yield number, row if isinstance(row, dict) else BadValue("line is not a JSON object", line.strip())


def _starts_with_array(handle: IO[str]) -> bool:
    start = handle.read(4096).lstrip()
    handle.seek(0)
    return start.startswith("[")


def _json_array_rows(handle: IO[str]) -> Iterator[tuple[int, Row | BadValue]]:
    try:
        items = orjson.loads(handle.read())
    except orjson.JSONDecodeError as e:
        raise ValidationError("FILE", getattr(handle, "name", "file"), f"is not valid JSON: {e}") from e
    for number, item in enumerate(items, start=1):
        yield number, item if isinstance(item, dict) else BadValue("item is not a JSON object", item)
