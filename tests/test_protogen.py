"""Tests for grpcchat.protogen: the committed generated code is fresh, staleness is detected, and
both generators (grpc_tools in-process, buf with local plugins) reproduce the committed bytes."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from grpcchat import protogen
from grpcchat.protogen import GEN_PREFIX, ProtogenError
from grpcchat.protogen.buf_plugin import default_json_name
from tests.conftest import CliResult, run_cli

REPO = Path(__file__).resolve().parent.parent
PROTO = "proto/chat/v1/chat_service.proto"
GEN_V1 = f"{GEN_PREFIX}/chat/v1"


def tree(root: Path) -> dict[str, bytes]:
    """Every generated file under root/grpcchat/gen, bytecode ignored."""
    gen = root / GEN_PREFIX
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(gen.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


COMMITTED = tree(REPO)


def embedded_descriptor(pb2: Path) -> descriptor_pb2.FileDescriptorProto:
    """The serialized FileDescriptorProto a generated `_pb2.py` registers, parsed."""
    for node in ast.walk(ast.parse(pb2.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value)
    raise AssertionError(f"no AddSerializedFile(...) in {pb2}")


def make_repo(root: Path, *, with_gen: bool = True) -> Path:
    """A minimal checkout in `root`: proto/ (and the committed grpcchat/gen)."""
    shutil.copytree(REPO / "proto", root / "proto")
    (root / "grpcchat").mkdir()
    if with_gen:
        shutil.copytree(
            REPO / GEN_PREFIX, root / GEN_PREFIX, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def add_field(root: Path) -> None:
    """A compatible schema change: a new field on ChatMessage."""
    proto = root / PROTO
    text = proto.read_text(encoding="utf-8")
    marker = "  uint64 seq = 6;\n"
    assert marker in text
    proto.write_text(text.replace(marker, marker + "  string edited_by = 100;\n"), encoding="utf-8")


@pytest.fixture
def buf_on_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The buf binary, made findable on PATH for tmp checkouts; skip when it is not installed."""
    try:
        buf = protogen.find_buf(REPO)
    except ProtogenError as error:
        pytest.skip(str(error))
    monkeypatch.setenv("PATH", f"{buf.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return buf


# -- check ---------------------------------------------------------------------------------------


def test_committed_code_is_fresh() -> None:
    assert protogen.check(REPO) == []


def test_committed_tree_is_the_expected_set() -> None:
    assert sorted(COMMITTED) == [
        f"{GEN_PREFIX}/__init__.py",
        f"{GEN_PREFIX}/chat/__init__.py",
        f"{GEN_V1}/__init__.py",
        f"{GEN_V1}/chat_service_connect.py",
        f"{GEN_V1}/chat_service_pb2.py",
        f"{GEN_V1}/chat_service_pb2.pyi",
        f"{GEN_V1}/chat_service_pb2_grpc.py",
        f"{GEN_V1}/chat_service_pb2_grpc.pyi",
    ]


def test_check_names_stale_files_and_writes_nothing(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    add_field(root)
    before = tree(root)

    stale = protogen.check(root)

    # The service module does not depend on message fields; the message module and stub do.
    assert stale == [
        root / f"{GEN_V1}/chat_service_pb2.py",
        root / f"{GEN_V1}/chat_service_pb2.pyi",
    ]
    assert tree(root) == before


def test_check_reports_missing_and_extra_files(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    (root / GEN_V1 / "chat_service_pb2_grpc.pyi").unlink()
    (root / GEN_V1 / "old_pb2.py").write_text("# from a deleted .proto\n", encoding="utf-8")
    (root / GEN_V1 / "__pycache__").mkdir()
    (root / GEN_V1 / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"ignored")

    assert protogen.check(root) == [
        root / f"{GEN_V1}/chat_service_pb2_grpc.pyi",
        root / f"{GEN_V1}/old_pb2.py",
    ]


# -- generate ------------------------------------------------------------------------------------


def test_generate_reproduces_committed_bytes(tmp_path: Path) -> None:
    root = make_repo(tmp_path, with_gen=False)

    written = protogen.generate(root)

    assert written == [root / name for name in sorted(COMMITTED)]
    assert tree(root) == COMMITTED
    assert protogen.check(root) == []
    assert protogen.generate(root) == []  # idempotent: nothing rewritten


def test_generate_into_out_dir_leaves_repo_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = protogen.generate(REPO, out_dir=out)
    assert len(written) == len(COMMITTED)
    assert tree(out) == COMMITTED
    assert tree(REPO) == COMMITTED


def test_generate_updates_stale_and_removes_extra(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    orphan_dir = root / GEN_PREFIX / "old" / "v1"
    orphan_dir.mkdir(parents=True)
    (orphan_dir / "__init__.py").touch()
    (orphan_dir / "old_pb2.py").write_text("# from a deleted .proto\n", encoding="utf-8")
    add_field(root)
    untouched = root / GEN_V1 / "chat_service_pb2_grpc.py"
    mtime = untouched.stat().st_mtime_ns

    changed = protogen.generate(root)

    assert changed == [
        root / f"{GEN_V1}/chat_service_pb2.py",
        root / f"{GEN_V1}/chat_service_pb2.pyi",
        root / f"{GEN_PREFIX}/old/v1/__init__.py",
        root / f"{GEN_PREFIX}/old/v1/old_pb2.py",
    ]
    assert not (root / GEN_PREFIX / "old").exists()
    assert b"edited_by" in (root / GEN_V1 / "chat_service_pb2.py").read_bytes()
    assert untouched.stat().st_mtime_ns == mtime
    assert protogen.check(root) == []


def test_protoc_failure_reports_protoc_stderr_and_keeps_files(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    proto = root / PROTO
    proto.write_text(proto.read_text(encoding="utf-8") + "\nmessage Broken {\n", encoding="utf-8")

    with pytest.raises(ProtogenError, match="protoc failed") as excinfo:
        protogen.generate(root)

    assert "chat_service.proto" in str(excinfo.value)  # protoc's own diagnostic, with location
    assert tree(root) == COMMITTED


def test_missing_proto_dir(tmp_path: Path) -> None:
    with pytest.raises(ProtogenError, match="no proto/ directory"):
        protogen.check(tmp_path)


def test_empty_proto_dir(tmp_path: Path) -> None:
    (tmp_path / "proto").mkdir()
    with pytest.raises(ProtogenError, match=r"no \.proto files"):
        protogen.generate(tmp_path)


def test_missing_plugin_is_a_clear_error() -> None:
    with pytest.raises(ProtogenError, match="protoc-gen-nonexistent not found"):
        protogen.find_plugin("protoc-gen-nonexistent")


# -- repo discovery and main ---------------------------------------------------------------------


def test_find_repo_root_walks_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO / "proto" / "chat")
    assert protogen.find_repo_root() == REPO


def test_find_repo_root_outside_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(ProtogenError, match="not inside a grpcchat source checkout"):
        protogen.find_repo_root(tmp_path)


def gen_proto(cwd: Path, *args: str) -> CliResult:
    return run_cli("gen-proto", *args, cwd=cwd, timeout=60)


def test_cli_gen_proto_check_and_regenerate(tmp_path: Path) -> None:
    fresh = gen_proto(REPO, "--check")
    assert fresh.returncode == 0, fresh.stderr
    assert "up to date" in fresh.stdout

    root = make_repo(tmp_path / "repo")
    add_field(root)
    stale = gen_proto(root, "--check")
    assert stale.returncode == 1
    assert f"stale: {GEN_V1}/chat_service_pb2.py" in stale.stdout
    assert "out of date" in stale.stderr

    regenerated = gen_proto(root)
    assert regenerated.returncode == 0, regenerated.stderr
    assert f"wrote: {GEN_V1}/chat_service_pb2.py" in regenerated.stdout
    assert gen_proto(root, "--check").returncode == 0

    outside = gen_proto(tmp_path)
    assert outside.returncode == 1
    assert "not inside a grpcchat source checkout" in outside.stderr


def test_cli_gen_proto_takes_a_relative_root(tmp_path: Path) -> None:
    """`--root .` printed nothing but a traceback (after writing), its paths not resolved."""
    root = make_repo(tmp_path / "repo")
    add_field(root)
    stale = gen_proto(tmp_path, "--check", "--root", "repo")
    assert stale.returncode == 1, stale.stderr
    assert f"stale: {GEN_V1}/chat_service_pb2.py" in stale.stdout
    regenerated = gen_proto(root, "--root", ".")
    assert regenerated.returncode == 0, regenerated.stderr
    assert f"wrote: {GEN_V1}/chat_service_pb2.py" in regenerated.stdout


def test_cli_gen_proto_refuses_a_root_that_is_no_checkout(tmp_path: Path) -> None:
    """Any directory with a proto/ got a grpcchat/gen written (and pruned) in it."""
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    refused = gen_proto(tmp_path, "--root", ".")
    assert refused.returncode == 1
    assert "is not a grpcchat source checkout" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proto"]


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm"
)
def test_a_page_that_fails_to_build_leaves_the_python_code_as_it_was(tmp_path: Path) -> None:
    """The Python code was written first, then the page failed: half of a change, told only
    as the page's error."""
    root = make_repo(tmp_path / "repo")
    add_field(root)
    web = root / "web"
    (web / "node_modules").mkdir(parents=True)  # installed, but without buf: the build fails
    shutil.copy(REPO / "web" / "package.json", web / "package.json")
    failed = gen_proto(root)
    assert failed.returncode == 1
    assert "buf" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert tree(root) == COMMITTED  # still stale, as before the command
    assert gen_proto(root, "--check").returncode == 1


def test_a_file_that_cannot_be_written_is_one_error(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo")
    add_field(root)
    stale = root / GEN_V1 / "chat_service_pb2.py"
    stale.unlink()
    stale.mkdir()  # a directory in the way: writing the file fails, even as root
    with pytest.raises(ProtogenError, match=r"cannot write .*chat_service_pb2\.py: "):
        protogen.generate(root)


# -- buf -----------------------------------------------------------------------------------------


def test_buf_not_found_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_repo(tmp_path / "repo")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProtogenError) as excinfo:
        protogen.generate(root, use_buf=True)
    assert str(excinfo.value) == (
        "buf not found on PATH nor in node_modules/.bin (of the checkout or web/); install it "
        "with `npm install -g @bufbuild/buf` (or `npm ci` in web/) or run without --with-buf"
    )


def test_buf_is_found_where_the_web_page_build_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gen-proto --with-buf` said "buf not found" beside the pinned buf of `npm ci` in web/."""
    root = make_repo(tmp_path / "repo")
    pinned = root / "web" / "node_modules" / ".bin" / "buf"
    pinned.parent.mkdir(parents=True)
    pinned.write_text("#!/bin/sh\n", encoding="utf-8")
    pinned.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    assert protogen.find_buf(root) == pinned


def test_buf_generate_is_byte_identical(tmp_path: Path, buf_on_path: Path) -> None:
    root = make_repo(tmp_path, with_gen=False)
    written = protogen.generate(root, use_buf=True)
    assert written == [root / name for name in sorted(COMMITTED)]
    assert tree(root) == COMMITTED


def test_buf_and_protoc_agree_on_json_names_and_nesting(tmp_path: Path, buf_on_path: Path) -> None:
    """The adapter keeps exactly the json_names protoc keeps (explicit ones, even when they equal
    the default) and handles nested messages, enums and extensions."""
    root = tmp_path / "repo"
    (root / "proto" / "demo" / "v1").mkdir(parents=True)
    (root / "grpcchat").mkdir()
    shutil.copy(REPO / "proto" / "buf.yaml", root / "proto" / "buf.yaml")
    shutil.copy(REPO / "proto" / "buf.gen.yaml", root / "proto" / "buf.gen.yaml")
    (root / "proto" / "demo" / "v1" / "demo.proto").write_text(
        'syntax = "proto3";\n'
        "package demo.v1;\n"
        'import "google/protobuf/descriptor.proto";\n'
        "extend google.protobuf.FieldOptions { string demo_label = 50001; }\n"
        "message Outer {\n"
        '  string explicit_default = 1 [json_name = "explicitDefault"];\n'
        '  string renamed_field = 2 [json_name = "zz", deprecated = true];\n'
        "  string implicit_name = 3;\n"
        "  message Inner { optional int64 inner_value = 1; repeated Kind kinds = 2; }\n"
        "  enum Kind { KIND_UNSPECIFIED = 0; KIND_A = 1; }\n"
        "  Inner inner = 4;\n"
        "}\n"
        "service DemoService { rpc Get(Outer) returns (Outer); }\n",
        encoding="utf-8",
    )
    protoc_out, buf_out = tmp_path / "protoc", tmp_path / "buf"

    protogen.generate(root, out_dir=protoc_out)
    protogen.generate(root, out_dir=buf_out, use_buf=True)

    assert tree(buf_out) == tree(protoc_out)
    outer = embedded_descriptor(protoc_out / GEN_PREFIX / "demo" / "v1" / "demo_pb2.py")
    outer_fields = {f.name: f for f in outer.message_type[0].field}
    assert outer_fields["explicit_default"].json_name == "explicitDefault"
    assert outer_fields["renamed_field"].json_name == "zz"
    assert not outer_fields["implicit_name"].HasField("json_name")


def test_buf_failure_reports_buf_output(tmp_path: Path, buf_on_path: Path) -> None:
    root = make_repo(tmp_path)
    proto = root / PROTO
    proto.write_text(proto.read_text(encoding="utf-8") + "\nmessage Broken {\n", encoding="utf-8")
    with pytest.raises(ProtogenError, match="buf generate failed") as excinfo:
        protogen.generate(root, use_buf=True)
    assert "chat_service.proto" in str(excinfo.value)
    assert tree(root) == COMMITTED


# -- adapter helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [("sender", "sender"), ("sent_at", "sentAt"), ("a_b_c", "aBC"), ("x__y", "xY"), ("t_1", "t1")],
)
def test_default_json_name_matches_protoc(field: str, expected: str) -> None:
    assert default_json_name(field) == expected
