"""Screenshots of the dashboard for the docs: `make screenshots` (or `python -m tests.support.screenshots [OUT]`)
starts the service on the simulated market with half an hour of stored history, opens `/` in Chromium at
1366×768 (a laptop screen), dark and light, and writes docs/images/dashboard-{dark,light}.png."""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.browser.conftest import CHROMIUM, FLAGS, offline_page
from tests.e2e.conftest import AAPL, REPO
from tests.support.dashboard_service import start_sim_service

OUT = REPO / "docs" / "images"
VIEW = f"?contract={AAPL}&day=recent&bar=15s&session=regular"
SIZE = (1366, 768)


def capture(browser: Any, base_url: str, out: Path, view: str = VIEW, settle_seconds: float = 3.0) -> list[Path]:
    """Write the dashboard at `view`, dark and light, into `out`; return the files. The page must load offline."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for theme in ("dark", "light"):
        page, log = offline_page(browser, base_url)
        try:
            page.set_viewport_size({"width": SIZE[0], "height": SIZE[1]})
            page.goto(f"/{view}&theme={theme}")
            page.wait_for_function("window.ibDashboard && window.ibDashboard.state.loads > 0", timeout=30_000)
            time.sleep(settle_seconds)  # a few live updates, the book polled
            path = out / f"dashboard-{theme}.png"
            page.screenshot(path=str(path))
            if log.console_errors or log.failed or log.outside:
                raise RuntimeError(f"the dashboard did not load cleanly: {log}")
            written.append(path)
        finally:
            page.context.close()
    return written


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        print(f"Chromium is missing at {CHROMIUM} (`make browser` installs it)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="ib-stream-screenshots-") as root:
        server, stop = start_sim_service(Path(root) / "storage", history_minutes=30)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
                try:
                    for path in capture(browser, server.url, out):
                        print(f"wrote {path} ({'x'.join(map(str, png_size(path)))})")
                finally:
                    browser.close()
        finally:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
