"""Abuse figures on a real service: what hostile requests cost the process (issue 12's acceptance).

Starts `ib-stream serve` (built-in simulated market) on a fresh data root on 127.0.0.1, lets it record a
little, then sends each attack and reports the server's peak RSS (VmHWM, reset between attacks where the
kernel allows), the time to answer, and the status. Also `/health` p99 while twelve heavy queries are
abandoned, a `limit=1` query's latency meanwhile, and the time from SIGTERM to exit under load.

    .venv/bin/python bench/abuse.py [--seconds-recorded 20]

Traffic goes to 127.0.0.1 only and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "abuse-token"
AAPL = 265598


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):  # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class Service:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "IB_STREAM_API__TOKEN": TOKEN, "IB_STREAM_LOGGING__LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ib_stream.cli", "serve", "--data-dir", str(root), "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not become ready")


def attack(service: Service, name: str, send: Any) -> dict[str, Any]:
    pid = service.proc.pid
    reset_peak(pid)
    before = rss_mb(pid)
    started = time.perf_counter()
    try:
        status = send()
    except httpx.HTTPError as e:
        status = type(e).__name__
    seconds = time.perf_counter() - started
    return {"attack": name, "status": status, "seconds": round(seconds, 3), "rss_before_mb": round(before),
            "peak_rss_mb": round(rss_mb(pid, "VmHWM")), "rss_after_mb": round(rss_mb(pid))}  # fmt: skip


def big_body(size_mb: int) -> bytes:
    tick = b'{"ts": 1700000000000000000, "price": 1.5, "size": 1.0},'
    count = size_mb * 1024 * 1024 // len(tick)
    return b'{"contract_id": %d, "tick_type": "last", "ticks": [' % AAPL + tick * count + b'{"ts": 1}]}'


def preload(root: Path, days: int, ticks_per_day: int) -> int:
    """The synthetic trading day (bench/synthetic_day.py) as AAPL's ticks of each of the last `days` days,
    archived into Parquet: the heavy queries then have real volume to read."""
    sys.path.insert(0, str(Path(__file__).parent))
    from orderflow_bench import open_store
    from synthetic_day import generate, tick_dicts

    from ib_stream.clock import ManualClock

    day = generate(ticks_per_day)
    clock = ManualClock(0)
    store = open_store(root, clock)
    stored = 0
    today = time.time_ns() // 86_400_000_000_000 * 86_400_000_000_000
    for back in range(days, 0, -1):
        shift = today - back * 86_400_000_000_000 - (day.t0 - day.t0 % 86_400_000_000_000)
        for name, cols in (("bid_ask", day.quotes), ("last", day.trades)):
            for s in range(0, len(cols["ts"]), 50_000):
                ticks = tick_dicts(cols, s, min(len(cols["ts"]), s + 50_000))
                for t in ticks:
                    t["ts"] = int(t["ts"]) + shift
                clock.set(max(clock.now_ns(), ticks[-1]["ts"]))  # recorded as it happened: old segments
                store.append_batch_sync(AAPL, name, ticks, source="bench")
                stored += len(ticks)
    clock.set(time.time_ns())
    store.run_archival()
    store.close()
    return stored


def run(seconds_recorded: float, days: int, ticks_per_day: int) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="ib-stream-abuse-"))
    started = time.perf_counter()
    stored = preload(root, days, ticks_per_day) if days else 0
    print(json.dumps({"preloaded_ticks": stored, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    service = Service(root)
    url = service.url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    time.sleep(seconds_recorded)
    now = time.time()
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    results = []
    c = httpx.Client(timeout=120)

    def bars(res: str, start: str, end: str, times: int = 1) -> Any:
        codes = [c.get(f"{url}/v2/bars/{AAPL}", params={"resolution": res, "start_time": start, "end_time": end})
                 .status_code for _ in range(times)]  # fmt: skip
        return codes[0] if len(set(codes)) == 1 else codes

    results.append(
        attack(service, "11 x /v2/bars 1s over 10 days", lambda: bars("1s", iso(now - 10 * 86400), iso(now), 11))
    )
    results.append(
        attack(service, "11 x /v2/bars 1s over 2 days", lambda: bars("1s", iso(now - 2 * 86400), iso(now), 11))
    )
    results.append(
        attack(service, "/v2/bars 1d 1990..2199", lambda: bars("1d", "1990-01-01T00:00:00Z", "2199-01-01T00:00:00Z"))
    )
    results.append(
        attack(service, "/v2/bars 1h 1990..2199", lambda: bars("1h", "1990-01-01T00:00:00Z", "2199-01-01T00:00:00Z"))
    )
    results.append(
        attack(
            service,
            "/v2/depth at 2199",
            lambda: c.get(f"{url}/v2/depth/{AAPL}", params={"at": "2199-01-01T00:00:00Z"}).status_code,
        )
    )
    results.append(
        attack(
            service,
            "600 MB POST /v2/ticks without token",
            lambda: c.post(f"{url}/v2/ticks", content=big_body(600)).status_code,
        )
    )
    results.append(
        attack(
            service,
            "111 MB POST /v2/ticks with token",
            lambda: c.post(f"{url}/v2/ticks", content=big_body(111), headers=auth).status_code,
        )
    )
    far = {"contract_id": AAPL, "tick_type": "last", "ticks": [
        {"ts": int(1e18), "price": 1.0, "size": 1.0}, {"ts": int(1e18 + 50 * 365 * 86400e9), "price": 1.0, "size": 1.0}]}  # fmt: skip
    results.append(
        attack(service, "2 ticks 50 years apart", lambda: c.post(f"{url}/v2/ticks", json=far, headers=auth).status_code)
    )
    results.append(
        attack(
            service,
            "/v2/alerts contract_id 2**63",
            lambda: c.get(f"{url}/v2/alerts", params={"contract_id": 2**63}).status_code,
        )
    )
    results.append(abandoned(service))
    results.append(sigterm_under_load(service))
    c.close()
    return results


def heavy(url: str) -> None:
    """A query that takes a while, abandoned after 0.3 s (the client goes away)."""
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 4 * 86400))
    with contextlib.suppress(httpx.HTTPError):  # every tick of four days (up to api.max_limit rows)
        httpx.get(f"{url}/v2/historical/{AAPL}", params={"tick_types": "bid_ask", "start_time": start}, timeout=0.3)


def abandoned(service: Service) -> dict[str, Any]:
    threads = [threading.Thread(target=heavy, args=(service.url,)) for _ in range(12)]
    for t in threads:
        t.start()
    times = []
    with httpx.Client(timeout=60) as c:
        for _ in range(200):
            started = time.perf_counter()
            c.get(f"{service.url}/health")
            times.append(time.perf_counter() - started)
            time.sleep(0.005)
        started = time.perf_counter()
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        code = c.get(
            f"{service.url}/v2/historical/{AAPL}", params={"tick_types": "last", "start_time": start, "limit": 1}
        ).status_code
        limited = time.perf_counter() - started
    for t in threads:
        t.join()
    return {"attack": "12 heavy queries abandoned", "health_p99_ms": round(statistics.quantiles(times, n=100)[98] * 1000, 1),
            "limit_1_query_s": round(limited, 3), "status": code}  # fmt: skip


def sigterm_under_load(service: Service) -> dict[str, Any]:
    threads = [threading.Thread(target=heavy, args=(service.url,)) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    started = time.perf_counter()
    service.proc.send_signal(signal.SIGTERM)
    try:
        code = service.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        code = "killed after 60 s"
    for t in threads:
        t.join()
    return {"attack": "SIGTERM under load", "exit_seconds": round(time.perf_counter() - started, 2), "status": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-recorded", type=float, default=20)
    parser.add_argument("--days", type=int, default=3, help="days of synthetic AAPL ticks stored first")
    parser.add_argument("--ticks-per-day", type=int, default=1_000_000)
    args = parser.parse_args()
    for row in run(args.seconds_recorded, args.days, args.ticks_per_day):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
