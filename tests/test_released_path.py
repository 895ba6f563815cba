"""The released-model path end to end: a checkpoint in the released format (deterministic weights), served by a
local HTTP server through SYNCHLIB_MIRROR, downloaded, verified (against the md5 that SYNCHLIB_REGISTRY lists),
cached, loaded and run. The fixtures live in conftest.py; test_demo_released.py runs the demo notebook this way."""

from __future__ import annotations

import torch

import synchlib
from synchlib import paths
from synchlib.config import load_config

from .conftest import RELEASED_ID, assert_close_rel, assert_frames_are_golden, golden


def test_load_model_downloads_verifies_caches_and_runs(clips, mirror):
    server, source = mirror
    model = synchlib.load_model(RELEASED_ID, device="cpu", config=load_config(RELEASED_ID).with_segments(2), progress=False)
    cached = paths.cache_dir() / RELEASED_ID / f"{RELEASED_ID}.pt"
    assert cached.is_file() and paths.file_md5(cached) == paths.file_md5(source)
    assert server.requests == 1
    g = golden("A2")  # the first 2 segments of case A: synchlib's own frames [0, 24), checked against the hashes
    assert_frames_are_golden(clips["A"].frames[:24], g["frame_sha256"], "case A2")
    with torch.inference_mode():
        logits = model(clips["A"].vid[None, :2], torch.from_numpy(g["aud"]))
    assert_close_rel(logits, g["logits"], "logits via the downloaded checkpoint")
    synchlib.load_model(RELEASED_ID, device="cpu", config=load_config(RELEASED_ID).with_segments(2), progress=False)
    assert server.requests == 1, "a cached, verified checkpoint must not be downloaded again"


def test_load_model_from_path_reads_config_from_checkpoint(mirror, detweights_state_dict):
    _, source = mirror
    model = synchlib.load_model(source, device="cpu")
    assert model.cfg.data.n_segments == 14 and model.cfg.sync.pos_len == 198
    for key in ("transformer.off_head.weight", "vfeat_extractor.blocks.3.attn.qkv.bias"):
        assert torch.equal(model.state_dict()[key], detweights_state_dict[key])
