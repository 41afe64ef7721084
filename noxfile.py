"""Developer and CI sessions: `nox -s tests`, `nox -s lint typecheck proto`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck", "proto"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
BUF_VERSION = "1.75.0"
# The article's contract: our protos must stay wire- and API-compatible with it.
ARTICLE_CONTRACT = "../tests/contract/article"


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
    session.install("-e", ".")
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
