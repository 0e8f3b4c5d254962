"""fconv_plugin has no import cycle: every module imports on its own, and the graph of
its imports (read from the source, imports inside functions included) has no cycle;
the models never depend on the converters, the CLIs, the tasks or the criterions."""

import ast
import os
import pkgutil
import subprocess
import sys
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
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names]
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
        f"{' <-> '.join(cycle)}: " + "; ".join(f"{a} imports {b}" for a in cycle for b in sorted(GRAPH[a]) if b in cycle)
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


#: run in a fresh interpreter: torch and fairseq (the slow part) are imported once, then
#: each fconv_plugin module is imported first thing in a forked child of that interpreter
_IMPORT_EACH = """
import importlib, os, sys, traceback
import torch, fairseq  # noqa: F401  (shared by every child; fconv_plugin is not imported here)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print(f"--- import {name} failed:", file=sys.stderr)
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("failed imports:", " ".join(failed))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_each_module_imports_on_its_own():
    """For every module, a fresh interpreter that has not imported fconv_plugin imports that
    module first: no order of imports is needed."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *sorted(m for m in MODULES if not m.endswith(".__main__"))],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # (a package's __main__ is a script: `python -m` runs it)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = done.stdout.rpartition("failed imports:")[2].split()
    assert not failed, f"these modules do not import on their own: {failed}\n{done.stderr[-3000:]}"
