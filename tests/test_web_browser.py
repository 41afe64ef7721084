"""The web page in a real browser (headless Debian Chromium, driven by Playwright) against a real
server: browser users chat with each other, with the terminal client and with the article's
client; the page rides out a server restart; user text stays text; a stalled web stream is cut
off without stalling anyone; with auth on, the token decides who speaks; edits, deletes,
reactions and replies change the lines they name (never a new line), the page's /edit, /delete,
/react and /reply reach the server, and a room entered with unread messages shows where they
start.

Fixtures: tests/webfixture.py. Every wait is bounded and waits for something to appear.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import struct
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.limits import Limits
from grpcchat.core.models import Message, Relation, RelationKind
from grpcchat.server.auth import TokenAuthority
from tests.helpers import Follower
from tests.v1_peer import V1Client
from tests.webfixture import (
    PHONE,
    WAIT,
    WAIT_MS,
    WEB_MARKS,
    ChatPage,
    NewUser,
    StallingProxy,
    WebServer,
    WebServerFactory,
)

pytestmark = WEB_MARKS
# Without Playwright the whole module skips with one line (webfixture says why otherwise).
expect = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
).expect

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The README's screenshots are rewritten only when asked (GRPCCHAT_SCREENSHOTS=1), so a test
# run leaves the checkout as it was.
UPDATE_SCREENSHOTS = os.environ.get("GRPCCHAT_SCREENSHOTS") == "1"


def client_for(server: WebServer, token: str = "") -> ChatClient:
    return ChatClient(ClientConfig(addr=server.addr, timeout=WAIT, token=token))


async def message_with_text(follower: Follower, text: str, timeout: float = WAIT) -> Message:
    """The first chat message with this text a terminal session gets (others skipped: its
    own echoes, presence and the like)."""
    async with asyncio.timeout(timeout):
        while True:
            [message] = await follower.messages(1, timeout)
            if message.text == text:
                return message


async def screenshot(page: ChatPage, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    await page.page.screenshot(path=str(path), timeout=WAIT_MS)
    assert path.stat().st_size > 0
    if UPDATE_SCREENSHOTS:
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)


# -- browser users -----------------------------------------------------------------------------


async def test_two_browser_users_chat(
    web_server: WebServer, new_user: NewUser, tmp_path: Path
) -> None:
    alice = await (await new_user()).open(web_server.url, name="alice")
    await alice.expect_connected()
    bob = await (await new_user()).join(web_server.url, "bob")
    await bob.expect_connected()
    # alice sees bob arrive: he is in the room, so whatever she says next reaches him.
    await expect(alice.members.filter(has_text=re.compile(r"^\s*bob\s*$"))).to_have_count(1)

    conversation = [
        ("alice", "hi bob"),
        ("bob", "hello alice"),
        ("alice", "the browser page works"),
        ("bob", "and it keeps the order"),
    ]
    pages = {"alice": alice, "bob": bob}
    for sender, text in conversation:
        await pages[sender].say(text)
        for page in pages.values():
            await page.expect_message(text, sender)

    for page in pages.values():
        assert await page.pairs() == conversation
        seqs = [row["seq"] for row in await page.shown()]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        assert not page.errors
    # The text box is empty again after Enter.
    await expect(bob.message_box).to_have_value("")

    await screenshot(alice, "web-chat.png", tmp_path)
    # The same conversation on a phone-sized screen.
    phone = await (await new_user(viewport=PHONE)).open(web_server.url, name="carol")
    await phone.expect_connected()
    await phone.say("hello from a phone")
    await alice.expect_message("hello from a phone", "carol")
    await phone.expect_message("hello from a phone", "carol")
    await screenshot(phone, "web-chat-phone.png", tmp_path)


async def test_browser_and_terminal_client(web_server: WebServer, new_user: NewUser) -> None:
    async with (
        client_for(web_server) as client,
        Follower(client.session("terminal")) as terminal,
    ):
        page = await (await new_user()).open(web_server.url, name="webby")
        await page.expect_connected()
        await expect(page.members.filter(has_text=re.compile(r"^\s*terminal\s*$"))).to_have_count(1)

        await page.say("from the browser")
        message = await message_with_text(terminal, "from the browser")
        assert (message.sender, message.room) == ("webby", "lobby")

        sent = await terminal.session.send("from the terminal")
        await page.expect_message("from the terminal", "terminal")
        rows = await page.shown()
        assert [(r["sender"], r["text"]) for r in rows] == [
            ("webby", "from the browser"),
            ("terminal", "from the terminal"),
        ]
        # The page shows the server's ids and positions.
        assert rows[0]["id"] == message.id
        assert rows[0]["seq"] == message.seq
        assert rows[1]["id"] == sent.message.id
        assert rows[1]["seq"] == sent.message.seq

        # A direct message from the terminal is marked as one.
        await terminal.session.send("just for you", recipient="webby")
        await page.expect_message("just for you", "terminal")
        direct = page.message_with_text("just for you")
        await expect(direct).to_have_class(re.compile(r"\bdirect\b"))
        # ...and /msg from the page reaches the terminal only as a direct message.
        await page.say("/msg terminal psst")
        message = await message_with_text(terminal, "psst")
        assert (message.sender, message.recipient) == ("webby", "terminal")


async def test_lines_typed_faster_than_the_rate_arrive_in_the_order_typed(
    web_server_factory: WebServerFactory, new_user: NewUser
) -> None:
    server = await web_server_factory(limits=Limits(rate=5, burst=2, request_rate=0))
    page = await (await new_user()).open(server.url, name="quick")
    await page.expect_connected()
    typed = [f"line {n}" for n in range(6)]
    for text in typed:  # each refused over the rate is retried after its retry-after-ms
        await page.say(text)
    await page.expect_message(typed[-1], "quick")
    async with client_for(server) as client:
        history = await client.history("lobby", limit=20)
    assert [m.text for m in history] == typed


async def test_browser_and_the_article_client(web_server: WebServer, new_user: NewUser) -> None:
    page = await (await new_user()).open(web_server.url, name="webby")
    await page.expect_connected()
    async with V1Client(web_server.addr) as gopher:
        # The article's client says hello on its Chat stream (the room "lobby").
        await gopher.join("gopher")
        await page.expect_message("gopher joined", "gopher")

        await page.say("hello, article client")
        got = await gopher.recv_until("webby", "hello, article client", WAIT)
        assert [(m.sender, m.text) for m in got] == [("webby", "hello, article client")]

        await gopher.send("gopher", "hello, browser")
        await page.expect_message("hello, browser", "gopher")
        assert await page.pairs() == [
            ("gopher", "gopher joined"),
            ("webby", "hello, article client"),
            ("gopher", "hello, browser"),
        ]


# -- the server restarted under an open page ---------------------------------------------------


async def test_page_resumes_after_a_server_restart(
    web_server_factory: WebServerFactory, new_user: NewUser, tmp_path: Path
) -> None:
    web_server = await web_server_factory(store=f"sqlite://{tmp_path / 'history.db'}")
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    async with client_for(web_server) as client:
        for i in range(3):
            await client.send("bob", f"before {i}")
    await page.expect_message("before 2", "bob")

    # Down: the page notices and says so.
    await web_server.stop()
    await page.expect_status(r"reconnecting")
    # Back on the same ports and history. Posted at once, before the page is back (its retry
    # waits a moment): only a resume from its last position can bring these.
    await web_server.start()
    async with client_for(web_server) as client:
        during = [(await client.send("bob", f"while away {i}")).message for i in range(5)]
        status_after_sending = (await page.status.text_content(timeout=WAIT_MS)) or ""
        await page.expect_connected()
        await page.expect_message("while away 4", "bob")
        await page.say("back again")
        await page.expect_message("back again", "alice")
        after = (await client.send("bob", "after")).message
        await page.expect_message("after", "bob")

        history = await client.history("lobby", limit=100)
    print(
        f"restart: the page's status when the 5 messages were accepted: "
        f"{status_after_sending.strip()!r}"
    )
    rows = await page.shown()
    # Everything the history has, exactly once, in order: nothing missed, nothing doubled.
    assert [r["seq"] for r in rows] == [m.seq for m in history]
    assert [r["id"] for r in rows] == [m.id for m in history]
    assert {m.id for m in during} | {after.id} <= {r["id"] for r in rows}
    await expect(page.notices.filter(has_text=re.compile("truncated", re.I))).to_have_count(0)
    assert not page.errors


async def test_page_resumes_after_its_connection_went_silent(
    web_server_factory: WebServerFactory, new_user: NewUser
) -> None:
    """A connection that goes silent without closing (a laptop that slept, a NAT that forgot
    the flow) gives the browser no error: the page ends the stream once the server's
    heartbeats stop coming and resumes. While the server still holds the lost session, the
    resume's ALREADY_EXISTS is retried, not final."""
    web_server = await web_server_factory(heartbeat=0.5)
    proxy = await StallingProxy(web_server.web_port).start()
    try:
        page = await (await new_user()).open(proxy.url, name="alice")
        await page.expect_connected()
        proxy.stall()
        async with client_for(web_server) as client:
            await client.send("bob", "while silent")
            await page.expect_status(r"reconnecting.*ALREADY_EXISTS")
            proxy.release()  # the server sees the old connection end, and lets go
            await page.expect_connected()
            await page.expect_message("while silent", "bob")
            await page.say("back")
            await page.expect_message("back", "alice")
    finally:
        await proxy.close()
    assert not page.errors


async def test_after_the_history_is_replaced_handles_name_the_new_messages(
    web_server_factory: WebServerFactory, new_user: NewUser
) -> None:
    """A memory server restarted: a new history whose seqs start again from 1. The lines shown
    stay, without handles; /react 1 names the new message 1, and the read marker moves in the
    new history (it stayed at the old one's last seq, so nothing new was ever marked read)."""
    web_server = await web_server_factory()
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    async with client_for(web_server) as client:
        for i in range(3):
            await client.send("bob", f"old {i}")
        await page.expect_message("old 2", "bob")
        await until_all_read(client, "alice", "lobby")
    await web_server.restart()
    await expect(page.notices.filter(has_text=re.compile("truncated", re.I))).to_have_count(1)
    async with client_for(web_server) as client:
        new = (await client.send("bob", "new 0")).message
        assert new.seq == 1
        await page.expect_message("new 0", "bob")
        await page.say("/react 1 🎉")
        await expect(page.message_with_text("new 0").locator(".reactions")).to_have_text("🎉 alice")
        await until_all_read(client, "alice", "lobby")
    await expect(page.message_with_text("old 0").locator(".seq")).to_have_count(0)
    assert not page.errors


# -- user text is text -------------------------------------------------------------------------

XSS = "<img src=x onerror=alert(1)>"


async def test_markup_in_messages_is_shown_as_text(
    web_server: WebServer, new_user: NewUser
) -> None:
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    await page.say(XSS)
    await page.expect_message(XSS, "alice")
    async with client_for(web_server) as client:
        await client.send("mallory", "<script>alert(2)</script><b>bold</b>")
        await client.send("mallory", f"waves {XSS}", action=True)
        # An edit, a reaction key (no whitespace: a valid one) and the quote of a reply.
        target = (await client.send("mallory", "to be edited")).message
        await client.send(
            "mallory", "<b>edited</b>", relation=Relation(RelationKind.EDIT, target.id)
        )
        markup_key = "<img/src=x/onerror=alert(3)>"
        await client.send("eve", "", relation=Relation(RelationKind.REACT, target.id, markup_key))
        await client.send("eve", "quoting", reply_to=target.id)
        await client.send("mallory", "marker")
    await page.expect_message("<script>alert(2)</script><b>bold</b>", "mallory")
    # The marker came after everything: had any markup run, its dialog came before it.
    await page.expect_message("marker", "mallory")

    texts = [row["text"] for row in await page.shown()]
    assert XSS in texts
    assert "<script>alert(2)</script><b>bold</b>" in texts
    assert "<b>edited</b>" in texts
    edited = page.message_with_text("<b>edited</b>")
    await expect(edited.locator(".reactions")).to_have_text(f"{markup_key} eve")
    await expect(page.message_with_text("quoting").locator(".quote")).to_have_text(
        "↪ mallory <b>edited</b>"
    )
    await expect(page.log.locator("img")).to_have_count(0)
    await expect(page.log.locator("script")).to_have_count(0)
    await expect(page.log.locator("b")).to_have_count(0)
    assert page.dialogs == []
    assert not page.errors


# RIGHT-TO-LEFT OVERRIDE, never closed: it turns whatever follows it in its paragraph around.
RLO = "\u202e"


async def test_a_bidi_override_in_a_message_stays_inside_its_text(
    web_server: WebServer, new_user: NewUser
) -> None:
    """Text may carry bidi controls (a right-to-left quote needs them), but one left open must
    not reach the page's own words after it: "(edited)" stays to the right of the text, in the
    order it was written."""
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    async with client_for(web_server) as client:
        target = (await client.send("mallory", "first")).message
        spoof = f"look {RLO}reversed"
        await client.send("mallory", spoof, relation=Relation(RelationKind.EDIT, target.id))
    line = page.message_with_text(spoof)
    await expect(line.locator(".edited")).to_have_text("(edited)")
    text_box = await line.locator(".text").bounding_box(timeout=WAIT_MS)
    edited_box = await line.locator(".edited").bounding_box(timeout=WAIT_MS)
    assert text_box is not None
    assert edited_box is not None
    assert edited_box["x"] >= text_box["x"] + text_box["width"] - 1, (text_box, edited_box)


# -- a stalled web stream ----------------------------------------------------------------------

SLOW_QUEUE = 32
FLOOD_TEXT = "x" * 4000


def _connect_envelope(message: dict[str, object]) -> bytes:
    """One Connect streaming envelope: flags, big-endian length, JSON message."""
    body = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(body)) + body


async def _open_stalled_subscribe(port: int, name: str) -> socket.socket:
    """A Connect Subscribe over HTTP/1.1 on a raw socket with a tiny receive buffer: the
    request is sent, and the response is never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), WAIT)
    body = _connect_envelope({"name": name, "room": "lobby"})
    head = (
        "POST /chat.v1.ChatService/Subscribe HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/connect+json\r\n"
        "Connect-Protocol-Version: 1\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    await asyncio.get_running_loop().sock_sendall(sock, head + body)
    return sock


async def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server wrote, until it closed the connection (bounded)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_stalled_web_stream_is_cut_off_and_nobody_waits(
    web_server_factory: WebServerFactory, new_user: NewUser
) -> None:
    web_server = await web_server_factory(
        limits=Limits(queue_size=SLOW_QUEUE, rate=0, request_rate=0)
    )
    hub = web_server.running.hub
    page = await (await new_user()).open(web_server.url, name="reader")
    await page.expect_connected()
    sessions_before = hub.registered_sessions

    stalled = await _open_stalled_subscribe(web_server.web_port, "stalled")
    try:
        async with asyncio.timeout(WAIT):
            while hub.registered_sessions == sessions_before:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

        async with client_for(web_server) as client:
            started = time.monotonic()
            sent = []
            for i in range(3000):
                sent.append((await client.send("flood", f"{i} {FLOOD_TEXT}")).message)
                if hub.registered_sessions == sessions_before:
                    break
            else:
                pytest.fail("the stalled web stream was never cut off")
            cut_after = time.monotonic() - started
            last = (await client.send("flood", "after the cut-off")).message

            # The page got everything, promptly (nobody waited for the stalled stream).
            await page.expect_message("after the cut-off", "flood")
            delivered = time.monotonic() - started
            rows = await page.shown()
            assert [r["seq"] for r in rows] == [m.seq for m in [*sent, last]]
        print(
            f"stalled web stream: cut off after {len(sent)} messages of 4 KB "
            f"({cut_after:.2f} s); the page had all {len(rows)} {delivered:.2f} s after the start"
        )

        # The server closed the stalled stream's connection: reading it now finds what was
        # queued before the cut-off, then the end. Its reader was not reading, so no status can
        # reach it: the response is cut short (no last chunk), or ends with the error.
        data = await _read_to_eof(stalled, 30)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert b"resource_exhausted" in data or not data.endswith(b"\r\n0\r\n\r\n"), data[-300:]
    finally:
        stalled.close()


# -- auth on -----------------------------------------------------------------------------------

SECRET = "web-browser-tests-secret-0123456789"


async def test_auth_on_the_token_decides_who_speaks(
    web_server_factory: WebServerFactory, new_user: NewUser
) -> None:
    web_server = await web_server_factory(auth_secret=SECRET)
    authority = TokenAuthority(SECRET)

    anonymous = await (await new_user()).join(web_server.url, "nobody")
    await anonymous.expect_status(r"unauthenticated")

    # A name box that says "mallory", a token that says "alice": the token wins.
    alice_token = authority.mint("alice", timedelta(minutes=5))
    async with client_for(web_server, alice_token) as client:
        await client.send("alice", "from before")
    alice = await (await new_user()).join(web_server.url, "mallory", token=alice_token)
    await alice.expect_connected()
    await alice.expect_message("from before", "alice")
    # Hers from the start, before she has sent anything from the page (it used to take the
    # name box for her until a send's answer said otherwise).
    await alice.say("/edit from before, fixed")
    await expect(alice.message_with_text("from before, fixed").locator(".edited")).to_have_text(
        "(edited)"
    )
    bob_token = authority.mint("bob", timedelta(minutes=5))
    async with (
        client_for(web_server, bob_token) as client,
        Follower(client.session("bob")) as bob,
    ):
        await alice.say("who am I?")
        message = await message_with_text(bob, "who am I?")
        assert message.sender == "alice"
        await alice.expect_message("who am I?", "alice")

        await bob.session.send("you are alice")
        await alice.expect_message("you are alice", "bob")

    # The page without a token got none of it, and still says why.
    await expect(anonymous.messages).to_have_count(0)
    await anonymous.expect_status(r"unauthenticated")


# -- many pages on one server ------------------------------------------------------------------

PAGES = 10


async def test_many_pages_on_one_server(web_server: WebServer, new_user: NewUser) -> None:
    """Ten users (a browser context each, one tab each) on one server at once."""
    hub = web_server.running.hub
    pages = [await new_user() for _ in range(PAGES)]
    started = time.monotonic()
    await asyncio.gather(
        *(page.open(web_server.url, name=f"user{i}") for i, page in enumerate(pages))
    )
    for page in pages:
        await page.expect_connected()
    opened = time.monotonic() - started
    async with asyncio.timeout(WAIT):
        while hub.registered_sessions < PAGES:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    held = hub.registered_sessions

    started = time.monotonic()
    async with client_for(web_server) as client:
        await client.send("bot", "to everyone")
    for page in pages:
        await page.expect_message("to everyone", "bot")
    print(
        f"{PAGES} pages in one browser: {held} sessions registered, all connected in "
        f"{opened:.2f} s; one message shown on all of them in {time.monotonic() - started:.2f} s"
    )
    assert held == PAGES
    await pages[-1].say("and back")
    await pages[0].expect_message("and back", f"user{PAGES - 1}")


TABS = 6  # Chromium's HTTP/1.1 connections per host and profile


@pytest.mark.xfail(
    strict=True,
    reason="each tab's stream holds one of the browser's 6 HTTP/1.1 connections to the host: "
    "with 6 tabs open no request gets out (sends hang), a 7th tab does not even load",
)
async def test_six_tabs_of_one_user_still_chat(web_server: WebServer, new_user: NewUser) -> None:
    first = await new_user()
    tabs = [first] + [ChatPage(await first.page.context.new_page()) for _ in range(TABS - 1)]
    for i, tab in enumerate(tabs):
        await tab.open(web_server.url, name=f"tab{i}")
        await tab.expect_connected()
    await first.say("six tabs")
    for tab in tabs:
        await expect(tab.message_with_text("six tabs")).to_have_count(1, timeout=3_000)


# -- conversations: edits, deletes, reactions, replies, typing, read markers ---------------------


async def conversation(page: ChatPage) -> list[dict[str, Any]]:
    """Each chat line as the page shows it now: its handle, who, what, and its marks."""
    rows: list[dict[str, Any]] = await page.messages.evaluate_all(
        """items => items.map(li => ({
            seq: Number(li.dataset.seq || 0),
            handle: li.querySelector(".seq")?.textContent ?? "",
            sender: (li.querySelector(".sender")?.textContent || "").trim(),
            text: li.querySelector(".text")?.textContent ?? null,
            edited: li.querySelector(".edited")?.textContent ?? "",
            deleted: li.classList.contains("deleted"),
            reactions: li.querySelector(".reactions")?.textContent ?? "",
            quote: li.querySelector(".quote")?.textContent ?? "",
        }))"""
    )
    return rows


async def until_all_read(client: ChatClient, name: str, room: str) -> None:
    """Until `name` has no unread message in `room` (the page marked what it shows read)."""

    async def unread() -> int:
        return next((r.unread for r in await client.rooms(name=name) if r.name == room), 0)

    async with asyncio.timeout(WAIT):
        while await unread():  # noqa: ASYNC110 (polling the server: no event to wait on)
            await asyncio.sleep(0.1)


async def test_edits_deletes_reactions_and_replies_change_the_lines_they_name(
    web_server: WebServer, new_user: NewUser, tmp_path: Path
) -> None:
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    typing = page.page.locator("#typing")
    async with (
        client_for(web_server) as client,
        Follower(client.session("bob")) as bob,
    ):
        first = (await bob.session.send("first")).message
        second = (await bob.session.send("second")).message
        await page.expect_message("second", "bob")

        # bob types on his Connect session: the page says so, until he stops.
        await bob.session.typing("lobby", True)
        await expect(typing).to_have_text("bob is typing…")
        await bob.session.typing("lobby", False)
        await expect(typing).to_have_text("")

        await bob.session.send("first, edited", relation=Relation(RelationKind.EDIT, first.id))
        await bob.session.send("", relation=Relation(RelationKind.DELETE, second.id))
        await client.send("carol", "", relation=Relation(RelationKind.REACT, first.id, "👍"))
        await bob.session.send("", relation=Relation(RelationKind.REACT, first.id, "👍"))
        await bob.session.send("", relation=Relation(RelationKind.REACT, first.id, "🎉"))
        reply = (await bob.session.send("an answer", reply_to=first.id)).message
        # Delivered in order: once the reply shows, every change before it has been applied.
        await page.expect_message("an answer", "bob")
        expected = [
            {
                "seq": first.seq,
                "handle": str(first.seq),
                "sender": "bob",
                "text": "first, edited",
                "edited": "(edited)",
                "deleted": False,
                "reactions": "👍 carol, bob · 🎉 bob",
                "quote": "",
            },
            {
                "seq": second.seq,
                "handle": str(second.seq),
                "sender": "bob",
                "text": "message deleted",
                "edited": "",
                "deleted": True,
                "reactions": "",
                "quote": "",
            },
            {
                "seq": reply.seq,
                "handle": str(reply.seq),
                "sender": "bob",
                "text": "an answer",
                "edited": "",
                "deleted": False,
                "reactions": "",
                "quote": "↪ bob first, edited",
            },
        ]
        # Three lines: the edit, the delete and the reactions made none of their own.
        assert await conversation(page) == expected

        # A click on a reaction chip adds alice's own; the server has it.
        chip = page.message_with_text("first, edited").get_by_role("button", name=re.compile("👍"))
        await expect(chip).to_have_attribute("aria-pressed", "false")
        await chip.click()
        await expect(chip).to_have_text("👍 carol, bob, alice")
        await expect(chip).to_have_attribute("aria-pressed", "true")
        [stored] = [m for m in await client.history("lobby") if m.id == first.id]
        assert [(r.emoji, r.names) for r in stored.reactions] == [
            ("👍", ("carol", "bob", "alice")),
            ("🎉", ("bob",)),
        ]
        expected[0]["reactions"] = "👍 carol, bob, alice · 🎉 bob"

        # An edit of the message a reply quotes changes the quote too.
        await bob.session.send("first, again", relation=Relation(RelationKind.EDIT, first.id))
        await expect(page.message_with_text("an answer").locator(".quote")).to_have_text(
            "↪ bob first, again"
        )
        expected[0]["text"] = "first, again"
        expected[2]["quote"] = "↪ bob first, again"
        await bob.session.typing("lobby", True)
        await expect(typing).to_have_text("bob is typing…")
        await screenshot(page, "web-conversation.png", tmp_path)

    # Reloaded: the replay brings each message in its current state and the changes again;
    # applied twice, nothing doubles.
    await page.open(web_server.url, name="alice")
    await page.expect_connected()
    await expect(page.messages).to_have_count(3)
    assert await conversation(page) == expected
    assert not page.errors


async def test_the_pages_commands_edit_delete_react_and_reply(
    web_server: WebServer, new_user: NewUser
) -> None:
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    async with client_for(web_server) as client:
        bobs = (await client.send("bob", "bob was here")).message
        await page.expect_message("bob was here", "bob")
        await page.say("helo")
        await page.expect_message("helo", "alice")

        # /edit without a handle: alice's last message.
        await page.say("/edit hello")
        await expect(page.message_with_text("hello").locator(".edited")).to_have_text("(edited)")
        [mine] = [
            m for m in await client.history("lobby") if m.relation is None and m.sender == "alice"
        ]
        assert (mine.text, mine.edited_at is not None) == ("hello", True)

        await page.say(f"/reply {bobs.seq} hi bob")
        await page.expect_message("hi bob", "alice")
        await expect(page.message_with_text("hi bob").locator(".quote")).to_have_text(
            "↪ bob bob was here"
        )
        await page.say(f"/react {bobs.seq} 🎉")
        await expect(page.message_with_text("bob was here").locator(".reactions")).to_have_text(
            "🎉 alice"
        )
        await page.say(f"/unreact {bobs.seq} 🎉")
        await expect(page.message_with_text("bob was here").locator(".reactions")).to_have_count(0)
        # /delete without a handle: the reply, alice's last message now.
        await page.say("/delete")
        await page.expect_message("message deleted", "alice")
        # Someone else's message: the server refuses, and the page says why.
        await page.say(f"/edit {bobs.seq} not mine")
        await expect(page.notices.filter(has_text="PERMISSION_DENIED")).to_have_count(1)
        # A handle alone is an incomplete /edit (sent, it would make a message read "N"), and
        # a room named "#" is no room (not the lobby).
        await page.say(f"/edit {bobs.seq}")
        await expect(page.notices.filter(has_text="incomplete command /edit")).to_have_count(1)
        await page.say("/join #")
        await expect(page.notices.filter(has_text="incomplete command /join")).to_have_count(1)
        # A refused send is told in the log, its text back in the box; the stream is fine.
        await page.say("/msg nobody are you there")
        await expect(page.notices.filter(has_text="/msg: NOT_FOUND")).to_have_count(1)
        await expect(page.message_box).to_have_value("/msg nobody are you there")
        await page.expect_connected()
        await page.message_box.fill("")

        history = {m.id: m for m in await client.history("lobby") if m.relation is None}
        reply = next(m for m in history.values() if m.reply_to == bobs.id)
        assert reply.deleted
        assert reply.text == ""
        assert history[bobs.id].text == "bob was here"
        assert history[bobs.id].reactions == ()
    # Only the three posts are lines: every change went to the line it names.
    await expect(page.messages).to_have_count(3)
    assert not page.errors


async def read_the_lobby_then_leave(
    web_server: WebServer, new_user: NewUser, client: ChatClient
) -> ChatPage:
    """alice's page shows bob's "read this" in #lobby, marks it read, then is reloaded into
    #games: everything #lobby holds so far is read."""
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    await client.send("bob", "read this")
    await page.expect_message("read this", "bob")
    # The page marks what it shows as read (MarkRead, at most once a second).
    await until_all_read(client, "alice", "lobby")
    await expect(page.log.locator("li.divider")).to_have_count(0)
    await page.open(web_server.url, name="alice", room="games")
    await page.expect_connected()
    return page


async def test_a_room_entered_with_unread_messages_shows_where_they_start(
    web_server: WebServer, new_user: NewUser
) -> None:
    async with client_for(web_server) as client:
        page = await read_the_lobby_then_leave(web_server, new_user, client)
        # Meanwhile two messages arrive in #lobby.
        await client.send("bob", "unread 1")
        await client.send("bob", "unread 2")
        await page.say("/rooms")
        lobby = page.rooms.locator("li").filter(
            has=page.page.get_by_role("button", name="lobby", exact=True)
        )
        await expect(lobby.locator(".unread")).to_have_text("2 unread")

        await lobby.get_by_role("button", name="lobby", exact=True).click()
        await page.expect_message("unread 2", "bob")
        await page.expect_connected()
        divider = page.log.locator("li.divider")
        await expect(divider).to_have_text("── unread ──")
        # Right before the first message not read yet.
        follows = await divider.evaluate(
            "d => d.nextElementSibling.querySelector('.text').textContent"
        )
        assert follows == "unread 1"
        # ...and shown is read: the count is gone.
        await until_all_read(client, "alice", "lobby")
    assert not page.errors


async def test_more_unread_than_the_replay_holds_are_all_shown_from_the_first(
    web_server: WebServer, new_user: NewUser
) -> None:
    """Back in a room with more unread messages than the page replays (50), the divider sat
    above the replay's first, the ones before it were never shown, and the page marked them
    read during the replay; and a deleted message got the divider, though unread counts
    leave it out."""
    async with client_for(web_server) as client:
        page = await read_the_lobby_then_leave(web_server, new_user, client)
        gone = await client.send("bob", "gone")
        await client.send("bob", "", relation=Relation(RelationKind.DELETE, gone.message.id))
        for n in range(1, 61):
            await client.send("bob", f"unread {n}")

        await page.open(web_server.url, name="alice", room="lobby")
        await page.expect_message("unread 60", "bob")
        await page.expect_message("unread 1", "bob")
        divider = page.log.locator("li.divider")
        await expect(divider).to_have_count(1)
        follows = await divider.evaluate(
            "d => d.nextElementSibling.querySelector('.text').textContent"
        )
        assert follows == "unread 1"
        rows = await conversation(page)
        assert [row["deleted"] for row in rows[:1]] == [True]  # "gone", before the divider
        assert [row["text"] for row in rows[1:]] == [f"unread {n}" for n in range(1, 61)]
        await until_all_read(client, "alice", "lobby")
    assert not page.errors


# -- entering rooms ----------------------------------------------------------------------------


async def test_entering_the_room_the_page_is_in_or_just_left_keeps_it_connected(
    web_server: WebServer, new_user: NewUser
) -> None:
    """A second click on the current room, `/join` of it, or going back to a room just left,
    opened a new stream while the server still held the name for the old one: refused as
    taken, and the page stopped for good."""
    page = await (await new_user()).open(web_server.url, name="zed", room="sw1")
    await page.expect_connected()
    current = page.rooms.get_by_role("button", name="sw1")
    await expect(current).to_have_count(1)
    subscribes: list[str] = []
    page.page.on("request", lambda r: subscribes.append(r.url) if "Subscribe" in r.url else None)
    await current.dblclick()
    await page.say("/join sw1")
    await page.say("marker")
    await page.expect_message("marker", "zed")
    assert subscribes == []  # no new stream: nothing for the server to refuse
    for _ in range(3):
        await page.say("/join other")
        await page.say("/join sw1")  # back at once: the server may still hold zed in #sw1
        await page.expect_connected()
    await page.say("still here")
    await page.expect_message("still here", "zed")
    assert "ALREADY_EXISTS" not in (await page.status.inner_text())
    assert not page.errors


async def test_a_page_whose_join_was_refused_sends_nothing(
    web_server: WebServer, new_user: NewUser
) -> None:
    """Refused (the name taken), the page still posted what was typed, as that name, to a
    room it did not show: its user saw nothing happen."""
    first = await (await new_user()).open(web_server.url, name="alice", room="taken")
    await first.expect_connected()
    second = await (await new_user()).open(web_server.url, name="alice", room="taken")
    await second.expect_status("ALREADY_EXISTS")
    await second.say("hello")
    await second.expect_status("not in a room: join one first")
    await expect(second.message_box).to_have_value("hello")  # kept, not lost
    async with client_for(web_server) as client:
        assert await client.history("taken") == []
    await second.say("/leave")  # the way out: the lobby, where the name is free
    await second.expect_connected()
    await second.say("in the lobby")
    await second.expect_message("in the lobby", "alice")


async def test_a_message_over_the_limit_is_refused_whole_not_cut(
    web_server: WebServer, new_user: NewUser
) -> None:
    """The box's maxlength cut a paste at 4,096 UTF-16 units without a word: 904 characters of
    a 5,000-character paste vanished, and 3,000 emoji (which the server takes) became 2,048."""
    page = await (await new_user()).open(web_server.url, name="amy")
    await page.expect_connected()
    too_long = "x" * 5000
    await page.say(too_long)
    await expect(page.notices.last).to_have_text(
        "not sent: the message is 5000 characters long; the limit is 4096"
    )
    await expect(page.message_box).to_have_value(too_long)
    emoji = "😀" * 3000  # 6,000 UTF-16 units, 3,000 characters: within the limit
    await page.say(emoji)
    await page.expect_message(emoji, "amy")


async def test_lines_that_cannot_be_sent_keep_their_order_and_are_never_lost(
    web_server_factory: WebServerFactory, new_user: NewUser, tmp_path: Path
) -> None:
    """The server down: the first line failed after its retries and went back in the box, but
    the lines typed after it were sent once the server was back, ahead of it; and a later one
    that failed too was dropped without a word (the box was no longer empty)."""
    web_server = await web_server_factory(store=f"sqlite://{tmp_path / 'history.db'}")
    page = await (await new_user()).open(web_server.url, name="alice")
    await page.expect_connected()
    await web_server.stop()
    await page.expect_status(r"reconnecting")
    lines = ["line one", "line two", "line three"]
    for line in lines:
        await page.say(line)
    # The first gives up after its retries (about 15 s); the two behind it then at once.
    await expect(page.notices.filter(has_text="not sent")).to_have_count(3, timeout=40_000)
    told = await page.notices.filter(has_text="not sent").all_inner_texts()
    assert [text.rsplit('"', 2)[-2] for text in told] == lines  # each names its text
    assert "a message before it could not be sent" in told[1]
    assert "a message before it could not be sent" in told[2]
    await expect(page.message_box).to_have_value("line one")
    await web_server.start()
    await page.expect_connected()
    async with client_for(web_server) as client:
        assert await client.history("lobby") == []  # none went ahead of the first
