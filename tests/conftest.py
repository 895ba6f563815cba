"""Shared fixtures: the parity fixtures (``tests/fixtures/parity``) and sample clips, the deterministic-weights
model, a local mirror serving it in the released format, and the tiny config with a randomly initialised model.

Tests marked ``real_weights`` need the released 1.1 GB checkpoint in the cache; they run only when asked for with
``python -m pytest -m real_weights`` (see :func:`pytest_collection_modifyitems`)."""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from .helpers import TINY, StaticServer

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "tests" / "fixtures" / "parity"  # golden inputs and outputs of the reference code (see its README)
SAMPLES = REPO / "synchlib" / "assets" / "samples"
SAMPLE_A = SAMPLES / "3qesirWAGt4_20000_30000.mp4"
SAMPLE_B = SAMPLES / "ZYc410CE4Rg_0_10000.mp4"
RELEASED_ID = "24-01-04T16-39-21"
SYNCABILITY_ID = "24-01-22T20-34-52"
REAL_WEIGHTS = "real_weights"  # marker of the opt-in tests that need the released checkpoint

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


def pytest_collection_modifyitems(config, items):
    """Deselect the ``real_weights`` tests unless the ``-m`` expression names them (``-m real_weights``).

    Done here rather than with ``-m "not real_weights"`` in addopts, which any other ``-m`` (``-m "not slow"``)
    would replace, selecting tests whose 1.1 GB of weights CI can never download."""
    if REAL_WEIGHTS in (config.getoption("markexpr") or ""):
        return
    opt_in = [item for item in items if item.get_closest_marker(REAL_WEIGHTS)]
    if opt_in:
        config.hook.pytest_deselected(items=opt_in)
        items[:] = [item for item in items if not item.get_closest_marker(REAL_WEIGHTS)]


def parity_file(name: str) -> Path:
    """A file of the parity fixtures; a missing one fails the test (the fixtures are part of the repository)."""
    path = PARITY / name
    if not path.is_file():
        pytest.fail(
            f"parity fixture {path} is missing: it is part of the repository (restore it from git, or rebuild "
            "the folder with scripts/make_parity_fixtures.py from the reference goldens)",
            pytrace=False,
        )
    return path


@functools.cache
def golden(case: str) -> dict[str, np.ndarray]:
    """The arrays of parity case ``case`` (A, A2, B, S1, S2; names and shapes in tests/fixtures/parity/README.md).
    Read once per session; do not modify them."""
    with np.load(parity_file(f"case_{case}.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# Features and logits: max |ours - golden| <= REL_TOL * max |golden|. The fp32 forward runs about 40 layers whose
# kernels (oneDNN / MKL GEMM blocking, attention, erf) sum in a different order on other CPUs and torch versions;
# each K-term dot product (K = 768 to 3072) then differs by about sqrt(K) * u relative, and the LayerNorm of every
# block keeps that from compounding. Measured on an AMD EPYC (torch 2.13 CPU build) against the reference's Intel
# run: at most 1.4e-6 (cases A2, A, B) and 4.0e-6 (S1, S2), so 1e-4 leaves a 25x margin. Relative to the largest
# magnitude, not per entry: entries near zero carry the absolute rounding of their inputs. Small mistakes still
# show: GELU's tanh approximation instead of erf moves the case-A2 features by 2.1e-4 and the logits by 3.3e-4.
REL_TOL = 1e-4


def assert_close_rel(actual: torch.Tensor, expected: np.ndarray, name: str, tol: float = REL_TOL) -> None:
    """max |actual - expected| <= tol * max |expected| (shapes equal)."""
    expected_t = torch.from_numpy(np.asarray(expected)).float()
    assert actual.shape == expected_t.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected_t.shape)}"
    err = (actual.float() - expected_t).abs().max().item() / expected_t.abs().max().item()
    assert err <= tol, f"{name}: max relative error {err:.2e} > {tol:.0e}"


def case_window(case: str) -> tuple[Path, float, float]:
    """(sample clip, offset_sec, start_sec) of a parity case."""
    g = golden(case)
    return SAMPLES / str(g["video"]), float(g["offset_sec"]), float(g["start_sec"])


def frame_sha256(frames) -> list[str]:
    """SHA-256 of each frame's C-order bytes, as the fixtures store them: (N, ...) array -> N hex digests."""
    return [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in np.asarray(frames)]


def assert_frames_are_golden(frames, hashes: np.ndarray, what: str) -> None:
    """Every frame equals the reference's bit for bit (its SHA-256 is the golden one)."""
    ours = frame_sha256(frames)
    assert len(ours) == len(hashes), f"{what}: {len(ours)} frames, the reference has {len(hashes)}"
    differ = [i for i, (a, b) in enumerate(zip(ours, hashes)) if a != b]
    assert not differ, f"{what}: {len(differ)} of {len(ours)} frames differ from the reference's (first: {differ[:5]})"


@pytest.fixture(scope="module")
def clips():
    """synchlib's own decoding of the windows of parity cases A and B (released config, 14 segments)."""
    from synchlib.config import load_config
    from synchlib.preprocess import load_clip

    cfg = load_config(RELEASED_ID)
    return {case: load_clip(*case_window(case), cfg) for case in ("A", "B")}


@pytest.fixture(scope="session")
def detweights():
    """``tests/fixtures/parity/detweights.py``: the reference's weight generator, (key, shape) -> tensor."""
    spec = importlib.util.spec_from_file_location("detweights", parity_file("detweights.py"))
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
    from synchlib.paths import file_md5

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
