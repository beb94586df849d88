"""The package's boundaries hold, read from the source with ``ast`` (nothing is imported).

- No module reaches into another's private names: no ``from X import _name``, no
  ``X._name`` and no ``monkeypatch.setattr(X, "_name", ...)`` across modules, in the
  package, the tests or the tools (a name another module needs is public in its module,
  in a private module if it should stay internal).
- No import cycle among the package's modules. Every import counts: at the top, inside
  functions and under ``if TYPE_CHECKING:``, so a cycle cannot hide behind an
  annotations-only import either.
- No ``_name`` in any module's ``__all__``.
- No import runs up the layers: each module imports only from its own layer and the
  layers below it (``LAYERS``, bottom up, as README's Layout and ARCHITECTURE.md draw
  them); a new top-level module must take its place in ``LAYERS`` first.

The detectors run on synthetic sources first (:func:`test_the_detectors_flag_what_they_look_for`),
so a detector that finds nothing because it looks at nothing fails too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "onnx_lump"

# Import cycles kept on purpose, each with its reason; none today. A cycle that is not
# listed here fails the test, so no new one can appear unnoticed.
KNOWN_CYCLES: list[frozenset[str]] = []

# The package's layers, bottom up, by the first part of a module's name below the
# package; the package's own __init__ (re-exports only) sits above them all.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "errors", "types", "progress", "activations"),
    ("graph",),
    ("runtime",),
    ("ode",),
    ("data",),
    ("methods",),
    ("pipeline",),
    ("api",),
    ("search", "integrations"),
    ("cli", "__main__"),
)


@dataclass(frozen=True)
class Module:
    name: str  # dotted; a package's name is its folder's
    is_package: bool
    tree: ast.Module
    path: str  # for messages


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def read_modules(folder: Path, root: Path = ROOT) -> dict[str, Module]:
    """Every ``.py`` file under ``folder``, by dotted module name relative to ``root``."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        modules[name] = Module(name, is_package, ast.parse(path.read_text()), str(path))
    return modules


def parse_sources(sources: Mapping[str, str]) -> dict[str, Module]:
    """Modules from source text; a name ending in ``.__init__`` is a package."""
    modules = {}
    for name, text in sources.items():
        is_package = name.endswith(".__init__") or "." not in name
        name = name.removesuffix(".__init__")
        modules[name] = Module(name, is_package, ast.parse(text), name)
    return modules


def _imported_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from ... import`` reads."""
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(modules: Mapping[str, Module]) -> dict[str, set[str]]:
    """module -> the modules of ``modules`` it imports, wherever the import statement
    stands. ``from pkg import sub`` is an edge to ``pkg.sub`` when that is a module, else
    (a name defined in ``pkg/__init__``) to ``pkg``; the packages above an imported
    module are not edges (their ``__init__`` runs first, but it is not what is read)."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, module in modules.items():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                source = _imported_from(module, node)
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        edges[name].add(f"{source}.{alias.name}")
                    elif source in modules:
                        edges[name].add(source)
        edges[name].discard(name)
    return edges


def cycles(edges: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def _module_aliases(module: Module, targets: Mapping[str, Module]) -> dict[str, str]:
    """Local names bound to a module of ``targets`` anywhere in ``module``:
    ``import a.b as b``, ``from a import b`` (b a module)."""
    aliases = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in targets:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _imported_from(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in targets:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def private_uses(
    readers: Mapping[str, Module], targets: Mapping[str, Module]
) -> list[tuple[str, int, str]]:
    """(file, line, what) for every use in ``readers`` of a private name of another module
    of ``targets``: imported by name, read as an attribute of the module, or patched by
    ``setattr`` / ``monkeypatch.setattr`` (on the module object or by a dotted string)."""
    found = []
    for name, module in readers.items():
        aliases = _module_aliases(module, targets)
        for node in ast.walk(module.tree):
            line = getattr(node, "lineno", 0)
            if isinstance(node, ast.ImportFrom):
                source = _imported_from(module, node)
                if source in targets and source != name:
                    for alias in node.names:
                        if _private(alias.name) and f"{source}.{alias.name}" not in targets:
                            found.append((module.path, line, f"from {source} import {alias.name}"))
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                target = aliases.get(node.value.id)
                if target is not None and target != name and _private(node.attr):
                    found.append((module.path, line, f"{target}.{node.attr}"))
            elif isinstance(node, ast.Call) and _is_setattr(node.func) and len(node.args) >= 2:
                subject, attribute = node.args[0], node.args[1]
                if isinstance(subject, ast.Name) and subject.id in aliases:
                    if isinstance(attribute, ast.Constant) and _private(str(attribute.value)):
                        found.append(
                            (module.path, line, f"setattr {aliases[subject.id]}.{attribute.value}")
                        )
                elif isinstance(subject, ast.Constant) and isinstance(subject.value, str):
                    owner, _, last = subject.value.rpartition(".")
                    if owner in targets and _private(last):
                        found.append((module.path, line, f"setattr {subject.value}"))
    return found


def _is_setattr(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "setattr") or (
        isinstance(func, ast.Attribute) and func.attr == "setattr"
    )


def private_exports(modules: Mapping[str, Module]) -> list[tuple[str, str]]:
    """(module, name) for every ``_name`` listed in a module's ``__all__``."""
    found = []
    for name, module in modules.items():
        for node in module.tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            if not any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                continue
            for item in ast.walk(node.value) if node.value is not None else ():
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    if _private(item.value):
                        found.append((name, item.value))
    return found


def test_the_detectors_flag_what_they_look_for():
    modules = parse_sources(
        {
            "pkg.__init__": "from pkg.low import VALUE\n__all__ = ['VALUE', '__version__']\n",
            "pkg.low": "VALUE = 1\n_hidden = 2\n__all__ = ['VALUE', '_hidden']\n",
            "pkg.a": "from pkg.b import helper\n",
            "pkg.b": "def helper():\n    from pkg import a\n    return a\n",
            "pkg.c": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.d import D\n"
                "from pkg.low import _hidden\n"
            ),
            "pkg.d": "import pkg.c as c\nD = c._other\n",
            "pkg.e": "from . import low\nlow._hidden\nfrom .low import VALUE\n",
        }
    )
    edges = import_edges(modules)
    assert edges["pkg.e"] == {"pkg.low"} and edges["pkg"] == {"pkg.low"}
    assert sorted(map(sorted, cycles(edges))) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
    uses = {what for _, _, what in private_uses(modules, modules)}
    assert uses == {"from pkg.low import _hidden", "pkg.c._other", "pkg.low._hidden"}
    assert private_exports(modules) == [("pkg.low", "_hidden")]
    tests = parse_sources(
        {
            "tests.test_x": (
                "import pkg.low as low\n"
                "def test(monkeypatch):\n"
                "    monkeypatch.setattr(low, '_hidden', 3)\n"
                "    monkeypatch.setattr('pkg.low._hidden', 3)\n"
                "    monkeypatch.setattr(low, 'VALUE', 3)\n"
            )
        }
    )
    assert {what for _, _, what in private_uses(tests, modules)} == {
        "setattr pkg.low._hidden",
    }
    assert len(private_uses(tests, modules)) == 2


def layer_of(name: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int | None:
    """The index of ``name``'s layer; the package itself is above every layer, and a
    module no layer names is None."""
    parts = name.split(".")
    if len(parts) == 1:
        return len(layers)
    return next((i for i, names in enumerate(layers) if parts[1] in names), None)


def upward_imports(
    edges: Mapping[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS
) -> list[tuple[str, str]]:
    """(importer, imported) for every import of a module in a higher layer, and
    (module, "no layer") for a module no layer names."""
    found = []
    for name, targets in sorted(edges.items()):
        own = layer_of(name, layers)
        if own is None:
            found.append((name, "no layer"))
            continue
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs > own:
                found.append((name, target))
    return found


def test_the_layer_detector_flags_an_upward_import():
    modules = parse_sources(
        {
            "pkg.__init__": "from pkg.high import run\n",
            "pkg.low.__init__": "",
            "pkg.low.a": "def f():\n    from pkg.high import run\n    return run\n",
            "pkg.low.b": "from pkg import low\nfrom pkg.low import a\n",
            "pkg.high": "from pkg.low import a\nrun = a.f\n",
            "pkg.stray": "VALUE = 1\n",
        }
    )
    layers = (("low",), ("high",))
    assert upward_imports(import_edges(modules), layers) == [
        ("pkg.low.a", "pkg.high"),
        ("pkg.stray", "no layer"),
    ]


def test_no_import_runs_up_the_layers():
    found = upward_imports(import_edges(_package()))
    assert not found, "imports up the layers (see LAYERS):\n" + "\n".join(
        f"  {importer} -> {imported}" for importer, imported in found
    )


def _package() -> dict[str, Module]:
    modules = read_modules(ROOT / PACKAGE)
    assert len(modules) > 50, "the package's modules were not found"
    return modules


def test_no_module_uses_another_modules_private_names():
    package = _package()
    readers = {**package, **read_modules(ROOT / "tests"), **read_modules(ROOT / "tools")}
    found = private_uses(readers, package)
    assert not found, "private names used across modules:\n" + "\n".join(
        f"  {path}:{line}: {what}" for path, line, what in found
    )


def test_no_import_cycles():
    found = set(cycles(import_edges(_package())))
    new = found - set(KNOWN_CYCLES)
    assert not new, "import cycles:\n" + "\n".join(f"  {sorted(c)}" for c in new)
    gone = set(KNOWN_CYCLES) - found
    assert not gone, f"known cycles that no longer exist (drop them from KNOWN_CYCLES): {gone}"


def test_no_private_names_in_all():
    found = private_exports(_package())
    assert not found, f"private names in __all__: {found}"
