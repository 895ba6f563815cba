"""The demo notebook on the released-model path, end to end: papermill runs notebooks/demo.ipynb with the released
id, and its kernel downloads the checkpoint (detweights in the released format) from the 127.0.0.1 mirror,
verifies it against the md5 listed by SYNCHLIB_REGISTRY, loads it and predicts on CPU. Fixtures: conftest.py.

The notebook's prediction is checked against the reference implementation's logits for the same weights, clip,
offset and start (golden case A in ``tests/fixtures/parity``). A second 14-segment forward pass in this process would
only add the same comparison at 1-2 min of CPU: test_parity.py already holds synchlib's own forward pass to those
logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import synchlib
from synchlib import paths
from synchlib.predict import logits_to_prediction
from synchlib.reports import RESULT_FILE, run_notebook

from .conftest import REL_TOL, RELEASED_ID, case_window, golden

pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

VIDEO = "vggsound-3qesirWAGt4"  # the shipped sample clip (the demo's default) = golden case A
OFFSET_SEC, START_SEC, TOP_K = 1.6, 0.0, 5


@pytest.mark.slow
def test_demo_notebook_downloads_verifies_and_predicts(tmp_path, detweights_state_dict, released_files, mirror):
    assert case_window("A") == (synchlib.sample_path(VIDEO), OFFSET_SEC, START_SEC)
    server, _ = mirror
    *_, md5 = released_files
    assert server.requests == 0
    params = {
        "checkpoint": RELEASED_ID, "video": VIDEO, "device": "cpu", "offset_sec": OFFSET_SEC, "start_sec": START_SEC,
        "top_k": TOP_K, "predict_as_is": False, "offset_slider": False,  # one forward pass, not three
    }  # fmt: skip
    out = tmp_path / "report"
    ipynb, page = run_notebook("demo", out, params, progress=False, timeout=900)  # raises on a cell error

    nb = nbformat.read(str(ipynb), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in code) and page.is_file()

    # The kernel fetched the file from the mirror once and verified it against SYNCHLIB_REGISTRY's md5.
    assert server.requests == 1
    cached = paths.cache_dir() / RELEASED_ID / f"{RELEASED_ID}.pt"
    note = json.loads(cached.with_name(cached.name + ".verified").read_text())
    assert note["md5"] == md5 == paths.file_md5(cached)
    assert note["sha256"] == paths.file_sha256(cached)  # the full digests, recorded once verified

    # The notebook's numbers are the reference implementation's for these weights and this window.
    g = golden("A")
    expected = logits_to_prediction(
        torch.from_numpy(g["logits"][0]), g["grid"], target_class=int(g["target_offset_class"]),
        injected_offset_sec=OFFSET_SEC, start_sec=START_SEC, k=TOP_K,
    )  # fmt: skip
    # test_parity holds synchlib's logits within dz = REL_TOL * max|logits| of these. That moves each softmax
    # probability by at most 2 dz (|dp_i| <= p_i * (|dz_i| + sum_j p_j |dz_j|)), and cannot reorder the top k if
    # neighbouring logits are more than 2 dz apart. The notebook prints the top-1 line with p to 1 decimal, so its
    # text is stable only if the golden top-1 p lies more than 2 dz from a rounding edge (x.x5). Both are checked
    # first (and the 2-decimal edges of the whole top k, which the result's numbers are compared against).
    dz = REL_TOL * float(np.abs(g["logits"]).max())
    top = np.sort(g["logits"][0])[::-1][: TOP_K + 1]
    assert (-np.diff(top) > 2 * dz).all(), "neighbouring golden logits too close for a stable top-k order"
    assert all(abs(p * 100 % 1 - 0.5) / 100 > 2 * dz for _, _, p in expected.topk), "a golden p is on a rounding edge"
    assert abs(expected.p * 10 % 1 - 0.5) / 10 > 2 * dz, "the golden top-1 p is on a 1-decimal rounding edge"
    result = json.loads((out / RESULT_FILE).read_text())
    assert result["predicted_offset_sec"] == expected.offset_sec and result["class_index"] == expected.class_index
    assert result["p"] == pytest.approx(expected.p, abs=2 * dz)
    printed = "".join(
        o.get("text", "") for c in code if "synchlib.predict(model, clip" in c.source for o in c.outputs
        if o.get("name") == "stdout"
    )  # fmt: skip
    top1 = "\n".join(expected.summary(decimals=1).splitlines()[:2])  # what the checked cell prints
    assert printed.startswith(top1), f"notebook printed:\n{printed}\nexpected:\n{top1}"

    # Here, load_model on the same id takes the cached, verified file (no second download): the detweights.
    model = synchlib.load_model(RELEASED_ID, device="cpu", progress=False)
    assert server.requests == 1, "the cached, verified checkpoint must not be downloaded again"
    sd = model.state_dict()
    assert sd.keys() == detweights_state_dict.keys()
    assert all(torch.equal(sd[k], v) for k, v in detweights_state_dict.items())
    assert np.allclose(model.cfg.grid, g["grid"])
