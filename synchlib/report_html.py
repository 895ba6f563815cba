"""An executed notebook as an HTML page for a person to read: what ran and what came out, without the plumbing.

:func:`notebook_html` exports with nbconvert after these steps, driven by cell tags (any notebook can use them):

* parameters shown once: the cell tagged ``parameters`` (the defaults) shows the values used, those papermill
  injected (cell tagged ``injected-parameters``) written in place of the defaults they replace, comments kept;
  the injected cell itself is not shown;
* cells tagged ``install`` or ``remove-cell`` are not shown (they still ran); ``remove-input`` shows a cell's
  outputs only, ``remove-output`` its code only;
* nbval's markers are checker plumbing: its comment lines (``# NBVAL_CHECK_OUTPUT``, ...) are dropped from the code
  shown (its cell tags, ``nbval-check-output`` and the like, show nowhere anyway);
* widget outputs are dropped, with the widgets' saved state: a static page cannot run them and would show blank
  space. A notebook shows a static figure beside its widget for the report (the demo does);
* no ``In [n]:`` / ``Out[n]:`` prompts.

Nothing in the notebook is run here: parameter cells are read with :mod:`ast` (literals only).
"""

from __future__ import annotations

import ast
import re
from typing import Any

INJECTED_TAG = "injected-parameters"  # papermill's tag of the cell it writes
PARAMETERS_TAG = "parameters"
REMOVE_CELL_TAGS = ("install", "remove-cell")
REMOVE_INPUT_TAGS = ("remove-input",)
REMOVE_OUTPUT_TAGS = ("remove-output",)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NBVAL_MARKER = re.compile(r"^[ \t]*#[ \t]*(NBVAL_[A-Z_]+|PYTEST_VALIDATE_IGNORE_OUTPUT)[ \t]*(\r?\n|$)", re.MULTILINE)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _assignments(source: str) -> dict[str, ast.Assign] | None:
    """Top-level ``name = value`` statements of ``source`` by name; None when it is not plain Python."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    return {s.targets[0].id: s for s in tree.body
            if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)}


def merged_parameters(defaults: str, injected: str) -> str | None:
    """The source of a ``parameters`` cell (``defaults``) with the value of each name that the injected cell
    assigns written in place of its default (comments and layout kept); names the defaults do not assign are
    added at the end. None when either cell is not plain Python."""
    old, new = _assignments(defaults), _assignments(injected)
    if old is None or new is None:
        return None
    lines = defaults.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode("utf-8")))
    data = defaults.encode("utf-8")

    def position(line: int, col: int) -> int:  # ast: 1-based lines, UTF-8 byte columns
        return offsets[line - 1] + col

    edits = sorted(
        ((position(s.value.lineno, s.value.col_offset), position(s.value.end_lineno, s.value.end_col_offset),
          ast.get_source_segment(injected, new[name].value).encode("utf-8"))
         for name, s in old.items() if name in new),
        reverse=True,
    )  # fmt: skip
    for start, end, value in edits:
        data = data[:start] + value + data[end:]
    text = data.decode("utf-8")
    extra = [ast.get_source_segment(injected, s) for name, s in new.items() if name not in old]
    return text.rstrip("\n") + "".join(f"\n{e}" for e in extra)


class ReportPreprocessor:
    """Parameters merged, nbval comments and widget outputs dropped (see the module docstring), in place, on a
    notebook node (nbformat v4); the tags that remove cells, inputs and outputs are nbconvert's
    ``TagRemovePreprocessor``'s work."""

    def __call__(self, nb, resources: dict[str, Any]):
        cells = nb.cells
        injected = next((c for c in cells if c.cell_type == "code" and INJECTED_TAG in _tags(c)), None)
        defaults = next((c for c in cells if c.cell_type == "code" and PARAMETERS_TAG in _tags(c)), None)
        if injected is not None and defaults is not None:
            merged = merged_parameters(defaults.source, injected.source)
            if merged is not None:
                defaults.source = merged
                cells.remove(injected)
        for cell in cells:
            if cell.cell_type == "code":
                cell.source = NBVAL_MARKER.sub("", cell.source)
                cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
        nb.metadata.pop("widgets", None)
        return nb, resources


def notebook_html(nb) -> str:
    """HTML of executed notebook ``nb`` (nbformat v4 node; a copy is changed, not ``nb``), images embedded."""
    import copy

    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.update(
        remove_cell_tags=set(REMOVE_CELL_TAGS), remove_input_tags=set(REMOVE_INPUT_TAGS),
        remove_all_outputs_tags=set(REMOVE_OUTPUT_TAGS),
    )  # fmt: skip  (nbconvert's exporters run its TagRemovePreprocessor with this)
    exporter = HTMLExporter(config=config, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(ReportPreprocessor(), enabled=True)
    body, _ = exporter.from_notebook_node(copy.deepcopy(nb))
    return body
