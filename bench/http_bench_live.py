"""The processes of the HTTP benchmark besides the orchestrator: the service and the live SSE clients.

`serve PARAMS`: the real service (`create_app` under uvicorn, uvloop + httptools when installed, as
`ib-stream serve` runs it) on 127.0.0.1 with one extra source, `FanoutPublisher`, that waits until the
live subscribers are connected and then publishes `rate` ticks/s for `seconds` through the StreamingApp
(stored durably, then fanned out), and writes what it measured (publish rate, durability acks, event-loop
wake lag, cyclic-GC pauses, server CPU) to a JSON file.
`sse-clients PARAMS`: the live subscribers, in their own process so their parsing does not compete with
the server for its GIL; per tick, the latency = receive wall time - the tick's `recv_ts`.
Started by `bench/http_bench.py`; not meant to be run by hand.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LIVE_ID = 2  # the contract the fan-out publishes to (configured by http_bench.py)
NS = 1_000_000_000


def pct(values: Any, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------- server side
class FanoutPublisher:
    """A TickSource: once `subscribers` live subscribers exist, publishes `rate` ticks/s for `seconds`."""

    name = "bench"

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p

    async def run(self, app: Any) -> None:
        p, loop = self.p, asyncio.get_running_loop()
        out = Path(p["publisher_out"])
        if p["gc_freeze"]:  # experiment: move everything alive after start-up out of the collector's scans
            gc.collect()
            gc.freeze()
        deadline = loop.time() + p["connect_seconds"]
        while app.subscriber_count < p["subscribers"]:
            if loop.time() > deadline:
                out.write_text(json.dumps({"error": f"only {app.subscriber_count} subscribers connected"}))
                return
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # let every stream send its `subscribed` event
        tracked = len(gc.get_objects())  # what a full collection has to traverse
        total, rate, step = int(p["rate"] * p["seconds"]), p["rate"], p["batch_ms"] / 1000
        inflight: collections.deque[asyncio.Task[Any]] = collections.deque()
        acks: list[float] = []
        cpu0, sent, waits, lags = time.process_time(), 0, 0, []
        gc_pauses = GcPauses()
        started = time.perf_counter()
        wake = started
        while sent < total:
            now = time.perf_counter()
            lags.append(now - wake)
            due = min(total, int((now - started) * rate) + 1)
            if due > sent:
                stamp = time.time_ns()
                ticks = [
                    {"ts": stamp, "price": 100.0 + (i % 97) * 0.01, "size": float(1 + i % 500), "exchange": "BENCH"}
                    for i in range(sent, due)
                ]
                task = asyncio.create_task(app.publish(LIVE_ID, "last", ticks, "bench"))
                task.add_done_callback(functools.partial(record_ack, acks, now))
                inflight.append(task)
                sent = due
            while inflight and inflight[0].done():
                inflight.popleft().result()
            if len(inflight) > p["max_inflight"]:
                waits += 1
                await inflight.popleft()
            wake += step
            await asyncio.sleep(max(0.0, wake - time.perf_counter()))
        publish_s = time.perf_counter() - started
        for task in inflight:
            await task
        durable_s = time.perf_counter() - started
        await asyncio.sleep(1.0)  # the last fan-out reaches the subscribers
        gc_pauses.stop()
        tracked_end = len(gc.get_objects())
        collect_started = time.perf_counter()
        gc.collect()
        collect_ms = (time.perf_counter() - collect_started) * 1e3
        stats = app.stats
        result = {
            "ticks": sent,
            "publish_seconds": publish_s,
            "published_rate": sent / publish_s,
            "durable_rate": sent / durable_s,
            "ack_p50_ms": pct(acks, 50) * 1e3,
            "ack_p99_ms": pct(acks, 99) * 1e3,
            "batches": len(acks),
            "backpressure_waits": waits,
            "wake_lag_p50_ms": pct(lags, 50) * 1e3,
            "wake_lag_p99_ms": pct(lags, 99) * 1e3,
            "wake_lag_max_ms": max(lags) * 1e3,
            "gc": gc_pauses.summary(),
            "gc_tracked_objects_at_start": tracked,
            "gc_tracked_objects_at_end": tracked_end,
            "gc_full_collection_at_end_ms": collect_ms,
            "gc_frozen_objects": gc.get_freeze_count(),
            "server_cpu_s": time.process_time() - cpu0,
            "server_cpu_per_s": (time.process_time() - cpu0) / durable_s,
            "ticks_fanned_out": stats.ticks_fanned_out,
            "slow_disconnects": stats.slow_disconnects,
            "fsyncs": app.store.buffer.stats.fsyncs,
        }
        out.write_text(json.dumps(result))


def record_ack(acks: list[float], published: float, _task: asyncio.Task[Any]) -> None:
    acks.append(time.perf_counter() - published)


class GcPauses:
    """Collections of the cyclic GC (count, total and longest pause per generation) while it is installed."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = collections.defaultdict(list)
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        return {
            f"gen{g}": {"count": len(v), "total_ms": sum(v) * 1e3, "max_ms": max(v) * 1e3}
            for g, v in sorted(self.pauses.items())
        }


def serve(p: dict[str, Any]) -> None:
    """The service process: the real app under uvicorn (uvloop + httptools when installed, like `serve`)."""
    import uvicorn

    from ib_stream.api.app import create_app
    from ib_stream.settings import load_settings

    storage = {"data_root": p["data_root"], "fsync_interval_ms": p["fsync_ms"], "query_cache_size": p["cache_size"]}
    settings = load_settings(REPO / "config" / "ib-stream.toml", storage=storage, contracts_file=p["contracts"])
    app = create_app(settings, sources=[FanoutPublisher(p)], run_scheduler=False)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=p["port"], log_level="warning", ws="websockets-sansio", timeout_graceful_shutdown=5
    )
    uvicorn.Server(config).run()


# --------------------------------------------------------------------------------------------- SSE clients
_RECV_TS = re.compile(rb'"recv_ts":(\d+)')
_SEQ = re.compile(rb'"seq":(\d+)')


async def subscriber(url: str, p: dict[str, Any]) -> dict[str, Any]:
    """Read one live SSE stream raw; per tick: receive wall time - recv_ts; stop after the expected ticks."""
    import httpx

    lat: list[np.ndarray] = []
    seqs: list[np.ndarray] = []
    expected, ended, buf = int(p["rate"] * p["seconds"]), "", b""
    first = last = 0
    received = 0
    timeout = httpx.Timeout(p["seconds"] + p["connect_seconds"] + 30)
    async with httpx.AsyncClient(timeout=timeout) as client:
        params = {"timeout": p["seconds"] + p["connect_seconds"] + 20}
        async with client.stream("GET", url, params=params) as response:
            async for chunk in response.aiter_raw():
                now = time.time_ns()
                buf += chunk
                cut = buf.rfind(b"\n\n") + 2
                if cut < 2:
                    continue
                block, buf = buf[:cut], buf[cut:]
                stamps = np.array(_RECV_TS.findall(block), dtype=np.int64)
                if stamps.size:
                    first = first or now
                    last = now
                    received += stamps.size
                    lat.append(now - stamps)
                    seqs.append(np.array(_SEQ.findall(block), dtype=np.int64))
                if b"event: error" in block or b"event: complete" in block:
                    ended = block[block.rfind(b"event: ") :].split(b"\n", 2)[1][:300].decode()
                    break
                if received >= expected:
                    break
    all_lat = np.concatenate(lat) / 1e6 if lat else np.zeros(0)
    seq = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    steps = np.diff(seq)
    return {
        "received": received,
        "rate": received / ((last - first) / NS) if last > first else 0.0,
        "latencies_ms": all_lat,
        "gaps": int((steps > 1).sum()),
        "duplicates_or_reorders": int((steps < 1).sum()),
        "ended_with": ended,
    }


async def sse_clients(p: dict[str, Any]) -> dict[str, Any]:
    url = f"{p['url']}/v2/stream/{LIVE_ID}/live/last"
    cpu0 = time.process_time()
    runs = await asyncio.gather(*(subscriber(url, p) for _ in range(p["subscribers"])), return_exceptions=True)
    ok = [r for r in runs if isinstance(r, dict)]
    lat = np.concatenate([r.pop("latencies_ms") for r in ok]) if ok else np.zeros(0)
    return {
        "subscribers": p["subscribers"],
        "failed": [repr(r) for r in runs if not isinstance(r, dict)],
        "per_subscriber": ok,
        "latency_ms": {
            "p50": pct(lat, 50),
            "p90": pct(lat, 90),
            "p99": pct(lat, 99),
            "p999": pct(lat, 99.9),
            "max": float(lat.max()) if lat.size else float("nan"),
        },
        "ticks_received": int(lat.size),
        "client_cpu_s": time.process_time() - cpu0,
        "client_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("serve", "sse-clients"):
        print("usage: http_bench_live.py serve|sse-clients PARAMS.json (started by http_bench.py)", file=sys.stderr)
        return 2
    p = json.loads(Path(argv[1]).read_text())
    if argv[0] == "serve":
        serve(p)
    else:
        Path(p["out"]).write_text(json.dumps(asyncio.run(sse_clients(p))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
