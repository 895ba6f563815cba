"""The notebook goldens can fail: replaying one with a different model's predictions must not pass nbval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synchlib.checkpoints import save_checkpoint
from synchlib.config import load_config
from synchlib.model import build_model

GOLDENS = Path(__file__).parent / "notebooks"


@pytest.mark.skipif(not (GOLDENS / "demo.ipynb").is_file(), reason="no demo golden yet (scripts/regenerate_goldens.py)")
def test_demo_golden_fails_with_another_model(tmp_path):
    cfg = load_config("tiny-synthetic")
    torch.manual_seed(123)
    ckpt = save_checkpoint(tmp_path / "other.pt", build_model(cfg).state_dict(), dict(cfg.raw))
    nb = json.loads((GOLDENS / "demo.ipynb").read_text())
    swapped = 0
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = src.replace('checkpoint = "tiny-synthetic"', f'checkpoint = "{ckpt}"')
            swapped += cell["source"] != src
    assert swapped == 1, "the golden must have papermill's injected parameters cell with the tiny checkpoint"
    copy = tmp_path / "demo_other_model.ipynb"
    copy.write_text(json.dumps(nb))
    sanitize = GOLDENS / "sanitize.cfg"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--nbval-lax",
         "--nbval-current-env", "--nbval-sanitize-with", str(sanitize), str(copy)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-2000:]
    assert "failed" in r.stdout.splitlines()[-1]
