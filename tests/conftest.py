"""Shared fixtures: paths to the parity fixtures and sample clips, the deterministic-weights model, a local
mirror serving it in the released format, and the tiny config with a randomly initialised model."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import pytest
import torch
import yaml

from .helpers import TINY, StaticServer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYNCHLIB_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
SAMPLES = REPO / "synchlib" / "assets" / "samples"
SAMPLE_A = SAMPLES / "3qesirWAGt4_20000_30000.mp4"
SAMPLE_B = SAMPLES / "ZYc410CE4Rg_0_10000.mp4"
RELEASED_ID = "24-01-04T16-39-21"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def cfg():
    """The tiny model's config."""
    from synchlib.config import load_config

    return load_config(TINY)


@pytest.fixture(scope="module")
def model(cfg):
    """A tiny Synchformer with the model's own random initialisation (seed 0), eval mode: fast, untrained."""
    from synchlib.model import build_model

    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Run the tiny model on one thread (fastest for it; two fight with whatever else runs on a small machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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



def released_args():
    """The config tree as the released files pickle it: an OmegaConf DictConfig when omegaconf is installed."""
    from synchlib.config import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / f"{RELEASED_ID}.yaml").read_text())
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return raw
    return OmegaConf.create(raw)


@pytest.fixture(scope="session")
def released_files(tmp_path_factory, detweights_state_dict):
    """``(root, checkpoint, registry_csv, md5)``: ``root/<id>/<id>.pt`` holds the detweights in the released format
    (laid out like the authors' store), ``registry_csv`` lists its full md5 for ``$SYNCHLIB_REGISTRY``."""
    from synchlib.checkpoints import file_md5

    root = tmp_path_factory.mktemp("mirror")
    (root / RELEASED_ID).mkdir()
    path = root / RELEASED_ID / f"{RELEASED_ID}.pt"
    torch.save(
        {"model": detweights_state_dict, "args": released_args(), "epoch": 7, "model_type": "Synchformer",
         "metrics": {"off": {"accuracy_1": 0.5}}},
        path,
    )  # fmt: skip
    md5 = file_md5(path)
    registry = tmp_path_factory.mktemp("registry") / "checkpoints.csv"
    with registry.open("w", newline="") as f:
        csv.writer(f).writerows([["id", "md5_prefix"], [RELEASED_ID, md5]])
    return root, path, registry, md5


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, released_files):
    """Per test module: a fresh server on 127.0.0.1 over :func:`released_files` (it counts requests) and a fresh,
    empty cache. ``SYNCHLIB_MIRROR``, ``SYNCHLIB_CACHE`` and ``SYNCHLIB_REGISTRY`` are set in ``os.environ``, so
    child processes (papermill's notebook kernel) download from the same server into the same cache and verify
    against the same md5. Yields ``(server, checkpoint file on the server)``."""
    root, path, registry, _ = released_files
    server = StaticServer(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNCHLIB_MIRROR", server.url)
        mp.setenv("SYNCHLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("SYNCHLIB_REGISTRY", str(registry))
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            mp.delenv(var, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield server, path
    server.close()


collect_ignore = ["data"]  # notebooks used as test inputs, not goldens
