"""Developer and CI sessions: `nox -s tests`, `nox -s lint typecheck proto`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck", "proto"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
BUF_VERSION = "1.75.0"
# The article's contract: our protos must stay wire- and API-compatible with it.
ARTICLE_CONTRACT = "../tests/contract/article"
# The workspace's shared folder, beside the repository: the article's Go programs (peers/).
SHARED = ROOT.parent / "shared"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, against a real server, real clients and real peers."""
    session.install("-e", ".[test]")
    # buf on PATH, so the `gen-proto --with-buf` tests run instead of skipping.
    session.run("pytest", *session.posargs, env=_with_buf_on_path(session))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and the import layers of pyproject.toml's [tool.importlinter]."""
    session.install("ruff>=0.17,<0.18", "import-linter>=2.16,<3")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # import-linter analyses the installed package; an editable install sees this checkout.
    session.install("-e", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


def _buf(session: nox.Session) -> str:
    """buf from npm, installed once into .nox/ (no network beyond the npm registry)."""
    prefix = ROOT / ".nox" / "_buf"
    buf = prefix / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        session.run(
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(prefix),
            f"@bufbuild/buf@{BUF_VERSION}",
            external=True,
        )
    return str(buf)


def _with_buf_on_path(session: nox.Session) -> dict[str, str]:
    return {"PATH": f"{Path(_buf(session)).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _previous_commit_has_protos() -> bool:
    probe = subprocess.run(
        ["git", "cat-file", "-e", "HEAD~1:proto/buf.yaml"], cwd=ROOT, capture_output=True
    )
    return probe.returncode == 0


@nox.session
def proto(session: nox.Session) -> None:
    """Contract checks: buf lint and format, buf breaking, generated code is fresh."""
    # [web]: protoc-gen-connectrpc, whose stubs are part of the generated code checked here.
    session.install("-e", ".[web]")
    buf = _buf(session)
    with session.chdir("proto"):
        session.run(buf, "lint", external=True)
        session.run(buf, "format", "--diff", "--exit-code", external=True)
        package_rules = '{"version":"v2","breaking":{"use":["PACKAGE"]}}'
        session.run(
            buf,
            "breaking",
            ".",
            "--against",
            ARTICLE_CONTRACT,
            "--config",
            package_rules,
            external=True,
        )
        if _previous_commit_has_protos():
            session.run(
                buf,
                "breaking",
                ".",
                "--against",
                "../.git#ref=HEAD~1,subdir=proto",
                external=True,
            )
    session.run("grpcchat", "gen-proto", "--check")


# `nox -s bench`: the standard scenarios, each against the article's Go server (v1, the
# only protocol it has) and a fresh grpcchat (native and v1), one run at a time.
BENCH_SCENARIOS = (
    ("(a) 50 subscribers, 2 publishers, unpaced, 64 in flight", "-s 50 -p 2 --rate 0 -w 64"),
    ("(b) 200 subscribers, 4 publishers, 1000 msg/s in all", "-s 200 -p 4 --rate 250"),
    (
        "(c) (a) + 1 never-reading session, 4 KB messages, 200 msg/s in all",
        "-s 50 -p 2 --rate 100 -w 64 --size 4096 --slow 1",
    ),
)
BENCH_FLAGS = ("--duration", "5", "--drain", "10", "--json")
BENCH_TIMEOUT = 180  # seconds for one run, whatever happens


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _serving(what: str, argv: list[str], port: int, stderr: int | IO[bytes]) -> Iterator[int]:
    """Run `argv` (a server told to listen on loopback `port`) until the block ends; yield its
    pid once the port accepts connections."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start on port {port}") from None
                time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def _seed_server(binary: Path) -> Iterator[tuple[str, int]]:
    """The article's Go server on a free loopback port (its per-message log discarded)."""
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    argv = [str(binary), "-addr", addr]
    with _serving("the Go seed server", argv, port, subprocess.DEVNULL) as pid:
        yield addr, pid


@contextlib.contextmanager
def _default_server(session: nox.Session) -> Iterator[tuple[str, int]]:
    """`grpcchat serve` as it comes (SQLite history in a fresh data dir, a log line per message,
    kept in a file as a user's would be), without the per-user limits the bench would trip."""
    port = _free_port()
    argv = [
        str(Path(session.bin) / "grpcchat"),
        "serve",
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--rate", "0", "--request-rate", "0", "--max-sessions-per-peer", "0"),
    ]
    with tempfile.TemporaryDirectory(prefix="grpcchat-bench-") as data:
        argv += ["--data-dir", data]
        with (
            open(Path(data) / "server.log", "wb") as log,
            _serving("grpcchat serve", argv, port, log) as pid,
        ):
            yield f"127.0.0.1:{port}", pid


def _run_bench(session: nox.Session, *args: str) -> dict[str, object]:
    """One `grpcchat bench ... --json` run: its JSON, or {"error": why}. Exit 1 (something lost)
    still has a result."""
    command = [str(Path(session.bin) / "grpcchat"), "bench", *args, *BENCH_FLAGS, *session.posargs]
    session.log(" ".join(command[1:]))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {BENCH_TIMEOUT}s"}
    lines = done.stdout.strip().splitlines()
    if lines:
        with contextlib.suppress(ValueError):
            result: dict[str, object] = json.loads(lines[-1])
            return result
    return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}


def _build_peers(session: nox.Session) -> Path | None:
    """The article's Go server, built into .nox/peers (Debian's Go installed when missing)."""
    script = SHARED / "peers" / "build.sh"
    if not script.exists():
        session.warn(f"no {script}: skipping the Go seed column")
        return None
    out = ROOT / ".nox" / "peers"
    try:
        session.run("bash", str(script), str(out), external=True)
    except Exception as error:  # nox's CommandFailed: the table goes on without the Go column
        session.warn(f"building the Go peers failed ({error}): skipping the Go seed column")
        return None
    return out / "seed-server"


@nox.session
def bench(session: nox.Session) -> None:
    """The standard scenarios, Go seed vs grpcchat native vs grpcchat v1, as a table with the
    ratios, then the default configuration against the memory store (a few minutes; extra
    `grpcchat bench` flags after --, e.g. `-- --duration 3`). Not in the default run."""
    session.install("-e", ".")
    seed = _build_peers(session)
    scenarios = []
    for name, flags in BENCH_SCENARIOS:
        runs: dict[str, object] = {}
        if seed is not None:
            with _seed_server(seed) as (addr, pid):
                runs["go"] = _run_bench(
                    session, "--addr", addr, "--server-pid", str(pid), "--protocol", "v1",
                    *flags.split(),
                )  # fmt: skip
        runs["native"] = _run_bench(session, "--protocol", "native", *flags.split())
        runs["v1"] = _run_bench(session, "--protocol", "v1", *flags.split())
        scenarios.append({"name": name, "flags": flags, "runs": runs})
    # The default configuration's target: within 80% of the memory store's `--quiet` rate, which
    # is what the bench's own server runs in the native column of the first scenario.
    name, flags = BENCH_SCENARIOS[0]
    with _default_server(session) as (addr, pid):
        default = _run_bench(
            session, "--addr", addr, "--server-pid", str(pid), "--protocol", "native",
            *flags.split(),
        )  # fmt: skip
    report = {"scenarios": scenarios, "default_config": {"scenario": name, "run": default}}
    results = ROOT / ".nox" / "bench-results.json"
    results.write_text(json.dumps(report, indent=2, default=str))
    session.log(f"raw results: {results}")
    session.run("python", "-m", "grpcchat.cli.bench_report", str(results))
