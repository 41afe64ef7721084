"""A buf `local:` plugin that runs grpc_tools' generators on buf's descriptors.

Why: `buf generate` alone cannot produce our `grpcchat/gen` code. buf has no builtin for the gRPC
Python generator and grpcio-tools ships no `protoc-gen-grpc_python` executable; buf compiles
`proto/chat/v1/chat_service.proto` under the name `chat/v1/chat_service.proto`, so the generated
`_pb2_grpc.py` would import `from chat.v1 import ...`, which is broken inside a package; and buf's
descriptors carry a `json_name` for every field, which protoc's Python generator embeds, so even
the `_pb2.py` bytes would differ from the committed ones.

This adapter reads buf's CodeGeneratorRequest and makes it look like what
`protoc -Igrpcchat/gen=proto` would have compiled:

1. every file that is not a well-known type (`google/protobuf/...`, which grpc_tools bundles) is
   renamed from `chat/v1/x.proto` to `grpcchat/gen/chat/v1/x.proto`, in file names, dependency
   lists and the list of files to generate;
2. a field's `json_name` is dropped unless the source spelled it out: buf's source info records a
   location for an explicit `[json_name = ...]` option, exactly the ones protoc keeps. Without
   source info it falls back to dropping names equal to the default camelCase name, which can
   only differ from protoc for an explicit option that restates the default;

then it writes the descriptors as a FileDescriptorSet and runs grpc_tools' protoc in-process with
`--descriptor_set_in` and the one requested generator, and returns the files it produced. The
`python` generator also emits the `__init__.py` files, so a bare `buf generate` yields an
importable tree.

Usage, from `proto/buf.gen.yaml` (buf's `opt:` is passed through to the generator)::

    - local: [python3, -m, grpcchat.protogen.buf_plugin, grpc_python]
      out: .
      strategy: all
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

from grpcchat.protogen.generate import (
    GEN_PREFIX,
    GENERATORS,
    ProtogenError,
    out_flags,
    package_inits,
    run_protoc,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: Files protoc finds in grpc_tools' bundled include directory rather than under `proto/`.
_WELL_KNOWN_PREFIX = "google/protobuf/"
#: FieldDescriptorProto.json_name, as it appears at the end of a source-info location path.
_JSON_NAME_FIELD = descriptor_pb2.FieldDescriptorProto.JSON_NAME_FIELD_NUMBER


def _virtual_name(name: str) -> str:
    """The name protoc gives `name` under the `-Igrpcchat/gen=proto` mapping."""
    if name.startswith(_WELL_KNOWN_PREFIX):
        return name
    return f"{GEN_PREFIX}/{name}"


def default_json_name(field_name: str) -> str:
    """protoc's ToJsonName: drop underscores and upper-case the letter after each one."""
    out: list[str] = []
    upper_next = False
    for char in field_name:
        if char == "_":
            upper_next = True
        elif upper_next:
            out.append(char.upper() if char.isascii() else char)
            upper_next = False
        else:
            out.append(char)
    return "".join(out)


def _fields(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[tuple[int, ...], descriptor_pb2.FieldDescriptorProto]]:
    """Every field and extension in `file`, with its source-info path."""
    file_fields = descriptor_pb2.FileDescriptorProto
    message_fields = descriptor_pb2.DescriptorProto
    for index, extension in enumerate(file.extension):
        yield (file_fields.EXTENSION_FIELD_NUMBER, index), extension

    def walk(
        messages: Sequence[descriptor_pb2.DescriptorProto], prefix: tuple[int, ...]
    ) -> Iterator[tuple[tuple[int, ...], descriptor_pb2.FieldDescriptorProto]]:
        for index, message in enumerate(messages):
            path = (*prefix, index)
            for number, field in enumerate(message.field):
                yield (*path, message_fields.FIELD_FIELD_NUMBER, number), field
            for number, extension in enumerate(message.extension):
                yield (*path, message_fields.EXTENSION_FIELD_NUMBER, number), extension
            yield from walk(message.nested_type, (*path, message_fields.NESTED_TYPE_FIELD_NUMBER))

    yield from walk(file.message_type, (file_fields.MESSAGE_TYPE_FIELD_NUMBER,))


def _drop_implicit_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    """Clear the `json_name`s protoc would not have recorded (see the module docstring)."""
    located = {tuple(location.path) for location in file.source_code_info.location}
    for path, field in _fields(file):
        if not field.HasField("json_name"):
            continue
        if located:
            explicit = (*path, _JSON_NAME_FIELD) in located
        else:
            explicit = field.json_name != default_json_name(field.name)
        if not explicit:
            field.ClearField("json_name")


def to_protoc_descriptors(
    request: plugin_pb2.CodeGeneratorRequest,
) -> tuple[descriptor_pb2.FileDescriptorSet, list[str]]:
    """buf's request as protoc would have seen it: (all files, names of the files to generate)."""
    files = descriptor_pb2.FileDescriptorSet()
    for original in request.proto_file:
        file = files.file.add()
        file.CopyFrom(original)
        file.name = _virtual_name(file.name)
        renamed = [_virtual_name(dependency) for dependency in file.dependency]
        del file.dependency[:]
        file.dependency.extend(renamed)
        _drop_implicit_json_names(file)
    return files, [_virtual_name(name) for name in request.file_to_generate]


def run(
    generator: str, request: plugin_pb2.CodeGeneratorRequest
) -> plugin_pb2.CodeGeneratorResponse:
    """Run one grpc_tools generator on buf's request and return the plugin response."""
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    files, to_generate = to_protoc_descriptors(request)
    with tempfile.TemporaryDirectory(prefix="grpcchat-buf-plugin-") as scratch:
        scratch_dir = Path(scratch)
        descriptor_set = scratch_dir / "descriptors.binpb"
        descriptor_set.write_bytes(files.SerializeToString())
        out_dir = scratch_dir / "out"
        out_dir.mkdir()
        try:
            run_protoc(
                [
                    f"--descriptor_set_in={descriptor_set}",
                    *out_flags(generator, out_dir, request.parameter),
                    *to_generate,
                ],
                include_wkt=False,
            )
        except ProtogenError as exc:
            response.error = str(exc)
            return response
        produced = sorted(
            path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file()
        )
        for name in produced:
            response.file.add(name=name, content=(out_dir / name).read_text(encoding="utf-8"))
    if generator == "python":
        for init in package_inits(produced):
            if init not in produced:
                response.file.add(name=init, content="")
    return response


def main(argv: Sequence[str] | None = None) -> int:
    """Plugin entry point: CodeGeneratorRequest on stdin, CodeGeneratorResponse on stdout.

    Generation problems go into the response's `error` field (buf shows them); exit status 2 is
    only for being invoked wrongly.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in GENERATORS:
        print(
            f"usage: python -m grpcchat.protogen.buf_plugin {{{','.join(GENERATORS)}}}\n"
            "(a protoc/buf plugin: reads a CodeGeneratorRequest on stdin)",
            file=sys.stderr,
        )
        return 2
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = run(args[0], request)
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
