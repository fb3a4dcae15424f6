"""Routes: the order-flow dashboard — the page at `/`, its own scripts and styles, and plotly.js from the
installed `plotly` wheel — all served by the service, so the page works on a machine without internet access.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from importlib.abc import Traversable
from pathlib import Path
from typing import Final

from fastapi import APIRouter
from starlette.responses import FileResponse, HTMLResponse, Response

from ib_stream.errors import NotFoundError

router = APIRouter(tags=["dashboard"])

STATIC_PREFIX: Final = "/dashboard/static"
PLOTLY_PATH: Final = "/dashboard/vendor/plotly.min.js"
_MEDIA_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.(js|css|svg)$")
# Our files change with the package: the browser revalidates them. plotly.js is addressed by its version.
_OWN_CACHE: Final = "no-cache"
_VENDOR_CACHE: Final = "public, max-age=31536000, immutable"


def static_files() -> Traversable:
    """The dashboard's own files (package data of `ib_stream.dashboard`)."""
    return importlib.resources.files("ib_stream.dashboard").joinpath("static")


def plotly_js() -> Traversable:
    """plotly.min.js as the `plotly` wheel ships it (found through the import system, never copied)."""
    return importlib.resources.files("plotly").joinpath("package_data", "plotly.min.js")


@functools.cache
def plotly_version() -> str:
    """The version of the installed plotly.js bundle, from its banner (`* plotly.js v4.1.1`)."""
    with plotly_js().open("rb") as handle:
        head = handle.read(200).decode("ascii", "replace")
    found = re.search(r"plotly\.js v([0-9][0-9A-Za-z.+-]*)", head)
    return found[1] if found else "unknown"


@router.get("/", response_class=HTMLResponse, summary="The order-flow dashboard (an HTML page)")
async def dashboard_page() -> HTMLResponse:
    """Serve the dashboard: candles, volume, OBI, CVD, depth, footprint, heatmap, profile, coverage and alerts."""
    page = static_files().joinpath("index.html").read_text(encoding="utf-8")
    page = page.replace("{{plotly_src}}", f"{PLOTLY_PATH}?v={plotly_version()}")
    return HTMLResponse(page, headers={"Cache-Control": _OWN_CACHE})


@router.get(PLOTLY_PATH, include_in_schema=False)
async def plotly_bundle() -> Response:
    """plotly.js from the installed wheel, cached for a year (its URL carries the version)."""
    resource = plotly_js()
    headers = {"Cache-Control": _VENDOR_CACHE}
    if isinstance(resource, Path):
        return FileResponse(resource, media_type=_MEDIA_TYPES[".js"], headers=headers)
    return Response(resource.read_bytes(), media_type=_MEDIA_TYPES[".js"], headers=headers)  # a zipped install


@router.get(STATIC_PREFIX + "/{name}", include_in_schema=False)
async def dashboard_file(name: str) -> Response:
    """One of the dashboard's scripts or style sheets."""
    resource = static_files().joinpath(name)
    if not _NAME.match(name) or not resource.is_file():
        raise NotFoundError(f"dashboard file {name} does not exist", details={"field": "name", "value": name})
    media_type = _MEDIA_TYPES[name[name.rindex(".") :]]
    return Response(resource.read_bytes(), media_type=media_type, headers={"Cache-Control": _OWN_CACHE})
