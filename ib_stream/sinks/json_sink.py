"""Atomic JSON sink for external visualizers: keeps `ohlc_data.json`, `metrics_data.json` and
`depth_data.json` of one contract current from the live fan-out.

* `ohlc_data.json` — `[[ts_ms, open, high, low, close, volume], ...]`
* `metrics_data.json` — `[[ts_ms, obi_open, obi_high, obi_low, obi_close, cvd_open, cvd_high, cvd_low, cvd_close], ...]`
* `depth_data.json` — `{"bids": [[price, size], ...], "asks": [[price, size], ...]}`, best first

`ts_ms` is the bar start in epoch milliseconds (UTC); a value not known yet is `null`. The files
hold the last `window` bars (none from before the first trade or quote), the forming bar last (upserted in place as ticks arrive). Every write
is atomic — a temporary file in the same directory, flush, fsync, `os.replace`, fsync of the
directory — so a reader polling the files never sees partial JSON. Writes are coalesced to at most
one per `min_write_interval_ms` and run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from ib_stream.analytics.book import OrderBook
from ib_stream.domain import Contract, TickType
from ib_stream.errors import ConfigError, SlowConsumerError
from ib_stream.live.feed import LiveBarFeed
from ib_stream.live_settings import JsonSinkConfig
from ib_stream.store.layout import json_sink_dir
from ib_stream.streaming import LiveItem, StreamingApp

log = logging.getLogger(__name__)
OHLC_FILE = "ohlc_data.json"
METRICS_FILE = "metrics_data.json"
DEPTH_FILE = "depth_data.json"
_NS_PER_MS = 1_000_000
RESTART_SECONDS = 1.0
FILE_MODE = 0o644
OHLC_FIELDS = ("open", "high", "low", "close", "volume")
METRICS_FIELDS = ("obi_open", "obi_high", "obi_low", "obi_close", "cvd_open", "cvd_high", "cvd_low", "cvd_close")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: temp file in the same directory, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it private; a viewer may run as another user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def render(rows: Iterable[dict[str, Any]], depth: dict[str, list[list[float]]]) -> dict[str, bytes]:
    """The three files' contents for bar rows (oldest first) and a depth snapshot (NaN → null)."""
    ohlc, metrics = [], []
    for r in rows:
        ts_ms = r["ts"] // _NS_PER_MS
        ohlc.append([ts_ms, *(r[name] for name in OHLC_FIELDS)])
        metrics.append([ts_ms, *(r[name] for name in METRICS_FIELDS)])
    return {
        OHLC_FILE: orjson.dumps(ohlc, option=orjson.OPT_SERIALIZE_NUMPY),
        METRICS_FILE: orjson.dumps(metrics, option=orjson.OPT_SERIALIZE_NUMPY),
        DEPTH_FILE: orjson.dumps(depth, option=orjson.OPT_SERIALIZE_NUMPY),
    }


class BarWindow:
    """The last `size` bars by start time: an upsert replaces a known bar or appends a new one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.bars: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            ts = row["ts"]
            if ts in self.bars or not self.bars or ts > next(reversed(self.bars)):
                self.bars[ts] = row
            else:  # an older bar not held (it left the window): ignore it
                continue
            while len(self.bars) > self.size:
                self.bars.popitem(last=False)

    def rows(self) -> list[dict[str, Any]]:
        """The bars held, oldest first, without the leading ones from before any data (no price, no OBI)."""
        rows = list(self.bars.values())
        first = next((i for i, r in enumerate(rows) if not (_missing(r["close"]) and _missing(r["obi_close"]))), None)
        return [] if first is None else rows[first:]


def _missing(value: Any) -> bool:
    return value is None or value != value  # None or NaN


class JsonSink:
    """Keeps the three JSON files of one contract current; `run(app)` until cancelled."""

    name = "json-sink"

    def __init__(self, config: JsonSinkConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.window = BarWindow(config.window)
        self.depth: dict[str, list[list[float]]] = {"bids": [], "asks": []}
        self.writes = 0
        self.write_errors = 0
        self._dirty = asyncio.Event()
        self._last_write = 0.0

    @classmethod
    def from_settings(cls, config: JsonSinkConfig, data_root: Path) -> JsonSink:
        return cls(config, json_sink_dir(config, data_root))

    def contract(self, app: StreamingApp) -> Contract:
        """The configured contract (ConfigError naming json_sink.contract_id when it is not recorded)."""
        if self.config.contract_id is None:
            if not app.contracts:
                raise ConfigError("json_sink is enabled but no contract is configured")
            return next(iter(app.contracts.values()))
        contract = app.contracts.get(self.config.contract_id)
        if contract is None:
            raise ConfigError(
                f"setting json_sink.contract_id = {self.config.contract_id} is not a configured contract",
                details={"field": "json_sink.contract_id", "value": self.config.contract_id},
            )
        return contract

    async def run(self, app: StreamingApp) -> None:
        """Follow the contract's live bars and write the files, until cancelled."""
        contract = self.contract(app)
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        writer = asyncio.create_task(self._writer(), name="json-sink-writer")
        try:
            while True:
                feed = self._feed(app, contract)
                try:
                    rows = await feed.open()
                    latest = app.latest(contract.con_id, [TickType.BID_ASK])[TickType.BID_ASK]
                    if latest is not None and feed.builder.book is None:
                        self._quote(latest)
                    self._update(rows, (), feed.builder.book)
                    assert feed.sub is not None
                    while True:
                        items = await feed.sub.get(None)
                        if not items and feed.sub.closed:
                            return
                        self._update(await feed.update(items), items, feed.builder.book)
                except SlowConsumerError:
                    log.warning("json sink fell behind on contract %d; resubscribing", contract.con_id)
                except Exception:  # a bug or an unreadable store must not end the sink for good
                    log.exception("json sink failed on contract %d; restarting", contract.con_id)
                    await asyncio.sleep(RESTART_SECONDS)
                finally:
                    feed.close()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self._dirty.is_set():  # the last state reaches the files
                await self.flush()

    def _feed(self, app: StreamingApp, contract: Contract) -> LiveBarFeed:
        # The sink keeps its own window of bars: the feed starts with the window's history.
        return LiveBarFeed.from_settings(app, contract, self.config, history_bars=self.config.window - 1)

    def _update(self, rows: list[dict[str, Any]], items: Iterable[LiveItem], book: OrderBook | None) -> None:
        self.window.upsert(rows)
        quote = None
        depth = False
        for stream, record in items:
            if stream.tick_type == TickType.BID_ASK:
                quote = record
            elif stream.tick_type == TickType.DEPTH:
                depth = True
        if book is not None and (depth or not items):
            bids, asks = book.levels(self.config.levels)
            self.depth = {"bids": [list(level) for level in bids], "asks": [list(level) for level in asks]}
        elif book is None and quote is not None:
            self._quote(quote)
        if rows or quote is not None or depth:
            self._dirty.set()

    def _quote(self, record: dict[str, Any]) -> None:
        """Without depth, the book is the top of book."""
        self.depth = {
            "bids": [[record["bid_price"], record["bid_size"]]],
            "asks": [[record["ask_price"], record["ask_size"]]],
        }

    async def _writer(self) -> None:
        interval = self.config.min_write_interval_ms / 1000
        while True:
            await self._dirty.wait()
            wait = self._last_write + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.flush()

    async def flush(self) -> None:
        """Write the current window and depth now (in a worker thread)."""
        self._dirty.clear()
        self._last_write = time.monotonic()
        rows, depth = self.window.rows(), self.depth
        try:
            await asyncio.to_thread(self._write, rows, depth)
            self.writes += 1
        except OSError:
            self.write_errors += 1
            log.exception("json sink could not write to %s", self.directory)

    def _write(self, rows: list[dict[str, Any]], depth: dict[str, list[list[float]]]) -> None:
        for name, data in render(rows, depth).items():
            write_atomic(self.directory / name, data)
