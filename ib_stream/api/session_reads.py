"""Blocking reads behind a session answer: tick counts per type, the OHLC summary and the first ticks of a
session, reading only the columns each needs (`ServiceState.session_reads` runs it off the event loop)."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pyarrow as pa

from ib_stream.domain import StreamKey, TickType
from ib_stream.store.query import QueryEngine
from ib_stream.store.schema import table_to_records
from ib_stream.times import iso_us

# Where the session summary comes from, in order of preference, and the columns each needs.
SUMMARY_SOURCES: Final = (TickType.LAST, TickType.ALL_LAST, TickType.MID_POINT, TickType.BID_ASK)
_COLUMNS: Final[dict[TickType, list[str]]] = {
    TickType.LAST: ["ts", "price", "size"],
    TickType.ALL_LAST: ["ts", "price", "size"],
    TickType.MID_POINT: ["ts", "mid_point"],
    TickType.BID_ASK: ["ts", "bid_price", "ask_price"],
    TickType.DEPTH: ["ts"],
}
_TYPE_ORDER: Final = {t: i for i, t in enumerate(TickType)}


def read_session(
    engine: QueryEngine,
    contract_id: int,
    tick_types: tuple[TickType, ...],
    start: int,
    end: int,
    include_ticks: bool,
    limit: int,
) -> dict[str, Any]:
    """Counts, summary and (with `include_ticks`, at most `limit`) ticks of [start, end)."""
    tables: dict[TickType, pa.Table] = {}
    if end > start:
        for tick_type in tick_types:
            tables[tick_type] = engine.read_stream(StreamKey(contract_id, tick_type), start, end, _COLUMNS[tick_type])
    counts = {t.value: (tables[t].num_rows if t in tables else 0) for t in tick_types}
    source, summary = _summary(tables)
    out: dict[str, Any] = {
        "tick_counts": counts,
        "total_ticks": sum(counts.values()),
        "summary_source": source,
        "summary": summary,
    }
    if include_ticks:
        ticks, truncated = _ticks(engine, contract_id, tables, start, limit)
        out.update(limit=limit, truncated=truncated, ticks=ticks)
    return out


def _summary(tables: dict[TickType, pa.Table]) -> tuple[str | None, dict[str, Any] | None]:
    """OHLC of the session from trades, else from mid-points, else from the bid/ask mid."""
    for tick_type in SUMMARY_SOURCES:
        table = tables.get(tick_type)
        if table is None or table.num_rows == 0:
            continue
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        if tick_type in (TickType.LAST, TickType.ALL_LAST):
            prices = table.column("price").to_numpy()
            sizes = table.column("size").to_numpy()
            volume = float(sizes.sum())
            return tick_type.value, _ohlc(
                prices,
                ts,
                volume=volume,
                vwap=float((prices * sizes).sum() / volume) if volume > 0 else None,
                trade_count=len(prices),
            )
        if tick_type == TickType.MID_POINT:
            return tick_type.value, _ohlc(table.column("mid_point").to_numpy(), ts)
        bid = table.column("bid_price").to_numpy()
        ask = table.column("ask_price").to_numpy()
        two_sided = (bid > 0) & (ask > 0)  # a missing side is quoted as 0: its "mid" means nothing
        if two_sided.any():
            return tick_type.value, _ohlc((bid[two_sided] + ask[two_sided]) / 2, ts[two_sided])
    return None, None


def _ohlc(
    values: np.ndarray,
    ts: np.ndarray,
    volume: float | None = None,
    vwap: float | None = None,
    trade_count: int | None = None,
) -> dict[str, Any]:
    return {
        "open": float(values[0]),
        "high": float(values.max()),
        "low": float(values.min()),
        "close": float(values[-1]),
        "volume": volume,
        "vwap": vwap,
        "trade_count": trade_count,
        "tick_count": len(values),
        "first_time": iso_us(int(ts[0])),
        "last_time": iso_us(int(ts[-1])),
    }


def _ticks(
    engine: QueryEngine, contract_id: int, tables: dict[TickType, pa.Table], start: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The first `limit` ticks of the session in (ts, tick type, seq) order, and whether more exist."""
    stamps = [t.column("ts").cast(pa.int64()).to_numpy() for t in tables.values() if t.num_rows]
    if not stamps:
        return [], False
    every = np.concatenate(stamps)
    truncated = len(every) > limit
    # Read full rows only up to the limit-th tick's time (inclusive: ticks may share a timestamp).
    cutoff = int(np.partition(every, limit - 1)[limit - 1]) if truncated else int(every.max())
    rows: list[tuple[int, int, int, dict[str, Any]]] = []
    for tick_type in tables:
        table = engine.read_stream(StreamKey(contract_id, tick_type), start, cutoff + 1)
        for record in table_to_records(table):
            tick = {"tick_type": tick_type.value, "timestamp": iso_us(record["ts"]), **record}
            rows.append((record["ts"], _TYPE_ORDER[tick_type], record["seq"], tick))
    rows.sort(key=lambda row: row[:3])
    return [row[3] for row in rows[:limit]], truncated
