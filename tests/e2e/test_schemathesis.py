"""Property test of the whole HTTP API: schemathesis requests from the OpenAPI schema never get a 5xx.

Every operation of the live service's schema is exercised (bounded examples per operation), except
the streaming ones (SSE answers that never end on their own, found by their `text/event-stream`
response). `POST /v2/ticks` runs with the configured bearer token, so its validation is reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import BaseSchema

from ib_stream.api.app import create_app
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live, stop = start_server(
        service_settings(tmp_path_factory.mktemp("schemathesis") / "storage", api={"token": TOKEN})
    )
    for contract in (AAPL, ES):
        live.publish(contract, "last", [trade(T0_NS + i * 10**9, i) for i in range(50)])
        live.publish(contract, "bid_ask", [quote(T0_NS + i * 10**9, i) for i in range(50)])
    yield live
    stop()


def streaming_paths(document: dict[str, Any]) -> list[str]:
    """Paths with an operation that answers with an event stream."""
    return [
        path
        for path, operations in document["paths"].items()
        if any(
            "text/event-stream" in (response.get("content") or {})
            for operation in operations.values()
            for response in operation.get("responses", {}).values()
        )
    ]


def operations(document: dict[str, Any]) -> list[str]:
    """Labels (`GET /path`) of the operations to exercise: all but the streaming ones."""
    skipped = set(streaming_paths(document))
    return [
        f"{method.upper()} {path}"
        for path, methods in document["paths"].items()
        if path not in skipped
        for method in methods
    ]


# The operations are listed from the app factory's schema at collection time (no server needed), so
# each one is its own test and every route that exists when the suite runs is included.
OPERATIONS = operations(create_app(service_settings(Path("unused-data-root"))).openapi())


@pytest.fixture(scope="module")
def api_schema(service: LiveServer) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_operation_answers_with_a_server_error(api_schema: BaseSchema, label: str) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the live schema"
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def check(case: Case) -> None:
        case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=15)

    check()


def test_the_schema_covers_the_routes(service: LiveServer) -> None:
    document = httpx.get(f"{service.url}/openapi.json", timeout=10).json()
    paths = set(document["paths"])
    assert {"/v2/historical/{contract_id}", "/v2/contracts", "/v2/contracts/{contract_id}/coverage"} <= paths
    assert {"/health", "/ready", "/metrics", "/v2/ticks", "/v2/contracts/{contract_id}/backfill"} <= paths
