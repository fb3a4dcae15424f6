"""The service façade: routes reach the data only through it (never the store's parts, never another route),
its blocking work runs on the store's executor, its queries feed the latency metric, and its query API uses
the service's own contracts rather than a contracts file of the current directory."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ib_stream.api.idempotency import IdempotencyCache
from ib_stream.api.state import ServiceState
from ib_stream.clock import ManualClock
from ib_stream.domain import Contract, TickType
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from tests.conftest import CONTRACT, T0_NS, seconds, trade
from tests.e2e.conftest import test_settings as service_settings

REPO = Path(__file__).resolve().parents[2]
ROUTES = sorted((REPO / "ib_stream" / "api" / "routes").glob("*.py"))
STORE_PARTS = {"store", "_store", "executor", "engine", "index", "buffer", "archiver", "gaps", "extras"}
OWN = Contract(CONTRACT, "AAPL", calendar="XLON", tick_types=(TickType.LAST,))  # the repository's file says XNAS


@pytest.fixture
def service(tmp_path: Path, clock: ManualClock) -> Iterator[ServiceState]:
    settings = service_settings(tmp_path / "storage")
    store = TickStore(settings.storage, clock).open()
    try:
        yield ServiceState(settings, clock, store, StreamingApp(store, [OWN]), [OWN], "test")
    finally:
        store.close()


def test_the_service_query_uses_the_service_contracts(service: ServiceState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # a contracts file that lists CONTRACT with another calendar
    assert service.query._contract(CONTRACT, None).calendar == "XLON"


async def test_blocking_work_runs_on_the_store_executor(service: ServiceState) -> None:
    assert (await service.run(lambda: threading.current_thread().name)).startswith("ib-stream-io")


async def test_queries_feed_the_latency_histogram(service: ServiceState) -> None:
    await service.streaming.publish(CONTRACT, "last", [trade(T0_NS + seconds(i), i) for i in range(3)], "test")
    frame = await service.query_range(CONTRACT, (TickType.LAST,), T0_NS, T0_NS + seconds(3), "tick")
    assert list(frame["seq"]) == [1, 2, 3]
    await service.query_range(CONTRACT, (TickType.LAST,), T0_NS, T0_NS + seconds(60), "1m", endpoint="other")
    assert (await service.book_at(CONTRACT, T0_NS, None)).deltas_replayed == 0
    families = {f.name: f for f in text_string_to_metric_families(service.metrics.render().decode())}
    counts = {
        s.labels["endpoint"]: s.value for s in families["ib_stream_query_seconds"].samples if s.name.endswith("_count")
    }
    assert counts == {"historical": 1.0, "other": 1.0, "depth": 1.0}


def test_the_services_parts_are_typed_attributes_not_a_locator(service: ServiceState) -> None:
    assert isinstance(service.idempotency, IdempotencyCache) and service.alerts is None
    assert not hasattr(service, "extras") and not hasattr(service, "store")


@pytest.mark.parametrize("path", ROUTES, ids=lambda p: p.stem)
def test_a_route_touches_no_store_part_and_imports_no_other_route(path: Path) -> None:
    tree = ast.parse(path.read_text())
    touched = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in STORE_PARTS})
    assert touched == [], f"{path.name} reaches into the store: .{', .'.join(touched)}"
    imported = [
        n.module or ""
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("ib_stream")
    ]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m.startswith("ib_stream.api.routes")] == []
