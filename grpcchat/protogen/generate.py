"""Regenerate, or verify, the committed protobuf/gRPC code in `grpcchat/gen` from `proto/`.

Why this module exists: the generated code is committed (hatchling drops gitignored files from the
wheel), so it can silently go stale when someone edits a `.proto`. `generate()` rewrites it and
`check()` proves it is fresh without touching the checkout, which is what CI and
`grpcchat gen-proto [--check] [--with-buf]` call.

Layout. Protoc is run with the virtual path mapping `-Igrpcchat/gen=proto`, so
`proto/chat/v1/chat_service.proto` is compiled under the name
`grpcchat/gen/chat/v1/chat_service.proto`: the output lands in `grpcchat/gen/chat/v1/` and imports
itself as `from grpcchat.gen.chat.v1 import ...` without any post-processing, while the `.proto`
files and `package chat.v1` stay as published. Protoc does not create `__init__.py` files; we do.
Everything under `grpcchat/gen` belongs to the generator: `generate()` deletes files there that it
did not produce, and `check()` reports them as extra.

Default generator: grpcio-tools' bundled protoc, called in-process through
`grpc_tools.protoc.main`, with the built-in `python` and `grpc_python` generators and the
mypy-protobuf plugins (`protoc-gen-mypy`, `protoc-gen-mypy_grpc`) passed by absolute path, because
a venv that is not activated does not put them on PATH. The result is byte-identical to::

    python -m grpc_tools.protoc -Igrpcchat/gen=proto --python_out=. --grpc_python_out=. \\
        --mypy_out=. --mypy_grpc_out=. \\
        --plugin=protoc-gen-connectrpc=$(which protoc-gen-connectrpc) \\
        --connectrpc_out=protobuf=google,io=async:. proto/chat/v1/chat_service.proto

The generated files embed the tool versions, which is why grpcio-tools and mypy-protobuf are
pinned exactly.

buf generator (`use_buf=True`): `buf generate --template proto/buf.gen.yaml`, with local plugins
only (no network, no remote plugins). buf parses and links the `.proto` files; each `local:` plugin
is `python3 -m grpcchat.protogen.buf_plugin <generator>`, an adapter that renames buf's files to the
same `grpcchat/gen/...` virtual paths, drops the `json_name` values buf fills in but protoc would
not have recorded, and runs the same grpc_tools generators on those descriptors. Its output is byte-
identical to the default generator's (so `check()` passes either way), with one known exception: an
explicit `[json_name = ...]` option is only recognised from buf's source info; see
`grpcchat.protogen.buf_plugin`. `check()` always uses the default generator, which needs no buf.

Limitation shared by both generators (inherent to the `-Igrpcchat/gen=proto` mapping): one
`.proto` importing another local `.proto` must spell the import as protoc sees it. The default
generator only finds `import "grpcchat/gen/chat/v1/x.proto"`, which buf in turn cannot resolve
inside the `proto/` module; the buf generator handles the natural `import "chat/v1/x.proto"`.
Today there is a single `.proto`, so this does not arise.

`generate()` and `check()` are not thread-safe: protoc's stderr is captured by redirecting file
descriptor 2 of the whole process for the duration of the call.
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "GENERATORS",
    "GEN_PREFIX",
    "ProtogenError",
    "check",
    "find_buf",
    "find_repo_root",
    "generate",
    "prepare",
    "proto_files",
]

#: Where generated code lives, relative to the repository root; also the virtual path prefix the
#: `.proto` files are compiled under (`-I{GEN_PREFIX}=proto`).
GEN_PREFIX = "grpcchat/gen"
#: The protobuf module root (holds `buf.yaml`, `buf.gen.yaml` and the `.proto` tree).
PROTO_DIR = "proto"
#: The generators, in the order of the documented protoc command line.
GENERATORS = ("python", "grpc_python", "mypy", "mypy_grpc", "connectrpc")
#: Generators that are separate executables (from mypy-protobuf; protoc-gen-connectrpc, pinned
#: in the `web` extra, for `grpcchat.web`'s Connect/gRPC-Web service) rather than built into protoc.
_EXTERNAL_PLUGINS = {
    "mypy": "protoc-gen-mypy",
    "mypy_grpc": "protoc-gen-mypy_grpc",
    "connectrpc": "protoc-gen-connectrpc",
}
#: Parameters a plugin always gets. mypy-protobuf's `quiet` only silences its "Writing mypy to
#: ..." lines. connectrpc: code for google.protobuf messages (the `_pb2` modules beside it, not
#: protobuf-py), asyncio only (the server runs on the gRPC server's event loop).
_DEFAULT_PARAMETERS = {
    "mypy": ("quiet",),
    "mypy_grpc": ("quiet",),
    "connectrpc": ("protobuf=google", "io=async"),
}
#: Which package provides a plugin, for the error when it is missing.
_PLUGIN_PACKAGES = {"connectrpc": "protoc-gen-connectrpc (pip install 'grpcchat[web]')"}
#: How long `buf generate` may take before we call it hung.
_BUF_TIMEOUT_S = 120.0

_BUF_INSTALL_HINT = (
    "buf not found on PATH nor in node_modules/.bin (of the checkout or web/); install it "
    "with `npm install -g @bufbuild/buf` (or `npm ci` in web/) or run without --with-buf"
)


class ProtogenError(Exception):
    """Code generation could not run; the message is meant to be shown to a person as is."""


# -- locating things ---------------------------------------------------------------------------


def find_repo_root(start: Path | None = None) -> Path:
    """Return the checkout root: the nearest directory at or above `start` (default: the current
    directory) holding both `proto/buf.yaml` and `grpcchat/`.

    Generation only makes sense from a source checkout; an installed wheel has no `proto/`.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / PROTO_DIR / "buf.yaml").is_file() and (candidate / "grpcchat").is_dir():
            return candidate
    raise ProtogenError(
        f"not inside a grpcchat source checkout: no directory at or above {here} has both "
        f"{PROTO_DIR}/buf.yaml and grpcchat/ (run this from a clone of the repository)"
    )


def proto_files(repo_root: Path) -> list[str]:
    """Return every `.proto` under `proto/`, as sorted POSIX paths relative to `proto/`.

    Sorted so the protoc command line, and hence any output that depends on input order, is
    stable across machines and filesystems.
    """
    proto_root = repo_root / PROTO_DIR
    if not proto_root.is_dir():
        raise ProtogenError(f"no {PROTO_DIR}/ directory in {repo_root}")
    found = sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))
    if not found:
        raise ProtogenError(f"no .proto files under {proto_root}")
    return found


def _scripts_dirs() -> list[Path]:
    """Directories where this interpreter's console scripts live, most specific first.

    A venv that is not activated is not on PATH, yet its `bin/` holds the mypy-protobuf plugins
    matching the pinned version; prefer those over whatever PATH happens to offer.
    """
    dirs = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_plugin(executable: str, package: str = "mypy-protobuf") -> Path:
    """Locate a protoc plugin executable (e.g. `protoc-gen-mypy`) for this interpreter."""
    for directory in _scripts_dirs():
        for name in (executable, executable + ".exe"):
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    on_path = shutil.which(executable)
    if on_path:
        return Path(on_path)
    raise ProtogenError(
        f"{executable} not found next to {sys.executable} or on PATH; "
        f"install {package} (pinned in pyproject.toml) into this environment"
    )


def find_buf(repo_root: Path | None = None) -> Path:
    """Locate the `buf` executable: on PATH, else in `node_modules/.bin` of the repository root
    (or of the current directory), where `npm install @bufbuild/buf` puts it, else the one the
    web page's build pins (`web/node_modules/.bin`, after `npm ci` there)."""
    on_path = shutil.which("buf")
    if on_path:
        return Path(on_path)
    roots = [r for r in (repo_root, Path.cwd()) if r is not None]
    for bin_dir in [r / "node_modules" / ".bin" for r in roots] + (
        [repo_root / "web" / "node_modules" / ".bin"] if repo_root is not None else []
    ):
        local = shutil.which("buf", path=str(bin_dir))
        if local:
            return Path(local)
    raise ProtogenError(_BUF_INSTALL_HINT)


def check_repo_root(root: Path) -> Path:
    """`root` resolved, if it is a grpcchat checkout (as `find_repo_root` finds one): the
    generated code is written, and stale files pruned, under its `grpcchat/gen`."""
    root = root.resolve()
    if not ((root / PROTO_DIR / "buf.yaml").is_file() and (root / "grpcchat").is_dir()):
        raise ProtogenError(
            f"{root} is not a grpcchat source checkout: it needs both {PROTO_DIR}/buf.yaml "
            "and grpcchat/ (give --root the repository's top directory)"
        )
    return root


def _wkt_include() -> str:
    """grpc_tools' bundled well-known types (`google/protobuf/timestamp.proto`, ...).

    `python -m grpc_tools.protoc` appends this include itself; calling `protoc.main` does not.
    """
    return str(importlib.resources.files("grpc_tools") / "_proto")


# -- running protoc ----------------------------------------------------------------------------


def out_flags(generator: str, out_dir: Path, parameter: str = "") -> list[str]:
    """Protoc flags that run one generator into `out_dir`, with an optional plugin parameter.

    A plugin always gets its `_DEFAULT_PARAMETERS` (mypy-protobuf's `quiet` does not change the
    output; connectrpc's select google.protobuf and asyncio).
    """
    if generator not in GENERATORS:
        raise ProtogenError(f"unknown generator {generator!r}; expected one of {GENERATORS}")
    params = [p for p in parameter.split(",") if p]
    flags: list[str] = []
    if generator in _EXTERNAL_PLUGINS:
        executable = _EXTERNAL_PLUGINS[generator]
        package = _PLUGIN_PACKAGES.get(generator, "mypy-protobuf")
        flags.append(f"--plugin={executable}={find_plugin(executable, package)}")
        params = [p for p in _DEFAULT_PARAMETERS.get(generator, ()) if p not in params] + params
    prefix = ",".join(params) + ":" if params else ""
    flags.append(f"--{generator}_out={prefix}{out_dir}")
    return flags


def run_protoc(args: Sequence[str], *, include_wkt: bool = True) -> None:
    """Run grpc_tools' bundled protoc in-process with `args` (without argv[0]).

    `include_wkt` appends grpc_tools' well-known-types include path, as `python -m
    grpc_tools.protoc` does; leave it off when the descriptors come from `--descriptor_set_in`.

    In-process because it is what the pinned grpcio-tools provides (no separate protoc binary to
    install or to drift in version) and it saves an interpreter start. Protoc writes diagnostics
    straight to file descriptor 2, from C++ and from plugin subprocesses, so fd 2 is redirected to
    a temporary file for the call: failures raise `ProtogenError` carrying that text, and on
    success any warnings are passed on to `sys.stderr`.
    """
    try:
        protoc = importlib.import_module("grpc_tools.protoc")
    except ImportError as exc:
        raise ProtogenError(
            f"grpcio-tools is not installed in {sys.executable} ({exc}); "
            "install the grpcchat package's dependencies"
        ) from exc
    argv = ["grpc_tools.protoc", *args]
    if include_wkt:
        argv.append(f"-I{_wkt_include()}")
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved_fd = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            code = int(protoc.main(argv))
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        captured.seek(0)
        diagnostics = captured.read().decode("utf-8", errors="replace").strip()
    if code != 0:
        command = shlex.join(["python", "-m", "grpc_tools.protoc", *args])
        raise ProtogenError(
            f"protoc failed with exit status {code}:\n{diagnostics or '(no output)'}\n"
            f"command: {command}"
        )
    if diagnostics:
        print(diagnostics, file=sys.stderr)


def package_inits(generated: Sequence[str]) -> list[str]:
    """The `__init__.py` files that make `GEN_PREFIX` and every directory holding generated code
    below it an importable package (protoc creates none of them)."""
    root = Path(GEN_PREFIX)
    inits: set[str] = set()
    for name in generated:
        directory = Path(name).parent
        while directory != root and root in directory.parents:
            inits.add((directory / "__init__.py").as_posix())
            directory = directory.parent
        if directory == root:
            inits.add((root / "__init__.py").as_posix())
    return sorted(inits)


def _protoc_generate(repo_root: Path, dest: Path) -> None:
    """Render the generated tree into `dest` (a scratch directory) with in-process protoc."""
    proto_root = (repo_root / PROTO_DIR).resolve()
    sources = [str(proto_root / name) for name in proto_files(repo_root)]
    flags = [flag for generator in GENERATORS for flag in out_flags(generator, dest)]
    run_protoc([f"-I{GEN_PREFIX}={proto_root}", *flags, *sources])


def _buf_generate(repo_root: Path, dest: Path) -> None:
    """Render the generated tree into `dest` (a scratch directory) with `buf generate`.

    The template's plugins are `python3 -m grpcchat.protogen.buf_plugin ...`. So that they run on
    this interpreter (with its pinned grpcio-tools) even when no venv is activated, `python3` is
    shadowed by a tiny shell shim that execs `sys.executable` (a symlink would not do: a venv's
    interpreter only finds its site-packages when started through the venv path). PYTHONPATH
    makes the adapter import this very copy of grpcchat.
    """
    buf = find_buf(repo_root)
    template = repo_root / PROTO_DIR / "buf.gen.yaml"
    if not template.is_file():
        raise ProtogenError(f"buf template {template} is missing")
    proto_files(repo_root)  # same "no proto/" / "no .proto files" errors as the default path
    import_root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="grpcchat-buf-shim-") as shim_dir:
        shim = Path(shim_dir) / "python3"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n', encoding="utf-8")
        shim.chmod(0o755)
        env = dict(os.environ)
        path = [shim_dir, *(str(d) for d in _scripts_dirs()), env.get("PATH", os.defpath)]
        env["PATH"] = os.pathsep.join(path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [import_root, env.get("PYTHONPATH")]))
        command = [
            str(buf),
            "generate",
            "--template",
            f"{PROTO_DIR}/buf.gen.yaml",
            "--output",
            str(dest),
        ]
        try:
            result = subprocess.run(
                command,
                cwd=repo_root,
                env=env,
                capture_output=True,
                text=True,
                timeout=_BUF_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ProtogenError(f"buf generate timed out after {_BUF_TIMEOUT_S:.0f} s") from exc
        except OSError as exc:
            raise ProtogenError(f"could not run {buf}: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip() or "(no output)"
        raise ProtogenError(
            f"buf generate failed with exit status {result.returncode}:\n{output}\n"
            f"command (in {repo_root}): {shlex.join(command)}"
        )
    if result.stderr.strip():
        print(result.stderr.strip(), file=sys.stderr)


def _render(repo_root: Path, dest: Path, use_buf: bool) -> dict[str, bytes]:
    """Generate into the scratch directory `dest`; return {path relative to dest: bytes}."""
    if use_buf:
        _buf_generate(repo_root, dest)
    else:
        _protoc_generate(repo_root, dest)
    tree = _read_tree(dest)
    if not tree:
        raise ProtogenError(f"the generator produced no files under {GEN_PREFIX}/")
    for init in package_inits(list(tree)):
        tree.setdefault(init, b"")
    return tree


def _read_tree(root: Path) -> dict[str, bytes]:
    """Files under `root/GEN_PREFIX` as {POSIX path relative to root: bytes}, bytecode ignored."""
    gen_root = root / GEN_PREFIX
    if not gen_root.is_dir():
        return {}
    tree: dict[str, bytes] = {}
    for path in sorted(gen_root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        tree[path.relative_to(root).as_posix()] = path.read_bytes()
    return tree


def differences(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Relative paths that are stale (different bytes), missing or extra in `actual`."""
    return sorted(
        name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name)
    )


def apply_changes(root: Path, fresh: dict[str, bytes], changed: list[str]) -> list[Path]:
    """Write each of `changed` (relative to `root`) as `fresh` has it, or remove it if `fresh`
    has none; the paths. ProtogenError naming the file if one cannot be written or removed
    (a read-only tree, a full disk)."""
    for name in changed:
        path = root / name
        try:
            if name in fresh:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(fresh[name])
            else:
                path.unlink()
        except OSError as exc:
            raise ProtogenError(f"cannot write {path}: {exc.strerror or exc}") from None
    return [root / name for name in changed]


# -- public API --------------------------------------------------------------------------------


def generate(repo_root: Path, out_dir: Path | None = None, use_buf: bool = False) -> list[Path]:
    """Regenerate the code for every `.proto` under `repo_root/proto` (`prepare`, then write).

    Files land in `out_dir/grpcchat/gen/...` (`out_dir` defaults to `repo_root`). Everything is
    first generated into a scratch directory, so a failing generator leaves the target untouched;
    then only files whose bytes changed are written (unchanged files keep their mtime) and files
    under `grpcchat/gen` that the generator no longer produces are deleted.

    Returns the absolute paths that were written or deleted, sorted; empty when the target was
    already up to date. Raises `ProtogenError` when generation cannot run.
    """
    return prepare(repo_root, out_dir, use_buf)()


def prepare(
    repo_root: Path, out_dir: Path | None = None, use_buf: bool = False
) -> Callable[[], list[Path]]:
    """Generate into a scratch directory now (`ProtogenError` if that fails, nothing written);
    return the step that writes the result as `generate` does, so a caller with more to
    generate (the web page) can write nothing unless all of it generated."""
    repo_root = repo_root.resolve()
    target = (out_dir or repo_root).resolve()
    with tempfile.TemporaryDirectory(prefix="grpcchat-protogen-") as scratch:
        fresh = _render(repo_root, Path(scratch), use_buf)

    def write() -> list[Path]:
        written = apply_changes(target, fresh, differences(fresh, _read_tree(target)))
        _prune_empty_dirs(target / GEN_PREFIX)
        return written

    return write


def _prune_empty_dirs(gen_root: Path) -> None:
    """Remove directories under `gen_root` left empty (or holding only bytecode) by deletions."""
    if not gen_root.is_dir():
        return
    for directory in sorted((p for p in gen_root.rglob("*") if p.is_dir()), reverse=True):
        if directory.name == "__pycache__" or not directory.exists():
            continue
        leftovers = [p for p in directory.iterdir() if p.name != "__pycache__"]
        if not leftovers:
            shutil.rmtree(directory)


def check(repo_root: Path) -> list[Path]:
    """Return the generated files in `repo_root/grpcchat/gen` that are stale, missing or extra.

    An empty list means the committed code matches what the default generator produces now. The
    code is generated into a scratch directory and compared byte for byte; the checkout is never
    written to. Raises `ProtogenError` when generation cannot run.
    """
    repo_root = repo_root.resolve()
    with tempfile.TemporaryDirectory(prefix="grpcchat-protogen-") as scratch:
        fresh = _render(repo_root, Path(scratch), use_buf=False)
    return [repo_root / name for name in differences(fresh, _read_tree(repo_root))]
