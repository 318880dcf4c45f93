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
