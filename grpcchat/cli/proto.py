"""`grpcchat gen-proto`: regenerate (or check) the code in grpcchat/gen from proto/, and the
browser page built from the same protos when node and npm are available."""

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
    """Regenerate the code made from proto/ (in a checkout): grpcchat/gen, and the web page.

    The Python code goes to grpcchat/gen; with node and npm on PATH the
    browser page is rebuilt too (web/src/gen and grpcchat/web/static).
    Nothing is written unless all of it generated.

    --check exits 1 and names the stale files when the committed code
    differs from what the protos produce (it always uses the default
    generator, grpc_tools, for the Python).
    """
    from grpcchat import protogen
    from grpcchat.protogen import web

    try:
        # Paths print relative to it.
        repo = protogen.check_repo_root(root) if root else protogen.find_repo_root()
        no_web = web.unavailable(repo)
        if check:
            stale = protogen.check(repo)
            if no_web is None:
                stale += web.check_web(repo)
            for path in stale:
                console.print(f"stale: {path.relative_to(repo)}", style="yellow", highlight=False)
            if no_web is not None:
                console.print(f"web page not checked ({no_web}): Python only", highlight=False)
            if stale:
                fail("generated code is out of date; run `grpcchat gen-proto`")
            where = protogen.GEN_PREFIX if no_web else f"{protogen.GEN_PREFIX} and the web page"
            console.print(f"{where} up to date", style="green")
            return
        # Both are generated before either is written: a page that fails to build leaves the
        # Python code as it was too, not half of a change.
        writes = [protogen.prepare(repo, use_buf=with_buf)]
        if no_web is None:
            writes.append(web.prepare_web(repo))
        changed = [path for write in writes for path in write()]
    except protogen.ProtogenError as error:
        fail(str(error))
    for path in changed:
        verb = "wrote" if path.exists() else "removed"
        console.print(f"{verb}: {path.relative_to(repo)}", highlight=False)
    if no_web is not None:
        console.print(f"web page not rebuilt ({no_web})", highlight=False)
    suffix = "" if changed else " (nothing changed)"
    where = protogen.GEN_PREFIX if no_web else f"{protogen.GEN_PREFIX} and the web page"
    console.print(f"{where} up to date{suffix}", style="green")
