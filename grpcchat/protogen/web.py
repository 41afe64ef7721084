"""Rebuild, or verify, the browser page from `proto/`: the TypeScript in `web/src/gen/` (buf with
the local protoc-gen-es plugin, `web/buf.gen.yaml`) and the bundle in `grpcchat/web/static/`
(`index.html`, `app.js`, `app.css`, by `web/build.mjs` with esbuild). Both are committed, so the
package serves the page without Node; this keeps them fresh like `generate` keeps `grpcchat/gen`.

Everything is built in a scratch copy of `proto/` and `web/` (its `node_modules` linked, not
copied), then compared byte for byte with the checkout: `prepare_web`'s step writes only the files
that differ, `check_web` writes nothing. The tools are the exact versions of
`web/package-lock.json`, installed by `npm ci --prefer-offline` when `web/node_modules` is
missing (the npm registry is the only network it needs). The build is deterministic: no
timestamps, source maps or absolute paths end up in the output.

Without node and npm on PATH (or without `web/` in the checkout) nothing is built:
`unavailable()` says why, and the caller says so and goes on with the Python code alone.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from grpcchat.protogen.generate import PROTO_DIR, ProtogenError, apply_changes, differences

__all__ = ["STATIC_DIR", "WEB_GEN", "check_web", "prepare_web", "unavailable"]

WEB_DIR = "web"
#: Generated TypeScript, owned by buf: files there that buf no longer produces are removed.
WEB_GEN = "web/src/gen"
#: The built page; only the files the build writes are compared, others there are left alone.
STATIC_DIR = "grpcchat/web/static"
BUILT = ("index.html", "app.css", "app.js")
_TIMEOUT_S = 300.0


def unavailable(repo_root: Path) -> str | None:
    """Why the page cannot be built here, or None when it can."""
    if not (repo_root / WEB_DIR / "package.json").is_file():
        return f"no {WEB_DIR}/package.json in this checkout"
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH"
    return None


def _run(command: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProtogenError(f"{command[0]} timed out after {_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise ProtogenError(f"could not run {command[0]}: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip() or "(no output)"
        raise ProtogenError(
            f"{Path(command[0]).name} failed with exit status {result.returncode}:\n{output}\n"
            f"command (in {cwd}): {' '.join(command)}"
        )


def _install(web: Path) -> None:
    """`npm ci` from the lockfile when `node_modules` is missing (from the cache if it can)."""
    if (web / "node_modules").is_dir():
        return
    _run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"], web)


def _render(repo_root: Path) -> dict[str, bytes]:
    """Build into a scratch directory; return {path relative to the repository root: bytes}."""
    web = repo_root / WEB_DIR
    _install(web)
    with tempfile.TemporaryDirectory(prefix="grpcchat-web-") as scratch_dir:
        scratch = Path(scratch_dir)
        shutil.copytree(repo_root / PROTO_DIR, scratch / PROTO_DIR)
        shutil.copytree(web, scratch / WEB_DIR, ignore=_skip_outputs(web))
        (scratch / WEB_DIR / "node_modules").symlink_to(web / "node_modules")
        buf = str(web / "node_modules" / ".bin" / "buf")
        _run([buf, "generate", "--template", f"{WEB_DIR}/buf.gen.yaml"], scratch)
        static = scratch / "static"
        _run(["node", f"{WEB_DIR}/build.mjs", "--out", str(static)], scratch)
        tree = _read(scratch, WEB_GEN)
        for name in BUILT:
            tree[f"{STATIC_DIR}/{name}"] = (static / name).read_bytes()
    return tree


def _skip_outputs(web: Path) -> Callable[[str, list[str]], set[str]]:
    """A copytree filter: leave out node_modules (linked instead) and the generated TypeScript."""
    gen = (web.parent / WEB_GEN).resolve()

    def skip(directory: str, names: list[str]) -> set[str]:
        here = Path(directory).resolve()
        return {
            n for n in names if (here == web.resolve() and n == "node_modules") or here / n == gen
        }

    return skip


def _read(root: Path, folder: str) -> dict[str, bytes]:
    base = root / folder
    if not base.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


def _current(repo_root: Path) -> dict[str, bytes]:
    tree = _read(repo_root, WEB_GEN)
    for name in BUILT:
        path = repo_root / STATIC_DIR / name
        if path.is_file():
            tree[f"{STATIC_DIR}/{name}"] = path.read_bytes()
    return tree


def prepare_web(repo_root: Path) -> Callable[[], list[Path]]:
    """Build the page in a scratch directory now (`ProtogenError` if that fails, nothing
    written); return the step that rebuilds it: writes what differs and returns the paths
    written or removed (empty: it was up to date)."""
    repo_root = repo_root.resolve()
    fresh = _render(repo_root)
    return lambda: apply_changes(repo_root, fresh, differences(fresh, _current(repo_root)))


def check_web(repo_root: Path) -> list[Path]:
    """The page's generated or built files that are stale, missing or extra; writes nothing."""
    repo_root = repo_root.resolve()
    return [repo_root / name for name in differences(_render(repo_root), _current(repo_root))]
