"""The graph of fconv_plugin's imports, read from the source (imports inside functions included): it has
no cycle, each layer imports only the layers below it, and the models never depend on the converters, the
CLIs, the tasks or the criterions, not even through other modules.  fconv_runtime needs neither fairseq nor
the plugin."""

import ast
import os
import pkgutil
from typing import Dict, List, Set

import pytest

from helpers import REPO

PACKAGE = "fconv_plugin"
PACKAGE_DIR = os.path.join(REPO, PACKAGE)
#: what models/ and modules/ must not reach (the dependency runs the other way)
LAYERS_BELOW = ("fconv_plugin.models", "fconv_plugin.modules")
LAYERS_ABOVE = ("fconv_plugin.convert", "fconv_plugin.cli", "fconv_plugin.tasks", "fconv_plugin.criterions")


def _module_files() -> Dict[str, str]:
    """Every module of fconv_plugin (packages by their __init__.py) -> its file."""
    files = {PACKAGE: os.path.join(PACKAGE_DIR, "__init__.py")}
    folders = [(PACKAGE_DIR, PACKAGE)]
    while folders:  # pkgutil.walk_packages without importing the packages
        folder, package = folders.pop()
        for info in pkgutil.iter_modules([folder], prefix=package + "."):
            path = os.path.join(folder, info.name.rpartition(".")[2])
            files[info.name] = os.path.join(path, "__init__.py") if info.ispkg else path + ".py"
            if info.ispkg:
                folders.append((path, info.name))
    return files


MODULES = _module_files()


def _imports(name: str, path: str) -> Set[str]:
    """The fconv_plugin modules ``name`` imports, anywhere in its file (functions too).

    ``from X import y`` counts as importing ``X.y`` when that is a module, else ``X``;
    relative imports are resolved against the module's package."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # import a.b.c where c is a name
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for succ in graph.get(todo.pop(), ()):
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return seen


def test_the_graph_sees_the_packages_imports():
    """The reader resolves what it must (else the tests below would pass on an empty graph)."""
    assert {"fconv_plugin.models", "fconv_plugin.convert", "fconv_plugin.convert.common"} <= set(MODULES)
    assert "fconv_plugin.models" in GRAPH["fconv_plugin.convert.common"]  # from ..models import ...
    assert "fconv_plugin.convert.common" in GRAPH["fconv_plugin.convert.fconv"]  # from .common import ...
    assert "fconv_plugin.convert" in GRAPH["fconv_plugin"]  # from . import convert


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    detail = [
        f"{' <-> '.join(cycle)}: "
        + "; ".join(f"{a} imports {b}" for a in cycle for b in sorted(GRAPH[a]) if b in cycle)
        for cycle in cycles
    ]
    assert not cycles, "import cycles in fconv_plugin:\n" + "\n".join(detail)


@pytest.mark.parametrize("below", LAYERS_BELOW)
def test_models_and_modules_never_import_converters_clis_tasks_or_criterions(below):
    offending = {}
    for name in MODULES:
        if name == below or name.startswith(below + "."):
            reached = {m for m in _reachable(GRAPH, name) if m.startswith(LAYERS_ABOVE)}
            if reached:
                offending[name] = sorted(reached)
    assert not offending, f"{below} depends on (directly or through other modules): {offending}"


#: the layers of fconv_plugin and the ones each may import directly (DESIGN: models -> modules; serving,
#: convert, criterions -> models; nothing imports back up; the exact model knows nothing of serving)
MAY_IMPORT = {
    "fconv_plugin.modules": set(),
    "fconv_plugin.models": {"fconv_plugin.modules", "fconv_plugin.checkpoint", "fconv_plugin.hub"},
    "fconv_plugin.hub": {"fconv_plugin.checkpoint"},
    "fconv_plugin.checkpoint": set(),
    "fconv_plugin.criterions": {"fconv_plugin.models", "fconv_plugin.modules"},
    "fconv_plugin.serving": {"fconv_plugin.models", "fconv_plugin.modules", "fconv_plugin.checkpoint"},
    "fconv_plugin.convert": {
        "fconv_plugin.models",
        "fconv_plugin.modules",
        "fconv_plugin.checkpoint",
        "fconv_plugin.hub",
    },
}


def _layer(name: str) -> str:
    return ".".join(name.split(".")[:2])


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_imports_only_the_layers_below_it(layer):
    """Direct imports, so that a forbidden one is named where it is written."""
    offending = {
        name: sorted(target for target in GRAPH[name] if _layer(target) not in MAY_IMPORT[layer] | {layer})
        for name in MODULES
        if _layer(name) == layer
    }
    offending = {name: targets for name, targets in offending.items() if targets}
    assert not offending, f"{layer} may import only {sorted(MAY_IMPORT[layer])}; these modules import more: {offending}"


def test_fconv_runtime_needs_neither_fairseq_nor_the_plugin_and_torch_only_in_a_function():
    """fconv_runtime runs where fairseq and torch cannot be imported: neither it nor the plugin is imported
    anywhere in it, torch only inside a function (the AOTInductor backend's)."""
    folder = os.path.join(REPO, "fconv_runtime")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".py"))
    assert "backends.py" in files
    found = []
    for filename in files:
        tree = ast.parse(open(os.path.join(folder, filename)).read(), filename)
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in ("fairseq", "fconv_plugin") or (root == "torch" and id(node) in top_level):
                    found.append(f"{filename}:{node.lineno} imports {name}")
    assert not found, found
