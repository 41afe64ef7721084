"""TLS and mutual TLS over the real wire, with certificates made at run time by a throwaway CA
(`trustme`): nothing is committed. Also: a token never travels in plaintext to another machine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import PrivateFormat

from grpcchat.client import ChatClient
from grpcchat.client.channel import InsecureTokenError, is_loopback
from grpcchat.client.config import ClientConfig, host_and_port
from grpcchat.core.errors import ChatError, ConfigError, RemoteError
from grpcchat.core.limits import Limits
from grpcchat.server import ChatServer
from grpcchat.server.auth import TokenAuthority
from grpcchat.server.config import ServerConfig
from tests.conftest import ServerProcess, run_cli, run_cli_async
from tests.helpers import Follower

SECRET = "tls-tests-secret-0123456789abcdef"


@dataclass(frozen=True)
class Pki:
    """PEM files: a server certificate for 127.0.0.1 and localhost with the CA that signed it,
    an unrelated CA, and client certificates signed by the client CA and by a rogue CA."""

    ca: str
    other_ca: str
    server_cert: str
    server_key: str
    client_ca: str
    client_cert: str
    client_key: str
    rogue_cert: str
    rogue_key: str


def _write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def _write_ca(ca: trustme.CA, directory: Path, name: str) -> str:
    path = directory / f"{name}.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    server_ca, other_ca, client_ca, rogue_ca = (trustme.CA() for _ in range(4))
    server_cert, server_key = _write_leaf(
        server_ca.issue_cert("localhost", "127.0.0.1"), directory, "server"
    )
    client_cert, client_key = _write_leaf(client_ca.issue_cert("alice.client"), directory, "client")
    rogue_cert, rogue_key = _write_leaf(rogue_ca.issue_cert("mallory.client"), directory, "rogue")
    return Pki(
        ca=_write_ca(server_ca, directory, "ca"),
        other_ca=_write_ca(other_ca, directory, "other-ca"),
        server_cert=server_cert,
        server_key=server_key,
        client_ca=_write_ca(client_ca, directory, "client-ca"),
        client_cert=client_cert,
        client_key=client_key,
        rogue_cert=rogue_cert,
        rogue_key=rogue_key,
    )


BASE = ServerConfig(
    port=0, store="memory://", limits=Limits(rate=0, request_rate=0), grace_period=0.5
)


@asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[ChatServer]:
    async with ChatServer(config) as server:
        yield server


def tls_server(pki: Pki, *, mutual: bool = False, auth: bool = False) -> ServerConfig:
    return replace(
        BASE,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.client_ca if mutual else "",
        auth_secret=SECRET if auth else "",
    )


async def assert_refused(config: ClientConfig, *needles: str) -> RemoteError:
    """The client cannot talk to the server: UNAVAILABLE, saying why."""
    async with ChatClient(config) as client:
        with pytest.raises(RemoteError) as caught:
            await client.rooms()
    assert caught.value.status == "UNAVAILABLE", caught.value
    for needle in needles:
        assert needle in str(caught.value)
    return caught.value


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_round_trip(pki: Pki, host: str) -> None:
    async with serving(tls_server(pki)) as server:
        config = ClientConfig(addr=f"{host}:{server.port}", tls_ca=pki.ca, timeout=5)
        async with ChatClient(config) as client, Follower(client.session("alice")) as alice:
            sent = await client.send("bob", "over tls")
            [received] = await alice.messages(1)
            assert (received.id, received.text) == (sent.message.id, "over tls")
            assert await client.members() == ["alice"]


async def test_client_trusting_another_ca_is_refused(pki: Pki) -> None:
    async with serving(tls_server(pki)) as server:
        addr = f"127.0.0.1:{server.port}"
        await assert_refused(ClientConfig(addr=addr, tls_ca=pki.other_ca, timeout=3), "CERTIFICATE")
        # The system's roots do not know a throwaway CA either.
        await assert_refused(ClientConfig(addr=addr, tls=True, timeout=3), "CERTIFICATE")


async def test_certificate_for_another_host_is_refused(pki: Pki, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = _write_leaf(ca.issue_cert("chat.example.org"), tmp_path, "elsewhere")
    config = replace(BASE, tls_cert=cert, tls_key=key)
    async with serving(config) as server:
        client = ClientConfig(
            addr=f"127.0.0.1:{server.port}", tls_ca=_write_ca(ca, tmp_path, "ca"), timeout=3
        )
        await assert_refused(client)


async def test_plaintext_client_to_tls_server_fails(pki: Pki) -> None:
    async with serving(tls_server(pki)) as server:
        await assert_refused(ClientConfig(addr=f"127.0.0.1:{server.port}", timeout=3))
        assert server.hub.session_count() == 0


async def test_tls_client_to_plaintext_server_fails(pki: Pki) -> None:
    async with serving(BASE) as server:
        await assert_refused(
            ClientConfig(addr=f"127.0.0.1:{server.port}", tls_ca=pki.ca, timeout=3)
        )


# -- mutual TLS ---------------------------------------------------------------------------------


async def test_mutual_tls_round_trip(pki: Pki) -> None:
    async with serving(tls_server(pki, mutual=True)) as server:
        config = ClientConfig(
            addr=f"127.0.0.1:{server.port}",
            tls_ca=pki.ca,
            tls_cert=pki.client_cert,
            tls_key=pki.client_key,
            timeout=5,
        )
        async with ChatClient(config) as client, Follower(client.session("alice", "ops")) as ops:
            await client.send("bob", "mutual", "ops")
            [received] = await ops.messages(1)
            assert (received.room, received.sender, received.text) == ("ops", "bob", "mutual")


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    async with serving(tls_server(pki, mutual=True)) as server:
        addr = f"127.0.0.1:{server.port}"
        await assert_refused(ClientConfig(addr=addr, tls_ca=pki.ca, timeout=3))
        rogue = ClientConfig(
            addr=addr, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key, timeout=3
        )
        await assert_refused(rogue)
        await assert_refused(ClientConfig(addr=addr, timeout=3))
        assert server.hub.session_count() == 0


def test_client_certificate_needs_its_key(pki: Pki) -> None:
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        ClientConfig(tls_ca=pki.ca, tls_cert=pki.client_cert)
    with pytest.raises(ValueError, match="needs --tls-cert"):
        replace(BASE, tls_client_ca=pki.client_ca)


async def test_unreadable_pem_files_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ChatError, match=r"cannot read the CA file .*nope\.pem"):
        ChatClient(ClientConfig(addr="127.0.0.1:1", tls_ca=missing))
    with pytest.raises(ConfigError, match=r"cannot read the TLS key .*nope\.pem"):
        await ChatServer(replace(BASE, tls_cert=pki.server_cert, tls_key=missing)).start()


async def test_files_that_are_not_pem_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    """Not 'server unreachable' after retrying, nor 'the address is in use'."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    with pytest.raises(ChatError, match=r"the CA file .*garbage\.pem is not PEM"):
        ChatClient(ClientConfig(addr="127.0.0.1:1", tls_ca=str(garbage)))
    with pytest.raises(ConfigError, match=r"the TLS certificate .*garbage\.pem is not PEM"):
        await ChatServer(replace(BASE, tls_cert=str(garbage), tls_key=pki.server_key)).start()
    checked = await run_cli_async(
        "serve", "--check-config", "--tls-cert", str(garbage), "--tls-key", pki.server_key
    )
    assert checked.returncode == 1
    assert "is not PEM" in checked.stderr


async def test_a_key_of_another_certificate_is_a_clear_error(pki: Pki) -> None:
    """Not 'cannot listen: the address is in use', and caught by --check-config too."""
    mismatched = replace(BASE, tls_cert=pki.server_cert, tls_key=pki.client_key)
    with pytest.raises(ConfigError, match=r"do not load as a pair \(KEY_VALUES_MISMATCH\)"):
        await ChatServer(mismatched).start()
    checked = await run_cli_async(
        "serve", "--check-config", "--tls-cert", pki.server_cert, "--tls-key", pki.client_key
    )
    assert checked.returncode == 1
    assert "do not load as a pair" in checked.stderr


def _encrypt_key(plain: str, encrypted: Path, pem: PrivateFormat) -> None:
    key = serialization.load_pem_private_key(Path(plain).read_bytes(), password=None)
    encryption = serialization.BestAvailableEncryption(b"a passphrase")
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, pem, encryption))


@pytest.mark.parametrize("pem", [PrivateFormat.PKCS8, PrivateFormat.TraditionalOpenSSL])
async def test_an_encrypted_key_is_said_to_be_encrypted(
    pki: Pki, tmp_path: Path, pem: PrivateFormat
) -> None:
    """It was said not to be the certificate's key ("is the key the certificate's?")."""
    encrypted = tmp_path / "encrypted.key"
    _encrypt_key(pki.server_key, encrypted, pem)
    checked = await run_cli_async(
        "serve", "--check-config", "--tls-cert", pki.server_cert, "--tls-key", str(encrypted)
    )
    assert checked.returncode == 1
    assert checked.stderr.strip() == (
        f"error: the TLS key {encrypted} is encrypted (it needs a passphrase), which gRPC "
        f"cannot take: decrypt it, e.g. `openssl pkey -in {encrypted} -out plain.key`, and "
        "keep that file private"
    )


async def test_a_clients_files_that_cannot_work_are_a_clear_error(pki: Pki) -> None:
    """A client key of another certificate, or a CA file that holds a key: one line about the
    file and exit 1, before connecting (gRPC failed each call as if the server could not be
    reached, retrying for the whole --timeout: exit 3)."""
    with pytest.raises(ConfigError, match=r"do not load as a pair \(KEY_VALUES_MISMATCH\)"):
        ChatClient(
            ClientConfig(
                addr="127.0.0.1:1", tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.rogue_key
            )
        )
    sent = await run_cli_async(
        "send", "--addr", "127.0.0.1:1", "--name", "bot", "--tls-ca", pki.server_key, "hi"
    )
    assert sent.returncode == 1
    assert sent.stderr.startswith("error: the CA file ")
    assert "does not load (NO_CERTIFICATE_OR_CRL_FOUND)" in sent.stderr
    assert len(sent.stderr.splitlines()) == 1


# -- tokens and transport -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        ("localhost:4000", True),
        ("127.0.0.1:4000", True),
        ("127.9.9.9:4000", True),
        ("[::1]:4000", True),
        ("192.0.2.10:4000", False),
        ("chat.example.org:4000", False),
        ("localhost.example.org:4000", False),
        ("0.0.0.0:4000", False),
        ("[2001:db8::1]:4000", False),
        ("unix:/run/grpcchat.sock", True),  # a Unix socket never leaves the machine
        ("unix-abstract:grpcchat", True),
    ],
)
def test_loopback_detection(addr: str, loopback: bool) -> None:
    assert is_loopback(addr) is loopback


async def test_token_is_never_sent_in_plaintext_to_another_machine(pki: Pki) -> None:
    token = TokenAuthority(SECRET).mint("alice", timedelta(minutes=5))
    with pytest.raises(InsecureTokenError, match="refusing to send a token in plaintext"):
        ChatClient(ClientConfig(addr="192.0.2.10:4000", token=token))
    # Without a token, or over TLS, or to this machine, the client is built (not connected).
    for allowed in (
        ClientConfig(addr="192.0.2.10:4000"),
        ClientConfig(addr="192.0.2.10:4000", token=token, tls_ca=pki.ca),
        ClientConfig(addr="192.0.2.10:4000", token=token, tls=True),
        ClientConfig(addr="localhost:4000", token=token),
    ):
        await ChatClient(allowed).aclose()


async def test_token_over_tls_with_auth_on(pki: Pki) -> None:
    token = TokenAuthority(SECRET).mint("alice", timedelta(minutes=5))
    async with serving(tls_server(pki, mutual=True, auth=True)) as server:
        config = ClientConfig(
            addr=f"localhost:{server.port}",
            token=token,
            tls_ca=pki.ca,
            tls_cert=pki.client_cert,
            tls_key=pki.client_key,
            timeout=5,
        )
        async with ChatClient(config) as client:
            sent = await client.send("mallory", "who am i")
            assert sent.message.sender == "alice"
        # A valid client certificate is not an identity: the token is still required.
        async with ChatClient(replace(config, token="")) as anonymous:
            with pytest.raises(RemoteError) as caught:
                await anonymous.rooms()
            assert caught.value.status == "UNAUTHENTICATED"


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_serves_and_speaks_mutual_tls(pki: Pki) -> None:
    server = ServerProcess(
        "--tls-cert",
        pki.server_cert,
        "--tls-key",
        pki.server_key,
        "--tls-client-ca",
        pki.client_ca,
        "--grace",
        "0",
    )
    try:
        mutual = ("--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key)
        sent = run_cli(
            "send", "--addr", server.addr, *mutual, "--name", "bot", "--room", "ops", "hi"
        )
        assert sent.returncode == 0, sent.stderr
        assert "#ops seq 1" in sent.stdout
        # Without a client certificate (the in-process tests cover the other refusals).
        refused = run_cli("rooms", "--addr", server.addr, "--tls-ca", pki.ca, "--timeout", "3")
        assert refused.returncode == 3, refused
        assert "cannot reach a chat server" in refused.stderr
    finally:
        server.stop()


async def test_cli_tls_failure_is_one_line(pki: Pki) -> None:
    async with serving(tls_server(pki)) as server:
        code, out, err = await run_cli_async(
            "rooms", "--addr", f"127.0.0.1:{server.port}", "--tls-ca", pki.other_ca
        )
    assert code == 3
    assert out == ""
    [line] = err.strip().splitlines()
    assert "CERTIFICATE_VERIFY_FAILED" in line


async def test_cli_plaintext_at_a_tls_server_says_it_speaks_tls(pki: Pki) -> None:
    """gRPC says only "Socket closed", as for a server restarting: the command asks the server
    once it gives up, and the mistake is a setup problem (exit 1), not one to retry (3)."""
    async with serving(tls_server(pki)) as server:
        addr = f"127.0.0.1:{server.port}"
        for command, lines in (("send", "hi\n"), ("send", "a\nb\nc\n"), ("join", "hi\n")):
            code, out, err = await run_cli_async(
                command, "--addr", addr, "--name", "a", "--timeout", "1", stdin=lines
            )
            assert (code, out) == (1, "")
            [line] = err.strip().splitlines()
            assert line.endswith(
                f"The server at {addr} speaks TLS: add --tls (trusting the system's CAs) "
                "or --tls-ca FILE"
            ), line
        code, out, err = await run_cli_async("health", "--addr", addr, "--timeout", "1")
        assert (code, out) == (1, "")
        assert "speaks TLS" in err


async def test_cli_plaintext_at_a_plaintext_server_gone_gets_no_tls_hint() -> None:
    async with serving(BASE) as server:
        addr = f"127.0.0.1:{server.port}"
    code, _, err = await run_cli_async("send", "--addr", addr, "--timeout", "1", "-n", "a", "hi")
    assert code == 3
    assert "cannot reach a chat server" in err
    assert "TLS" not in err


@pytest.mark.parametrize(
    ("addr", "where"),
    [
        ("127.0.0.1:4000", ("127.0.0.1", 4000)),
        ("chat.example.org:443", ("chat.example.org", 443)),
        ("[::1]:4000", ("::1", 4000)),
        ("dns:///chat.example.org:443", ("chat.example.org", 443)),
        ("ipv4:10.0.0.1:7", ("10.0.0.1", 7)),
        ("unix:/tmp/chat.sock", None),
        ("localhost", None),
        ("localhost:http", None),
        ("localhost:70000", None),
    ],
)
def test_the_tls_probe_dials_host_and_port_only(addr: str, where: tuple[str, int] | None) -> None:
    assert host_and_port(addr) == where


def test_cli_refuses_to_send_a_token_in_plaintext() -> None:
    result = run_cli("send", "--addr", "192.0.2.10:4000", "--token", "a.b.c", "--name", "x", "hi")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refusing to send a token in plaintext to 192.0.2.10:4000" in lines[0]
    assert "--tls" in lines[0]
