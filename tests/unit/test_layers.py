"""The package's layers, read from its source: imports run one way, and never in a cycle.

Top to bottom: the composition root (CLI, daemon) -> the consumers of the library (tracer,
deprecations) -> resolution (resolver, watcher, index, CRI, the daemon's API clients) ->
foundations (runtimes, bundle, cgroup, host paths, model, rendering). A module may import its
own layer and those below; the consumers do not import each other; the tracer uses only the
public API (``ociresolve``, ``ociresolve.render``). Every import counts, those inside functions
and under ``TYPE_CHECKING`` too. A module that no layer names fails the test: place it.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

PACKAGE: Final = Path(__file__).resolve().parents[2] / "ociresolve"

# Top first. A name stands for the module and everything under it.
LAYERS: Final[tuple[tuple[str, frozenset[str]], ...]] = (
    (
        "composition root",
        frozenset(
            {"ociresolve.cli", "ociresolve.__main__", "ociresolve.daemon", "ociresolve.options"}
        ),
    ),
    ("consumers", frozenset({"ociresolve.tracer", "ociresolve.deprecations"})),
    (
        "resolution",
        frozenset(
            {
                "ociresolve",  # the public API (ociresolve/__init__.py)
                "ociresolve.resolver",
                "ociresolve.sources",
                "ociresolve.watcher",
                "ociresolve.index",
                "ociresolve.entries",
                "ociresolve.cri",
                "ociresolve.api",
                "ociresolve.node",
            }
        ),
    ),
    (
        "foundations",
        frozenset(
            {
                "ociresolve.runtimes",
                "ociresolve.bundle",
                "ociresolve.mounts",
                "ociresolve.inspection",
                "ociresolve.cgroup",
                "ociresolve.proc",
                "ociresolve.hostpaths",
                "ociresolve.model",
                "ociresolve.errors",
                "ociresolve.ids",
                "ociresolve.render",
                "ociresolve.channel",
            }
        ),
    ),
)
# The consumers are separate features: neither imports the other.
SEPARATE: Final = ("ociresolve.tracer", "ociresolve.deprecations")
# What the tracer may import of the library: the public API.
TRACER_MAY_IMPORT: Final = frozenset({"ociresolve", "ociresolve.render"})


def _modules() -> dict[str, Path]:
    """Every module of the package by name, ``ociresolve/tracer`` (a link) included."""
    found: dict[str, Path] = {}
    for directory, _dirs, files in os.walk(PACKAGE, followlinks=True):
        parts = Path(directory).relative_to(PACKAGE.parent).parts
        for name in files:
            if not name.endswith(".py") or "_pb2" in name:
                continue
            stem = name[: -len(".py")]
            module = ".".join(parts if stem == "__init__" else (*parts, stem))
            found[module] = Path(directory) / name
    return found


MODULES: Final = _modules()


def _imports(module: str, path: Path) -> Iterator[str]:
    """The ``ociresolve`` modules ``module`` imports (a name imported from a package is the
    submodule when there is one)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in MODULES or "_pb2" in alias.name else base


def _graph() -> dict[str, set[str]]:
    return {
        module: {
            name
            for name in _imports(module, path)
            if (name == "ociresolve" or name.startswith("ociresolve."))
            and "_pb2" not in name
            and name != module
        }
        for module, path in MODULES.items()
    }


GRAPH: Final = _graph()


def _owner(module: str, names: frozenset[str]) -> str | None:
    """The longest name in ``names`` that is ``module`` or a package holding it."""
    best = None
    for name in names:
        if (module == name or module.startswith(name + ".")) and len(name) > len(best or ""):
            best = name
    return best


def _layer(module: str) -> int:
    """The index of ``module``'s layer (0 is the top), by the most specific name."""
    matches = [
        (len(owner), rank)
        for rank, (_, names) in enumerate(LAYERS)
        if (owner := _owner(module, names)) is not None
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return max(matches)[1]


def test_every_module_is_placed() -> None:
    assert len(MODULES) > 40, sorted(MODULES)  # the walk found the package
    assert "ociresolve.tracer.probe" in MODULES
    for module in MODULES:
        _layer(module)


def test_no_import_goes_up() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {name} ({LAYERS[_layer(name)][0]})"
        for module, names in GRAPH.items()
        for name in names
        if _layer(name) < _layer(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_the_consumers_are_separate() -> None:
    crossing = [
        f"{module} imports {name}"
        for module, names in GRAPH.items()
        for name in names
        for ours in SEPARATE
        if module.startswith(ours)
        for theirs in SEPARATE
        if theirs != ours and (name == theirs or name.startswith(theirs + "."))
    ]
    assert not crossing, "\n".join(crossing)


def test_the_tracer_uses_only_the_public_api() -> None:
    private = [
        f"{module} imports {name}"
        for module, names in GRAPH.items()
        if module.startswith("ociresolve.tracer")
        for name in names
        if not name.startswith("ociresolve.tracer") and name not in TRACER_MAY_IMPORT
    ]
    assert not private, "\n".join(private)


def test_no_library_module_imports_the_tracer() -> None:
    below_root = [
        f"{module} imports {name}"
        for module, names in GRAPH.items()
        if _layer(module) > 0 and not module.startswith("ociresolve.tracer")
        for name in names
        if name.startswith("ociresolve.tracer")
    ]
    assert not below_root, "\n".join(below_root)


def test_no_cycle() -> None:
    """Depth-first search for a back edge; the cycle found is printed."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for name in sorted(GRAPH.get(module, ())):
            if state.get(name) == 1:
                return [*stack[stack.index(name) :], name]
            if name not in state and (cycle := visit(name)) is not None:
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)) is not None:
            raise AssertionError(" -> ".join(cycle))


def test_the_checker_reads_relative_imports() -> None:
    """``from . import _wire`` in the tracer is ``ociresolve.tracer._wire``."""
    assert "ociresolve.tracer._wire" in GRAPH["ociresolve.tracer.probe"]
