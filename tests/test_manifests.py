"""The data manifests and notebooks agree with the code and the files they describe."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from synchlib.checkpoints import DEFAULT_BASE_URL, RELEASED
from synchlib.manifests import SAMPLES, sample_path

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "data_manifests"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def rows(name):
    with open(MANIFESTS / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_checkpoint_manifest_matches_registry():
    table = {r["id"]: r for r in rows("checkpoints.csv")}
    assert set(table) == set(RELEASED)
    for ckpt_id, e in RELEASED.items():
        r = table[ckpt_id]
        assert r["md5_prefix"] == e.md5_prefix and r["kind"] == e.kind and int(r["num_classes"]) == e.num_classes
        assert r["url"] == f"{DEFAULT_BASE_URL}/{ckpt_id}/{ckpt_id}.pt"


def test_sample_manifest_matches_files():
    table = {r["name"]: r for r in rows("samples.csv")}
    assert set(table) == set(SAMPLES)
    for name, r in table.items():
        path = (MANIFESTS / r["path"]).resolve()
        assert path == sample_path(name).resolve()
        assert hashlib.md5(path.read_bytes()).hexdigest() == r["md5"]


def test_vggsound_sparse_lists_are_complete():
    fixed = rows("vggsound_sparse_clean_fixed_offsets.csv")
    assert len(fixed) == 646 and {"video_id", "vstart_sec", "offset_sec"} <= set(fixed[0])
    assert all(-2.0 <= float(r["offset_sec"]) <= 2.0 for r in fixed)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stripped_and_parameterised(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs from notebooks/"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters` (papermill)"
    params = "".join(tagged[0]["source"])
    assert "checkpoint =" in params and "device =" in params
    assert path.stem == "train_tiny" or "video =" in params
    assert "find_spec(\"synchlib\")" in "".join(code[0]["source"]), "first cell installs synchlib when missing"
    longest = max(len("".join(c["source"]).splitlines()) for c in code)
    assert longest <= 15, "notebook cells stay short: logic belongs in synchlib"


def test_all_four_notebooks_exist():
    assert {p.stem for p in NOTEBOOKS} >= {"demo", "offset_sweep", "attention"}
