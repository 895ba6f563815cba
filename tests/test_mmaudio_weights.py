"""Bare state-dict files without a config (MMAudio's synchformer_state_dict.pth): recognised by their key names and
shapes, or by their md5, and loaded with no config= (small files of the same layout: the tiny model's)."""

from __future__ import annotations

import argparse

import pytest
import torch

import synchlib
from synchlib import desync, paths
from synchlib.model import load
from synchlib.errors import CheckpointError
from synchlib.model.synchformer import POS_EMB_KEY

from .helpers import TINY


@pytest.fixture(scope="module")
def tiny_sd():
    return synchlib.load_model(TINY, device="cpu").state_dict()


def test_bare_state_dict_is_recognised_by_its_layout(tmp_path, tiny_sd):
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save(dict(tiny_sd), path)  # a bare state dict, as MMAudio publishes its file
    model = synchlib.load_model(path, device="cpu")
    assert model.cfg.name == TINY
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in tiny_sd.items())
    args = desync.add_desync_arguments(argparse.ArgumentParser()).parse_args(["x", "-c", str(path)])
    assert synchlib.load_model(args.checkpoint, device="cpu").cfg.name == TINY  # --checkpoint path alike


def test_bare_state_dict_is_recognised_by_its_md5(tmp_path, tiny_sd, monkeypatch):
    """A file whose shapes fit no known layout (here a longer positional table, which loading cuts) is known by
    its md5."""
    sd = dict(tiny_sd)
    sd[POS_EMB_KEY] = torch.cat([sd[POS_EMB_KEY], sd[POS_EMB_KEY][:, :10]], dim=1)
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="holds no config"):
        synchlib.load_model(path, device="cpu")
    monkeypatch.setitem(load.KNOWN_STATE_DICTS, paths.file_md5(path), TINY)
    model = synchlib.load_model(path, device="cpu")
    assert model.cfg.name == TINY and torch.equal(model.state_dict()[POS_EMB_KEY], tiny_sd[POS_EMB_KEY])


def test_mmaudio_file_is_known_as_the_av_benchmark_model():
    assert load.KNOWN_STATE_DICTS["5b2f5594b0730f70e41e549b7c94390c"] == load.AV_BENCHMARK_ID
    assert load.AV_BENCHMARK_ID == desync.DEFAULT_CHECKPOINT
