"""The alert engine: live bars of every recorded contract through the rules; each fired alert is logged,
stored in the alert history (off the event loop) and pushed to the listeners of its contract (the
live bar streams send it as an `alert` event).

Start it like a source: `task = asyncio.create_task(engine.run(streaming))` after `streaming.start`,
cancel it before `streaming.stop`, then `engine.close()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from pathlib import Path
from typing import Any

from ib_stream.alerts.history import AlertHistory
from ib_stream.alerts.rules import Alert, RuleSet
from ib_stream.clock import Clock, SystemClock
from ib_stream.domain import Contract
from ib_stream.errors import SlowConsumerError
from ib_stream.live.feed import LiveBarFeed
from ib_stream.live_settings import AlertsConfig
from ib_stream.streaming import StreamingApp

log = logging.getLogger(__name__)
LISTENER_QUEUE = 1000  # alerts a listener may hold unread before the oldest are dropped
RESUBSCRIBE_SECONDS = 1.0


class AlertListener:
    """Alerts of one contract for one consumer, bounded (the oldest are dropped when full, and counted)."""

    def __init__(self, contract_id: int) -> None:
        self.contract_id = contract_id
        self.dropped = 0
        self._items: collections.deque[Alert] = collections.deque(maxlen=LISTENER_QUEUE)
        self._ready = asyncio.Event()

    def put(self, alert: Alert) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(alert)
        self._ready.set()

    async def wait(self) -> None:
        """Return once an alert is waiting."""
        await self._ready.wait()

    def drain(self) -> list[Alert]:
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        return items


class AlertEngine:
    """Rules on live bars of every configured contract; the alert history and the listeners."""

    name = "alerts"

    def __init__(self, config: AlertsConfig, history: AlertHistory) -> None:
        self.config = config
        self.history = history
        self.fired = 0
        self._clock: Clock = SystemClock()
        self._listeners: dict[int, set[AlertListener]] = collections.defaultdict(set)

    @classmethod
    def open(cls, config: AlertsConfig, data_root: Path) -> AlertEngine:
        """The engine with its history at `config.db_path` (default `<data_root>/alerts.db`); blocking."""
        return cls(config, AlertHistory.of(config, data_root))

    def close(self) -> None:
        self.history.close()

    # ---- listeners -----------------------------------------------------------------------------------------
    def listen(self, contract_id: int) -> AlertListener:
        listener = AlertListener(contract_id)
        self._listeners[contract_id].add(listener)
        return listener

    def unlisten(self, listener: AlertListener) -> None:
        self._listeners.get(listener.contract_id, set()).discard(listener)

    # ---- running ---------------------------------------------------------------------------------------------
    async def run(self, app: StreamingApp) -> None:
        """Watch every configured contract some rule applies to, until cancelled."""
        self._clock = app.store.clock
        contracts = [c for c in app.contracts.values() if RuleSet(self.config, c.con_id).states]
        async with asyncio.TaskGroup() as group:
            for contract in contracts:
                group.create_task(self._watch(app, contract), name=f"alerts-{contract.con_id}")

    async def _watch(self, app: StreamingApp, contract: Contract) -> None:
        rules = RuleSet(self.config, contract.con_id)
        while True:
            feed = self._feed(app, contract)
            try:
                await self._judge(rules, await feed.open())
                assert feed.sub is not None
                while True:
                    items = await feed.sub.get(None)
                    if not items and feed.sub.closed:
                        return  # the streaming app stopped
                    await self._judge(rules, await feed.update(items))
            except SlowConsumerError:
                log.warning("alert engine fell behind on contract %d; resubscribing", contract.con_id)
            except Exception:
                log.exception("alert engine failed on contract %d; restarting", contract.con_id)
            finally:
                feed.close()
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    def _feed(self, app: StreamingApp, contract: Contract) -> LiveBarFeed:
        return LiveBarFeed.from_settings(app, contract, self.config)

    async def _judge(self, rules: RuleSet, rows: list[dict[str, Any]]) -> None:
        alerts = rules.on_bars(rows)
        if alerts:
            await self.fire(alerts)

    async def fire(self, alerts: list[Alert]) -> None:
        """Log, store (off the event loop) and push alerts to their contract's listeners."""
        for alert in alerts:
            alert.fired_ns = self._clock.now_ns()
            log.info("alert %s on contract %d: %s", alert.rule, alert.contract_id, alert.message)
        self.fired += len(alerts)
        try:
            await asyncio.to_thread(self.history.add, alerts)
        except Exception:  # a full disk must not stop the alerts from reaching the streams
            log.exception("alert history could not be written")
        for alert in alerts:
            for listener in list(self._listeners.get(alert.contract_id, ())):
                listener.put(alert)

    async def query(self, contract_id: int | None, since_ns: int | None, limit: int) -> list[dict[str, Any]]:
        """The history, newest first (off the event loop)."""
        return await asyncio.to_thread(self.history.query, contract_id, since_ns, limit)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel a running engine or sink task and wait for it."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
