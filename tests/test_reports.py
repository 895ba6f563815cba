"""Headless notebook runs and batch reports (papermill; a minimal notebook keeps the batch test quick)."""

from __future__ import annotations

import csv
import html
import json
import re
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


# ---- the report a person reads (HTML export; tests/test_render.py renders the real reports in a browser) ----------


def _plumbed_notebook(path: Path) -> Path:
    """An executed notebook as papermill leaves one: an install cell, the defaults, papermill's injected cell, a
    cell checked by nbval (comment marker), a widget, a cell whose code is plumbing, a cell that is all plumbing."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    def cell(source, tags=(), outputs=()):
        c = new_code_cell(source, outputs=list(outputs))
        if tags:
            c.metadata["tags"] = list(tags)
        return c

    text = lambda s: new_output("stream", name="stdout", text=s)  # noqa: E731
    widget = new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x",
                        "version_major": 2, "version_minor": 0}, "text/plain": "FloatSlider(value=0.0)"})
    nb = new_notebook(cells=[
        cell('subprocess.run([sys.executable, "-m", "pip", "install", "x"])', ["install"]),
        cell('checkpoint = "released-default"  # which model\nvideo = "clip-default.mp4"\nstart_sec = 0.0',
             ["parameters"]),
        cell('# Parameters\ncheckpoint = "tiny-synthetic"\nvideo = "synthetic-demo"\n', ["injected-parameters"]),
        cell("# NBVAL_CHECK_OUTPUT\nprint(answer)", outputs=[text("audio 1.2 s early\n")]),
        cell("explore_offsets(model)", outputs=[widget]),
        cell("import plumbing_module", ["remove-input"], [text("loaded the model\n")]),
        cell("save_result_plumbing()", ["remove-cell"]),
    ])  # fmt: skip
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nbformat.write(nb, str(path))
    return path


def test_html_report_shows_parameters_once_and_hides_plumbing(tmp_path):
    from synchlib.reports import to_html

    raw = to_html(_plumbed_notebook(tmp_path / "report.ipynb")).read_text()
    body = raw[raw.index("<body"):]
    page = html.unescape(re.sub(r"<[^>]*>", "", re.sub(r"<(script|style)\b.*?</\1>", "", body, flags=re.S)))
    assert page.count("checkpoint") == 1 and "tiny-synthetic" in page and "synthetic-demo" in page
    assert "released-default" not in page and "clip-default" not in page and "# Parameters" not in page
    assert "which model" in page and "start_sec" in page  # defaults not replaced and comments stay
    assert "pip" not in page and "NBVAL" not in page and "plumbing" not in page
    assert "audio 1.2 s early" in page and "loaded the model" in page and "print" in page
    assert "FloatSlider" not in page and "application/vnd.jupyter.widget" not in body
    assert "In [" not in page.replace("\xa0", " ") and "Out[" not in page


def test_merged_parameters_keep_layout_and_refuse_code():
    from synchlib.report_html import merged_parameters

    defaults = 'a = 1  # one\nname = "é"\nlist_ = [1,\n         2]  # two lines\n'
    assert merged_parameters(defaults, '# Parameters\nlist_ = [3]\nname = "ü"\nextra = None\n') == (
        'a = 1  # one\nname = "ü"\nlist_ = [3]  # two lines\nextra = None')
    assert merged_parameters("a = (", "a = 2") is None


def test_prediction_text_in_plain_words():
    """Offsets as "audio ... early/late", offset classes named as such, and how sure the model is: the top-1
    probability against the runner-up and against chance."""
    import numpy as np
    import torch

    from synchlib.predict import logits_to_prediction

    grid = np.round(np.arange(-2.0, 2.01, 0.2), 1).astype(np.float32)
    probs = np.full(21, 0.25 / 19)
    probs[16], probs[3] = 0.5, 0.25  # class 16 = +1.2 s, class 3 = -1.4 s
    pred = logits_to_prediction(torch.log(torch.tensor(probs)), grid, target_class=16, injected_offset_sec=1.2,
                                start_sec=1.0, k=2)
    assert pred.summary(decimals=1).splitlines() == [
        "injected shift: audio 1.2 s early (offset class 16); window from 1 s",
        "  audio 1.2 s early (+1.2 s, offset class 16)  p=0.5",
        "  audio 1.4 s late (-1.4 s, offset class 3)  p=0.2",
    ]
    assert "how sure: p=0.50: 2.0x the runner-up (0.25), 10x chance (0.048)" in str(pred)
    as_is = logits_to_prediction(torch.log(torch.tensor(probs[::-1].copy())), grid, target_class=10, k=1)
    assert as_is.summary().splitlines()[:2] == ["no shift injected (the file as it is); window from 0 s",
                                                "  audio 1.2 s late (-1.2 s, offset class 4)  p=0.50"]
