"""Bounded HTTP load on loopback against a real ib-stream service: historical bars and live SSE fan-out.

The script seeds a temporary data root with the synthetic day's trades (`bench/synthetic_day.py`, the
`last` stream: 1M trades at the default 5M ticks) through the real `TickStore` (a `ManualClock` that
follows the data, then archival and compaction), starts the service (`create_app` under uvicorn, as
`ib-stream serve` runs it) in a subprocess on 127.0.0.1 (`bench/http_bench_live.py serve`) and measures,
from other processes:

a. `GET /v2/historical/{id}?tick_types=last&resolution=1m` over the whole day (390 bars): uncached (each
   request's end moves by 1 ns, so every request misses the cache) and cached (the identical request),
   a fixed number of requests at each client concurrency: req/s, p50/p99 latency, server CPU per request
   (and `GET /health` the same way: what the framework alone costs on this machine);
b. live fan-out: `--subscribers` SSE clients (`http_bench_live.py sse-clients`, one process) on
   `/v2/stream/{id}/live/last` while a source on the server's loop publishes `--rate` ticks/s for
   `--seconds`: latency from the tick's `recv_ts` (the store stamps it when the batch is submitted) to its
   arrival at the client, achieved rates, gaps, disconnects; once per `--fsync-ms` value (a fresh service
   each).

Everything is bounded in count and time and stops by itself. Run: `.venv/bin/python bench/http_bench.py`
(see bench/README.md). Results go to stdout and bench/results/http_bench-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
LIVE_SCRIPT = BENCH_DIR / "http_bench_live.py"
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO))

SEED_ID = 1  # the contract holding the synthetic day
LIVE_ID = 2  # the contract the fan-out publishes to (the same in http_bench_live.py)
NS = 1_000_000_000
T_START = time.perf_counter()
CONTRACTS = """\
[[contracts]]
con_id = {seed}
symbol = "XYZ"
sec_type = "STK"
exchange = "SMART"
currency = "USD"
calendar = "XNYS"
tick_types = ["bid_ask", "last"]

[[contracts]]
con_id = {live}
symbol = "LIVE"
sec_type = "STK"
exchange = "SMART"
currency = "USD"
calendar = "XNYS"
tick_types = ["last"]
"""


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float] | Any, q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------- seeding
def seed_store(root: Path, ticks: int, seed: int, date: str) -> dict[str, Any]:
    """Write the day's `last` stream through a TickStore, archive and compact it; return what was seeded."""
    from collections import deque

    from synthetic_day import generate, tick_dicts

    from ib_stream.clock import ManualClock
    from ib_stream.settings import StorageConfig
    from ib_stream.storage import TickStore

    day = generate(ticks, seed, date)
    trades = day.trades
    clock = ManualClock(day.t0)
    config = StorageConfig(data_root=root, compaction_delay_seconds=0, retired_file_grace_seconds=0)
    store = TickStore(config, clock).open()
    started = time.perf_counter()
    window: deque[Any] = deque()
    n = trades["ts"].size
    for lo in range(0, n, 1000):
        hi = min(lo + 1000, n)
        clock.set(int(trades["ts"][hi - 1]))
        window.append(store.buffer.submit(SEED_ID, "last", tick_dicts(trades, lo, hi), "bench"))
        if len(window) >= 64:
            window.popleft().result()
    for fut in window:
        fut.result()
    ingest_s = time.perf_counter() - started
    clock.set(day.t1 + 60 * NS)
    archived = store.run_archival()
    compacted = store.run_compaction()
    files = len(store.index.files())
    store.close()
    return {
        "trades": int(n),
        "t0": day.t0,
        "t1": day.t1,
        "ingest_s": ingest_s,
        "archived_ticks": archived.ticks,
        "archive_s": archived.seconds,
        "compaction_s": compacted.seconds,
        "files": files,
    }


# --------------------------------------------------------------------------------------------- historical
def cache_counts(client: Any) -> tuple[float, float]:
    text = client.get("/metrics").text
    hits = re.search(r"^ib_stream_query_cache_hits(?:_total)? (\S+)", text, re.M)
    misses = re.search(r"^ib_stream_query_cache_misses(?:_total)? (\S+)", text, re.M)
    return float(hits.group(1)) if hits else -1.0, float(misses.group(1)) if misses else -1.0


async def load(url: str, paths: list[str], concurrency: int, cap_s: float) -> tuple[list[float], float, list[bytes]]:
    """GET each path with `concurrency` workers; return latencies (s), wall seconds and the first/last bodies."""
    import httpx

    queue = collections.deque(paths)
    lat: list[float] = []
    bodies: list[bytes] = []
    deadline = time.perf_counter() + cap_s

    async def worker(client: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            path = queue.popleft()
            started = time.perf_counter()
            response = await client.get(path)
            lat.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:300]}")
            if not bodies or not queue:
                bodies.append(response.content)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return lat, time.perf_counter() - started, bodies


def historical(url: str, pid: int, seeded: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Timed GETs of a day of 1-minute bars, uncached and cached, plus `/health` as the framework's floor."""
    import httpx
    import orjson
    import pandas as pd

    def iso(ns: int) -> str:
        return pd.Timestamp(ns, unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{ns % 1000:03d}Z"

    def bars(end_ns: int) -> str:
        start = iso(seeded["t0"])
        return f"/v2/historical/{SEED_ID}?tick_types=last&resolution=1m&start_time={start}&end_time={iso(end_ns)}"

    def check(mode: str, body: bytes) -> bool:
        doc = orjson.loads(body)
        if mode == "floor":
            return bool(doc["status"] == "ok")
        data = doc["data"]
        return len(data) == 390 and sum(r["trade_count"] for r in data) == seeded["trades"]

    rows = []
    offset = 0
    n, warm = args.requests, args.warmup
    with httpx.Client(base_url=url, timeout=30) as sync:
        for concurrency in args.concurrency:
            for mode in ("floor", "uncached", "cached"):
                if mode == "floor":
                    paths = ["/health"] * (warm + n)
                elif mode == "uncached":
                    # [t0, t1 - k ns): a new cache key per request, the same 390 bars (trades sit on a 1 us grid)
                    paths = [bars(seeded["t1"] - offset - 1 - i) for i in range(warm + n)]
                    offset += warm + n
                else:
                    paths = [bars(seeded["t1"])] * (warm + n)
                asyncio.run(load(url, paths[:warm], 1, args.cap_seconds))
                hits0, misses0 = cache_counts(sync)
                cpu0, client0 = cpu_seconds(pid), time.process_time()
                load_avg = os.getloadavg()[0]
                lat, wall, bodies = asyncio.run(load(url, paths[warm:], concurrency, args.cap_seconds))
                cpu, client = cpu_seconds(pid) - cpu0, time.process_time() - client0
                hits1, misses1 = cache_counts(sync)
                label = "GET /health (floor)" if mode == "floor" else f"1-min bars {mode}"
                row = {
                    "name": f"{label}, concurrency {concurrency}",
                    "mode": mode,
                    "concurrency": concurrency,
                    "requests": len(lat),
                    "completed": len(lat) == n,
                    "req_per_s": len(lat) / wall,
                    "p50_ms": pct(lat, 50) * 1e3,
                    "p99_ms": pct(lat, 99) * 1e3,
                    "max_ms": max(lat) * 1e3,
                    "server_cpu_ms_per_request": cpu / len(lat) * 1e3,
                    "client_cpu_ms_per_request": client / len(lat) * 1e3,
                    "cache_hits": hits1 - hits0,
                    "cache_misses": misses1 - misses0,
                    "bytes_per_response": len(bodies[0]),
                    "load_avg_1m": load_avg,
                    "verified": all(check(mode, b) for b in bodies),
                }
                log(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- orchestration
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(p: dict[str, Any], work: Path) -> subprocess.Popen[bytes]:
    import httpx

    params = work / f"server-{p['port']}.json"
    params.write_text(json.dumps(p))
    proc = subprocess.Popen([sys.executable, str(LIVE_SCRIPT), "serve", str(params)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{p['url']}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError("the server did not become ready in 60 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def fanout(p: dict[str, Any], work: Path, cpu_pid: int) -> dict[str, Any]:
    params = work / f"clients-{p['port']}.json"
    out = work / f"clients-{p['port']}-out.json"
    params.write_text(json.dumps({**p, "out": str(out)}))
    load_avg = os.getloadavg()[0]
    cpu0 = cpu_seconds(cpu_pid)
    clients = subprocess.run(
        [sys.executable, str(LIVE_SCRIPT), "sse-clients", str(params)], timeout=p["seconds"] + p["connect_seconds"] + 60
    )
    if clients.returncode != 0:
        raise RuntimeError(f"the SSE client process exited with {clients.returncode}")
    result = json.loads(out.read_text())
    publisher = Path(p["publisher_out"])
    deadline = time.monotonic() + 30
    while not publisher.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    result["publisher"] = json.loads(publisher.read_text()) if publisher.exists() else {"error": "no report"}
    result["server_process_cpu_s"] = cpu_seconds(cpu_pid) - cpu0
    result["load_avg_1m_at_start"] = load_avg
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=5_000_000, help="synthetic day size; its trades (20%%) are served")
    ap.add_argument("--seed", type=int, default=20240315)
    ap.add_argument("--date", default="2024-03-15")
    ap.add_argument("--requests", type=int, default=200, help="timed historical requests per mode and concurrency")
    ap.add_argument("--warmup", type=int, default=4, help="untimed requests before each historical measurement")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    ap.add_argument("--cap-seconds", type=float, default=60.0, help="time cap of each historical measurement")
    ap.add_argument("--rate", type=int, default=10_000, help="live ticks per second")
    ap.add_argument("--batch-ms", type=float, default=10.0, help="the publisher wakes every this many ms")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the publisher publishes")
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--max-inflight", type=int, default=256, help="publish batches awaiting durability at most")
    ap.add_argument("--fsync-ms", type=lambda s: [int(x) for x in s.split(",")], default=[50, 0])
    ap.add_argument("--gc-freeze", action="store_true", help="experiment: gc.freeze() in the service after start-up")
    args = ap.parse_args(argv)
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ib-stream-http-bench-") as tmp:
        work = Path(tmp)
        log(f"seeding {args.ticks // 5:,} trades of the synthetic day into {work} (load {load_before})")
        seeded = seed_store(work / "storage", args.ticks, args.seed, args.date)
        log(f"seeded: {seeded}")
        (work / "contracts.toml").write_text(CONTRACTS.format(seed=SEED_ID, live=LIVE_ID))
        hist: list[dict[str, Any]] = []
        live: list[dict[str, Any]] = []
        # A fresh service for the historical load and one per fan-out run, so no run inherits another's heap.
        for phase in ["historical", *args.fsync_ms]:
            fsync_ms = args.fsync_ms[0] if phase == "historical" else int(phase)
            port = free_port()
            p = {
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "data_root": str(work / "storage"),
                "contracts": str(work / "contracts.toml"),
                "fsync_ms": fsync_ms,
                "cache_size": 1000,
                "rate": args.rate,
                "seconds": args.seconds,
                "batch_ms": args.batch_ms,
                "subscribers": args.subscribers,
                "max_inflight": args.max_inflight,
                "connect_seconds": 20,
                "gc_freeze": args.gc_freeze,
                "publisher_out": str(work / f"publisher-{port}.json"),
            }
            log(f"starting the service on {p['url']} for {phase} (fsync_interval_ms={fsync_ms})")
            proc = start_server(p, work)
            try:
                if phase == "historical":
                    hist = historical(p["url"], proc.pid, seeded, args)
                    continue
                log(f"live fan-out: {args.subscribers} SSE subscribers, {args.rate:,} ticks/s for {args.seconds:g} s")
                row = {"fsync_interval_ms": fsync_ms, **fanout(p, work, proc.pid)}
                log(json.dumps({k: v for k, v in row.items() if k != "per_subscriber"}))
                live.append(row)
            finally:
                stop_server(proc)
    result = {
        "benchmark": "ib_stream http bench",
        "date_utc": started_at.isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": {"nproc": os.cpu_count(), "load_avg_before_after": [load_before, os.getloadavg()]},
        "project": project_state(),
        "versions": versions(),
        "seeded": seeded,
        "historical": hist,
        "live_fanout": live,
        "total_seconds": time.perf_counter() - T_START,
    }
    print(render(result))
    out = BENCH_DIR / "results" / f"http_bench-{started_at:%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    log(f"wrote {out}")
    return 0


def project_state() -> dict[str, str]:
    """The commit measured and the ib_stream files that differ from it (the tree may be mid-change)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_ib_stream": git("status", "--porcelain", "ib_stream")}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "sse-starlette", "pandas", "pyarrow")
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except Exception:
            out[name] = "not installed"
    return out


def render(r: dict[str, Any]) -> str:
    before, after = (f"{x[0]:.2f}" for x in r["machine"]["load_avg_before_after"])
    lines = ["=" * 120, f"HTTP BENCH  {r['seeded']['trades']:,} trades seeded  load avg {before} -> {after}", "-" * 120]
    lines.append("historical: a day of 1-minute bars (390 bars), tick_types=last")
    for h in r["historical"]:
        lines.append(
            f"  {h['name']:<34} {h['requests']:>4} req  {h['req_per_s']:8.1f} req/s  p50 {h['p50_ms']:7.2f} ms  "
            f"p99 {h['p99_ms']:7.2f} ms  CPU/req server {h['server_cpu_ms_per_request']:5.2f} ms "
            f"client {h['client_cpu_ms_per_request']:5.2f} ms  "
            f"hits {h['cache_hits']:.0f} misses {h['cache_misses']:.0f}  {'ok' if h['verified'] else 'FAIL'}"
        )
    lines.append("live fan-out: tick recv_ts -> SSE client")
    for f in r["live_fanout"]:
        lat, pub = f["latency_ms"], f["publisher"]
        lines.append(
            f"  fsync {f['fsync_interval_ms']:>3} ms  p50 {lat['p50']:7.2f} ms  p99 {lat['p99']:7.2f} ms  "
            f"max {lat['max']:7.2f} ms  published {pub.get('published_rate', 0):,.0f}/s  "
            f"received {f['ticks_received']:,} ({min((s['rate'] for s in f['per_subscriber']), default=0):,.0f}/s "
            f"per subscriber at least)  disconnects {pub.get('slow_disconnects')}  "
            f"gaps {sum(s['gaps'] for s in f['per_subscriber'])}  failed {len(f['failed'])}"
        )
        gen2 = pub.get("gc", {}).get("gen2", {"count": 0, "max_ms": 0.0})
        lines.append(
            f"      durable ack p50/p99 {pub.get('ack_p50_ms', 0):.1f}/{pub.get('ack_p99_ms', 0):.1f} ms  "
            f"loop wake lag p99/max {pub.get('wake_lag_p99_ms', 0):.1f}/{pub.get('wake_lag_max_ms', 0):.1f} ms  "
            f"gen2 GC {gen2['count']}x max {gen2['max_ms']:.1f} ms  server {pub.get('server_cpu_per_s', 0):.2f} "
            f"cores  clients {f['client_cpu_s'] / max(pub.get('publish_seconds', 1), 1e-9):.2f} cores"
        )
    lines.append("=" * 120)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
