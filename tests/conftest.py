"""Shared fixtures: paths to the parity fixtures and sample clips, and the deterministic-weights model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYNCHLIB_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
SAMPLES = REPO / "synchlib" / "assets" / "samples"
SAMPLE_A = SAMPLES / "3qesirWAGt4_20000_30000.mp4"
SAMPLE_B = SAMPLES / "ZYc410CE4Rg_0_10000.mp4"
RELEASED_ID = "24-01-04T16-39-21"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _need_parity():
    if not (PARITY / "detweights.py").is_file():
        pytest.skip(f"parity fixtures not found at {PARITY} (set SYNCHLIB_SHARED to the folder holding parity/)")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    _need_parity()
    return PARITY


@pytest.fixture(scope="session")
def detweights(parity_dir):
    spec = importlib.util.spec_from_file_location("detweights", parity_dir / "detweights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def detweights_state_dict(detweights):
    """The released-layout state dict filled by ``detweights`` (237 M floats, about 1 GB)."""
    from synchlib.model import build_model

    meta = build_model(RELEASED_ID, device="meta")
    return detweights.state_dict_for([(k, v.shape) for k, v in meta.state_dict().items()])


@pytest.fixture(scope="session")
def detweights_model(detweights_state_dict):
    """Full-size Synchformer (14 segments) with deterministic weights, eval mode, fp32, CPU."""
    from synchlib.model import build_model

    model = build_model(RELEASED_ID, device="meta")
    model.load_state_dict(detweights_state_dict, assign=True)
    return model.eval()

collect_ignore = ["data"]  # notebooks used as test inputs, not goldens
