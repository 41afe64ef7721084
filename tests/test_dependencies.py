"""Every package grpcchat's own code imports is one its pyproject.toml asks for: an import
that works here only because another package brought it along breaks the README's first
command on a fresh machine (`import click` did: Typer carries its own copy now, and click came
only with uvicorn, of the web extra)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "grpcchat"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
# Generated code imports what its generator's runtime needs (connectrpc's HTTP client).
GENERATED = PACKAGE / "gen"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalized(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _with_their_requirements(names: set[str]) -> set[str]:
    """`names` and, transitively, what each installed one requires (its extras' aside)."""
    found = set(names)
    todo = list(names)
    while todo:
        try:
            requires = metadata.requires(todo.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for name in _requirement_names([r for r in requires if "extra ==" not in r]) - found:
            found.add(name)
            todo.append(name)
    return found


def _imports() -> dict[str, list[Path]]:
    """Each third-party top-level module our own code imports, and the files that do."""
    importers: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                importers.setdefault(name.partition(".")[0], []).append(path)
    for own in (*sys.stdlib_module_names, "grpcchat", "__future__"):
        importers.pop(own, None)
    return importers


def test_every_imported_package_is_a_declared_dependency() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    # What the program may import: its dependencies (and theirs), and its extras' own
    # packages (test and dev are not the program's); generated code, what its runtime brings.
    base = _with_their_requirements(_requirement_names(project["dependencies"]))
    extras = set[str]()
    for extra in ("nats", "web"):
        extras |= _requirement_names(project["optional-dependencies"][extra])
    providers = metadata.packages_distributions()
    undeclared = {}
    for module, paths in _imports().items():
        dists = {_normalized(d) for d in providers.get(module, [])}
        if dists & (base | extras):
            continue
        generated_only = all(path.is_relative_to(GENERATED) for path in paths)
        if generated_only and dists & _with_their_requirements(extras):
            continue
        undeclared[module] = sorted(str(p.relative_to(PACKAGE)) for p in paths)
    assert undeclared == {}, f"imported but not asked for in pyproject.toml: {undeclared}"
