"""`grpcchat gen-proto`: regenerate (or check) the code in grpcchat/gen from proto/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grpcchat.cli.consoles import console
from grpcchat.cli.exits import fail


def gen_proto(
    check: Annotated[
        bool, typer.Option("--check", help="Only verify the committed code is up to date.")
    ] = False,
    with_buf: Annotated[
        bool, typer.Option("--with-buf", help="Generate with buf (must be on PATH).")
    ] = False,
    root: Annotated[
        Path | None, typer.Option(help="Repository root (default: found from the cwd).")
    ] = None,
) -> None:
    """Regenerate the Python code in grpcchat/gen from proto/ (run in a checkout).

    --check exits 1 and names the stale files when the committed code differs from what the
    protos produce (it always uses the default generator, grpc_tools).
    """
    from grpcchat import protogen

    try:
        repo = root or protogen.find_repo_root()
        if check:
            stale = protogen.check(repo)
            for path in stale:
                console.print(f"stale: {path.relative_to(repo)}", style="yellow", highlight=False)
            if stale:
                fail(f"{protogen.GEN_PREFIX} is out of date; run `grpcchat gen-proto`")
            console.print(f"{protogen.GEN_PREFIX} is up to date", style="green")
            return
        changed = protogen.generate(repo, use_buf=with_buf)
    except protogen.ProtogenError as error:
        fail(str(error))
    for path in changed:
        verb = "wrote" if path.exists() else "removed"
        console.print(f"{verb}: {path.relative_to(repo)}", highlight=False)
    suffix = "" if changed else " (nothing changed)"
    console.print(f"{protogen.GEN_PREFIX} is up to date{suffix}", style="green")
