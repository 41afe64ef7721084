"""Conversations from the command line, as a user runs them: `grpcchat send --edit/--delete/
--react/--unreact/--reply-to`, `history` showing each message as it is now, `rooms --name`
with unread counts. Subprocesses against a real server in this process (port 0); what the
server stored is read back with a real client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from unittest.mock import ANY

import pytest

from grpcchat.client import ChatClient
from grpcchat.client.config import ClientConfig
from grpcchat.core.errors import RemoteError
from grpcchat.core.history import MAX_DISTINCT_EMOJI
from grpcchat.core.models import Reaction, Relation, RelationKind
from tests.conftest import CliResult, ServerProcess, run_cli, run_cli_async
from tests.helpers import Follower
from tests.test_startup import FAST, TYPER, run
from tests.v1_peer import V1Server

pytestmark = pytest.mark.timeout(60)


async def cli(addr: str, name: str, *args: str) -> CliResult:
    return await run_cli_async("send", "--addr", addr, "--name", name, *args, timeout=15)


async def send_json(addr: str, name: str, *args: str) -> dict[str, object]:
    """`grpcchat send --json ARGS` as `name`: the one object it printed (it must succeed)."""
    result = await cli(addr, name, "--json", *args)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    parsed: dict[str, object] = json.loads(line)
    return parsed


async def history_json(addr: str, *args: str) -> list[dict[str, object]]:
    result = await run_cli_async("history", "--addr", addr, "--json", *args, timeout=15)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def one_error_line(result: CliResult) -> str:
    """The run printed nothing on stdout and exactly one `error: ...` line on stderr."""
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    return line


# -- send: each change, by id and by seq ------------------------------------------------------


async def test_send_edits_reacts_replies_and_deletes_by_id_and_by_seq(
    addr: str, client: ChatClient
) -> None:
    hello = await send_json(addr, "alice", "hello")
    hello_id = hello["id"]
    assert hello["seq"] == 1
    assert "relation" not in hello
    assert "reply_to" not in hello

    # A reply by seq: the entry names the message's id.
    reply = await send_json(addr, "bob", "--reply-to", "1", "hi alice")
    assert (reply["seq"], reply["text"], reply["reply_to"]) == (2, "hi alice", hello_id)

    # An edit by id: the accepted entry is the relation itself, with its own seq.
    edit = await send_json(addr, "alice", "--edit", str(hello_id), "hello all")
    assert (edit["seq"], edit["text"], edit["sender"]) == (3, "hello all", "alice")
    assert edit["relation"] == {"kind": "edit", "target": hello_id}

    react = await send_json(addr, "bob", "--react", "1", "👍")
    assert react["relation"] == {"kind": "react", "target": hello_id, "emoji": "👍"}
    assert react["text"] == ""
    await send_json(addr, "carol", "--react", str(hello_id), "🎉")
    unreact = await send_json(addr, "bob", "--unreact", "1", "👍")
    assert unreact["relation"] == {"kind": "unreact", "target": hello_id, "emoji": "👍"}

    [stored, answer] = await client.latest("lobby")
    assert (stored.text, stored.edited_at is not None) == ("hello all", True)
    assert stored.reactions == (Reaction("🎉", ("carol",)),)
    assert answer.reply_to == hello_id

    # Without --json: one line saying what was done to which message.
    result = await cli(addr, "dave", "--react", "1", "👀")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("✓ #lobby seq 7 ")
    assert f"(reacted 👀 {hello_id})" in result.stdout

    delete = await send_json(addr, "alice", "--delete", "1")
    assert delete["relation"] == {"kind": "delete", "target": hello_id}
    [gone, _] = await client.latest("lobby")
    assert (gone.deleted, gone.text, gone.reactions) == (True, "", ())


async def test_an_edit_and_a_reply_in_another_room_with_stdin(
    addr: str, client: ChatClient
) -> None:
    first = await send_json(addr, "alice", "--room", "ops", "deploy started")
    # The edit's text from stdin (one line); the seq is looked up in --room.
    result = await run_cli_async(
        "send",
        "--addr",
        addr,
        "--name",
        "alice",
        "--room",
        "ops",
        "--edit",
        "1",
        "--json",
        stdin="deploy finished\n",
        timeout=15,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["relation"]["target"] == first["id"]
    # Several stdin lines with --reply-to: each is a reply.
    replies = await run_cli_async(
        "send",
        "--addr",
        addr,
        "--name",
        "bob",
        "--room",
        "ops",
        "--reply-to",
        "1",
        "--json",
        stdin="nice\nthanks\n",
        timeout=15,
    )
    assert replies.returncode == 0, replies.stderr
    objects = [json.loads(line) for line in replies.stdout.splitlines()]
    assert [(o["text"], o["reply_to"]) for o in objects] == [
        ("nice", first["id"]),
        ("thanks", first["id"]),
    ]
    assert [m.text for m in await client.latest("ops")] == ["deploy finished", "nice", "thanks"]


# -- refusals -----------------------------------------------------------------------------------


async def test_a_key_used_again_for_another_kind_of_send_answers_with_its_original(
    addr: str,
) -> None:
    """The original a repeated key answers with is no reply, no action: that was told as a
    server that "does not support replies: it posted the text as a new message", exit 4."""
    first = await send_json(addr, "kk", "first")
    reaction = await send_json(addr, "kk", "--key", "r1", "--react", "1", "👍")
    for args in (("--reply-to", "1", "hi"), ("--me", "waves"), ("plain",)):
        again = await send_json(addr, "kk", "--key", "r1", *args)
        assert again == {**reaction, "duplicate": True}, args
    plain = await cli(addr, "kk", "--key", "r1", "--reply-to", "1", "hi")
    assert "(already sent: not posted again)" in plain.stdout
    assert [m["seq"] for m in await history_json(addr)] == [first["seq"]]  # nothing new posted


async def test_a_repeated_key_of_a_deleted_message_says_it_was_deleted(addr: str) -> None:
    """It said "already sent" and printed an empty text, with no word of the delete; the
    server's answer says it (`deleted`)."""
    first = await send_json(addr, "kk", "--key", "kd", "secret text")
    await send_json(addr, "kk", "--delete", str(first["seq"]))
    again = await send_json(addr, "kk", "--key", "kd", "secret text")
    assert (again["duplicate"], again["deleted"], again["text"]) == (True, True, "")
    plain = await cli(addr, "kk", "--key", "kd", "secret text")
    assert "(already sent: not posted again, and deleted since)" in plain.stdout


async def test_a_cap_that_waiting_does_not_lift_is_a_refusal_not_retry_later(
    addr: str, client: ChatClient
) -> None:
    """A message's emoji at their cap: exit code 4 (it once exited 3, "retry later")."""
    hello = await send_json(addr, "alice", "hello")
    for emoji in range(MAX_DISTINCT_EMOJI):
        react = Relation(RelationKind.REACT, hello["id"], f"e{emoji}")
        await client.send("carol", "", "lobby", relation=react)
    capped = await cli(addr, "carol", "--react", str(hello["seq"]), "one-more")
    assert capped.returncode == 4, capped.stderr  # FAILED_PRECONDITION
    assert f"has {MAX_DISTINCT_EMOJI} emoji already" in one_error_line(capped)


async def test_refusals_are_one_line_with_the_right_exit_code(
    addr: str, client: ChatClient
) -> None:
    hello = await send_json(addr, "alice", "hello")

    not_hers = await cli(addr, "bob", "--edit", str(hello["id"]), "hacked")
    assert not_hers.returncode == 6  # PERMISSION_DENIED: not allowed
    assert "only alice may edit" in one_error_line(not_hers)
    delete = await cli(addr, "bob", "--delete", "1")
    assert delete.returncode == 6
    assert "only alice may delete" in one_error_line(delete)

    unknown = await cli(addr, "alice", "--edit", "0123456789abcdef0123456789abcdef", "x")
    assert unknown.returncode == 4  # NOT_FOUND
    assert "no message 0123456789abcdef0123456789abcdef" in one_error_line(unknown)
    no_seq = await cli(addr, "alice", "--react", "99", "👍")
    assert no_seq.returncode == 4
    assert "no message 99 in #lobby" in one_error_line(no_seq)
    elsewhere = await cli(addr, "alice", "--room", "ops", "--edit", str(hello["id"]), "x")
    assert elsewhere.returncode == 4
    assert "#ops" in one_error_line(elsewhere)

    # A relation entry is not a message to change.
    await send_json(addr, "bob", "--react", "1", "👍")
    relation = await cli(addr, "bob", "--react", "2", "🎉")
    assert relation.returncode == 4
    assert "2 in #lobby is not a message but a change of one (react)" in one_error_line(relation)
    twice = await cli(addr, "bob", "--react", "1", "👍")
    assert twice.returncode == 4  # ALREADY_EXISTS
    assert "already reacted" in one_error_line(twice)
    bad_emoji = await cli(addr, "bob", "--react", "1", "two words")
    assert bad_emoji.returncode == 4
    assert "blanks" in one_error_line(bad_emoji)

    # Nothing refused left a trace.
    [stored] = await client.latest("lobby")
    assert (stored.text, stored.edited_at, stored.reactions) == (
        "hello",
        None,
        (Reaction("👍", ("bob",)),),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--edit", "1", "--delete", "1"), "--edit and --delete cannot be used together"),
        (("--react", "1", "--reply-to", "1", "👍"), "--react and --reply-to cannot be used"),
        (("--delete", "1", "some text"), "--delete takes no text"),
        (("--react", "1"), "--react ID EMOJI: the emoji is missing"),
        (("--unreact", "1", "-"), "--unreact ID EMOJI: one emoji; stdin had 0 lines"),
        (("--edit", "1", "--to", "bob", "x"), "direct messages are not kept"),
        (("--reply-to", "1", "--to", "bob", "x"), "--reply-to is for room messages"),
        (("--edit", "1", "--me", "x"), "--me is for new messages, not --edit"),
    ],
)
def test_changes_that_do_not_go_together_are_usage_errors(
    args: tuple[str, ...], message: str
) -> None:
    # Exit 2 before anything is sent: no server needed.
    result = run_cli("send", "--addr", "127.0.0.1:1", "--name", "bob", *args, timeout=15)
    assert result.returncode == 2, result
    assert message in one_error_line(result)


def test_an_edit_from_stdin_takes_one_line() -> None:
    result = run_cli(
        "send", "--addr", "127.0.0.1:1", "-n", "a", "--edit", "1", stdin="one\ntwo\n", timeout=15
    )
    assert result.returncode == 2
    assert "--edit ID TEXT: one text; stdin had 2 lines" in one_error_line(result)


async def test_a_reaction_from_stdin_with_a_dash(addr: str) -> None:
    """`-` reads the emoji from stdin, as it reads an edit's text (it said the emoji was
    missing)."""
    await send_json(addr, "alice", "hello")
    result = await run_cli_async(
        "send", "--addr", addr, "-n", "bob", "--json", "--react", "1", "-", stdin="🎉\n"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["relation"] == {"kind": "react", "target": ANY, "emoji": "🎉"}


# -- history: current state ---------------------------------------------------------------------


async def test_history_json_shows_each_message_as_it_is_now(addr: str, client: ChatClient) -> None:
    hello = (await client.send("alice", "hello")).message
    reply = (await client.send("bob", "hi alice", reply_to=hello.id)).message
    doomed = (await client.send("carol", "oops")).message
    await send_json(addr, "alice", "--edit", "1", "hello all")
    await send_json(addr, "bob", "--react", "1", "👍")
    await send_json(addr, "carol", "--react", "1", "👍")
    await send_json(addr, "carol", "--react", "1", "🎉")
    await send_json(addr, "bob", "--react", "3", "😅")
    await send_json(addr, "carol", "--delete", "3")

    objects = await history_json(addr)
    # The relation entries (seqs 4-9) are applied, not listed.
    assert [o["seq"] for o in objects] == [1, 2, 3]
    first, second, third = objects
    assert (first["id"], first["text"], first["edited"], first["deleted"]) == (
        hello.id,
        "hello all",
        True,
        False,
    )
    assert isinstance(first["edited_at"], str)
    assert first["reactions"] == {"👍": ["bob", "carol"], "🎉": ["carol"]}
    assert list(first["reactions"]) == ["👍", "🎉"]
    assert (second["id"], second["reply_to"], second["edited"], second["edited_at"]) == (
        reply.id,
        hello.id,
        False,
        None,
    )
    assert (second["reactions"], second["deleted"]) == ({}, False)
    assert (third["id"], third["text"], third["deleted"], third["reactions"]) == (
        doomed.id,
        "",
        True,
        {},
    )
    assert all("relation" not in o for o in objects)

    # --limit counts messages, not the entries that changed them.
    assert [o["seq"] for o in await history_json(addr, "--limit", "2")] == [2, 3]
    assert [o["seq"] for o in await history_json(addr, "--limit", "1", "--before", "3")] == [2]


async def test_history_shows_edits_deletes_reactions_and_quotes(
    addr: str, client: ChatClient
) -> None:
    hello = (await client.send("alice", "hello")).message
    await client.send("bob", "hi alice", reply_to=hello.id)
    await client.send("carol", "oops")
    await send_json(addr, "alice", "--edit", "1", "hello all")
    await send_json(addr, "bob", "--react", "1", "👍")
    await send_json(addr, "carol", "--react", "1", "👍")
    await send_json(addr, "carol", "--delete", "3")

    result = await run_cli_async("history", "--addr", addr, timeout=15)
    assert result.returncode == 0, result.stderr
    # Not a terminal: no handles; the lines `join` prints.
    lines = [
        line.split(" ", 1)[1] if line[:1].isdigit() else line for line in result.stdout.splitlines()
    ]
    assert lines == [
        "alice: hello all (edited)",
        "  ↳ 👍 bob, carol",
        "  ┌ alice: hello all",
        "bob: hi alice",
        "carol: message deleted",
    ]


# -- rooms: unread counts -----------------------------------------------------------------------


async def test_rooms_with_a_name_shows_that_users_unread_counts(
    addr: str, client: ChatClient
) -> None:
    for text in ("one", "two"):
        await client.send("bob", text, "games")
    last = (await client.send("bob", "three", "games")).message
    await client.send("alice", "mine do not count", "games")
    await client.send("bob", "hi", "lobby")
    await send_json(addr, "alice", "--room", "games", "--react", "1", "👍")

    async def rooms(*args: str) -> dict[str, dict[str, object]]:
        result = await run_cli_async("rooms", "--addr", addr, "--json", *args, timeout=15)
        assert result.returncode == 0, result.stderr
        return {r["name"]: r for r in json.loads(result.stdout)}

    found = await rooms("--name", "alice")
    assert {name: r["unread"] for name, r in found.items()} == {"games": 3, "lobby": 1}
    # Without a name the server knows nobody: no unread counts.
    assert all("unread" not in r for r in (await rooms()).values())

    assert await client.mark_read("games", last.seq, "alice") == last.seq
    found = await rooms("--name", "alice")
    assert {name: r["unread"] for name, r in found.items()} == {"games": 0, "lobby": 1}
    assert {name: r["unread"] for name, r in (await rooms("--name", "bob")).items()} == {
        "games": 1,
        "lobby": 0,
    }

    table = await run_cli_async("rooms", "--addr", addr, "--name", "alice", timeout=15)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if line.strip()]
    assert rows[0] == ["room", "members", "messages", "unread"]
    # No unread: a blank cell.
    assert ["#games", "0", "5"] in rows
    assert ["#lobby", "0", "1", "1"] in rows


# -- the article's server -----------------------------------------------------------------------


@pytest.fixture
def article_server() -> Iterator[V1Server]:
    with V1Server() as running:
        yield running


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("--edit", "0123456789abcdef0123456789abcdef", "x"), "edits"),
        (("--delete", "0123456789abcdef0123456789abcdef"), "deletes"),
        (("--react", "0123456789abcdef0123456789abcdef", "👍"), "reactions"),
        (("--reply-to", "0123456789abcdef0123456789abcdef", "x"), "replies"),
        # Its stream would carry the text as said, not done.
        (("--me", "waves"), "actions (/me)"),
    ],
)
def test_the_article_server_does_not_support_changes(
    article_server: V1Server, args: tuple[str, ...], what: str
) -> None:
    result = run_cli("send", "--addr", article_server.addr, "--name", "bob", *args, timeout=15)
    assert result.returncode == 4
    line = one_error_line(result)
    assert f"the server at {article_server.addr} does not support {what}" in line
    assert "article's v1 server" in line
    assert article_server.log == []  # nothing went out as a plain message
    # A seq needs the history the article's server does not keep.
    by_seq = run_cli("send", "--addr", article_server.addr, "-n", "bob", "--edit", "1", "x")
    assert by_seq.returncode == 4
    assert "keeps no history" in one_error_line(by_seq)


# -- both paths -------------------------------------------------------------------------------


def test_the_fast_path_and_the_typer_command_agree_on_changes(
    server_process: ServerProcess,
) -> None:
    addr = server_process.addr
    assert run_cli("send", "-a", addr, "-n", "alice", "hello").returncode == 0
    cases = [
        # The same key twice: the second answer is the first entry (a duplicate).
        ["send", "-a", addr, "-n", "alice", "--key", "k-edit", "--edit", "1", "hello all"],
        ["send", "-a", addr, "-n", "alice", "--key", "k-edit", "--edit", "1", "hello all"],
        ["send", "-a", addr, "-n", "bob", "--edit", "1", "mine now"],
        ["send", "-a", addr, "-n", "bob", "--react", "1", "--json"],
        ["send", "-a", addr, "-n", "bob", "--react", "1", "--unreact", "1", "👍"],
    ]
    assert run(FAST, *cases[0])[0] == 0  # posts k-edit: from now on, a duplicate
    codes = []
    for args in cases[1:]:
        fast, typer = run(FAST, *args), run(TYPER, *args)
        assert fast == typer, args
        codes.append(fast[0])
    assert codes == [0, 6, 2, 2]


async def test_a_session_on_the_article_server_says_what_it_cannot_do(
    article_server: V1Server,
) -> None:
    config = ClientConfig(addr=article_server.addr, timeout=5.0)
    async with ChatClient(config) as client, Follower(client.session("dave")) as dave:
        session = dave.session
        assert session.legacy
        refusals = [
            (session.typing("lobby", True), "typing notices"),
            (session.mark_read("lobby", 1), "read markers"),
            (session.send("x", relation=Relation(RelationKind.EDIT, "0" * 32)), "edits"),
            (session.send("x", reply_to="0" * 32), "replies"),
        ]
        for call, what in refusals:
            with pytest.raises(RemoteError) as refused:
                await call
            assert refused.value.status == "UNIMPLEMENTED"
            assert f"does not support {what} (it is the article's v1 server)" in str(refused.value)
        # Nothing went out; a plain message still does (and comes back, as everything does).
        await session.send("plain still works")
        [echo] = await dave.messages(1)
        assert (echo.sender, echo.text) == ("dave", "plain still works")
    assert article_server.log == [("dave", "plain still works")]
