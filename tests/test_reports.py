"""Headless notebook runs and batch reports (papermill; a minimal notebook keeps the batch test quick)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from synchlib.checkpoints import save_checkpoint
from synchlib.config import load_config
from synchlib.model import build_model
from synchlib.manifests import read_manifest
from synchlib.reports import batch_report, run_notebook
from synchlib.synthetic import write_dataset

pytest.importorskip("papermill")
NOTEBOOK = Path(__file__).parent / "data" / "predict_one.ipynb"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config("tiny-synthetic")
    torch.manual_seed(1)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", build_model(cfg).state_dict(), dict(cfg.raw))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """20 synthetic clips plus 2 broken files (text, truncated) = 22 items."""
    root = tmp_path_factory.mktemp("batch")
    path = write_dataset(root / "clips", n=20, seed=7, duration_sec=6.0, progress=False)
    rows = list(csv.DictReader(path.open()))
    (root / "clips" / "broken_text.mp4").write_text("not a video\n" * 100)
    good = (root / "clips" / rows[0]["path"]).read_bytes()
    (root / "clips" / "broken_truncated.mp4").write_bytes(good[: len(good) // 3])
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        for name in ("broken_text.mp4", "broken_truncated.mp4"):
            w.writerow([name] + [""] * (len(rows[0]) - 1))
    return path


def test_run_notebook_writes_ipynb_and_html(tmp_path, ckpt):
    ipynb, page = run_notebook(NOTEBOOK, tmp_path / "out", {"checkpoint": str(ckpt), "offset_sec": 0.4}, progress=False)
    assert ipynb.is_file() and page.is_file() and "<html" in page.read_text()[:500].lower()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["p"] > 0


def test_manifest_paths_are_relative_to_the_manifest(manifest):
    items = read_manifest(manifest)
    assert len(items) == 22 and all(Path(i["video"]).is_absolute() for i in items)
    assert items[0]["params"]["seed"] >= 0


def test_batch_report_records_failures_and_rerun_only_redoes_them(tmp_path, ckpt, manifest):
    out = tmp_path / "report"
    params = {"checkpoint": str(ckpt), "device": "cpu"}
    results = batch_report(manifest, out, NOTEBOOK, params, workers=2, progress=False)
    failed = {r["name"] for r in results if not r["ok"]}
    assert len(results) == 22 and failed == {"broken_text", "broken_truncated"}
    assert all(r["error"] for r in results if not r["ok"])
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 22 and "predicted_offset_sec" in summary[0]
    index = (out / "index.html").read_text()
    assert "20 of 22 items succeeded" in index and "thumbnail.png" in index
    mtimes = {r["name"]: (out / r["name"] / "status.json").stat().st_mtime_ns for r in results}
    again = batch_report(manifest, out, NOTEBOOK, params, workers=2, progress=False)
    redone = {r["name"] for r in again if (out / r["name"] / "status.json").stat().st_mtime_ns != mtimes[r["name"]]}
    assert redone == failed
