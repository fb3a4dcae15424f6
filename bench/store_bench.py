"""End-to-end benchmark of the ib_stream tick store on the synthetic trading day, next to ArcticDB.

Drives the real `TickStore` (JSON-lines buffer with group commit -> hourly Parquet parts -> compacted
hourly files + SQLite catalog) through one trading day (`bench/synthetic_day.py`, the same day as the
baseline in /work/shared/bench) with a `ManualClock` that follows the data, and measures:

1. durable ingest through the batch API (many batches in flight, and strictly sequential);
2. archival over the whole day and compaction;
3. bytes per tick at rest (Parquet after compaction) and in the JSON-lines buffer;
4. query latencies: 30-min range, full day, day of 1-minute bars, recent 5 minutes (hot tier), cached;
5. restart-to-ready with two hours of buffered, unarchived ticks;
6. the same operations on ArcticDB (LMDB), run by `bench/arctic_peer.py` in its own venv (pandas < 3);
7. the archive's Parquet encodings (the project's choice against alternatives, same tables).

Progress goes to stderr, a table to stdout, every figure to bench/results/store_bench-<ticks>-<stamp>.json.
Run: `make bench` or `.venv/bin/python bench/store_bench.py [--ticks 500000] [--no-peer]`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic_day import SyntheticDay, generate, ny_time_ns, tick_dicts, to_arrow

from ib_stream.clock import ManualClock
from ib_stream.domain import TickType, TickValidator
from ib_stream.settings import StorageConfig
from ib_stream.storage import StorageQuery, TickStore
from ib_stream.store.schema import TS_TYPE, is_sorted, jsonl_to_table, read_parquet, read_parquet_range, sort_table

BENCH_DIR = Path(__file__).resolve().parent
PEER_PYTHON = BENCH_DIR / ".bench-venv" / "bin" / "python"
PEER_SCRIPT = BENCH_DIR / "arctic_peer.py"
CONTRACT_ID = 1
STREAMS = ("bid_ask", "last")
NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
T_START = time.perf_counter()
GIL_FREE_REFERENCE = bytes(16 << 20)  # sha256 of this releases the GIL

# The minimum targets: (summary key, comparison, threshold, unit, label).
TARGETS = [
    ("ingest_ticks_per_s", ">=", 300_000, "ticks/s", "durable ingest (batch API, batches in flight)"),
    ("bytes_per_tick_at_rest", "<=", 8.0, "B/tick", "bytes per tick at rest (Parquet after compaction)"),
    ("range_30min_ms", "<=", 20.0, "ms", "30-min range query, uncached (worst of bid_ask, last)"),
    ("recent_5min_ms", "<=", 10.0, "ms", "recent 5-min query from the hot tier (worst of bid_ask, last)"),
    ("cached_ms", "<=", 1.0, "ms", "cached query (30-min bid_ask, cache hit)"),
    ("restart_to_ready_s", "<=", 5.0, "s", "restart-to-ready with 2 h of unarchived ticks"),
]


# --------------------------------------------------------------------------------------------- utilities
def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def settle() -> None:
    """Let the previous step's dirty pages reach the disk before timing the next one (2 cores)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    os.sync()
    time.sleep(0.5)


def tree_bytes(root: Path, suffix: str) -> tuple[int, int]:
    """(total bytes, file count) of the files under `root` whose name ends with `suffix`."""
    total = count = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(suffix) and ".tmp-" not in name:
                total += os.path.getsize(os.path.join(dirpath, name))
                count += 1
    return total, count


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "ok" if v else "FAIL"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e5:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


class Report:
    """Rows of figures grouped by section, logged as they come."""

    def __init__(self) -> None:
        self.sections: dict[str, list[dict[str, Any]]] = {}
        self.summary: dict[str, Any] = {}
        self.errors: list[dict[str, str]] = []
        self.notes: list[str] = []

    def add(self, section: str, name: str, times: list[float] | None = None, **metrics: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"name": name, **metrics}
        if times:
            row["min_ms"] = min(times) * 1e3
            row["times_ms"] = [round(t * 1e3, 3) for t in times]
        self.sections.setdefault(section, []).append(row)
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in row.items() if k not in ("name", "times_ms", "columns"))
        log(f"{section} | {name} | {shown}")
        return row


# --------------------------------------------------------------------------------------------- the data
@dataclass(slots=True)
class Batch:
    """One append: a stream's consecutive ticks, sent when its last tick arrives (clock = that tick's ts)."""

    tick_type: str
    clock_ns: int
    ticks: list[dict[str, Any]]


def make_batches(day: SyntheticDay, size: int) -> list[Batch]:
    """Split both streams into batches of `size` and order them by the arrival of their last tick."""
    order: list[tuple[int, int, str, int, int]] = []
    for rank, name in enumerate(STREAMS):
        ts = day.stream(name)["ts"]
        for start in range(0, ts.size, size):
            stop = min(start + size, ts.size)
            order.append((int(ts[stop - 1]), rank, name, start, stop))
    order.sort()
    return [Batch(name, last, tick_dicts(day.stream(name), start, stop)) for last, _, name, start, stop in order]


def count_in(day: SyntheticDay, stream: str, lo: int, hi: int) -> int:
    ts = day.stream(stream)["ts"]
    return int(np.searchsorted(ts, hi, "left") - np.searchsorted(ts, lo, "left"))


def store_config(root: Path, fsync_ms: int, cache_size: int) -> StorageConfig:
    return StorageConfig(
        data_root=root,
        fsync_interval_ms=fsync_ms,
        compaction_delay_seconds=0,
        retired_file_grace_seconds=0,
        query_cache_size=cache_size,
    )


class Ctx:
    """Everything the steps share."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.report = Report()
        self.day: SyntheticDay
        self.batches: list[Batch]
        self.root = work / "store"
        self.clock: ManualClock
        self.store: TickStore | None = None
        self.range30 = (ny_time_ns(args.date, 11, 45), ny_time_ns(args.date, 12, 15))
        self.archive_files: dict[str, list[Path]] = {}
        self.peer: dict[str, Any] | None = None

    @property
    def recent(self) -> tuple[int, int]:
        return self.day.t1 - 5 * MINUTE, self.day.t1


# --------------------------------------------------------------------------------------------- 1. ingest
def ingest_breakdown(c: Ctx) -> None:
    """Where the ingest CPU goes, per tick, on a prefix of the day (no I/O): validate, encode, hot table.

    Validation and the orjson lines run on the submitting thread under the GIL; the hot tier parses the
    lines the writer wrote with Arrow's JSON reader (`jsonl_to_table`, 65,536 rows at a time as the hot
    tier does), which releases the GIL. `python_progress_while_parsing` is how fast a pure-Python loop on
    another thread runs while the parse runs, relative to running alone (1.0 = the parse holds no GIL),
    next to the same figure for sha256 (which releases the GIL) as this machine's reference.
    """
    n_max = min(c.args.breakdown_ticks, c.day.n_total)
    for name in STREAMS:
        batches = [b for b in c.batches if b.tick_type == name]
        picked, n = [], 0
        for b in batches:
            if n >= n_max * (0.8 if name == "bid_ask" else 0.2):
                break
            picked.append(b)
            n += len(b.ticks)
        tick_type = TickType(name)
        validator = TickValidator(tick_type)
        started = time.perf_counter()
        canonical = validator.canonical
        canon = [[canonical(t, 1 + i, b.clock_ns, "bench", i) for i, t in enumerate(b.ticks)] for b in picked]
        t_validate = time.perf_counter() - started
        dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        started = time.perf_counter()
        encoded = [b"".join([dumps(r, option=opt) for r in recs]) for recs in canon]
        t_encode = time.perf_counter() - started
        tails = hot_tails(encoded, [len(recs) for recs in canon])
        started = time.perf_counter()
        rows = sum(jsonl_to_table(tail, tick_type).num_rows for tail in tails)
        t_table = time.perf_counter() - started
        progress = gil_progress(functools.partial(parse_tails, tails, tick_type))
        reference = gil_progress(functools.partial(hashlib.sha256, GIL_FREE_REFERENCE))
        held = t_validate + t_encode
        c.report.add(
            "1_ingest",
            f"{name}: CPU per tick on the caller/writer threads ({n:,} ticks, no I/O)",
            validate_us=t_validate / n * 1e6,
            orjson_us=t_encode / n * 1e6,
            hot_table_us=t_table / n * 1e6,
            gil_us=held / n * 1e6,
            total_us=(held + t_table) / n * 1e6,
            ceiling_ticks_per_s=n / held,
            python_progress_while_parsing=progress,
            python_progress_gil_free_reference=reference,
            verified=rows == n,
        )
        del canon, encoded, tails


def parse_tails(tails: list[bytes], tick_type: TickType) -> None:
    for tail in tails:
        jsonl_to_table(tail, tick_type)


def hot_tails(encoded: list[bytes], counts: list[int]) -> list[bytes]:
    """Group batches' JSON lines the way the hot tier does: parse once 65,536 rows have accumulated."""
    tails, pending, rows = [], [], 0
    for data, count in zip(encoded, counts, strict=True):
        pending.append(data)
        rows += count
        if rows >= 65_536:
            tails.append(b"".join(pending))
            pending, rows = [], 0
    if pending:
        tails.append(b"".join(pending))
    return tails


def gil_progress(work: Callable[[], Any], seconds: float = 0.3) -> float:
    """Pure-Python loop speed while `work` runs on another thread, over its speed alone (1.0 = GIL released)."""

    def spin(stop: Callable[[], bool]) -> float:
        count, started = 0, time.perf_counter()
        while not stop():
            for _ in range(1000):
                count += 1
        return count / (time.perf_counter() - started)

    deadline = time.perf_counter() + seconds
    alone = spin(lambda: time.perf_counter() > deadline)
    done = threading.Event()

    def run() -> None:
        try:
            until = time.perf_counter() + seconds
            work()
            while time.perf_counter() < until:
                work()
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    together = spin(done.is_set)
    worker.join()
    return together / alone


def ingest_sequential(c: Ctx, fsync_ms: int) -> None:
    """append_batch_sync one batch after the other (each waits until durable), capped in time."""
    root = c.work / f"seq-fsync{fsync_ms}"
    clock = ManualClock(c.day.t0)
    store = TickStore(store_config(root, fsync_ms, 0), clock).open()
    n = batches = 0
    lat: list[float] = []
    started = time.perf_counter()
    for b in c.batches:
        clock.set(b.clock_ns)
        t = time.perf_counter()
        n += store.append_batch_sync(CONTRACT_ID, b.tick_type, b.ticks, source="bench").count
        lat.append(time.perf_counter() - t)
        batches += 1
        if time.perf_counter() - started > c.args.seq_seconds:
            break
    secs = time.perf_counter() - started
    fsyncs = store.buffer.stats.fsyncs
    store.close()
    shutil.rmtree(root)
    c.report.add(
        "1_ingest",
        f"sequential append_batch_sync, fsync_interval_ms={fsync_ms} (capped at {c.args.seq_seconds:g}s)",
        ticks=n,
        batches=batches,
        ticks_per_s=n / secs,
        ack_p50_ms=float(np.percentile(lat, 50)) * 1e3,
        ack_p99_ms=float(np.percentile(lat, 99)) * 1e3,
        fsyncs=fsyncs,
        completed=batches == len(c.batches),
    )


def stamp_ack(acked: list[float], i: int, _future: Future[Any]) -> None:
    acked[i] = time.perf_counter()


def ingest_inflight(c: Ctx) -> None:
    """The whole day through buffer.submit with up to --inflight batches awaiting durability."""
    c.clock = ManualClock(c.day.t0)
    store = c.store = TickStore(store_config(c.root, c.args.fsync_ms, 0), c.clock).open()
    submit, set_clock = store.buffer.submit, c.clock.set
    window: deque[Future[Any]] = deque()
    sent: list[float] = []
    acked: list[float] = [0.0] * len(c.batches)
    inflight = c.args.inflight
    n = 0
    started = time.perf_counter()
    for i, b in enumerate(c.batches):
        set_clock(b.clock_ns)
        fut = submit(CONTRACT_ID, b.tick_type, b.ticks, "bench")
        sent.append(time.perf_counter())
        fut.add_done_callback(functools.partial(stamp_ack, acked, i))
        window.append(fut)
        if len(window) >= inflight:
            n += window.popleft().result().count
    while window:
        n += window.popleft().result().count
    secs = time.perf_counter() - started
    stats = store.buffer.stats
    lat = np.array(acked) - np.array(sent)
    jsonl, segments = tree_bytes(c.root / "buffer", ".jsonl")
    c.report.add(
        "1_ingest",
        f"whole day, buffer.submit, <= {inflight} batches of {c.args.batch} in flight, "
        f"fsync_interval_ms={c.args.fsync_ms}",
        ticks=n,
        batches=len(c.batches),
        seconds=secs,
        ticks_per_s=n / secs,
        ack_p50_ms=float(np.percentile(lat, 50)) * 1e3,
        ack_p99_ms=float(np.percentile(lat, 99)) * 1e3,
        fsyncs=stats.fsyncs,
        fsync_seconds=stats.fsync_seconds,
        segments=segments,
        jsonl_bytes_per_tick=jsonl / n,
        verified=n == c.day.n_total and stats.ticks_written == n,
    )
    c.report.summary["ingest_ticks_per_s"] = n / secs
    c.report.summary["jsonl_bytes_per_tick"] = jsonl / n


# --------------------------------------------------------------------------------------------- queries
def query_row(
    c: Ctx,
    section: str,
    name: str,
    store: TickStore,
    streams: list[str],
    lo: int,
    hi: int,
    res: str | None,
    expect: int,
) -> dict[str, Any]:
    q = StorageQuery(store.engine).query_range_sync
    med, times, out = timed(lambda: q(CONTRACT_ID, streams, lo, hi, resolution=res), c.args.reps, c.args.warmup)
    if res is None:
        ok = len(out) == expect and bool(pd.DatetimeIndex(out["timestamp"]).is_monotonic_increasing)
    else:
        counts = "trade_count" if streams == ["last"] else "quote_count"
        ok = len(out) == expect and int(out[counts].sum()) == count_in(c.day, streams[0], lo, hi)
    return c.report.add(section, name, times, rows=len(out), median_ms=med * 1e3, verified=ok)


def worst_per_stream(c: Ctx, store: TickStore, label: str, lo: int, hi: int) -> float:
    """Time the query of [lo, hi) for each stream alone; return the slowest median in ms."""
    worst = 0.0
    for s in STREAMS:
        row = query_row(c, "4_query", f"{s}: {label}", store, [s], lo, hi, None, count_in(c.day, s, lo, hi))
        worst = max(worst, row["median_ms"])
    return worst


def recent_queries(c: Ctx) -> None:
    """Last 5 minutes of the day straight after ingest: everything is still in the buffer / hot tier."""
    store = c.store
    assert store is not None
    lo, hi = c.recent
    worst = worst_per_stream(c, store, "recent 5 min from the hot tier (uncached)", lo, hi)
    both = count_in(c.day, "bid_ask", lo, hi) + count_in(c.day, "last", lo, hi)
    query_row(
        c,
        "4_query",
        "bid_ask+last: recent 5 min from the hot tier (uncached)",
        store,
        list(STREAMS),
        lo,
        hi,
        None,
        both,
    )
    assert store.cache.hits == 0, "the recent-data store must not cache"
    c.report.summary["recent_5min_ms"] = worst


def cold_queries(c: Ctx, store: TickStore) -> None:
    lo, hi = c.range30
    c.report.summary["range_30min_ms"] = worst_per_stream(c, store, "30-min range 11:45-12:15 NY (uncached)", lo, hi)
    both = count_in(c.day, "bid_ask", lo, hi) + count_in(c.day, "last", lo, hi)
    query_row(c, "4_query", "bid_ask+last: 30-min range (uncached)", store, list(STREAMS), lo, hi, None, both)
    t0, t1 = c.day.t0, c.day.t1
    for s in STREAMS:
        n = c.day.n_quotes if s == "bid_ask" else c.day.n_trades
        query_row(c, "4_query", f"{s}: full day (uncached; last 2 h from the hot tier)", store, [s], t0, t1, None, n)
    bars = (t1 - t0) // MINUTE
    for s in ("last", "bid_ask"):
        query_row(c, "4_query", f"{s}: full day of 1-minute bars (uncached)", store, [s], t0, t1, "1m", bars)
    assert store.cache.hits == 0, "the uncached store must not cache"


def anatomy_pieces(engine: Any, key: Any, lo: int, hi: int, paths: list[Path], table: pa.Table) -> dict[str, Any]:
    """The timed pieces of a bid_ask tick query over [lo, hi) whose archive part is in `paths`."""
    tick_type = key.tick_type
    own = ["ts", "bid_price", "bid_size", "ask_price", "ask_size"]
    cond = (pc.field("ts") >= pa.scalar(lo, TS_TYPE)) & (pc.field("ts") < pa.scalar(hi, TS_TYPE))
    keys = [("ts", "ascending"), ("seq", "ascending")]
    return {
        "engine.read_stream (plan + archive + hot + order check)": lambda: engine.read_stream(key, lo, hi),
        "read_parquet_range of the archive files, all columns (row groups by ts stats + binary search)": lambda: [
            read_parquet_range(x, tick_type, lo, hi) for x in paths
        ],
        "same, the 5 bid_ask columns only": lambda: [
            read_parquet_range(x, tick_type, lo, hi, columns=own) for x in paths
        ],
        "previous path: read_parquet(filters=ts) of the archive files, all columns": lambda: [
            read_parquet(x, tick_type, filters=cond) for x in paths
        ],
        "sort_table of the (sorted) result: the order check only": lambda: sort_table(table),
        "is_sorted (the check alone)": lambda: is_sorted(table),
        "a forced sort: pc.sort_indices (ts, seq) + take": lambda: table.take(pc.sort_indices(table, sort_keys=keys)),
        "Table.to_pandas of the result": lambda: table.to_pandas(),
    }


def query_anatomy(c: Ctx, store: TickStore) -> None:
    """Where an uncached tick query spends its time, measured piece by piece with public pieces + pyarrow."""
    from ib_stream.domain import StreamKey

    engine = store.engine
    reps, warm = c.args.reps, c.args.warmup
    tick_type = TickType.BID_ASK
    for label, lo, hi in (("30-min", *c.range30), ("full day", c.day.t0, c.day.t1)):
        key = StreamKey(CONTRACT_ID, tick_type)
        snap = engine.hot.snapshot(key)
        files = [f for f in engine.index.plan(key, lo, hi, below_seq=snap.lower_seq) if f.last_seq < snap.lower_seq]
        paths = [engine.layout.absolute(f.file_path) for f in files]
        table = engine.read_stream(key, lo, hi)
        pieces = anatomy_pieces(engine, key, lo, hi, paths, table)
        for name, fn in pieces.items():
            try:
                med, times, _ = timed(fn, reps, warm)
                c.report.add(
                    "4b_query_anatomy",
                    f"bid_ask {label} ({table.num_rows:,} rows, {len(paths)} files): {name}",
                    times,
                    median_ms=med * 1e3,
                )
            except Exception as e:  # the engine's internals may move; the anatomy is advisory
                c.report.add("4b_query_anatomy", f"bid_ask {label}: {name}", error=repr(e)[:200])
    lo, hi = c.range30
    try:
        from ib_stream.store.query import _merge_frames

        frames = []
        for s in STREAMS:
            f = StorageQuery(store.engine).query_range_sync(CONTRACT_ID, [s], lo, hi)
            f.insert(1, "tick_type", s)
            frames.append(f)
        med, times, merged = timed(lambda: _merge_frames(frames), reps, warm)
        both = pd.concat(frames, ignore_index=True, sort=False)
        order = ["timestamp", "tick_type", "seq"]
        ref = both.sort_values(order, kind="stable", ignore_index=True)
        same = merged["seq"].equals(ref["seq"]) and merged["tick_type"].equals(ref["tick_type"])
        c.report.add(
            "4b_query_anatomy",
            "bid_ask+last 30-min: the engine's merge (_merge_frames: concat + stable argsort of int64 timestamps)",
            times,
            median_ms=med * 1e3,
            verified=same,
        )
        pieces = {
            "pd.concat of the two frames alone": lambda: pd.concat(frames, ignore_index=True, sort=False),
            "stable argsort of the int64 timestamps + take alone": lambda: both.take(
                np.argsort(pd.DatetimeIndex(both["timestamp"]).asi8, kind="stable")
            ),
            "previous merge: DataFrame.sort_values(timestamp, tick_type, seq) alone": lambda: both.sort_values(
                order, kind="stable", ignore_index=True
            ),
        }
        for name, fn in pieces.items():
            med, times, _ = timed(fn, reps, warm)
            c.report.add("4b_query_anatomy", f"bid_ask+last 30-min: {name}", times, median_ms=med * 1e3)
    except Exception as e:
        c.report.add("4b_query_anatomy", "bid_ask+last merge", error=repr(e)[:200])


def cached_query(c: Ctx, store: TickStore) -> None:
    lo, hi = c.range30
    q = StorageQuery(store.engine).query_range_sync
    started = time.perf_counter()
    first = q(CONTRACT_ID, ["bid_ask"], lo, hi)
    miss_ms = (time.perf_counter() - started) * 1e3
    hits_before = store.cache.hits
    med, times, out = timed(lambda: q(CONTRACT_ID, ["bid_ask"], lo, hi), c.args.reps, c.args.warmup)
    hits = store.cache.hits - hits_before
    ok = hits == c.args.reps + c.args.warmup and len(out) == len(first)
    c.report.add(
        "4_query",
        "bid_ask: 30-min range, same query again (cache hit)",
        times,
        rows=len(out),
        median_ms=med * 1e3,
        first_call_ms=miss_ms,
        cache_hits=hits,
        verified=ok,
    )
    c.report.summary["cached_ms"] = med * 1e3


# --------------------------------------------------------------------------------------------- 2. archive, 5. restart
def timing_wrapper(obj: Any, method: str, bucket: dict[str, float]) -> None:
    """Shadow `obj.method` with a version that adds its run time to bucket[method] (bench-only instrumentation)."""
    original = getattr(obj, method)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            bucket[method] = bucket.get(method, 0.0) + time.perf_counter() - started

    setattr(obj, method, wrapped)


def archive(c: Ctx, label: str) -> tuple[int, float]:
    store = c.store
    assert store is not None
    parts: dict[str, float] = {}
    timing_wrapper(store.archiver, "pending_segments", parts)
    statistics_owner = getattr(store.archiver, "statistics", None)  # StatisticsUpdater (newer) or the archiver
    if statistics_owner is not None and hasattr(statistics_owner, "refresh"):
        timing_wrapper(statistics_owner, "refresh", parts)
    elif hasattr(store.archiver, "_refresh_statistics"):
        timing_wrapper(store.archiver, "_refresh_statistics", parts)
    rep = store.run_archival()
    c.report.add(
        "2_archive",
        label,
        ticks=rep.ticks,
        segments=rep.segments,
        files_written=rep.files_written,
        seconds=rep.seconds,
        ticks_per_s=rep.ticks / rep.seconds if rep.seconds else 0.0,
        of_which_statistics_s=parts.get("refresh", parts.get("_refresh_statistics", 0.0)),
        of_which_planning_s=parts.get("pending_segments", 0.0),
    )
    return rep.ticks, rep.seconds


def archive_restart_compact(c: Ctx) -> None:
    """Archive all but the last 2 h, restart with those 2 h unarchived, archive the rest, compact."""
    t1 = c.day.t1
    c.clock.set(t1 - 2 * HOUR)
    n1, s1 = archive(c, "run_archival, clock at close - 2 h (all sealed segments before it)")
    c.clock.set(t1)
    settle()
    store = c.store
    assert store is not None
    started = time.perf_counter()
    store.close()
    close_s = time.perf_counter() - started
    lo, hi = c.recent
    started = time.perf_counter()
    store = c.store = TickStore(store_config(c.root, c.args.fsync_ms, 0), c.clock).open()
    open_s = time.perf_counter() - started
    out = StorageQuery(store.engine).query_range_sync(CONTRACT_ID, ["bid_ask"], lo, hi)
    ready_s = time.perf_counter() - started
    hot_rows = sum(_hot_rows(store, k) for k in _streams(store))
    unarchived = c.day.n_total - n1
    c.report.add(
        "5_restart",
        "close, reopen (TickStore.open) and first query of the last 5 min, 2 h of ticks unarchived",
        unarchived_ticks=unarchived,
        hot_rows_loaded=hot_rows,
        close_s=close_s,
        open_s=open_s,
        first_query_ms=(ready_s - open_s) * 1e3,
        ready_s=ready_s,
        verified=len(out) == count_in(c.day, "bid_ask", lo, hi),
    )
    c.report.summary["restart_to_ready_s"] = ready_s
    c.clock.set(t1 + MINUTE)
    settle()
    n2, s2 = archive(c, "run_archival, clock at close + 1 min (the remaining 2 h, after the restart)")
    n, secs = n1 + n2, s1 + s2
    c.report.add(
        "2_archive", "whole day (both runs)", ticks=n, seconds=secs, ticks_per_s=n / secs, verified=n == c.day.n_total
    )
    c.report.summary["archive_ticks_per_s"] = n / secs
    before, nfiles = tree_bytes(store.layout.archive_dir, ".parquet")
    settle()
    rep = store.run_compaction()
    c.report.add(
        "2_archive",
        "run_compaction (merge each closed hour's parts into one file)",
        ticks=rep.ticks,
        files_removed=rep.files_removed,
        files_written=rep.files_written,
        seconds=rep.seconds,
        ticks_per_s=rep.ticks / rep.seconds if rep.seconds else 0.0,
        parts_bytes_per_tick=before / c.day.n_total,
        parts=nfiles,
    )
    c.report.summary["compaction_s"] = rep.seconds
    files = store.index.files()
    on_disk, count = tree_bytes(store.layout.archive_dir, ".parquet")
    jsonl, _ = tree_bytes(store.layout.buffer_dir, ".jsonl")
    ok = sum(f.tick_count for f in files) == c.day.n_total and count == len(files) and not store.index.retired()
    for s in STREAMS:
        fs = [f for f in files if f.tick_type == s]
        c.archive_files[s] = [store.layout.absolute(f.file_path) for f in fs]
        n = sum(f.tick_count for f in fs)
        size = sum(f.file_size_bytes for f in fs)
        c.report.add(
            "3_bytes",
            f"{s}: archive after compaction",
            files=len(fs),
            ticks=n,
            bytes=size,
            bytes_per_tick=size / n,
            jsonl_bytes_per_tick=sum(f.jsonl_bytes for f in fs) / n,
        )
    c.report.add(
        "3_bytes",
        "both streams: archive at rest (*.parquet on disk)",
        files=count,
        bytes=on_disk,
        bytes_per_tick=on_disk / c.day.n_total,
        verified=ok,
    )
    c.report.add(
        "3_bytes",
        "both streams: JSON-lines buffer segments",
        bytes=jsonl,
        bytes_per_tick=jsonl / c.day.n_total,
        compression_ratio=jsonl / on_disk,
    )
    c.report.summary["bytes_per_tick_at_rest"] = on_disk / c.day.n_total
    c.report.summary["jsonl_bytes_per_tick"] = jsonl / c.day.n_total
    store.close()
    c.store = None


def _streams(store: TickStore) -> list[Any]:
    return store.buffer.streams()


def _hot_rows(store: TickStore, stream: Any) -> int:
    hot = store.buffer.hot(stream)
    return 0 if hot is None else sum(ch.table.num_rows for ch in hot.snapshot().chunks)


def query_stores(c: Ctx) -> None:
    """Uncached queries on a store opened with query_cache_size=0, then cache hits on one with the cache on."""
    started = time.perf_counter()
    store = TickStore(store_config(c.root, c.args.fsync_ms, 0), c.clock).open()
    open_s = time.perf_counter() - started
    c.report.add(
        "5_restart",
        "reopen with everything archived (the hot tier warms from unarchived segments only)",
        hot_rows_loaded=sum(_hot_rows(store, k) for k in _streams(store)),
        open_s=open_s,
    )
    try:
        cold_queries(c, store)
        query_anatomy(c, store)
    finally:
        store.close()
    settle()
    store = TickStore(store_config(c.root, c.args.fsync_ms, 1000), c.clock).open()
    try:
        cached_query(c, store)
    finally:
        store.close()


# --------------------------------------------------------------------------------------------- 7. encodings
ENCODINGS: list[tuple[str, str]] = [
    ("current", "ib_stream today: dictionary for prices/sizes/strings/bools, DELTA_BINARY_PACKED seq/ts/recv_ts"),
    ("plain", "PLAIN everywhere (no dictionary, no delta)"),
    ("delta+plain", "DELTA_BINARY_PACKED seq/ts/recv_ts, dictionary strings only, PLAIN floats"),
    ("delta+bss", "DELTA_BINARY_PACKED seq/ts/recv_ts, dictionary strings only, BYTE_STREAM_SPLIT floats"),
    ("pyarrow-default", "pyarrow default (dictionary everything, no delta)"),
    ("current-rg32k", "as current, row groups of 32,768 rows instead of 131,072"),
]
ROW_GROUP_ROWS = {"current-rg32k": 32_768}
DELTA = ("seq", "ts", "recv_ts")


def encoding_kwargs(option: str, table: pa.Table) -> dict[str, Any]:
    names = table.column_names
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    delta = {n: "DELTA_BINARY_PACKED" for n in DELTA if n in names}
    if option.startswith("current"):
        return {"use_dictionary": [n for n in names if n not in DELTA], "column_encoding": delta}
    if option == "plain":
        return {"use_dictionary": False}
    if option == "delta+plain":
        return {"use_dictionary": strings, "column_encoding": delta}
    if option == "delta+bss":
        return {"use_dictionary": strings, "column_encoding": {**delta, **dict.fromkeys(floats, "BYTE_STREAM_SPLIT")}}
    return {"use_dictionary": True}


def read_all(paths: list[Path], filters: Any) -> list[pa.Table]:
    return [pq.read_table(p, filters=filters) for p in paths]


def encodings(c: Ctx) -> None:
    """Rewrite the compacted hourly tables with each encoding (zstd 3, same row groups): bytes, write, read."""
    out_dir = c.work / "encodings"
    for s in STREAMS:
        tables = [pq.read_table(p).replace_schema_metadata(None) for p in c.archive_files[s]]
        n = sum(t.num_rows for t in tables)
        lo, hi = c.range30
        ts_type = pa.timestamp("ns", tz="UTC")
        flt = [("ts", ">=", pa.scalar(lo, ts_type)), ("ts", "<", pa.scalar(hi, ts_type))]
        stamps = [t.column("ts").to_numpy().view(np.int64) for t in tables]
        overlapping = [i for i, ts in enumerate(stamps) if len(ts) and ts.min() < hi and ts.max() >= lo]
        for option, label in ENCODINGS:
            d = out_dir / s / option
            d.mkdir(parents=True, exist_ok=True)
            paths = [d / f"{i:02d}.parquet" for i in range(len(tables))]

            def write(paths: list[Path] = paths, option: str = option, tables: list[pa.Table] = tables) -> None:
                for t, p in zip(tables, paths, strict=True):
                    pq.write_table(
                        t,
                        p,
                        compression="zstd",
                        compression_level=3,
                        row_group_size=ROW_GROUP_ROWS.get(option, 131_072),
                        write_statistics=True,
                        **encoding_kwargs(option, t),
                    )

            w_med, w_times, _ = timed(write, c.args.enc_reps, 0)
            size = sum(p.stat().st_size for p in paths)
            r_med, r_times, _ = timed(functools.partial(read_all, paths, None), c.args.enc_reps, 1)
            window = [paths[i] for i in overlapping]
            q_med, q_times, _ = timed(functools.partial(read_all, window, flt), c.args.enc_reps, 1)
            columns: dict[str, int] = {}
            for p in paths:
                meta = pq.ParquetFile(p).metadata
                for rg in range(meta.num_row_groups):
                    for ci in range(meta.num_columns):
                        col = meta.row_group(rg).column(ci)
                        columns[col.path_in_schema] = columns.get(col.path_in_schema, 0) + col.total_compressed_size
            c.report.add(
                "7_encodings",
                f"{s}: {option}: {label}",
                rows=n,
                bytes_per_tick=size / n,
                write_ms=w_med * 1e3,
                write_min_ms=min(w_times) * 1e3,
                write_ticks_per_s=n / w_med,
                read_ms=r_med * 1e3,
                read_min_ms=min(r_times) * 1e3,
                read_ticks_per_s=n / r_med,
                read_30min_filtered_ms=q_med * 1e3,
                read_30min_filtered_min_ms=min(q_times) * 1e3,
                columns={k: round(v / n, 3) for k, v in columns.items()},
            )
    shutil.rmtree(out_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- 6. ArcticDB peer
def run_peer(c: Ctx) -> None:
    python = Path(c.args.peer_python)
    if c.args.no_peer:
        c.report.notes.append("ArcticDB peer skipped (--no-peer).")
        return
    if not python.exists():
        msg = (
            f"ArcticDB peer skipped: no bench venv at {python}. Create it with: python3.11 -m venv bench/.bench-venv"
            ' && bench/.bench-venv/bin/pip install arcticdb "pandas<3" pyarrow numpy'
        )
        log(msg)
        c.report.notes.append(msg)
        return
    peer_dir = c.work / "peer"
    peer_dir.mkdir(parents=True, exist_ok=True)
    for s in STREAMS:
        pq.write_table(to_arrow(c.day.stream(s)), peer_dir / f"{s}.parquet", compression="zstd")
    params = {
        "input": str(peer_dir),
        "workdir": str(peer_dir / "arctic"),
        "reps": c.args.reps,
        "warmup": c.args.warmup,
        "batch": c.args.batch,
        "ingest_seconds": c.args.peer_ingest_seconds,
        "range30": list(c.range30),
        "recent": list(c.recent),
        "day": [c.day.t0, c.day.t1],
    }
    (peer_dir / "params.json").write_text(json.dumps(params))
    log(f"running the ArcticDB peer: {python} {PEER_SCRIPT}")
    proc = subprocess.run(
        [str(python), str(PEER_SCRIPT), str(peer_dir / "params.json")],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        timeout=c.args.peer_timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ArcticDB peer exited with {proc.returncode}: {proc.stdout[-2000:]}")
    c.peer = json.loads(proc.stdout)
    for row in c.peer["rows"]:
        c.report.add("6_arcticdb", row.pop("name"), **row)


def ratios(c: Ctx) -> list[dict[str, Any]]:
    """Same-run comparisons: advantage > 1 means ib_stream is better (faster, smaller)."""
    if not c.peer:
        return []
    peer = c.peer["summary"]

    def ours(section: str, prefix: str, key: str) -> float | None:
        for row in c.report.sections.get(section, []):
            if row["name"].startswith(prefix) and key in row:
                return float(row[key])
        return None

    pairs: list[tuple[str, float | None, float | None, bool]] = [
        (
            "durable ingest ticks/s: ours with batches in flight vs ArcticDB append per batch",
            ours("1_ingest", "whole day", "ticks_per_s"),
            peer.get("ingest_ticks_per_s"),
            True,
        ),
        (
            "durable ingest ticks/s: ours sequential fsync per batch vs ArcticDB append per batch",
            ours("1_ingest", "sequential append_batch_sync, fsync_interval_ms=0", "ticks_per_s"),
            peer.get("ingest_ticks_per_s"),
            True,
        ),
        (
            "write to the at-rest format ticks/s: ours run_archival vs ArcticDB lib.write of the whole day",
            c.report.summary.get("archive_ticks_per_s"),
            peer.get("write_day_ticks_per_s"),
            True,
        ),
        (
            "bytes per tick at rest: ours compacted Parquet vs ArcticDB (whole-day write)",
            c.report.summary.get("bytes_per_tick_at_rest"),
            peer.get("bytes_per_tick"),
            False,
        ),
    ]
    for s in STREAMS:
        pairs += [
            (
                f"{s}: 30-min range ms",
                ours("4_query", f"{s}: 30-min", "median_ms"),
                peer.get(f"{s}_range_30min_ms"),
                False,
            ),
            (
                f"{s}: full day ms",
                ours("4_query", f"{s}: full day (", "median_ms"),
                peer.get(f"{s}_full_day_ms"),
                False,
            ),
            (
                f"{s}: day of 1-min bars ms",
                ours("4_query", f"{s}: full day of 1-minute", "median_ms"),
                peer.get(f"{s}_bars_1m_ms"),
                False,
            ),
            (
                f"{s}: recent 5 min ms",
                ours("4_query", f"{s}: recent 5 min", "median_ms"),
                peer.get(f"{s}_recent_5min_ms"),
                False,
            ),
        ]
    pairs.append(
        (
            "restart-to-ready s (ours: reopen + recover 2 h of buffer; ArcticDB: new Arctic + read)",
            c.report.summary.get("restart_to_ready_s"),
            peer.get("restart_to_ready_s"),
            False,
        )
    )
    out = []
    for name, a, b, higher_better in pairs:
        if a is None or b is None or a == 0 or b == 0:
            continue
        adv = a / b if higher_better else b / a
        out.append({"name": name, "ib_stream": a, "arcticdb": b, "ib_stream_over_arcticdb": a / b, "advantage": adv})
    return out


# --------------------------------------------------------------------------------------------- output
def check_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, op, limit, unit, label in TARGETS:
        v = summary.get(key)
        ok = v is not None and (v >= limit if op == ">=" else v <= limit)
        out.append({"target": label, "key": key, "value": v, "op": op, "limit": limit, "unit": unit, "pass": ok})
    return out


TABLE_KEYS = [
    "ticks",
    "rows",
    "files",
    "segments",
    "ticks_per_s",
    "seconds",
    "median_ms",
    "min_ms",
    "first_call_ms",
    "ack_p50_ms",
    "ack_p99_ms",
    "fsyncs",
    "bytes_per_tick",
    "jsonl_bytes_per_tick",
    "parts_bytes_per_tick",
    "write_ms",
    "read_ms",
    "read_30min_filtered_ms",
    "write_min_ms",
    "read_min_ms",
    "read_30min_filtered_min_ms",
    "validate_us",
    "orjson_us",
    "hot_table_us",
    "gil_us",
    "total_us",
    "ceiling_ticks_per_s",
    "python_progress_while_parsing",
    "python_progress_gil_free_reference",
    "of_which_statistics_s",
    "unarchived_ticks",
    "hot_rows_loaded",
    "close_s",
    "open_s",
    "first_query_ms",
    "ready_s",
    "cache_hits",
    "compression_ratio",
    "completed",
    "verified",
    "error",
    "note",
]


def render(c: Ctx, targets: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> str:
    a = c.args
    lines = ["=" * 140]
    lines.append(
        f"STORE BENCH  ticks={c.day.n_total:,} (bid_ask {c.day.n_quotes:,} + last {c.day.n_trades:,})  seed={a.seed}  "
        f"date={a.date}  cores={os.cpu_count()}  reps={a.reps} (median, {a.warmup} warmup)  "
        f"runtime {time.perf_counter() - T_START:.0f}s  load avg {os.getloadavg()[0]:.1f}"
    )
    for sec, rows in sorted(c.report.sections.items()):
        lines.append("-" * 140)
        lines.append(sec)
        for r in rows:
            parts = []
            for k in TABLE_KEYS:
                if k in r:
                    if k == "completed":
                        if not r[k]:
                            parts.append("(capped: did not finish the day)")
                        continue
                    parts.append(fmt(r[k]) if k == "verified" else f"{k}={fmt(r[k])}")
            lines.append(f"  {r['name'][:100]:<100}")
            lines.append(f"      {'  '.join(parts)}")
    if ratio_rows:
        lines.append("-" * 140)
        lines.append("ratios against ArcticDB in this run (advantage > 1 = ib_stream better: faster or smaller)")
        for r in ratio_rows:
            lines.append(
                f"  {r['name'][:92]:<92} ours={fmt(r['ib_stream']):>10} arcticdb={fmt(r['arcticdb']):>10}  "
                f"advantage={fmt(r['advantage'])}x"
            )
    lines.append("-" * 140)
    lines.append("targets (the issue's minimums)")
    for t in targets:
        v = "n/a" if t["value"] is None else fmt(float(t["value"]))
        lines.append(
            f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<62} {v:>10} {t['unit']} {t['op']} {t['limit']:,}"
        )
    for note in c.report.notes:
        lines.append(f"note: {note}")
    for e in c.report.errors:
        lines.append(f"ERROR in {e['step']}: {e['error']}")
    lines.append("=" * 140)
    return "\n".join(lines)


def project_state() -> dict[str, Any]:
    """The commit measured and the ib_stream files that differ from it (the tree may be mid-change)."""
    root = BENCH_DIR.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_ib_stream": git("status", "--porcelain", "ib_stream")}


def versions() -> dict[str, str]:
    import cachetools

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "orjson": orjson.__version__,
        "cachetools": cachetools.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def machine(work: Path) -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    fs = subprocess.run(["df", "-hT", str(work)], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {
        "platform": platform.platform(),
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "pyarrow_threads": pa.cpu_count(),
        "workdir_fs": fs,
    }


# --------------------------------------------------------------------------------------------- main
@dataclass
class Step:
    name: str
    run: Callable[[Ctx], None]


def steps(args: argparse.Namespace) -> Iterator[Step]:
    yield Step("ingest breakdown", ingest_breakdown)
    yield Step("sequential ingest, fsync_interval_ms=50", lambda c: ingest_sequential(c, c.args.fsync_ms))
    yield Step("sequential ingest, fsync_interval_ms=0", lambda c: ingest_sequential(c, 0))
    yield Step("ingest with batches in flight", ingest_inflight)
    yield Step("recent queries", recent_queries)
    yield Step("archive, restart, compaction, bytes", archive_restart_compact)
    yield Step("queries", query_stores)
    if not args.no_encodings:
        yield Step("encodings", encodings)
    yield Step("ArcticDB peer", run_peer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=5_000_000, help="ticks in the day (80%% bid_ask, 20%% last)")
    ap.add_argument("--seed", type=int, default=20240315)
    ap.add_argument("--date", default="2024-03-15", help="trading day, 09:30-16:00 America/New_York")
    ap.add_argument("--batch", type=int, default=1000, help="ticks per append")
    ap.add_argument("--inflight", type=int, default=64, help="batches submitted before waiting for the oldest")
    ap.add_argument("--fsync-ms", type=int, default=50, help="fsync_interval_ms of the store (group commit)")
    ap.add_argument("--seq-seconds", type=float, default=5.0, help="time cap of each sequential ingest variant")
    ap.add_argument("--breakdown-ticks", type=int, default=500_000, help="ticks used for the ingest CPU breakdown")
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per query (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before each query measurement")
    ap.add_argument("--enc-reps", type=int, default=5, help="repetitions of each encoding write/read")
    ap.add_argument("--no-encodings", action="store_true", help="skip the Parquet encodings comparison")
    ap.add_argument("--no-peer", action="store_true", help="skip the ArcticDB peer")
    ap.add_argument("--peer-python", default=str(PEER_PYTHON), help="python of the venv holding arcticdb")
    ap.add_argument("--peer-ingest-seconds", type=float, default=60.0, help="time cap of ArcticDB's batch appends")
    ap.add_argument("--peer-timeout", type=float, default=600.0)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a new temp directory)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--out", default=None, help="JSON results file (default bench/results/store_bench-<ticks>-<ts>.json)"
    )
    args = ap.parse_args(argv)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ib-stream-bench-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    c = Ctx(args, work)
    log(f"generating {args.ticks:,} ticks (seed {args.seed}, {args.date}) into {work}")
    t = time.perf_counter()
    c.day = generate(args.ticks, args.seed, args.date)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    c.batches = make_batches(c.day, args.batch)
    dict_s = time.perf_counter() - t
    # The harness holds every tick dict of the day (millions of live objects, unlike a feed handler); keep
    # them out of the cyclic GC so its full passes do not bill the store for the harness's memory.
    gc.collect()
    gc.freeze()
    load_before = os.getloadavg()
    log(f"load average before the steps: {load_before}")
    log(f"day generated in {gen_s:.1f}s, {len(c.batches):,} batches of dicts built in {dict_s:.1f}s")
    step_seconds: dict[str, float] = {}
    for step in steps(args):
        settle()
        log(f"=== {step.name}")
        t = time.perf_counter()
        try:
            step.run(c)
        except Exception as e:
            c.report.errors.append({"step": step.name, "error": repr(e), "traceback": traceback.format_exc()})
            log(f"{step.name} FAILED: {e!r}\n{traceback.format_exc()}")
            if step.run in (ingest_inflight, archive_restart_compact):
                break  # later steps need this one
        finally:
            step_seconds[step.name] = time.perf_counter() - t
        if step.run is archive_restart_compact:
            c.batches = []  # free the dicts (about 2 GB at 5M ticks) before the peer runs
            gc.unfreeze()
            gc.collect()
    if c.store is not None:
        c.store.close()
    targets = check_targets(c.report.summary)
    ratio_rows = ratios(c)
    text = render(c, targets, ratio_rows)
    print(text, flush=True)
    out = (
        Path(args.out)
        if args.out
        else BENCH_DIR / "results" / f"store_bench-{args.ticks}-{started_at:%Y%m%dT%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "ib_stream store bench",
        "date_utc": started_at.isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "versions": versions(),
        "project": project_state(),
        "machine": machine(work),
        "data": {
            "ticks": c.day.n_total,
            "bid_ask": c.day.n_quotes,
            "last": c.day.n_trades,
            "generate_s": gen_s,
            "build_dicts_s": dict_s,
            "range_30min": list(c.range30),
            "recent_5min": list(c.recent),
        },
        "step_seconds": step_seconds,
        "load_average_before_after": [load_before, os.getloadavg()],
        "total_seconds": time.perf_counter() - T_START,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "summary": c.report.summary,
        "targets": targets,
        "ratios_vs_arcticdb": ratio_rows,
        "arcticdb": c.peer,
        "results": c.report.sections,
        "notes": c.report.notes,
        "errors": c.report.errors,
        "table": text,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if c.report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
