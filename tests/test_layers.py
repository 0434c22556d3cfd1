"""gpuale's modules form layers, each importing only itself and the layers below it.

The import graph is built from the source (ast), counting imports made inside functions
(those under ``if TYPE_CHECKING:`` excepted, as they never run), and must hold no cycle
and no import from a lower layer up to a higher one. docs/contributing.md's "How it works" draws
the layers; a new module gets its line in ``LAYERS`` here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gpuale

PACKAGE = Path(gpuale.__file__).parent

#: Layer of each module (a package's entry covers its submodules unless they have their
#: own). 1 data and maths, 2 null specs, 3 engines, 4 running nulls, 5 analyses, 6 run
#: folders, 7 applications.
LAYERS = {
    # 1 data and maths: inputs, experiments, the grid, kernels, statistics, random draws
    "gpuale._version": 1,
    "gpuale._cores": 1,
    "gpuale._memory": 1,
    "gpuale.io": 1,
    "gpuale.space": 1,
    "gpuale.examples": 1,
    "gpuale.dataset": 1,
    "gpuale.selection": 1,
    "gpuale.grid": 1,
    "gpuale.kernel": 1,
    "gpuale.problem": 1,
    "gpuale.stats": 1,
    "gpuale.rng": 1,
    "gpuale.clusters": 1,
    "gpuale.tfce": 1,
    "gpuale.maps": 1,
    "gpuale.partitions": 1,
    # 2 null specs and partials, and the arithmetic of finished nulls
    "gpuale.nullspecs": 2,
    "gpuale.inference": 2,
    # 3 engines: the only code that knows a device
    "gpuale.engines": 3,
    "gpuale._hostshim": 3,
    # 4 running nulls: chunks, schedulers, stopping segments
    "gpuale.schedulers": 4,
    "gpuale.nulls": 4,
    "gpuale.cluster_null": 4,
    "gpuale.stopping": 4,
    # 5 analyses: data and settings in, a result object out; no files
    "gpuale.pooling": 5,
    "gpuale.analysis": 5,
    "gpuale.contrast": 5,
    "gpuale.balanced": 5,
    "gpuale.conjunction": 5,
    "gpuale.jackknife": 5,
    "gpuale.failsafe": 5,
    "gpuale.macm": 5,
    "gpuale.parcellate": 5,
    # 6 run folders: every writer and reader of a run folder
    "gpuale.runfolder": 6,
    "gpuale._files": 6,
    "gpuale.output": 6,
    "gpuale.cbpfolder": 6,
    # 7 applications
    "gpuale.rerun": 7,
    "gpuale.studyfile": 7,
    "gpuale.study": 7,
    "gpuale.studyfolder": 6,
    "gpuale.compare": 7,
    "gpuale.compare_output": 7,
    "gpuale.compare_folders": 7,
    "gpuale.report": 7,
    "gpuale.nimare": 7,
    "gpuale.cli": 7,
    "gpuale.__main__": 7,
    "gpuale": 7,  # the public API gathers every layer
}


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
              modules: dict) -> list[str]:
    """The gpuale modules an import statement runs (``from gpuale import x``: the module
    ``gpuale.x`` where it is one, else the package ``gpuale`` itself)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                 for alias in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """``graph[a][b]``: the line where module ``a`` imports module ``b``."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and _type_checking(node)
                   for inner in ast.walk(node)}
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped:
                for target in _imported(module, is_package, node, modules):
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def layer(module: str) -> int | None:
    """The module's own line in LAYERS, or its package's; the top package's line covers
    only ``gpuale/__init__.py``, so that a new module must be given its own."""
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
        if module == "gpuale":
            return None
    return None


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert layer("gpuale.not_in_the_table") is None
    assert layer("gpuale.cli.global_cmd") == LAYERS["gpuale.cli"]
    missing = sorted(m for m in import_graph() if layer(m) is None)
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_no_import_cycle():
    cycles = _cycles(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_from_a_lower_layer_up():
    upward = [
        f"{module} (layer {layer(module)}) line {line} imports {target} "
        f"(layer {layer(target)})"
        for module, edges in sorted(import_graph().items())
        for target, line in sorted(edges.items())
        if layer(module) is not None and layer(target) is not None
        and layer(target) > layer(module)
    ]
    assert not upward, "imports from a lower layer up:\n" + "\n".join(upward)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # gpuale.cli imports gpuale.report only inside a function (a report is optional).
    assert any(target.startswith("gpuale.report") for target in
               {t for m, edges in graph.items() if m.startswith("gpuale.cli")
                for t in edges})
    assert _cycles({"a": {"b": 1}, "b": {"a": 2}, "c": {}}) == [["a", "b"]]


#: Modules allowed beyond ``MAX_LINES``; docs/contributing.md ("Where a new piece goes")
#: says why for each.
LONG_MODULES = {"engines/cuda.py"}
MAX_LINES = 800


def test_modules_stay_small_unless_the_contributing_page_says_why():
    page = (PACKAGE.parent / "docs" / "contributing.md").read_text(encoding="utf-8")
    long = {path.relative_to(PACKAGE).as_posix(): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert set(long) <= LONG_MODULES, f"modules over {MAX_LINES} lines: {long}"
    for name in LONG_MODULES:
        assert f"`{name}`" in page, f"docs/contributing.md does not say why {name} is long"
