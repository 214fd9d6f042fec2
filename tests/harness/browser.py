"""A real browser for the dashboard's tests: Debian's chromium, headless, driven by Playwright
(its own browser download cannot work here; `.ci/run` installs chromium when it is missing).

`PageWatch` records what a user would never want from a page: script errors, console errors
(a CSP violation is one) and any request to a host other than the page's own."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import ConsoleMessage, Page, Request, WebSocket

from tests.harness.environment import REPO

# Flags for a closed network and a root user: without the background-networking flags chromium
# keeps trying to reach Google's hosts; as root it cannot start its sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
]
ARTIFACTS = Path(os.environ.get("VIDMESH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboard"


def chromium_path() -> str:
    """Where chromium is (`VIDMESH_CHROMIUM`, else on PATH); a clear failure when it is not."""
    found = os.environ.get("VIDMESH_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if not found:
        raise AssertionError(
            "the dashboard's browser tests need chromium: `apt-get install chromium` (Debian), "
            "or VIDMESH_CHROMIUM=/path/to/chrome"
        )
    return found


@dataclass
class PageWatch:
    """Everything a page did that it should not have, as it happened."""

    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("request", self._request)
        page.on("websocket", self._socket)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url', '')})")

    def _request(self, request: Request) -> None:
        if not (request.url.startswith(self.origin + "/") or request.url.startswith("data:")):
            self.foreign.append(request.url)

    def _socket(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)
        ws_origin = "ws" + self.origin.removeprefix("http")
        if not socket.url.startswith(ws_origin + "/"):
            self.foreign.append(socket.url)

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        assert not self.foreign, self.foreign


async def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot kept as a test artifact (test-artifacts/dashboard/<name>.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
