"""JSON sink: atomic writes seen by a polling reader process never show partial JSON; the files hold
the last `window` bars (checked against a pandas resample and plain Python CVD/OBI), history from the
store joined to live updates; writes are throttled."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ib_stream.clock import NS_PER_SECOND, ManualClock
from ib_stream.domain import Contract, TickType
from ib_stream.errors import ConfigError
from ib_stream.live_settings import JsonSinkConfig
from ib_stream.sinks.json_sink import BarWindow, JsonSink, write_atomic
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from tests.conftest import CONTRACT, T0_NS

MINUTE = 60 * NS_PER_SECOND
AAPL = Contract(CONTRACT, "AAPL", calendar="XNAS", tick_types=(TickType.BID_ASK, TickType.LAST))
FILES = ("ohlc_data.json", "metrics_data.json", "depth_data.json")

READER = r"""
import json, os, sys, time
path, stop = sys.argv[1], sys.argv[2]
reads = errors = 0
sizes = set()
while not os.path.exists(stop):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        continue
    try:
        sizes.add(len(json.loads(data)))
        reads += 1
    except ValueError:
        errors += 1
print(json.dumps({"reads": reads, "errors": errors, "distinct": len(sizes)}))
"""


def test_a_polling_reader_process_never_reads_partial_json(tmp_path: Path) -> None:
    target = tmp_path / "ohlc_data.json"
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(target), str(stop)], stdout=subprocess.PIPE)
    try:
        rng = random.Random(1)
        deadline = time.monotonic() + 2.5
        writes = 0
        while writes < 3000 and (writes < 200 or time.monotonic() < deadline):
            n = rng.randint(1, 4000)  # up to ~200 kB: many writes take several OS write calls
            write_atomic(target, json.dumps([[i, 1.5, 2.5, 0.5, 1.0, 10.0] for i in range(n)]).encode())
            writes += 1
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    result = json.loads(out)
    assert result["errors"] == 0
    assert result["reads"] >= 50 and result["distinct"] >= 10, result  # it really read while the files changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ohlc_data.json", "stop"]  # no temp file left behind
    assert target.stat().st_mode & 0o777 == 0o644  # readable by a viewer running as another user


def bar(ts: int, v: float = 1.0, close: float | None = 1.0, obi: float | None = None) -> dict[str, Any]:
    return {"ts": ts, "v": v, "close": close, "obi_close": obi}


def test_the_window_replaces_known_bars_appends_new_ones_and_caps_at_the_limit() -> None:
    window = BarWindow(3)
    window.upsert([bar(t, t) for t in (1, 2)])
    window.upsert([bar(2, 20), bar(3, 3), bar(4, 4)])
    assert [(r["ts"], r["v"]) for r in window.rows()] == [(2, 20), (3, 3), (4, 4)]
    window.upsert([bar(1, 99)])  # left the window: not resurrected
    assert [r["ts"] for r in window.rows()] == [2, 3, 4]
    window.upsert([bar(t, t) for t in range(5, 50)])
    assert [r["ts"] for r in window.rows()] == [47, 48, 49]


def test_the_window_leaves_out_the_bars_from_before_any_data() -> None:
    window = BarWindow(10)
    window.upsert([bar(1, close=None), bar(2, close=math.nan, obi=math.nan)])
    assert window.rows() == []
    window.upsert([bar(3, close=None, obi=0.5), bar(4, close=None), bar(5, close=2.0)])
    assert [r["ts"] for r in window.rows()] == [3, 4, 5]  # quotes came first: OBI; empty bars after data stay


# ---- the sink on a real store and StreamingApp ------------------------------------------------------------
def market(seed: int, start: int, end: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    quotes = [{"ts": ts, "bid_price": 99.99, "ask_price": 100.01, "bid_size": float(rng.randint(0, 9) * 100),
               "ask_size": float(rng.randint(1, 9) * 100)} for ts in range(start, end, 5 * NS_PER_SECOND)]  # fmt: skip
    trades = [{"ts": ts + NS_PER_SECOND, "price": round(100 + rng.uniform(-1, 1), 2), "size": float(rng.randint(1, 20)),
               "side": rng.choice([1, -1])} for ts in range(start, end, 7 * NS_PER_SECOND)]  # fmt: skip
    return quotes, trades


def expected_files(quotes: list[dict], trades: list[dict], bars: list[int]) -> dict[str, Any]:
    """The three files computed here: pandas resample for OHLC, plain Python for CVD and OBI."""
    frame = pd.DataFrame(trades).set_index(pd.to_datetime([t["ts"] for t in trades], unit="ns"))
    ohlc = frame["price"].resample("1min").ohlc().join(frame["size"].resample("1min").sum())
    ohlc_rows = []
    metrics = []
    for start in bars:
        row = ohlc.loc[pd.Timestamp(start, unit="ns")]
        ohlc_rows.append([start // 1_000_000, row["open"], row["high"], row["low"], row["close"], row["size"]])
        cum_before = sum(t["side"] * t["size"] for t in trades if t["ts"] < start)
        path, cum = [], cum_before
        for t in (t for t in trades if start <= t["ts"] < start + MINUTE):
            cum += t["side"] * t["size"]
            path.append(cum)
        obi = [(q["bid_size"] - q["ask_size"]) / (q["bid_size"] + q["ask_size"]) for q in quotes if q["ts"] < start]
        inside = [(q["bid_size"] - q["ask_size"]) / (q["bid_size"] + q["ask_size"]) for q in quotes
                  if start <= q["ts"] < start + MINUTE]  # fmt: skip
        o = obi[-1]
        metrics.append([start // 1_000_000, o, max([o, *inside]), min([o, *inside]), inside[-1],
                        cum_before, max([cum_before, *path]), min([cum_before, *path]), cum])  # fmt: skip
    last = quotes[-1]
    depth = {"bids": [[last["bid_price"], last["bid_size"]]], "asks": [[last["ask_price"], last["ask_size"]]]}
    return {"ohlc_data.json": ohlc_rows, "metrics_data.json": metrics, "depth_data.json": depth}


def read_files(directory: Path) -> dict[str, Any] | None:
    try:
        return {name: json.loads((directory / name).read_bytes()) for name in FILES}
    except FileNotFoundError:
        return None


def same(got: Any, want: Any) -> bool:
    if isinstance(want, list | tuple):
        return (
            isinstance(got, list) and len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    return got == pytest.approx(want, abs=1e-9)


async def test_the_sink_keeps_the_last_window_of_bars_from_history_and_live(
    store: TickStore, clock: ManualClock, tmp_path: Path
) -> None:
    directory = tmp_path / "viz"
    quotes, trades = market(3, T0_NS, T0_NS + 12 * MINUTE + 30 * NS_PER_SECOND)
    split = T0_NS + 6 * MINUTE + 30 * NS_PER_SECOND
    app = StreamingApp(store, [AAPL])
    await app.start([])
    await app.publish(CONTRACT, TickType.BID_ASK, [q for q in quotes if q["ts"] < split], "test")
    await app.publish(CONTRACT, TickType.LAST, [t for t in trades if t["ts"] < split], "test")
    clock.set(split)
    sink = JsonSink(JsonSinkConfig(enabled=True, window=5, min_write_interval_ms=0), directory)
    task = asyncio.create_task(sink.run(app))
    bad: list[str] = []
    reads = [0]
    stop = threading.Event()

    def poll() -> None:  # a reader polling all three files while the sink writes
        while not stop.is_set():
            for name in FILES:
                try:
                    data = json.loads((directory / name).read_bytes())
                except FileNotFoundError:
                    continue
                except ValueError as e:
                    bad.append(f"{name}: {e}")
                    continue
                reads[0] += 1
                if name != "depth_data.json" and (
                    len(data) > 5 or any(len(r) != (6 if "ohlc" in name else 9) for r in data)
                ):
                    bad.append(f"{name}: {len(data)} rows")  # fmt: skip

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        await _until(lambda: app.subscriber_count == 1)
        # Right after start: the 4 closed bars before 14:06 (from the store) and the forming 14:06 bar.
        await _until(lambda: (files := read_files(directory)) is not None and len(files["ohlc_data.json"]) == 5)
        first = read_files(directory)
        assert first is not None
        assert [r[0] for r in first["ohlc_data.json"]] == [(T0_NS + m * MINUTE) // 1_000_000 for m in range(2, 7)]
        step = 20 * NS_PER_SECOND  # live: each stream's ticks of 20 s as one batch
        for lo in range(split, max(quotes[-1]["ts"], trades[-1]["ts"]) + 1, step):
            clock.set(lo + step)  # the batch arrives as its 20 s end (live bars follow the clock)
            for tick_type, ticks in ((TickType.BID_ASK, quotes), (TickType.LAST, trades)):
                batch = [t for t in ticks if lo <= t["ts"] < lo + step]
                if batch:
                    await app.publish(CONTRACT, tick_type, batch, "test")
        want = expected_files(quotes, trades, [T0_NS + m * MINUTE for m in range(8, 13)])
        await _until(lambda: same(read_files(directory), want))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stop.set()
        reader.join()
        await app.stop()
    assert same(read_files(directory), want)  # the final flush kept it
    assert bad == [] and reads[0] > 10
    assert not [p for p in directory.iterdir() if p.name not in FILES]


async def test_writes_are_throttled(store: TickStore, tmp_path: Path) -> None:
    app = StreamingApp(store, [AAPL])
    await app.start([])
    sink = JsonSink(JsonSinkConfig(enabled=True, min_write_interval_ms=250), tmp_path / "viz")
    task = asyncio.create_task(sink.run(app))
    try:
        await _until(lambda: app.subscriber_count == 1)
        started = time.monotonic()
        quotes, _ = market(4, T0_NS, T0_NS + 200 * NS_PER_SECOND)
        for q in quotes:  # 40 updates over about a second
            await app.publish(CONTRACT, TickType.BID_ASK, [q], "test")
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.3)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await app.stop()
    assert 2 <= sink.writes <= elapsed / 0.25 + 2
    assert json.loads((tmp_path / "viz" / "depth_data.json").read_bytes())["bids"] == [
        [quotes[-1]["bid_price"], quotes[-1]["bid_size"]]
    ]


async def test_an_unknown_contract_is_a_config_error_naming_the_setting(store: TickStore, tmp_path: Path) -> None:
    app = StreamingApp(store, [AAPL])
    sink = JsonSink.from_settings(JsonSinkConfig(enabled=True, contract_id=42), tmp_path)
    assert sink.directory == tmp_path / "viz"
    with pytest.raises(ConfigError, match=r"json_sink\.contract_id"):
        await sink.run(app)
    assert not os.path.exists(tmp_path / "viz")


async def _until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
