"""Re-execute the notebooks with the tiny model on shipped inputs and store them as nbval goldens.

    python scripts/regenerate_goldens.py            # all notebooks
    python scripts/regenerate_goldens.py demo       # one

The goldens live in tests/notebooks/ and are checked by `python -m pytest` (nbval, --nbval-lax: only cells
marked `# NBVAL_CHECK_OUTPUT` are compared, after tests/notebooks/sanitize.cfg). Run this after a deliberate
change of the tiny model or of what those cells print, and review the diff.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import papermill as pm

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "notebooks"
COMMON = {"checkpoint": "tiny-synthetic", "device": "auto"}
GOLDEN_PARAMETERS = {
    "demo": {**COMMON, "video": "synthetic-demo", "offset_sec": 1.2, "start_sec": 1.0},
    "offset_sweep": {**COMMON, "video": "synthetic-demo", "starts": [2.0, 3.0]},
    "attention": {**COMMON, "video": "synthetic-demo", "offset_sec": 0.6, "start_sec": 1.0},
    "train_tiny": {"device": "auto"},
}


def regenerate(name: str) -> Path:
    src = REPO / "notebooks" / f"{name}.ipynb"
    out = GOLDEN_DIR / f"{name}.ipynb"
    pm.execute_notebook(str(src), str(out), parameters=GOLDEN_PARAMETERS[name], cwd=str(GOLDEN_DIR), kernel_name="python3")
    nb = nbformat.read(str(out), as_version=4)
    nb.metadata.pop("papermill", None)  # run times and paths: not part of the golden
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, str(out))
    return out


def main(names: list[str]) -> None:
    for name in names or list(GOLDEN_PARAMETERS):
        print(regenerate(name))


if __name__ == "__main__":
    main(sys.argv[1:])
