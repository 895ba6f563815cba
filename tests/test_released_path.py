"""The released-model path end to end: a checkpoint in the released format (deterministic weights), served by a
local HTTP server through SYNCHLIB_MIRROR, downloaded, verified, cached, loaded and run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

import synchlib
from synchlib import checkpoints
from synchlib.config import CONFIG_DIR, load_config

from .conftest import RELEASED_ID
from .helpers import StaticServer
from .test_parity import assert_close_rel, golden, rebuild_vid


def released_args():
    """The config tree as the released files pickle it: an OmegaConf DictConfig when omegaconf is installed."""
    raw = yaml.safe_load((CONFIG_DIR / f"{RELEASED_ID}.yaml").read_text())
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return raw
    return OmegaConf.create(raw)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, detweights_state_dict):
    root = tmp_path_factory.mktemp("mirror")
    folder = root / RELEASED_ID
    folder.mkdir()
    path = folder / f"{RELEASED_ID}.pt"
    torch.save(
        {"model": detweights_state_dict, "args": released_args(), "epoch": 7, "model_type": "Synchformer",
         "metrics": {"off": {"accuracy_1": 0.5}}},
        path,
    )  # fmt: skip
    md5 = checkpoints.file_md5(path)
    server = StaticServer(root)
    with pytest.MonkeyPatch.context() as mp:
        entry = checkpoints.RELEASED[RELEASED_ID]
        mp.setitem(checkpoints.RELEASED, RELEASED_ID, dataclasses.replace(entry, md5_prefix=md5[:7]))
        mp.setenv("SYNCHLIB_MIRROR", server.url)
        mp.setenv("SYNCHLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield server, path
    server.close()


def test_load_model_downloads_verifies_caches_and_runs(parity_dir, mirror):
    server, source = mirror
    model = synchlib.load_model(RELEASED_ID, device="cpu", config=load_config(RELEASED_ID).with_segments(2), progress=False)
    cached = checkpoints.cache_dir() / RELEASED_ID / f"{RELEASED_ID}.pt"
    assert cached.is_file() and checkpoints.file_md5(cached) == checkpoints.file_md5(source)
    assert server.requests == 1
    g, _ = golden(parity_dir, "A2")
    with torch.inference_mode():
        logits = model(rebuild_vid(g, 2), torch.from_numpy(g["aud"]))
    assert_close_rel(logits, g["logits"], "logits via the downloaded checkpoint")
    synchlib.load_model(RELEASED_ID, device="cpu", config=load_config(RELEASED_ID).with_segments(2), progress=False)
    assert server.requests == 1, "a cached, verified checkpoint must not be downloaded again"


def test_load_model_from_path_reads_config_from_checkpoint(mirror, detweights_state_dict):
    _, source = mirror
    model = synchlib.load_model(source, device="cpu")
    assert model.cfg.data.n_segments == 14 and model.cfg.sync.pos_len == 198
    for key in ("transformer.off_head.weight", "vfeat_extractor.blocks.3.attn.qkv.bias"):
        assert torch.equal(model.state_dict()[key], detweights_state_dict[key])
