"""The package's floors (docs/engine.md, "Map of the package"): a module imports only from its own floor
or below, lazily or not; only the napari layer (``_napari``) and the CLI's demo command touch napari or Qt.
Read from the source (AST), so an import inside a function counts as much as one at the top."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "napari_medseg"
FLOORS = {"io": 0, "data": 0, "samples": 0, "weights": 0, "geometry": 1, "models": 1, "engine": 2, "catalog": 3,
          "api": 4, "cli": 5, "_napari": 5, "__init__": 5}
GUI = ("napari", "qtpy", "magicgui", "PyQt6", "PyQt5", "PySide6", "vispy")


def _part(module: str) -> str:
    """``napari_medseg.engine.train`` -> ``engine``."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module, line) of every import in ``path``."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from .. import x, y: each name may be a module
                    found += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
                    continue
            else:
                mod = node.module or ""
            found.append((mod, node.lineno))
    return found


def test_no_import_runs_upward_and_only_the_gui_layer_imports_napari():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        own = _part(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
        for mod, line in _imports(path):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            if mod.split(".")[0] in GUI and own not in ("_napari", "cli"):
                problems.append(f"{where} imports {mod} below the napari layer")
            if mod.startswith("napari_medseg"):
                other = _part(mod)
                if other in FLOORS and own in FLOORS and FLOORS[other] > FLOORS[own]:
                    problems.append(f"{where}: {own} (floor {FLOORS[own]}) imports {mod} (floor {FLOORS[other]})")
    assert not problems, "\n".join(problems)


def test_the_rule_sees_an_upward_import(tmp_path):
    """The check can fail: a lazy upward import inside a function is found."""
    bad = PKG / "engine" / "_layering_probe.py"
    bad.write_text("def f():\n    from .. import api\n    import napari\n")
    try:
        found = _imports(bad)
        assert ("napari_medseg.api", 2) in found and ("napari", 3) in found
    finally:
        bad.unlink()


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (lazily or not; an import of a name resolves to the
    longest module prefix it names)."""
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for imp, _line in _imports(path):
            parts = imp.split(".")
            for k in range(len(parts), 0, -1):
                if ".".join(parts[:k]) in mods:
                    if ".".join(parts[:k]) != m:
                        graph[m].add(".".join(parts[:k]))
                    break
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_circles_in_the_package():
    """No module imports, directly or through others, a module that imports it (lazy imports included):
    each part can be read, tested and replaced from the bottom up."""
    circles = _circles(_module_graph())
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []




def test_tasks_are_told_apart_by_the_task_objects_not_by_their_names():
    import re

    pattern = re.compile(r"""(task|output)\s*[!=]=|[!=]=\s*["'](keypoints|segmentation|heatmaps|logits)["']""")
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        if rel == "engine/tasks.py":
            continue
        hits = [n for n, line in enumerate(path.read_text().splitlines(), 1)
                if pattern.search(line.split("#")[0]) and "p.task != first.task" not in line]
        if hits:
            found[rel] = len(hits)
    assert not found, found


def test_no_function_is_longer_than_60_lines():
    """Small, readable functions (docstring included); the CLI's argument parser, a flat list of options,
    is the one exception."""
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                where = f"{path.relative_to(PKG)}::{node.name}"
                if where != "cli.py::build_parser":
                    long.append(f"{where} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "\n".join(long)
