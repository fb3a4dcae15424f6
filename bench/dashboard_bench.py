"""Dashboard benchmark: a day's 1-minute footprint, and a full session's liquidity heatmap at 1200 × 200.

* Footprint: the synthetic trading day of the store and order-flow benchmarks (`synthetic_day.py`, same
  `--ticks/--seed/--date`: 1M `last` trades + 4M `bid_ask` quotes, no recorded side — every trade classified by
  the quote rule / tick rule), ingested through a real `TickStore` and archived (`orderflow_bench.ingest`); then
  `footprint_of` (= `GET /v2/footprint`'s computation: `OrderFlow.trades` + the kernel) of the whole day at 1m with
  the default price step 0.01, next to `OrderFlow.bars` (ohlc, tick path, no cache) of the same request.
* Heatmap: a regular session (09:30–16:00 New York) of the built-in simulated market (`ib_stream.sources.sim`,
  default `SimConfig`: 20 quotes/s, 10 position rows of depth per side; ~4.3M depth updates) for AAPL, written
  minute by minute through a real `TickStore`, archived, snapshotted (`run_snapshots`) and rolled up (the store's
  `run_rollups` job, timed: it writes the heatmap rollups — per-second resting sums — beside the others); then
  `liquidity_heatmap` (= `GET /v2/heatmap`'s computation) of the whole session at 1200 columns × 200 rows, from
  the heatmap rollups (the default) and by the walk of every depth update (`use_rollups=False`); the run asserts
  both give the same cells (rounded to 0.01, as the API answers); then an hour starting mid-hour, both ways.

Each is timed `--reps` times after a warm-up (min and median wall time, and the CPU seconds of all threads per
run — the figure to read on a machine busy with other work); the peak memory of one more run is measured with
tracemalloc (Python and numpy allocations) and pyarrow's pool high-water mark (Arrow buffers: the read tables).

Run: `.venv/bin/python bench/dashboard_bench.py [--ticks 5000000] [--reps 5]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from orderflow_bench import CONTRACT, ingest, open_store  # noqa: E402
from synthetic_day import generate  # noqa: E402
from timing import timed  # noqa: E402

NS = 1_000_000_000
AAPL = 265598


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measured(fn: Any, reps: int) -> dict[str, Any]:
    """min / median seconds of `reps` runs after one warm-up, then the peak memory of one more run."""
    cpu_started = time.process_time()
    median, times, _ = timed(fn, reps, warmup=1)
    cpu = (time.process_time() - cpu_started) / (reps + 1)  # CPU seconds of all threads, per run
    pool = pa.default_memory_pool()
    before = pool.max_memory() or 0
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "min_s": min(times),
        "median_s": median,
        "times_s": times,
        "cpu_s_per_run": cpu,
        "tracemalloc_peak_mb": peak / 2**20,
        "arrow_pool_high_water_mb": max(pool.max_memory() or 0, before) / 2**20,
    }


def footprint_day(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ib_stream.analytics.request import BarsRequest
    from ib_stream.clock import ManualClock
    from ib_stream.domain import Contract
    from ib_stream.orderflow.dashboard import footprint_of
    from ib_stream.orderflow.service import OrderFlow

    day = generate(args.ticks, args.seed, args.date)
    clock = ManualClock(day.t0)
    store = open_store(work / "day", clock)
    started = time.perf_counter()
    ingest(store, clock, day)
    clock.set(day.t1 + 3 * 3600 * NS)
    store.run_archival()
    store.run_compaction()
    store.close()
    log(f"footprint: the synthetic day ingested and archived in {time.perf_counter() - started:.1f}s")
    store = open_store(work / "day", clock)
    contract = Contract(CONTRACT, "SYN", calendar="XNYS", min_tick=0.01)
    flow = OrderFlow(store.engine, contract, depth_volumes=None, use_rollups=False, use_cache=False)
    request = BarsRequest(CONTRACT, day.t0, day.t1 + (-day.t1) % (60 * NS), "1m", ("ohlc",))
    found = footprint_of(flow, request)
    bars = flow.bars(request).table
    assert abs(sum(found.bars["buy_volume"]) - pa.compute.sum(bars.column("buy_volume")).as_py()) < 1e-6
    out = {
        "trades": day.n_trades,
        "quotes": day.n_quotes,
        "bars": len(found),
        "cells": found.cells,
        "footprint": measured(lambda: footprint_of(flow, request), args.reps),
        "bars_ohlc_same_request": measured(lambda: flow.bars(request), args.reps),
    }
    store.close()
    return out


def simulated_session(root: Path, date: str) -> tuple[int, int, int, dict[str, Any]]:
    """A regular session of the simulated market (AAPL: quotes, trades, 10 depth rows per side) through a store."""
    from ib_stream.calendars import MarketSessions
    from ib_stream.clock import ManualClock
    from ib_stream.domain import Contract, TickType
    from ib_stream.settings import SimConfig
    from ib_stream.sources.sim import SimMarket

    types = (TickType.BID_ASK, TickType.LAST, TickType.DEPTH)
    contract = Contract(AAPL, "AAPL", calendar="XNAS", tick_types=types, depth_rows=10, extra={"start_price": 230.0})
    session = MarketSessions.for_contract(contract).on(date, "regular")
    clock = ManualClock(session.start_ns)
    store = open_store(root, clock)
    market = SimMarket(contract, SimConfig(), session.start_ns)
    depth = 0
    for lo in range(session.start_ns, session.end_ns, 60 * NS):
        hi = min(lo + 60 * NS, session.end_ns)
        ticks = market.advance(hi - 1)
        clock.set(hi)
        for tick_type, batch in ticks.items():
            if batch:
                store.append_batch_sync(AAPL, tick_type.value, batch, source="sim")
                depth += len(batch) if tick_type is TickType.DEPTH else 0
    clock.set(session.end_ns + 3 * 3600 * NS)
    store.run_archival()
    store.run_compaction()
    store.run_snapshots()
    from ib_stream.store.heatmap_rollups import update_heatmap_rollups

    started = time.perf_counter()
    heatmap_written = update_heatmap_rollups(store.engine)  # the heatmap's part of the job, timed alone
    heatmap_s = time.perf_counter() - started
    written = store.run_rollups()  # the whole job: the other rollups (the heatmap's are up to date)
    job_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in store.layout.rollup_dir.rglob("*.parquet") if "depth-resting" in str(p))
    store.close()
    jobs = {
        "heatmap_rollups_s": round(heatmap_s, 2),
        "heatmap_rollups_written": heatmap_written,
        "heatmap_rollups_mb": round(size / 2**20, 2),
        "run_rollups_s": round(job_s, 2),
        "other_rollups_written": written,
    }
    return session.start_ns, session.end_ns, depth, jobs


def heatmap_session(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ib_stream.clock import ManualClock
    from ib_stream.domain import Contract
    from ib_stream.orderflow.dashboard import liquidity_heatmap

    started = time.perf_counter()
    start, end, depth, jobs = simulated_session(work / "sim", args.date)
    log(
        f"heatmap: {depth} depth updates simulated, stored, archived, snapshotted in {time.perf_counter() - started:.1f}s"
    )
    store = open_store(work / "sim", ManualClock(end + 3 * 3600 * NS))
    contract = Contract(AAPL, "AAPL", min_tick=0.01)

    def run(use_rollups: bool = True) -> Any:
        return liquidity_heatmap(store.engine, contract, start, end, args.columns, args.rows, use_rollups=use_rollups)

    import numpy as np

    found, walked = run(), run(False)
    for name in ("bids", "asks"):
        assert np.array_equal(np.round(getattr(found.map, name), 2), np.round(getattr(walked.map, name), 2)), name
    out = {
        "depth_updates": depth,
        **jobs,
        "columns": found.map.columns,
        "column_ns": found.map.column_ns,
        "rows": found.map.axis.rows,
        "rollups_used": found.rollups_used,
        "deltas_replayed": found.deltas_replayed,
        "deltas_replayed_walk": walked.deltas_replayed,
        "heatmap": measured(run, args.reps),
        "heatmap_walk": measured(lambda: run(False), args.reps),
    }
    out["goal_300ms_met"] = out["heatmap"]["median_s"] < 0.3
    # An hour starting mid-hour (the second and third hours' halves): 1200 columns of 3 s.
    lo = start + 3600 * NS
    lo -= lo % (3600 * NS)
    lo += 1800 * NS
    for use_rollups in (True, False):
        name = "hour_mid" + ("" if use_rollups else "_walk")

        def hour(use_rollups: bool = use_rollups) -> Any:
            return liquidity_heatmap(
                store.engine, contract, lo, lo + 3600 * NS, args.columns, args.rows, use_rollups=use_rollups
            )

        out[name] = {"start_ns": lo, **measured(hour, args.reps)}
    store.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=20240315)
    parser.add_argument("--date", default="2024-03-15")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--columns", type=int, default=1200)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--skip-footprint", action="store_true")
    parser.add_argument("--skip-heatmap", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    try:
        if not args.skip_footprint:
            result["footprint_day"] = footprint_day(args, work)
            log(json.dumps(result["footprint_day"]))
        if not args.skip_heatmap:
            result["heatmap_session"] = heatmap_session(args, work)
            log(json.dumps(result["heatmap_session"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
