"""The notebook goldens: what nbval compares is robust to another machine's rounding, the finer values behind it
are reproduced within tolerances, and real changes fail (nbval or the numeric check)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synchlib.checkpoints import save_checkpoint
from synchlib.config import load_config
from synchlib.model import build_model

GOLDENS = Path(__file__).parent / "notebooks"
REPO = Path(__file__).resolve().parents[1]


def _regen():
    """scripts/regenerate_goldens.py as a module (it defines the golden parameters, values and tolerances)."""
    spec = importlib.util.spec_from_file_location("regenerate_goldens", REPO / "scripts" / "regenerate_goldens.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


regen = _regen()
NAMES = [n for n in regen.GOLDEN_PARAMETERS if (GOLDENS / f"{n}.ipynb").is_file()]


def checked_text(name: str) -> str:
    """The stored outputs of the cells nbval compares in golden ``name``."""
    nb = json.loads((GOLDENS / f"{name}.ipynb").read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and ("NBVAL_CHECK_OUTPUT" in "".join(c["source"])
                                                                    or "nbval-check-output" in c["metadata"].get("tags", []))]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_golden_checks_only_robust_coarse_text(name):
    """Every golden stores the values behind its checked text; no top-1/top-2 margin is within the tolerance and
    no printed probability near a rounding boundary; a prediction shows its top-1 line only, p to one decimal."""
    values = regen.stored_values(GOLDENS / f"{name}.ipynb")
    assert regen.robustness_problems(values) == []
    text = checked_text(name)
    assert not re.search(r"p=\d\.\d\d", text), "probabilities to two decimals can flip between machines"
    for v in values.values():
        if v["kind"] == "prediction":
            p = v["probs"][v["class"]]
            assert f"(class {v['class']:2d}) p={p:.{regen.PRINTED_P_DECIMALS}f}" in text


@pytest.mark.parametrize("name", NAMES)
def test_golden_values_are_reproduced(name):
    """Recomputed here for the golden's parameters, every stored probability and margin agrees within its
    tolerance and every confident top-1 class is the same."""
    stored = regen.stored_values(GOLDENS / f"{name}.ipynb")
    fresh = regen.golden_values(name, regen.notebook_parameters(name))
    assert regen.compare_values(stored, fresh) == []


@pytest.mark.skipif(not {"demo", "offset_sweep"} <= set(NAMES), reason="needs the demo and offset_sweep goldens")
def test_numeric_check_fails_on_class_probability_and_count_changes():
    """Against the stored values: a changed top-1 class, a probability moved by 1.5x its tolerance, and a sweep
    with one window fewer right (a changed accuracy count) each fail; a probability moved by half its tolerance
    passes."""
    demo = regen.stored_values(GOLDENS / "demo.ipynb")
    shifted = demo["shifted"]
    other = copy.deepcopy(demo)
    other["shifted"]["class"] = (shifted["class"] + 1) % len(shifted["probs"])
    assert any("top-1 class" in p for p in regen.compare_values(demo, other))

    c = shifted["class"]
    tol = regen.prob_tolerance(shifted["probs"][c], shifted["margin_tol"])
    for factor, fails in ((0.5, False), (1.5, True)):
        moved = copy.deepcopy(demo)
        moved["shifted"]["probs"][c] += factor * tol
        assert bool(regen.compare_values(demo, moved)) == fails, factor

    sweep = regen.stored_values(GOLDENS / "offset_sweep.ipynb")
    recount = copy.deepcopy(sweep)
    pred, target = (recount["sweep"][k].split() for k in ("pred", "target"))
    i = next(i for i, (p, t) in enumerate(zip(pred, target)) if p == t)  # make a right window wrong
    pred[i] = str((int(pred[i]) + 1) % len(load_config("tiny-synthetic").data.grid))
    recount["sweep"]["pred"] = " ".join(pred)
    assert any(f"window {i}: class" in p for p in regen.compare_values(sweep, recount))


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
    copy_path = tmp_path / "demo_other_model.ipynb"
    copy_path.write_text(json.dumps(nb))
    sanitize = GOLDENS / "sanitize.cfg"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--nbval-lax",
         "--nbval-current-env", "--nbval-sanitize-with", str(sanitize), str(copy_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-2000:]
    assert "failed" in r.stdout.splitlines()[-1]


def test_regeneration_refuses_fragile_goldens():
    """A golden is not stored when a top-1/top-2 margin is within the tolerance or the printed top-1 probability
    sits within its tolerance of a rounding boundary; a comfortable one passes."""
    def prediction(p_top: float, margin: float) -> dict:
        probs = [p_top, 0.1] + [(0.9 - p_top) / 19] * 19
        return {"kind": "prediction", "class": 0, "probs": probs, "margin": margin, "margin_tol": 0.005}

    assert regen.robustness_problems({"ok": prediction(0.33, 1.2)}) == []
    assert "top-1 may swap" in regen.robustness_problems({"tie": prediction(0.33, 0.004)})[0]
    assert "rounding boundary 0.35" in regen.robustness_problems({"edge": prediction(0.3495, 1.2)})[0]
    windows = {"kind": "windows", "margin_tol": 0.005, "target": "1 2", "pred": "1 2", "margin": "0.9000 0.0030"}
    assert regen.robustness_problems({"sweep": windows}) == [
        "sweep: window 1 has top-1 margin 0.0030 <= tolerance 0.0050"]
