"""`grpcchat gen-proto`: regenerate grpcchat/gen from proto/ with grpc_tools (default) or buf,
byte for byte the same, and check that the committed code is fresh."""

from grpcchat.protogen.generate import (
    GEN_PREFIX,
    ProtogenError,
    check,
    check_repo_root,
    find_buf,
    find_plugin,
    find_repo_root,
    generate,
    prepare,
)

__all__ = [
    "GEN_PREFIX",
    "ProtogenError",
    "check",
    "check_repo_root",
    "find_buf",
    "find_plugin",
    "find_repo_root",
    "generate",
    "prepare",
]
