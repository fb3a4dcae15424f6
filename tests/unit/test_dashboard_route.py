"""The dashboard's routes and files: the page at `/`, its own scripts, plotly.js from the installed wheel, nothing
from outside the service, every file shipped as package data, and scripts short enough to read."""

from __future__ import annotations

import asyncio
import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from ib_stream.api.app import create_app
from ib_stream.api.routes.dashboard import PLOTLY_PATH, plotly_version
from tests.e2e.conftest import REPO
from tests.e2e.conftest import test_settings as service_settings

STATIC = REPO / "ib_stream" / "dashboard" / "static"


class Client:
    """Requests straight to the app (the dashboard's routes read package files only: no lifespan is needed)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, path: str) -> httpx.Response:
        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dashboard.test") as http:
                return await http.get(path)

        return asyncio.run(fetch())


@pytest.fixture(scope="module")
def client() -> Client:
    return Client(create_app(service_settings(Path("unused-data-root"))))


def test_the_page_is_served_at_the_root_with_the_plotly_of_the_wheel(client: Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'src="{PLOTLY_PATH}?v={plotly_version()}"' in page.text
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", plotly_version())
    bundle = client.get(PLOTLY_PATH)
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize("name", ["app.js", "api.js", "charts.js", "live.js", "style.css"])
def test_own_files_are_served_and_revalidated(client: Client, name: str) -> None:
    answer = client.get(f"/dashboard/static/{name}")
    assert answer.status_code == 200 and answer.content == (STATIC / name).read_bytes()
    assert answer.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("name", ["missing.js", "index.html", "..%2Fapp.js", "APP.JS"])
def test_other_names_are_not_found_in_the_service_error_shape(client: Client, name: str) -> None:
    answer = client.get(f"/dashboard/static/{name}")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NOT_FOUND"


def test_nothing_is_loaded_from_outside_the_service() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), path.name
        assert not re.search(r"""(?:import|fetch)\s*\(?\s*["'](?:https?:)?//""", text), path.name


def test_every_static_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ib_stream.dashboard"]
    for path in STATIC.iterdir():
        relative = path.relative_to(STATIC.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} would be missing from a wheel"


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_scripts_stay_readable(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert len(lines) < 500
    assert lines[0].startswith("// "), "a script opens with a line saying its job"
