"""The import contract: synchlib's modules form layers, and a module imports only from layers below its own.

Every ``import`` statement counts, including those inside functions (a function-level import hides a cycle, it
does not remove it). Only the top layer (the package's lazy ``__init__`` and the CLI, which import a command's
modules when it runs so that ``--help`` stays fast) may import inside functions; elsewhere a function-level import
of another synchlib module is not allowed (third-party imports inside functions, for optional extras such as
papermill or matplotlib, are not this contract's business).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "synchlib"

# bottom to top; a module may import modules of lower layers only
LAYERS: list[set[str]] = [
    {"errors", "rounding", "quiet"},
    {"checks", "config", "paths", "nbparams", "report_html", "margins"},
    {"download"},
    {"io", "checkpoints", "manifests"},
    {"normalised"},
    {"model"},
    {"preprocess"},
    {"predict", "avbench"},
    {"sweep", "timeline", "attention"},
    {"desync", "synthetic", "lagbank"},
    {"train", "plot"},
    {"media"},
    {"reports"},
    {"cli"},
    {"__main__", "__init__"},
]
LAZY = {"cli", "__init__"}  # may import synchlib modules inside functions (fast --help, PEP 562 exports)


def unit(path: Path) -> str:
    """The contract's name for a module: its top-level name inside the package (``model.load`` -> ``model``)."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]  # synchlib/__init__.py -> "__init__"


def _is_module(name: str) -> bool:
    """Whether ``from synchlib import name`` names a submodule (else a name the package's ``__init__`` exports)."""
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported synchlib unit, line, inside a function) for each import of a synchlib module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package_parts = path.relative_to(PACKAGE).parent.parts
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            targets: list[list[str]] = []
            if isinstance(child, ast.ImportFrom) and child.level:  # relative: resolve against this module's package
                base = list(package_parts[: len(package_parts) - (child.level - 1)])
                module = base + (child.module.split(".") if child.module else [])
                targets = [module] if module else [[a.name if _is_module(a.name) else "__init__"] for a in child.names]
            elif isinstance(child, ast.ImportFrom) and (child.module or "").split(".")[0] == "synchlib":
                module = child.module.split(".")[1:]
                targets = [module] if module else [[a.name] for a in child.names]
            elif isinstance(child, ast.Import):
                targets = [a.name.split(".")[1:] for a in child.names if a.name.split(".")[0] == "synchlib"]
            found.extend((t[0] if t else "__init__", child.lineno, in_function) for t in targets)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise KeyError(name)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "notebooks" not in p.parts)


def test_every_module_has_a_layer() -> None:
    missing = sorted({unit(p) for p in MODULES} - set().union(*LAYERS))
    assert not missing, f"add these modules to a layer of the import contract: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down(path: Path) -> None:
    me = unit(path)
    bad = []
    for name, line, in_function in imports(path):
        if name == me:
            continue  # inside a subpackage (model.*): its own parts
        if layer_of(name) >= layer_of(me):
            bad.append(f"line {line}: {me} (layer {layer_of(me)}) imports {name} (layer {layer_of(name)})")
        elif in_function and me not in LAZY:
            bad.append(f"line {line}: {me} imports {name} inside a function; import it at the top")
    assert not bad, "\n".join(bad)


def test_the_contract_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a parent-relative import inside a function is found and resolved."""
    sub = PACKAGE / "model"
    probe = sub / "_contract_probe.py"
    probe.write_text("def f():\n    from ..reports import run_notebook\n")
    try:
        assert imports(probe) == [("reports", 2, True)]
        assert unit(probe) == "model"
    finally:
        probe.unlink()


def test_no_module_imports_a_shadowed_submodule_by_package_attribute() -> None:
    """``synchlib.predict`` and ``synchlib.sweep`` are the functions (the package keeps them over the submodules),
    so ``from . import sweep`` inside synchlib gets the function; import names from the submodule instead."""
    import synchlib

    shadowed = synchlib._SHADOWED
    bad = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None and path.parent == PACKAGE:
                bad += [f"{path.name}:{node.lineno} from . import {a.name}" for a in node.names if a.name in shadowed]
    assert shadowed and not bad, "\n".join(bad)
