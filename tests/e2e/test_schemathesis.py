"""Property test of the whole HTTP API: schemathesis requests from the OpenAPI schema never get a 5xx.

Every operation of the live service's schema is exercised, positive and negative cases, seeded and bounded:
MAX_EXAMPLES per operation in `make test` (a few thousand cases in all), SLOW_EXAMPLES behind the `slow`
marker. About half of the cases are given the known contract ids and times inside the stored range, so
the routes are reached beyond their 404s. The streaming operations (SSE answers) run with a short
`timeout` so each ends on its own. `POST /v2/ticks` runs with the configured bearer token, so its
validation is reached; a stateful run follows the schema's links (POST /v2/ticks -> the reads of the
contract it wrote).
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
from ib_stream.times import iso_us
from tests.conftest import T0_NS, quote, trade
from tests.e2e.conftest import AAPL, ES, LiveServer, start_server
from tests.e2e.conftest import test_settings as service_settings

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 100
STREAM_EXAMPLES = 12  # an SSE case lasts up to its `timeout` (1 s)
SLOW_EXAMPLES = 600
KNOWN_VALUES = {  # real values for parameters of these names: a stored range, the types it holds
    "start_time": iso_us(T0_NS - 60 * 10**9),
    "end_time": iso_us(T0_NS + 120 * 10**9),
    "at": iso_us(T0_NS + 30 * 10**9),
    "since": iso_us(T0_NS - 3600 * 10**9),
    "date": iso_us(T0_NS)[:10],
    "tick_types": "last,bid_ask",
    "tick_type": "last",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live, stop = start_server(
        service_settings(tmp_path_factory.mktemp("schemathesis") / "storage", api={"token": TOKEN})
    )
    for contract in (AAPL, ES):
        live.publish(contract, "last", [trade(T0_NS + i * 10**9, i) for i in range(50)])
        live.publish(contract, "bid_ask", [quote(T0_NS + i * 10**9, i) for i in range(50)])
    live.publish(AAPL, "depth", [depth_level(T0_NS + i * 10**9, i) for i in range(50)])
    yield live
    stop()


def depth_level(ts: int, i: int) -> dict[str, Any]:
    side = "bid" if i % 2 else "ask"
    price = 100.0 - (i % 5) * 0.01 if side == "bid" else 100.01 + (i % 5) * 0.01
    return {"ts": ts, "side": side, "position": 0, "operation": "update", "price": price, "size": 1.0 + i,
            "market_maker": "", "by_price": True}  # fmt: skip


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
    """Labels (`GET /path`) of every operation."""
    return [f"{method.upper()} {path}" for path, methods in document["paths"].items() for method in methods]


def with_known_values(case: Case, known: dict[str, Any], streaming: bool) -> None:
    """Give the case real values where the draw says so: a stored contract, parameters inside the stored data
    (times, date, tick types), a valid batch; a streaming case a short timeout."""
    if known["contract"] is not None and "contract_id" in (case.path_parameters or {}):
        case.path_parameters["contract_id"] = known["contract"]
    if known["real"]:
        for parameters in (case.path_parameters, case.query):
            if isinstance(parameters, dict):
                parameters.update({k: v for k, v in KNOWN_VALUES.items() if k in parameters})
        if case.operation.label == "POST /v2/ticks":
            contract = known["contract"] or AAPL
            case.body = {"contract_id": contract, "tick_type": "last", "ticks": [trade(T0_NS + 10**12, 1)]}
    if streaming:
        case.query = {**(case.query or {}), "timeout": "1"}


# The operations are listed from the app factory's schema at collection time (no server needed), so
# each one is its own test and every route that exists when the suite runs is included.
DOCUMENT = create_app(service_settings(Path("unused-data-root"))).openapi()
OPERATIONS = operations(DOCUMENT)
STREAMING = set(streaming_paths(DOCUMENT))
# What shows a case reached the route's own work where success is impossible here: no broker to backfill from.
REACHED = {"POST /v2/contracts/{contract_id}/backfill": (409,)}


@pytest.fixture(scope="module")
def api_schema(service: LiveServer) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


def run_operation(api_schema: BaseSchema, label: str, examples: int) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the live schema"
    streaming = label.split(" ", 1)[1] in STREAMING
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    known_values = st.fixed_dictionaries({"contract": st.sampled_from([None, AAPL, ES]), "real": st.booleans()})

    @given(case=strategy, known=known_values)
    @settings(
        max_examples=min(examples, STREAM_EXAMPLES) if streaming else examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def check(case: Case, known: dict[str, Any]) -> None:
        with_known_values(case, known, streaming)
        response = case.call_and_validate(headers=AUTH, checks=[not_a_server_error], timeout=15)
        statuses.append(response.status_code)

    statuses: list[int] = []
    check()
    # The known values carry the cases past the 404 of an unknown contract into the route itself.
    reached = REACHED.get(label, range(200, 300))
    assert any(status in reached for status in statuses), f"{label}: no case got {reached} ({sorted(set(statuses))})"


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_operation_answers_with_a_server_error(api_schema: BaseSchema, label: str) -> None:
    run_operation(api_schema, label, MAX_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_operation_answers_with_a_server_error_soak(api_schema: BaseSchema, label: str) -> None:
    run_operation(api_schema, label, SLOW_EXAMPLES)


def test_the_schema_covers_the_routes(service: LiveServer) -> None:
    document = httpx.get(f"{service.url}/openapi.json", timeout=10).json()
    paths = set(document["paths"])
    assert {"/v2/historical/{contract_id}", "/v2/contracts", "/v2/contracts/{contract_id}/coverage"} <= paths
    assert {"/health", "/ready", "/metrics", "/v2/ticks", "/v2/contracts/{contract_id}/backfill"} <= paths


def test_linked_operations_never_answer_with_a_server_error(api_schema: BaseSchema) -> None:
    """Stateful: POST /v2/ticks, then the reads its links name (latest, coverage, historical) of that contract."""
    machine = api_schema.as_state_machine()
    calls: list[tuple[str, int]] = []

    class Linked(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Case) -> None:
            if case.headers:
                case.headers.pop("Authorization", None)  # the configured token, not a generated one
            if case.operation.label == "POST /v2/ticks":  # valid, so its links are followed (invalid bodies: above)
                case.body = {"contract_id": AAPL, "tick_type": "last", "ticks": [trade(T0_NS + 10**12, 1)]}
            if case.operation.path in STREAMING:
                case.query = {**(case.query or {}), "timeout": "1"}

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"headers": AUTH, "timeout": 15}

        def validate_response(self, response: Any, case: Case, **kwargs: Any) -> None:
            calls.append((case.operation.label, response.status_code))
            assert response.status_code < 500, f"{case.operation.label}: {response.status_code} {response.text[:300]}"

    Linked.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=4,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    linked = {"GET /v2/latest/{contract_id}", "GET /v2/contracts/{contract_id}/coverage"}
    assert ("POST /v2/ticks", 200) in calls, sorted(set(calls))
    assert any(label in linked and status == 200 for label, status in calls), sorted(set(calls))
