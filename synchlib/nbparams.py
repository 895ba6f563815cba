"""Notebook parameters are data: names the notebook declares, values that are literals.

papermill writes parameters into a notebook as Python source, one ``name = value`` line each, in a cell after the
one tagged ``parameters``, and does not check either side. Everything that reaches it from a manifest, ``-p`` or
the API goes through :func:`check_parameters` first:

* a name must be a Python identifier (not a keyword) that the notebook's ``parameters`` cell assigns;
* a value must be ``None``, a bool, an int, a finite float, a str, or a flat list of those (tuples become lists,
  ``os.PathLike`` becomes str, numpy scalars become Python scalars). NaN and infinities are refused: papermill
  writes them as calls (``float('nan')``), not literals, and no notebook parameter of synchlib means anything
  with them;
* the cell papermill will write is rendered here with papermill's own translator and must parse to exactly one
  assignment per parameter, of a literal equal to the given value (same types), and nothing else.
"""

from __future__ import annotations

import ast
import keyword
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InvalidArgumentError, SynchlibError

PARAMETERS_TAG = "parameters"  # papermill injects after the first code cell with this tag
INJECTED_COMMENT = "Parameters"  # papermill's default first line of the injected cell
SCALAR_TYPES = (type(None), bool, int, float, str)
BASE_VALUE = {int: int.__int__, float: float.__float__, str: str.__str__}  # exact copies of subclass instances


def load_notebook(path: str | Path):
    """The notebook at ``path`` (nbformat v4 node); a :class:`SynchlibError` if it is not a readable notebook."""
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # nbformat raises these on bad JSON
        raise SynchlibError(f"{path} is not a readable Jupyter notebook ({type(e).__name__}: {e})") from None


def declared_parameters(nb, label: str) -> tuple[str, ...]:
    """Names assigned at the top level of the first code cell tagged ``parameters``, in order; () without one."""
    cells = [c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return ()
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as e:
        raise SynchlibError(
            f"{label}: the cell tagged 'parameters' is not plain Python ({e.msg}, line {e.lineno}), so its "
            "parameters cannot be read; keep only assignments in it"
        ) from None
    names: dict[str, None] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        else:
            continue
        for target in targets:
            names.update((n.id, None) for n in ast.walk(target) if isinstance(n, ast.Name))
    return tuple(names)


def notebook_language(nb, kernel: str, label: str) -> str:
    """The notebook's language as papermill resolves it; only Python notebooks can be checked (and run)."""
    from papermill.translators import PythonTranslator, papermill_translators
    from papermill.utils import nb_language

    try:
        language = nb_language(nb)
        translator = papermill_translators.find_translator(kernel, language)
    except Exception as e:  # papermill: no language in the metadata, or no translator for it
        raise SynchlibError(f"{label}: cannot tell the notebook's language for kernel {kernel!r} ({e})") from None
    if not issubclass(translator, PythonTranslator):
        raise SynchlibError(
            f"{label} is a {language} notebook (kernel {kernel!r}); synchlib runs Python notebooks only"
        )
    return language


def check_name(name: Any, declared: tuple[str, ...], label: str) -> str:
    """``name`` if it is an identifier that ``declared`` lists; else an :class:`InvalidArgumentError`."""
    listed = ", ".join(declared) if declared else "none: it has no cell tagged 'parameters'"
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidArgumentError(
            f"{name!r} is not a parameter name (a Python identifier that {label} declares; it declares: {listed})"
        )
    if name not in declared:
        raise InvalidArgumentError(f"{label} has no parameter {name!r}; it declares: {listed}")
    return name


def as_data(name: str, value: Any) -> Any:
    """``value`` as plain data (see the module docstring); an :class:`InvalidArgumentError` for anything else."""
    if isinstance(value, (list, tuple)):
        return [_scalar(name, v) for v in value]
    return _scalar(name, value)


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, bool):
        for base, exact in BASE_VALUE.items():
            if isinstance(value, base):
                value = exact(value)
                break
    if type(value) not in SCALAR_TYPES:
        raise InvalidArgumentError(
            f"parameter {name}: a {type(value).__name__} cannot be a notebook parameter; give None, a bool, an int, "
            "a finite float, a str, or a list of those"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"parameter {name} = {value}: give a finite number")
    return value


def rendered_cell(parameters: Mapping[str, Any], kernel: str, language: str) -> str:
    """The source of the cell papermill will inject for ``parameters`` (its own translator)."""
    from papermill.translators import translate_parameters

    return translate_parameters(kernel, language, dict(parameters), INJECTED_COMMENT)


def verify_rendering(parameters: Mapping[str, Any], kernel: str, language: str) -> None:
    """Refuse unless papermill's cell for ``parameters`` is exactly one ``name = <literal>`` per parameter, each
    literal equal to its value with the same types."""
    try:
        tree = ast.parse(rendered_cell(parameters, kernel, language))
    except Exception as e:  # e.g. an int too long to print, or a translation papermill cannot parse back
        raise InvalidArgumentError(
            f"parameters {sorted(parameters)} cannot be written as Python literals ({e})"
        ) from None
    statements = tree.body
    if len(statements) != len(parameters):
        raise SynchlibError(
            f"refusing to run: papermill would write {len(statements)} statements for {len(parameters)} parameters"
        )
    for stmt, (name, value) in zip(statements, parameters.items()):
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if not (isinstance(target, ast.Name) and target.id == name and _same(_literal(stmt.value), value)):
            raise SynchlibError(
                f"refusing to run: papermill would not write parameter {name!r} as the literal {value!r}"
            )


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_A_LITERAL


_NOT_A_LITERAL = object()


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types (``1 == True == 1.0`` in Python, not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_parameters(parameters: Mapping[str, Any], nb, label: str, kernel: str) -> dict[str, Any]:
    """``parameters`` checked against notebook ``nb`` (names declared, values data, rendering exact); returns
    them as plain data, ready for papermill. Raises :class:`InvalidArgumentError` naming the first problem."""
    declared = declared_parameters(nb, label)
    language = notebook_language(nb, kernel, label)
    clean = {check_name(k, declared, label): as_data(k, v) for k, v in parameters.items()}
    verify_rendering(clean, kernel, language)
    return clean


def parse_value(text: str) -> Any:
    """A command-line or manifest string as a parameter value: int, float, true/false, none, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.strip().lower(), text)
