"""Order-flow benchmark: a day of 1-minute OHLC+CVD+OBI bars from ticks and from 1-second rollups, a month from rollups.

On the synthetic day (`synthetic_day.py`: 5M ticks = 1M `last` trades + 4M `bid_ask` quotes, no recorded
trade side, so every trade is classified by the quote rule / tick rule against the quotes):

* ingest through a real `TickStore` (clock following the data), archive, compact;
* `OrderFlow.bars` of the whole day at 1m, kinds ohlc,cvd,obi (OBI from top of book): cold (first call on a
  freshly reopened store, tick path), warm (repeats, page cache warm, tick path), `update_rollups` (the
  archiver hook), then from rollups (repeats); the rollup answer is asserted equal to the tick answer;
* a month: `--month-days` weekdays of `--month-ticks` each, 1m bars of the whole month, ticks vs rollups;
  with `--month-depth`, also price-level depth derived from the quotes (a level update per quote side, a
  delete when the price moves), and the month's bars with OBI from depth: book replay vs depth rollups;
* ArcticDB (LMDB) in the same run, from `bench/.bench-venv` (this file re-run with `peer`): `lib.write` of the
  day, then `QueryBuilder.resample('1min')` of the trades (OHLC, volume, notional, count) and of the quotes
  (OBI OHLC, count) — ArcticDB has no trade-side classification or CVD, so its figure is a lower bound.

Run: `.venv/bin/python bench/orderflow_bench.py [--ticks 5000000] [--month-days 21] [--month-ticks 250000]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from synthetic_day import generate, tick_dicts  # noqa: E402

PEER_PYTHON = BENCH_DIR / ".bench-venv" / "bin" / "python"
CONTRACT = 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Any, reps: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


# ---------------------------------------------------------------------------------------------- ArcticDB peer
def peer(args: argparse.Namespace) -> None:
    import arcticdb as adb
    import pandas as pd
    from arctic_peer import trade_bars_query

    day = generate(args.ticks, args.seed, args.date)
    work = Path(tempfile.mkdtemp(prefix="of-peer-"))
    ac = adb.Arctic(f"lmdb://{work}?map_size=20GB")
    lib = ac.get_library("bench", create_if_missing=True)
    for name, cols in (("last", day.trades), ("bid_ask", day.quotes)):
        frame = pd.DataFrame({k: v.astype(np.float64) if "size" in k else v for k, v in cols.items() if k != "ts"})
        frame.index = pd.to_datetime(cols["ts"])
        lib.write(name, frame[[c for c in frame.columns if c not in ("exchange", "conditions")]])

    def trades() -> Any:
        return lib.read("last", query_builder=trade_bars_query()).data

    def quotes() -> Any:
        q = adb.QueryBuilder()
        q = q.apply("obi", (q["bid_size"] - q["ask_size"]) / (q["bid_size"] + q["ask_size"]))
        q = q.resample("1min").agg(
            {
                "o": ("obi", "first"),
                "h": ("obi", "max"),
                "l": ("obi", "min"),
                "c": ("obi", "last"),
                "n": ("obi", "count"),
            }
        )
        return lib.read("bid_ask", query_builder=q).data

    cold_t, _, _ = timed(lambda: (trades(), quotes()), 1)
    med, times, out = timed(lambda: (trades(), quotes()), args.reps)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cold_s": cold_t, "median_s": med, "times": times, "rows": [len(out[0]), len(out[1])]}))


# ---------------------------------------------------------------------------------------------- ib_stream
def ingest(store: Any, clock: Any, day: Any, window_ns: int = 60 * 1_000_000_000) -> int:
    """Append both streams minute by minute, the clock at each minute's end (as a live session would)."""
    q_ts, t_ts = day.quotes["ts"], day.trades["ts"]
    n = 0
    for lo in range(day.t0, day.t1 + window_ns, window_ns):
        hi = lo + window_ns
        clock.set(min(hi, day.t1 + 1))
        for name, ts, cols in (("bid_ask", q_ts, day.quotes), ("last", t_ts, day.trades)):
            a, b = np.searchsorted(ts, [lo, hi])
            for s in range(a, b, 20_000):
                ticks = tick_dicts(cols, s, min(b, s + 20_000))
                for t in ticks:
                    t["ts"] = int(t["ts"])
                store.append_batch_sync(CONTRACT, name, ticks, source="bench")
                n += len(ticks)
    return n


def depth_events(day: Any) -> list[dict[str, Any]]:
    """Price-level depth from the quotes: each side's level set to the quoted size, the old level deleted when
    the quoted price moves."""
    q = day.quotes
    out: list[dict[str, Any]] = []
    for side, price_col, size_col in (("bid", "bid_price", "bid_size"), ("ask", "ask_price", "ask_size")):
        ts, price, size = q["ts"], q[price_col], q[size_col]
        moved = np.flatnonzero(np.diff(price) != 0) + 1
        base = {"side": side, "position": 0, "market_maker": "", "by_price": True}
        for i in moved:
            out.append({**base, "ts": int(ts[i]), "operation": "delete", "price": float(price[i - 1]), "size": 0.0})
        for i in range(len(ts)):
            out.append(
                {**base, "ts": int(ts[i]), "operation": "update", "price": float(price[i]), "size": float(size[i])}
            )
    out.sort(key=lambda e: e["ts"])
    return out


def open_store(root: Path, clock: Any) -> Any:
    from ib_stream.settings import StorageConfig
    from ib_stream.storage import TickStore

    config = StorageConfig(
        data_root=root, fsync_interval_ms=5, compaction_delay_seconds=0, retired_file_grace_seconds=0
    )
    return TickStore(config, clock).open()


def flows(store: Any) -> tuple[Any, Any, Any]:
    """Tick path and rollup path without the result cache (so every call computes), and the cached service."""
    from ib_stream.domain import Contract
    from ib_stream.orderflow.service import OrderFlow

    contract = Contract(CONTRACT, "SYN", calendar="XNYS", min_tick=0.01)
    return (
        OrderFlow(store.engine, contract, depth_volumes=None, use_rollups=False, use_cache=False),
        OrderFlow(store.engine, contract, depth_volumes=None, use_cache=False),
        OrderFlow(store.engine, contract, depth_volumes=None),
    )


def same(a: Any, b: Any) -> None:
    for name in a.column_names:
        x, y = a.column(name).to_numpy(zero_copy_only=False), b.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "peer"])
    parser.add_argument("--ticks", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=20240315)
    parser.add_argument("--date", default="2024-03-15")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--month-days", type=int, default=21)
    parser.add_argument("--month-ticks", type=int, default=250_000)
    parser.add_argument("--month-depth", action="store_true", help="also depth, and the month's OBI from depth")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    if args.mode == "peer":
        peer(args)
        return 0

    from ib_stream.analytics.request import BarsRequest
    from ib_stream.clock import ManualClock
    from ib_stream.store.rollups import update_rollups

    result: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count(), "load": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="of-bench-"))
    day = generate(args.ticks, args.seed, args.date)
    clock = ManualClock(day.t0)
    store = open_store(work / "day", clock)
    t = time.perf_counter()
    n = ingest(store, clock, day)
    clock.set(day.t1 + 3 * 3600 * 1_000_000_000)
    store.run_archival()
    store.run_compaction()
    store.close()
    log(f"day: {n} ticks ingested+archived in {time.perf_counter() - t:.1f}s")
    store = open_store(work / "day", clock)
    ticks_flow, rollup_flow, service_flow = flows(store)
    request = BarsRequest(CONTRACT, day.t0, day.t1 + (-day.t1) % 60_000_000_000, "1m")
    cold, _, want = timed(lambda: ticks_flow.bars(request), 1)
    warm, warm_times, _ = timed(lambda: ticks_flow.bars(request), args.reps)
    build, _, written = timed(lambda: update_rollups(store.engine), 1)
    rolled, rolled_times, got = timed(lambda: rollup_flow.bars(request), args.reps)
    same(got.table, want.table)
    assert got.side_methods == want.side_methods, (got.side_methods, want.side_methods)
    service_flow.bars(request)  # fills the query cache
    cached, cached_times, hit = timed(lambda: service_flow.bars(request), args.reps)
    same(hit.table, want.table)
    result["day"] = {
        "trades": day.n_trades,
        "quotes": day.n_quotes,
        "bars": want.table.num_rows,
        "side_methods": want.side_methods,
        "ticks_cold_s": cold,
        "ticks_warm_median_s": warm,
        "ticks_warm_times": warm_times,
        "update_rollups_s": build,
        "rollups_written": written,
        "rollups_median_s": rolled,
        "rollups_times": rolled_times,
        "cached_median_s": cached,
        "cached_times": cached_times,
    }
    store.close()
    log(f"day: {json.dumps(result['day'])}")

    if args.month_days:
        clock = ManualClock(day.t0)
        store = open_store(work / "month", clock)
        date, first, last, total, depth_total = dt.date.fromisoformat(args.date), None, None, 0, 0
        for i in range(args.month_days):
            while date.weekday() >= 5:
                date += dt.timedelta(days=1)
            d = generate(args.month_ticks, args.seed + i, date.isoformat())
            total += ingest(store, clock, d, 15 * 60 * 1_000_000_000)
            if args.month_depth:
                events = depth_events(d)
                for s in range(0, len(events), 50_000):
                    store.append_batch_sync(CONTRACT, "depth", events[s : s + 50_000], source="bench")
                depth_total += len(events)
            first, last = first or d.t0, d.t1
            date += dt.timedelta(days=1)
        clock.set(last + 3 * 3600 * 1_000_000_000)
        store.run_archival()
        store.run_compaction()
        build_m, _, written_m = timed(lambda: update_rollups(store.engine), 1)
        store.close()
        store = open_store(work / "month", clock)
        ticks_flow, rollup_flow, service_flow = flows(store)
        assert first is not None and last is not None
        req = BarsRequest(CONTRACT, first, last + (-last) % 60_000_000_000, "1m")
        m_cold, _, _ = timed(lambda: rollup_flow.bars(req), 1)
        m_roll, m_times, got = timed(lambda: rollup_flow.bars(req), args.reps)
        m_ticks, m_tick_times, want = timed(lambda: ticks_flow.bars(req), max(1, args.reps // 2))
        same(got.table, want.table)
        result["month"] = {
            "days": args.month_days,
            "ticks": total,
            "bars": want.table.num_rows,
            "update_rollups_s": build_m,
            "rollups_written": written_m,
            "rollups_first_s": m_cold,
            "rollups_median_s": m_roll,
            "rollups_times": m_times,
            "ticks_median_s": m_ticks,
            "ticks_times": m_tick_times,
        }
        if args.month_depth:
            from ib_stream.domain import Contract
            from ib_stream.orderflow.service import OrderFlow
            from ib_stream.store.depth_rollups import update_depth_rollups

            snapshots_s, _, _ = timed(store.run_snapshots, 1)
            build_d, _, written_d = timed(lambda: update_depth_rollups(store.engine), 1)
            contract = Contract(CONTRACT, "SYN", calendar="XNYS", min_tick=0.01)
            replay = OrderFlow(store.engine, contract, use_rollups=False, use_cache=False)
            rolled_d = OrderFlow(store.engine, contract, use_cache=False)
            d_roll, d_roll_times, got = timed(lambda: rolled_d.bars(req), args.reps)
            d_replay, d_replay_times, want = timed(lambda: replay.bars(req), max(1, args.reps // 2))
            assert got.obi_source == want.obi_source == "depth"
            same(got.table, want.table)
            result["month"] |= {
                "depth_events": depth_total,
                "snapshots_s": snapshots_s,
                "update_depth_rollups_s": build_d,
                "depth_rollups_written": written_d,
                "depth_obi_rollups_median_s": d_roll,
                "depth_obi_rollups_times": d_roll_times,
                "depth_obi_replay_median_s": d_replay,
                "depth_obi_replay_times": d_replay_times,
            }
        store.close()
        log(f"month: {json.dumps(result['month'])}")

    if not args.no_peer and PEER_PYTHON.exists():
        cmd = [str(PEER_PYTHON), __file__, "peer", "--ticks", str(args.ticks), "--seed", str(args.seed)]
        cmd += ["--date", args.date, "--reps", str(args.reps)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=BENCH_DIR).stdout
        result["arcticdb"] = json.loads(out.strip().splitlines()[-1])
        result["ratio_rollups_vs_arcticdb"] = result["day"]["rollups_median_s"] / result["arcticdb"]["median_s"]
        result["ratio_ticks_warm_vs_arcticdb"] = result["day"]["ticks_warm_median_s"] / result["arcticdb"]["median_s"]
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
