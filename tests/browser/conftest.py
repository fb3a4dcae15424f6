"""Browser tests: Debian's Chromium driven by Playwright for Python (no browser download: `make test` installs
Chromium with the system's package manager). Every page load is offline: requests to anything but the service
on loopback are aborted and recorded, so a page that needs the internet fails its test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageLog:
    """What a page did: console errors, failed requests and the requests that tried to leave the machine."""

    console_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")  # not longer: Playwright's sync API keeps an event loop running meanwhile,
def browser() -> Iterator[Any]:  # which would break the asyncio tests that follow
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed at /usr/bin/chromium (`make test` installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


def offline_page(browser: Any, base_url: str) -> tuple[Any, PageLog]:
    """A new page that may only reach `base_url`; everything else is aborted and logged."""
    log = PageLog()
    context = browser.new_context(base_url=base_url)
    page = context.new_page()

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(base_url) or url.startswith("data:"):
            request_route.continue_()
        else:
            log.outside.append(url)
            request_route.abort()

    page.route("**/*", route)
    page.on("console", lambda message: log.console_errors.append(message.text) if message.type == "error" else None)
    page.on("requestfailed", lambda request: log.failed.append(request.url))
    page.on(
        "response",
        lambda response: log.failed.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )
    return page, log
