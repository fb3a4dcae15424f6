"""Routes: `GET /v2/contracts` (what is configured and held) and `GET /v2/contracts/{id}/coverage`.

What is held per stream comes from the catalog (archive files) plus the buffer's hot tier; the two
overlap while archived ticks are still hot, so counts use the seq ranges to count every tick once.
Coverage is exact for the hot tier (from tick times) and known per archive file (one file per
stream and partition hour) for the archive: a hole inside one archived hour is not seen.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query

from ib_stream.api.params import iso, parse_duration, parse_tick_types
from ib_stream.api.routes.historical import ContractIdPath
from ib_stream.api.state import ServiceState, State
from ib_stream.clock import NS_PER_SECOND
from ib_stream.domain import Contract, StreamKey
from ib_stream.storage import TickStore
from ib_stream.storage.hotcache import Chunk

router = APIRouter(tags=["contracts"])
GAP_REASON_NO_DATA = "no data"


@dataclass(slots=True)
class Holding:
    """What the store holds of one stream: archive and hot tier, and the time intervals covered."""

    stream: StreamKey
    archive_files: int = 0
    archive_ticks: int = 0
    hot_ticks: int = 0  # hot ticks not (yet) in the archive
    first_ns: int | None = None
    last_ns: int | None = None
    last_seq: int = 0
    archive_range: tuple[int, int] | None = None
    hot_range: tuple[int, int] | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)  # [first tick, last tick] per file / hot run

    @property
    def tick_count(self) -> int:
        return self.archive_ticks + self.hot_ticks

    def summary(self) -> dict[str, Any]:
        return {
            "tick_type": self.stream.tick_type.value,
            "tick_count": self.tick_count,
            "first_tick": _iso_or_none(self.first_ns),
            "last_tick": _iso_or_none(self.last_ns),
            "last_seq": self.last_seq,
            "archive": {"files": self.archive_files, "ticks": self.archive_ticks, **_range(self.archive_range)},
            "hot": {"ticks": self.hot_ticks, **_range(self.hot_range)},
        }


def stream_holding(store: TickStore, stream: StreamKey, gap_ns: int | None = None) -> Holding:
    """Read the catalog and the hot tier of one stream (blocking: run it in the store's executor).

    With `gap_ns`, `spans` also lists the runs of not-yet-archived hot ticks, split at holes of at
    least `gap_ns` (exact: from their timestamps); archive files count as one span each.
    """
    holding = Holding(stream)
    files = store.index.files(stream)
    catalog_last = max((f.last_seq for f in files), default=0)
    holding.archive_files = len(files)
    holding.archive_ticks = sum(f.tick_count for f in files)
    holding.spans = [(f.start_time, f.end_time) for f in files]
    if files:
        holding.archive_range = (min(f.start_time for f in files), max(f.end_time for f in files))
    hot = store.buffer.hot(stream)
    chunks = hot.snapshot().chunks if hot is not None else ()
    if chunks:
        # Hot seqs are contiguous, so the ticks past the catalog's last seq are counted exactly.
        holding.hot_ticks = sum(max(0, c.last_seq - max(catalog_last, c.first_seq - 1)) for c in chunks)
        holding.hot_range = (min(c.min_ts for c in chunks), max(c.max_ts for c in chunks))
        if gap_ns is not None:
            holding.spans += hot_spans(chunks, catalog_last, gap_ns)
    holding.last_seq = max(catalog_last, chunks[-1].last_seq if chunks else 0)
    ranges = [r for r in (holding.archive_range, holding.hot_range) if r is not None]
    if ranges:
        holding.first_ns = min(lo for lo, _ in ranges)
        holding.last_ns = max(hi for _, hi in ranges)
    return holding


def hot_spans(chunks: Sequence[Chunk], after_seq: int, gap_ns: int) -> list[tuple[int, int]]:
    """[first, last] tick time of each run of hot ticks with seq > after_seq, split at holes >= gap_ns."""
    parts = []
    for chunk in chunks:
        if chunk.last_seq > after_seq:
            offset = max(0, after_seq - chunk.first_seq + 1)
            parts.append(chunk.table.column("ts").slice(offset).to_numpy().view(np.int64))
    if not parts:
        return []
    ts = np.sort(np.concatenate(parts))
    cuts = np.flatnonzero(np.diff(ts) >= gap_ns)
    firsts, lasts = ts[np.concatenate(([0], cuts + 1))], ts[np.concatenate((cuts, [len(ts) - 1]))]
    return list(zip(firsts.tolist(), lasts.tolist(), strict=True))


def merge_spans(spans: list[tuple[int, int]], min_gap_ns: int) -> list[tuple[int, int]]:
    """Merge [lo, hi] spans that overlap, touch or are separated by less than `min_gap_ns`."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo - merged[-1][1] < max(min_gap_ns, 1):
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def contract_streams(state: ServiceState, contract: Contract) -> list[StreamKey]:
    """The configured streams of a contract plus any other stream of it the store holds."""
    held = {
        s for s in [*state.store.index.streams(), *state.store.buffer.streams()] if s.contract_id == contract.con_id
    }
    configured = [StreamKey(contract.con_id, t) for t in contract.tick_types]
    return configured + sorted(held - set(configured))


def describe_contract(contract: Contract) -> dict[str, Any]:
    return {
        "con_id": contract.con_id,
        "symbol": contract.symbol,
        "sec_type": contract.sec_type,
        "exchange": contract.exchange,
        "currency": contract.currency,
        "calendar": contract.calendar,
        "tick_types": [t.value for t in contract.tick_types],
        "depth_rows": contract.depth_rows,
        "min_tick": contract.min_tick,
        "extra": dict(contract.extra),
    }


@router.get("/v2/contracts", summary="Configured contracts and what is held of each stream")
async def list_contracts(state: State) -> dict[str, Any]:
    """Return every configured contract with, per stream, the first/last tick time and the tick count."""

    def gather() -> list[dict[str, Any]]:
        out = []
        for contract in state.contracts:
            streams = [stream_holding(state.store, s).summary() for s in contract_streams(state, contract)]
            out.append({**describe_contract(contract), "streams": streams})
        return out

    contracts = await asyncio.get_running_loop().run_in_executor(state.store.executor, gather)
    return {"count": len(contracts), "contracts": contracts}


@router.get(
    "/v2/contracts/{contract_id}/coverage",
    summary="Time intervals held per stream, and the gaps between them",
    responses={404: {"description": "Unknown contract"}, 422: {"description": "Invalid tick type or min_gap"}},
)
async def coverage(
    state: State,
    contract_id: ContractIdPath,
    tick_types: Annotated[
        str | None, Query(description="Comma list of tick types (default: the contract's streams).")
    ] = None,
    min_gap: Annotated[
        str, Query(description="Holes shorter than this are closed; longer ones are reported as gaps (30s, 5m, 1h).")
    ] = "1m",
) -> dict[str, Any]:
    """Return, per stream, the merged intervals held (archive files + hot tier) and the gaps between them."""
    contract = state.streaming.require_contract(contract_id)
    gap_ns = parse_duration(min_gap, "min_gap")
    asked = parse_tick_types(tick_types) if tick_types is not None and tick_types.strip() else None

    def gather() -> list[dict[str, Any]]:
        streams = contract_streams(state, contract) if asked is None else [StreamKey(contract_id, t) for t in asked]
        return [_stream_coverage(stream_holding(state.store, s, gap_ns), gap_ns) for s in streams]

    report = await asyncio.get_running_loop().run_in_executor(state.store.executor, gather)
    return {
        "contract_id": contract_id,
        "symbol": contract.symbol,
        "min_gap_seconds": gap_ns / NS_PER_SECOND,
        "gap_reasons": "derived from holes in the data; the IB gap ledger (disconnects, error codes) comes later",
        "streams": report,
    }


def _stream_coverage(holding: Holding, gap_ns: int) -> dict[str, Any]:
    intervals = merge_spans(holding.spans, gap_ns)
    gaps = [
        {
            "start": iso(prev_hi),
            "end": iso(lo),
            "duration_seconds": (lo - prev_hi) / NS_PER_SECOND,
            "reason": GAP_REASON_NO_DATA,
        }
        for (_, prev_hi), (lo, _) in itertools.pairwise(intervals)
    ]
    return {
        **holding.summary(),
        "intervals": [
            {"start": iso(lo), "end": iso(hi), "duration_seconds": (hi - lo) / NS_PER_SECOND} for lo, hi in intervals
        ],
        "gaps": gaps,
    }


def _range(span: tuple[int, int] | None) -> dict[str, Any]:
    first, last = span if span is not None else (None, None)
    return {"first_tick": _iso_or_none(first), "last_tick": _iso_or_none(last)}


def _iso_or_none(ns: int | None) -> str | None:
    return None if ns is None else iso(ns)
