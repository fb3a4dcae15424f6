"""The HTTP API reference cannot rot: routes, parameters, metrics and error codes are checked against the app."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ib_stream.api.app import create_app
from ib_stream.api.state import ServiceState
from ib_stream.client import error_classes
from ib_stream.clock import ManualClock
from ib_stream.contracts import load_contracts
from ib_stream.storage import TickStore
from ib_stream.streaming import StreamingApp
from tests.e2e.conftest import test_settings as service_settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
API = DOCS / "reference" / "api.md"
# Routes owned by other pages may be documented there instead of (or as well as) in api.md.
ROUTE_PAGES = (API, DOCS / "reference" / "streaming-protocol.md", DOCS / "concepts" / "sessions.md")
_SECTION = re.compile(r"^## (GET|POST|PUT|DELETE|PATCH) (\S+)$", re.M)


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(service_settings(Path("unused-data-root"))).openapi()
    return schema


def api_text() -> str:
    return API.read_text()


def sections() -> dict[tuple[str, str], str]:
    """`## METHOD /path` sections of api.md: their text up to the next `## ` heading."""
    text = api_text()
    found = {}
    matches = list(_SECTION.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        body = text[match.end() : end]
        found[(match[1], match[2])] = body.split("\n## ", 1)[0]
    return found


def test_every_route_of_the_schema_is_documented(openapi: dict[str, Any]) -> None:
    pages = "\n".join(page.read_text() for page in ROUTE_PAGES if page.exists())
    missing = [path for path in openapi["paths"] if f"`{path}`" not in pages and f" {path}" not in pages]
    assert not missing, f"routes missing from {', '.join(p.name for p in ROUTE_PAGES)}: {missing}"


def test_every_route_in_the_table_exists(openapi: dict[str, Any]) -> None:
    table_paths = re.findall(r"^\| (?:GET|POST|WebSocket) \| `([^`]+)`(?:, `([^`]+)`)? \|", api_text(), re.M)
    documented = {p for pair in table_paths for p in pair if p}
    websockets = {"/v2/ws/stream", "/v2/ws/bars/{contract_id}"}  # WebSocket routes are not part of OpenAPI
    assert documented - set(openapi["paths"]) - websockets == set()
    assert set(openapi["paths"]) <= documented


def test_every_parameter_of_a_documented_route_is_described(openapi: dict[str, Any]) -> None:
    documented = sections()
    assert ("GET", "/v2/historical/{contract_id}") in documented and ("POST", "/v2/ticks") in documented
    for (method, path), body in documented.items():
        operation = openapi["paths"][path][method.lower()]
        names = [p["name"] for p in operation.get("parameters", [])]
        request = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if request is not None:
            model = openapi["components"]["schemas"][request["$ref"].rsplit("/", 1)[-1]]
            names += list(model["properties"])
        for name in names:
            assert f"`{name}`" in body, f"{method} {path}: parameter {name} is not described"


def test_the_result_formats_are_those_of_the_schema(openapi: dict[str, Any]) -> None:
    parameters = openapi["paths"]["/v2/historical/{contract_id}"]["get"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in parameters}
    body = sections()[("GET", "/v2/historical/{contract_id}")]
    for fmt in by_name["format"]["enum"]:
        assert f"| `{fmt}` |" in body
    for resolution in by_name["resolution"]["enum"]:
        assert resolution in body


def test_every_metric_is_documented_and_every_documented_metric_exists(tmp_path: Path) -> None:
    settings = service_settings(tmp_path / "storage")
    clock = ManualClock(0)
    store = TickStore(settings.storage, clock).open()
    try:
        contracts = load_contracts(settings.contracts_file)
        state = ServiceState(settings, clock, store, StreamingApp(store, contracts), contracts, "sim")
        families = {f.name for f in text_string_to_metric_families(state.metrics.render().decode())}
    finally:
        store.close()
    table = re.findall(r"^\| `(ib_stream_\w+)` \| (\w+) \|", api_text(), re.M)
    documented = {name.removesuffix("_total") for name, _ in table}
    assert families == documented


def test_documented_error_codes_exist() -> None:
    codes = set(error_classes())
    rows = re.findall(r"^\| (\dxx|\d{3}) \| ([^|]+) \|", api_text(), re.M)
    documented = {code for _, cell in rows for code in re.findall(r"`([A-Z_]+)`", cell)}
    assert documented and documented <= codes, documented - codes


def test_linked_pages_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", api_text()):
        assert (API.parent / target).resolve().exists(), f"api.md links to a missing page: {target}"
