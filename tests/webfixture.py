"""The web page in a real browser against a real server: Debian's Chromium driven by Playwright.

- `browser`: one headless Chromium per test module (Playwright's async API, the system binary
  at /usr/bin/chromium: Playwright's own browser download is never used). Tests that use it run
  on the module's event loop (`pytestmark = WEB_MARKS`), so every fixture here is on that loop.
- `new_user`: a fresh browser context per call, so two calls are two users with nothing shared
  (cookies, storage, connections); each comes back as a `ChatPage`.
- `web_server`: a `ChatServer` in this process with the web port on (memory history, no rate
  limits); `web_server_factory` builds others (auth on, a SQLite file, restarts on one port).

Without Playwright, Chromium or a server that has a web port, every test that asks for these
is skipped with a one-line reason. Every wait is bounded (`WAIT_MS`, `WAIT`).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio

from grpcchat.core.limits import Limits
from grpcchat.server import ChatServer
from grpcchat.server import config as server_config
from grpcchat.server.config import ServerConfig

CHROMIUM = os.environ.get("GRPCCHAT_TEST_CHROMIUM", "/usr/bin/chromium")
# As the machine notes require: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, which this closed network refuses. Playwright adds a fresh, empty
# --user-data-dir of its own to every launch.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WAIT_MS = 10_000  # every expect(...) and locator wait, in milliseconds
WAIT = WAIT_MS / 1000  # the same bound for waits on the Python side
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 844}

# Every browser test: on the module's loop (the browser's), and a hard cap per test.
WEB_MARKS = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if "web_port" not in {f.name for f in fields(ServerConfig)}:
        return "the server has no web port yet (ServerConfig.web_port)"
    try:
        import grpcchat.web.server  # noqa: F401
    except ImportError as error:
        return f"the web server cannot be imported ({error}; pip install -e '.[web]')"
    return None


def _require_browser() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


# -- the server --------------------------------------------------------------------------------


def web_config(**overrides: Any) -> ServerConfig:
    """A test server: gRPC and the web port each on a port the OS picks, memory history, no
    rate limits (tests post quickly)."""
    base: dict[str, Any] = {
        "port": 0,
        "store": "memory://",
        "limits": Limits(rate=0, request_rate=0),
        "grace_period": 0.5,
        "web_port": server_config.WEB_PORT_ANY,
    }
    base.update(overrides)
    return ServerConfig(**base)


@dataclass
class WebServer:
    """A `ChatServer` with its web port; `restart()` stops it and starts a new one on the same
    ports and history (give it a SQLite file store for the history to survive)."""

    config: ServerConfig
    server: ChatServer | None = None
    history: list[ChatServer] = field(default_factory=list)

    async def start(self) -> WebServer:
        assert self.server is None, "running already"
        server = ChatServer(self.config)
        await server.start()
        self.server = server
        self.history.append(server)
        # Later starts reuse the ports this one bound.
        self.config = replace(self.config, port=server.port, web_port=server.web_port)
        return self

    async def stop(self, grace: float = 0.0) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(grace)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def running(self) -> ChatServer:
        assert self.server is not None, "not running"
        return self.server

    @property
    def addr(self) -> str:
        """The gRPC address, for the client library and the article's client."""
        return f"127.0.0.1:{self.config.port}"

    @property
    def web_port(self) -> int:
        return int(self.config.web_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"


WebServerFactory = Callable[..., Awaitable[WebServer]]


class StallingProxy:
    """A TCP proxy in front of a web port. `stall()` makes the connections open now go silent
    both ways, closing neither side: what a page sees when a laptop sleeps or a NAT forgets
    the flow (no FIN, no RST, nothing, so the browser reports no error). `release()` closes
    them, as the server's kernel does in time. Connections made later pass through."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._open: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._stalled: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stall(self) -> None:
        self._stalled += self._open
        self._open = []

    def release(self) -> None:
        for pair in self._stalled:
            for writer in pair:
                writer.transport.abort()
        self._stalled = []

    async def close(self) -> None:
        self._open, self._stalled = [], self._open + self._stalled
        self.release()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                "127.0.0.1", self._target_port
            )
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, upstream)
        self._open.append(pair)
        await asyncio.gather(
            self._pipe(pair, reader, upstream), self._pipe(pair, upstream_reader, writer)
        )

    async def _pipe(
        self,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await source.read(65536):
                if pair not in self._open:
                    return  # stalled (nothing more is passed on) or released
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        if pair in self._open:
            sink.close()


@pytest_asyncio.fixture(loop_scope="module")
async def web_server_factory() -> AsyncIterator[WebServerFactory]:
    """`await web_server_factory(**ServerConfig fields)`: a started `WebServer`, stopped at the
    end of the test."""
    _require_browser()
    made: list[WebServer] = []

    async def make(**overrides: Any) -> WebServer:
        running = await WebServer(web_config(**overrides)).start()
        made.append(running)
        return running

    try:
        yield make
    finally:
        for running in made:
            await running.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def web_server(web_server_factory: WebServerFactory) -> WebServer:
    return await web_server_factory()


# -- the browser -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Debian Chromium for the module."""
    _require_browser()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            timeout=30_000,
        )
        try:
            yield launched
        finally:
            await launched.close()


class ChatPage:
    """One user's tab: the page contract's controls, and what the page has shown."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []  # uncaught exceptions in the page
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    async def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    # The contract's elements.
    @property
    def name_box(self) -> Any:
        return self.page.get_by_label("Name", exact=True)

    @property
    def token_box(self) -> Any:
        return self.page.get_by_label("Token", exact=True)

    @property
    def room_box(self) -> Any:
        return self.page.get_by_label("Room", exact=True)

    @property
    def join_button(self) -> Any:
        return self.page.get_by_role("button", name="Join", exact=True)

    @property
    def message_box(self) -> Any:
        return self.page.get_by_label("Message", exact=True)

    @property
    def log(self) -> Any:
        return self.page.get_by_role("log", name="Messages")

    @property
    def messages(self) -> Any:
        return self.log.locator("li.message")

    @property
    def notices(self) -> Any:
        return self.log.locator("li.notice")

    @property
    def members(self) -> Any:
        return self.page.get_by_role("list", name="Members").locator("li")

    @property
    def rooms(self) -> Any:
        return self.page.get_by_role("list", name="Rooms")

    @property
    def status(self) -> Any:
        return self.page.locator("#status")

    # Doing things.
    async def open(self, url: str, name: str = "", room: str = "") -> ChatPage:
        """Load the page; with a name, `?name=&room=` (which joins at once)."""
        query = {k: v for k, v in (("name", name), ("room", room)) if v}
        await self.page.goto(url + (f"?{urlencode(query)}" if query else ""), timeout=WAIT_MS)
        return self

    async def join(self, url: str, name: str, room: str = "", token: str = "") -> ChatPage:
        """Load the page, fill the boxes and press Join."""
        await self.open(url)
        await self.name_box.fill(name)
        if token:
            await self.token_box.fill(token)
        if room:
            await self.room_box.fill(room)
        await self.join_button.click()
        return self

    async def say(self, text: str) -> None:
        """Type into the message box and press Enter."""
        await self.message_box.fill(text)
        await self.message_box.press("Enter")

    def message_with_text(self, text: str) -> Any:
        """The chat messages whose text is exactly `text`."""
        exact = re.compile(f"^{re.escape(text)}$")
        return self.messages.filter(has=self.page.locator("span.text", has_text=exact))

    async def expect_message(self, text: str, sender: str | None = None) -> None:
        """Until exactly one chat message with this text (and sender) is shown."""
        from playwright.async_api import expect

        shown = self.message_with_text(text)
        if sender is not None:
            exact = re.compile(f"^\\s*{re.escape(sender)}:?\\s*$")
            shown = shown.filter(has=self.page.locator("span.sender", has_text=exact))
        await expect(shown).to_have_count(1, timeout=WAIT_MS)

    async def expect_status(self, pattern: str) -> None:
        from playwright.async_api import expect

        await expect(self.status).to_have_text(re.compile(pattern, re.I), timeout=WAIT_MS)

    async def expect_connected(self) -> None:
        await self.expect_status(r"^\s*connected\b")

    async def shown(self) -> list[dict[str, Any]]:
        """Every chat message shown, in order: id, seq, sender, text, classes."""
        rows: list[dict[str, Any]] = await self.messages.evaluate_all(
            """items => items.map(li => ({
                id: li.dataset.id || "",
                seq: Number(li.dataset.seq || 0),
                sender: (li.querySelector(".sender")?.textContent || "").trim(),
                text: li.querySelector(".text")?.textContent ?? null,
                classes: [...li.classList],
            }))"""
        )
        for row in rows:
            row["sender"] = row["sender"].removesuffix(":").strip()
        return rows

    async def pairs(self) -> list[tuple[str, str]]:
        return [(row["sender"], row["text"]) for row in await self.shown()]


NewUser = Callable[..., Awaitable[ChatPage]]


@pytest_asyncio.fixture(loop_scope="module")
async def new_user(browser: Any) -> AsyncIterator[NewUser]:
    """`await new_user()`: a `ChatPage` in a fresh browser context (a user of its own);
    `new_user(viewport=PHONE)` for a phone-sized one. Closed at the end of the test."""
    contexts: list[Any] = []

    async def make(viewport: dict[str, int] | None = None, **options: Any) -> ChatPage:
        context = await browser.new_context(viewport=viewport or DESKTOP, **options)
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        contexts.append(context)
        return ChatPage(await context.new_page())

    try:
        yield make
    finally:
        for context in contexts:
            await asyncio.wait_for(context.close(), WAIT)
