"""The API docs work on a machine without internet access: /docs (Swagger UI) and /redoc load every script and
style from the service and render the routes, in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import offline_page
from tests.e2e.conftest import LiveServer, start_server, test_settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    running, stop = start_server(test_settings(Path(tmp_path_factory.mktemp("docs")) / "storage"))
    yield running
    stop()


def test_swagger_ui_renders_every_route_offline(browser: Any, server: LiveServer) -> None:
    page, log = offline_page(browser, server.url)
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path || n.textContent)"
    )
    assert "/v2/historical/{contract_id}" in {p.strip() for p in paths}
    assert log.outside == [] and log.failed == [] and log.console_errors == []


def test_redoc_renders_offline(browser: Any, server: LiveServer) -> None:
    page, log = offline_page(browser, server.url)
    page.goto("/redoc")
    page.get_by_text("/v2/historical/{contract_id}").first.wait_for(timeout=20_000)
    assert "ib-stream" in page.title()
    # The one image ReDoc's own script links to (its "API docs by Redocly" footer logo) is left blank offline;
    # every script, style and the schema come from the service.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert set(log.outside) <= {logo} and set(log.failed) <= {logo}
    assert [e for e in log.console_errors if "ERR_FAILED" not in e] == []
