"""Importers: order-flow SQLite recordings (tables `book` and `trades`) into price-level depth and trades.

    book(id INTEGER PRIMARY KEY, instrument TEXT, bids TEXT, asks TEXT, timestamp TEXT)
    trades(id, instrument, trade_id TEXT, price REAL, size REAL, side TEXT 'buy'|'sell', timestamp TEXT)

Timestamps are epoch milliseconds (fractions allowed). Each instrument goes to one contract id.

Book rows become `depth` ticks with `by_price=True`. By default (`book_rows="full"`) a row is the
complete book of its instrument at its timestamp (as far as the recorder kept it, e.g. the top 20
levels): the first row of an instrument inserts every level (the snapshot) and each later row is
stored as the difference from the previous row (insert / update / delete per price, see
`orderflow_book`). With `book_rows="delta"` a row lists only changed levels (size 0 deletes) and
levels it does not mention stay. Rows are applied in timestamp order (then id), the order a replay
of the stored ticks follows.

Trades become `last` ticks with side +1 (buy) / −1 (sell), or unknown (null) when the side is empty;
`trade_id` has no column in the store and is not kept. Rows that cannot be read are counted by
reason and left out; they never stop the import, and a bad book row leaves the book unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ib_stream.domain import StreamKey, TickType
from ib_stream.errors import ValidationError
from ib_stream.importers.orderflow_book import BookRows, Levels, depth_tick, diff_delta, diff_full, parse_levels
from ib_stream.importers.values import BadValue, epoch_ns, finite_float, is_missing, trade_side
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

RECIPE_VERSION: Final = 1  # bump when the same file would give different ticks
TABLES: Final = {
    "book": ("id", "instrument", "bids", "asks", "timestamp"),
    "trades": ("id", "instrument", "trade_id", "price", "size", "side", "timestamp"),
}
_MS: Final = 1_000_000
Rows = Iterator[tuple[Any, ...]]
_NO_INSTRUMENT: Final = "(instrument IS NULL OR trim(instrument) = '')"


@dataclass(frozen=True, slots=True)
class OrderflowOptions:
    """How to read a recording: contract id per instrument, which instruments, what a book row is."""

    contract_ids: Mapping[str, int] = field(default_factory=dict)  # instrument -> contract id (--map)
    contract_id: int | None = None  # the contract of the only (selected) instrument (--contract)
    instruments: tuple[str, ...] = ()  # only these instruments (empty: all)
    book_rows: BookRows = "full"


@dataclass(frozen=True, slots=True)
class Recording:
    """What a recording holds: its tables, instruments and row counts."""

    path: Path
    tables: tuple[str, ...]
    instruments: dict[str, int]  # instrument -> rows in book and trades


def inspect_recording(path: Path) -> Recording:
    """Open a recording read-only and list its tables and instruments; raise ValidationError if it is not one."""
    with closing(_connect(path)) as db:
        tables = _tables(db, path)
        counts: dict[str, int] = {}
        for table in tables:
            for instrument, rows in db.execute(
                f"SELECT instrument, count(*) FROM {table} WHERE NOT {_NO_INSTRUMENT} GROUP BY instrument"
            ):
                counts[str(instrument)] = counts.get(str(instrument), 0) + rows
    return Recording(path, tables, dict(sorted(counts.items())))


def resolve_contracts(recording: Recording, options: OrderflowOptions) -> dict[str, int]:
    """The contract id of every selected instrument; raise ValidationError naming what is missing."""
    known = recording.instruments
    listed = ", ".join(known) or "none"
    for name in (*options.instruments, *options.contract_ids):
        if name not in known:
            option = "--instrument" if name in options.instruments else "--map"
            raise ValidationError(option, name, f"is not an instrument of {recording.path} (instruments: {listed})")
    selected = list(options.instruments) or list(known)
    contracts = {name: options.contract_ids[name] for name in selected if name in options.contract_ids}
    rest = [name for name in selected if name not in contracts]
    if rest and options.contract_id is not None and len(rest) == 1:
        contracts[rest[0]] = options.contract_id
    elif rest:
        how = "give --contract N for a file of one instrument, else --map INSTRUMENT=ID for each"
        verb = "needs" if len(rest) == 1 else "need"
        option = "--contract" if len(rest) == 1 else "--map"
        raise ValidationError(option, ", ".join(rest), f"{verb} a contract id: {how} (or choose with --instrument)")
    shared = [c for c in set(contracts.values()) if list(contracts.values()).count(c) > 1]
    if shared:
        names = ", ".join(name for name, c in contracts.items() if c == shared[0])
        raise ValidationError(
            "--map", names, f"all map to contract {shared[0]}: each instrument needs its own contract id"
        )
    return contracts


def recording_sha256(path: Path) -> str:
    """Hash the rows of both tables (not the file bytes, which change with vacuum or WAL checkpoints)."""
    digest = hashlib.sha256(b"ib-stream orderflow recording\n")
    with closing(_connect(path)) as db:
        for table in _tables(db, path):
            digest.update(f"table {table}\n".encode())
            for row in db.execute(f"SELECT {', '.join(TABLES[table])} FROM {table} ORDER BY id"):
                digest.update(repr(row).encode())
                digest.update(b"\n")
    return digest.hexdigest()


def import_orderflow(
    store: TickStore,
    path: Path,
    options: OrderflowOptions,
    *,
    batch_size: int = DEFAULT_BATCH_TICKS,
    progress: Progress | None = None,
    future_skew_ns: int = DEFAULT_FUTURE_SKEW_NS,
) -> ImportReport:
    """Import an order-flow recording into `store` (idempotent: a second run stores nothing)."""
    recording = inspect_recording(path)
    contracts = resolve_contracts(recording, options)
    writer = ImportWriter(
        store, str(path), recording_sha256(path), batch_size, progress, describe(contracts, options), future_skew_ns
    )
    try:
        with closing(_connect(path)) as db:
            # Rows without an instrument are read (and counted as skipped) unless instruments were chosen.
            every = not options.instruments
            if "book" in recording.tables:
                _import_book(_rows(db, "book", contracts, every), writer, contracts, options.book_rows)
            if "trades" in recording.tables:
                _import_trades(_rows(db, "trades", contracts, every), writer, contracts)
        return writer.finish()
    finally:
        writer.close()


def describe(contracts: Mapping[str, int], options: OrderflowOptions) -> str:
    """How a recording was read, as the options that say it (shown by `import list`)."""
    mapping = ",".join(f"{name}={contract}" for name, contract in sorted(contracts.items()))
    return f"orderflow --map {mapping} --book-rows {options.book_rows}"


def selected_rows(recording: Recording, contracts: Mapping[str, int], options: OrderflowOptions) -> int:
    """Rows the import will read (for a progress bar)."""
    where = _where(contracts, not options.instruments)
    with closing(_connect(recording.path)) as db:
        total = 0
        for table in recording.tables:
            total += db.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(contracts)).fetchone()[0]
    return int(total)


# ---- book ------------------------------------------------------------------------------------------


def _import_book(rows: Rows, writer: ImportWriter, contracts: Mapping[str, int], mode: BookRows) -> None:
    diff = diff_full if mode == "full" else diff_delta
    books: dict[str, tuple[Levels, Levels]] = {}
    sinks = {
        name: writer.sink(StreamKey(contract, TickType.DEPTH), _recipe("book", name, mode))
        for name, contract in contracts.items()
    }
    for row_id, instrument, bids, asks, timestamp in rows:
        writer.row_read()
        where = f"book id {row_id}"
        try:
            sink = _sink(sinks, instrument)
            ts = _timestamp(timestamp)
            new_bids = parse_levels(bids)
            new_asks = parse_levels(asks)
        except BadValue as e:
            writer.skip(f"book: {e.reason}", where, e.value)
            continue
        old_bids, old_asks = books.get(instrument, ({}, {}))
        bid_ops, bid_state = diff(old_bids, new_bids, True)
        ask_ops, ask_state = diff(old_asks, new_asks, False)
        books[instrument] = (bid_state, ask_state)
        # Levels, prices, sizes and the time are checked above: the ticks need no second check here.
        for operation in bid_ops:
            sink.add(depth_tick(ts, "bid", operation), checked=True)
        for operation in ask_ops:
            sink.add(depth_tick(ts, "ask", operation), checked=True)


# ---- trades ----------------------------------------------------------------------------------------


def _import_trades(rows: Rows, writer: ImportWriter, contracts: Mapping[str, int]) -> None:
    sinks = {
        name: writer.sink(StreamKey(contract, TickType.LAST), _recipe("trades", name, None))
        for name, contract in contracts.items()
    }
    for row_id, instrument, _trade_id, price, size, side, timestamp in rows:
        writer.row_read()
        try:
            sink = _sink(sinks, instrument)
            sink.add(_trade(price, size, side, timestamp), checked=True)
        except BadValue as e:
            writer.skip(f"trades: {e.reason}", f"trades id {row_id}", e.value)


def _trade(price: Any, size: Any, side: Any, timestamp: Any) -> dict[str, Any]:
    ts = _timestamp(timestamp)
    price_value = _number(price, "price")
    if price_value <= 0:
        raise BadValue("price is not positive", price)
    size_value = _number(size, "size")
    if size_value < 0:
        raise BadValue("negative size", size)
    if size_value == 0:
        raise BadValue("zero size", size)
    if isinstance(side, str) and side.strip().lower() not in ("buy", "sell", ""):
        raise BadValue("unknown side", side)
    try:
        aggressor = trade_side(side)
    except BadValue:
        raise BadValue("unknown side", side) from None
    return {"ts": ts, "price": price_value, "size": size_value, "side": aggressor}


# ---- reading ---------------------------------------------------------------------------------------


def _sink(sinks: dict[str, StreamSink], instrument: Any) -> StreamSink:
    found = sinks.get(instrument) if isinstance(instrument, str) else None
    if found is None:
        raise BadValue("missing instrument", instrument)
    return found


def _number(value: Any, what: str) -> float:
    if is_missing(value):
        raise BadValue(f"missing {what}", value)
    return finite_float(value, what, value)


def _timestamp(value: Any) -> int:
    if is_missing(value):
        raise BadValue("missing timestamp", value)
    try:
        ns = epoch_ns(value, _MS)
    except BadValue:
        raise BadValue("timestamp is not epoch milliseconds", value) from None
    return checked_ts(ns)


def _rows(db: sqlite3.Connection, table: str, contracts: Mapping[str, int], with_missing: bool) -> Rows:
    # Timestamp order (then id): the order in which a replay of the stored ticks applies them.
    columns = ", ".join(TABLES[table])
    yield from db.execute(
        f"SELECT {columns} FROM {table} WHERE {_where(contracts, with_missing)} ORDER BY CAST(timestamp AS REAL), id",
        list(contracts),
    )


def _where(contracts: Mapping[str, int], with_missing: bool) -> str:
    where = f"instrument IN ({', '.join('?' * len(contracts))})" if contracts else "0"
    return f"({where} OR {_NO_INSTRUMENT})" if with_missing else where


def _recipe(table: str, instrument: str, book_rows: BookRows | None) -> str:
    spec = {"importer": "orderflow", "version": RECIPE_VERSION, "table": table, "instrument": instrument}
    if book_rows is not None:
        spec["book_rows"] = book_rows
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ValidationError("FILE", str(path), "does not exist")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise ValidationError("FILE", str(path), f"is not a SQLite database ({e})") from e
    return db


def _tables(db: sqlite3.Connection, path: Path) -> tuple[str, ...]:
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    tables = tuple(t for t in TABLES if t in present)
    if not tables:
        raise ValidationError("FILE", str(path), "is not an order-flow recording: it has no table book or trades")
    for table in tables:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in TABLES[table] if c not in columns]
        if missing:
            raise ValidationError("FILE", str(path), f"table {table} lacks the columns {', '.join(missing)}")
    return tables
