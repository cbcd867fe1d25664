"""The layers, checked from the code: the import graph has no cycle and no edge to a layer above;
the core loads no Dagster; storage kinds are told apart only inside the storage package."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bqx_assets

PACKAGE = Path(bqx_assets.__file__).parent
REPO = PACKAGE.parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core.errors",),
    ("core.layout", "core.metrics", "core.memory"),
    ("core.keys",),
    ("core.catalog", "core.storage"),
    ("core.warehouse",),
    ("core.checkpoints",),
    ("core.merge",),
    ("core.gate",),
    ("core.publish", "core.costs"),
    ("core.build", "core.overview", "core.preflight"),
    ("defs",),
    ("definitions",),
    ("cli",),
)
"""bqx_assets' layers, lowest first. A module may import from a lower layer, or from its own
package (the entry it falls under); nothing else."""

STORAGE_KINDS = frozenset({"LocalStorage", "GCSStorage", "LocalFile", "GCSFile", "LocalSink",
                           "GCSSink"})  # fmt: skip
"""The storage package's implementations: only the storage package may ask which one it has."""


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every module under `root` (a package's `__init__.py` is the
    package's module)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


MODULES = _modules(PACKAGE, "bqx_assets")


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (at module level or in a function), leaving out those
    under `if TYPE_CHECKING:`, which only type checkers read."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _imported(module: str, path: Path) -> set[str]:
    """The bqx_assets modules `module` imports."""
    found: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if path.name != "__init__.py":
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` the
            # module.
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        found.update(n for n in names if n in MODULES or n.split(".")[0] == "bqx_assets")
    return {n for n in found if n in MODULES and n != module}


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> tuple[int, str]:
    """(layer index, the layer entry the module falls under)."""
    name = module.removeprefix("bqx_assets.")
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if name == entry or name.startswith(f"{entry}."):
                return index, entry
    return -1, ""


def test_every_module_of_the_package_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m not in ("bqx_assets", "bqx_assets.core")]
    assert [m for m in unplaced if _layer(m)[0] < 0] == []


def test_no_module_imports_from_a_layer_above_or_a_sibling_package_of_its_layer() -> None:
    wrong = []
    for module, imported in GRAPH.items():
        if module in ("bqx_assets", "bqx_assets.core"):
            continue
        here, entry = _layer(module)
        for other in imported:
            there, other_entry = _layer(other)
            if there > here or (there == here and other_entry != entry):
                wrong.append(f"{module} -> {other}")
    assert wrong == []


def test_the_import_graph_has_no_cycle() -> None:
    # Tarjan's strongly connected components: a component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_a_package_s_modules_import_their_siblings_not_their_package() -> None:
    """Inside a package, `from bqx_assets.core.storage import X` would import the package's
    `__init__`, which imports the module itself: a cycle in waiting."""
    wrong = []
    for module, imported in GRAPH.items():
        if MODULES[module].name in ("__init__.py", "__main__.py"):  # a package's own entries
            continue
        package = module.rpartition(".")[0]
        if package in imported and package not in ("bqx_assets", "bqx_assets.core"):
            wrong.append(f"{module} -> {package}")
    assert wrong == []


def test_no_isinstance_on_a_storage_kind_outside_the_storage_package() -> None:
    found = []
    for module, path in MODULES.items():
        if module.startswith("bqx_assets.core.storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass")
                and len(node.args) == 2
            ):
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if names & STORAGE_KINDS:
                    found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_bench_and_scripts_use_the_package_and_the_emulators_only() -> None:
    """The benchmarks and scripts import the product (`bqx_assets`) and the emulators, never the
    test suite."""
    found = []
    for path in [*(REPO / "bench").glob("*.py"), *(REPO / "scripts").glob("*.py"),
                 *(REPO / "emulators").glob("*.py")]:  # fmt: skip
        for node in _runtime_imports(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            found += [
                f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("bqx_assets_")
            ]
    assert found == []


def test_importing_the_whole_core_loads_no_dagster_module() -> None:
    core = [m for m in MODULES if m.startswith("bqx_assets.core")]
    assert len(core) >= 30
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_module_imports_dagster_internals() -> None:
    offenders = [str(path) for path in MODULES.values() if "dagster._" in path.read_text()]
    assert offenders == []


def test_the_graph_is_read_from_the_code() -> None:
    """The checks above can fail: known edges are in the graph, and a made-up upward edge would
    be caught."""
    assert "bqx_assets.core.storage.base" in GRAPH["bqx_assets.core.storage.local"]
    assert "bqx_assets.core.merge.plan" in GRAPH["bqx_assets.core.merge.join"]
    assert _layer("bqx_assets.core.merge.join")[0] > _layer("bqx_assets.core.storage.base")[0]
    upward = _layer("bqx_assets.core.storage.base")[0] < _layer("bqx_assets.core.merge.join")[0]
    assert upward  # storage -> merge would be an edge to a layer above
