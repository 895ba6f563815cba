"""Every number and option a user gives is checked at the boundary: the CLI exits 2 with one line before any model
is loaded, the Python API raises InvalidArgumentError (a SynchlibError and a ValueError) before anything is
decoded. Tiny config with random weights; the shipped synthetic sample where a valid run is needed."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import synchlib
import synchlib.desync
import synchlib.model
from synchlib import cli
from synchlib.desync import clip_desync, desync
from synchlib.errors import ClipTooShortError, InvalidArgumentError, OffsetOutsideGridWarning, SynchlibError
from synchlib.model import resolve_device
from synchlib.predict import MAX_BATCH_SIZE
from synchlib.preprocess import load_clip
from synchlib.sweep import MAX_SWEEP_WINDOWS, Predictor, sweep
from synchlib.timeline import offset_over_time

from .helpers import TINY

SAMPLE = "synchlib/assets/samples/synthetic_demo.mp4"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
MISSING = "no-such-dir/no-such-video.mp4"  # arguments are checked before the video is even looked at


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCHLIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: bad arguments must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the arguments are bad")

    for where in (synchlib, synchlib.model, synchlib.desync):  # the package, the CLI's import, desync's own
        monkeypatch.setattr(where, "load_model", refuse)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# command line -> a word the one-line error must hold (the argument or its limit)
BAD_CLI = [
    (["predict", SAMPLE, "--offset-sec", "nan"], "offset_sec"),
    (["predict", SAMPLE, "--offset-sec", "inf"], "offset_sec"),
    (["predict", SAMPLE, "--offset-sec=-inf"], "offset_sec"),  # argparse takes "-inf" alone for an option
    (["predict", SAMPLE, "--offset-sec", "1e9"], "from -5 to 5"),
    (["predict", SAMPLE, "--start-sec", "-5"], "start_sec"),
    (["predict", SAMPLE, "--start-sec", "nan"], "start_sec"),
    (["predict", SAMPLE, "--start-sec", "600", "--pad"], "from 0 to 5"),
    (["predict", SAMPLE, "-k", "-3"], ">= 1"),
    (["predict", SAMPLE, "-k", "0"], ">= 1"),
    (["predict", SAMPLE, "-k", "1.5"], "-k"),
    (["predict", SAMPLE, "--precision", "fp64"], "--precision"),
    (["predict", SAMPLE, "--device", "tpu"], "device"),
    (["predict", SAMPLE, "--device", ""], "device"),
    (["sweep", SAMPLE, "--offsets", "nan"], "offsets[0]"),
    (["sweep", SAMPLE, "--offsets", "0", "1e9"], "offsets[1]"),
    (["sweep", SAMPLE, "--starts", "-1"], "starts[0]"),
    (["sweep", SAMPLE, "--starts"], "starts is empty"),
    (["sweep", SAMPLE, "--starts", *np.linspace(0, 5, 500).round(4)], str(MAX_SWEEP_WINDOWS)),
    (["timeline", SAMPLE, "--hop-sec", "0"], "hop_sec"),
    (["timeline", SAMPLE, "--hop-sec", "-1"], "hop_sec"),
    (["timeline", SAMPLE, "--hop-sec", "nan"], "hop_sec"),
    (["timeline", SAMPLE, "--hop-sec", "inf"], "hop_sec"),
    (["timeline", SAMPLE, "--hop-sec", "1e-12"], ">= 0.04"),
    (["timeline", SAMPLE, "--start-sec", "-5"], "start_sec"),
    (["timeline", SAMPLE, "--end-sec", "nan"], "end_sec"),
    (["timeline", SAMPLE, "--end-sec", "-1"], "end_sec"),
    (["desync", "synchlib/assets/samples", "--batch-size", "0"], "batch_size"),
    (["desync", "synchlib/assets/samples", "--batch-size", "-1"], "batch_size"),
    (["desync", "synchlib/assets/samples", "--batch-size", str(MAX_BATCH_SIZE + 1)], str(MAX_BATCH_SIZE)),
    (["desync", "synchlib/assets/samples", "--device", "tpu"], "device"),
    (["desync", "synchlib/assets/samples", "--workers", "-1"], "workers"),
    (["desync", "synchlib/assets/samples", "--workers", "100000"], "workers"),
]


@pytest.mark.parametrize("argv,word", BAD_CLI, ids=[" ".join(map(str, a[:1] + a[2:]))[:60] for a, _ in BAD_CLI])
def test_cli_refuses_bad_values_in_one_line_before_loading_a_model(capsys, no_model, argv, word):
    code, out, err = run(capsys, *argv, "--checkpoint", TINY)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("synchlib: error:"), err
    assert word in lines[0] and "unexpected" not in lines[0]


@NO_CUDA
@pytest.mark.parametrize("command,source", [("predict", SAMPLE), ("sweep", SAMPLE), ("timeline", SAMPLE),
                                            ("desync", "synchlib/assets/samples")])
def test_cli_cuda_without_a_gpu_is_an_argument_error(capsys, no_model, command, source):
    code, _, err = run(capsys, command, source, "--device", "cuda", "--checkpoint", TINY)
    assert code == 2 and err.strip() == (
        "synchlib: error: CUDA is not available; use --device cpu (or auto), device='cpu' in Python (asked for 'cuda')"
    )


def test_cli_checks_a_checkpoint_file_s_limits_once_loaded(capsys, tmp_path):
    """A checkpoint file's config is inside it: what needs the config (the hop's one-frame floor) is refused after
    loading, still in one line."""
    ckpt = synchlib.checkpoints.resolve_checkpoint(TINY)
    code, _, err = run(capsys, "timeline", SAMPLE, "--hop-sec", "0.001", "--end-sec", "5.5", "--checkpoint", ckpt,
                       "--device", "cpu")
    assert code == 2 and err.startswith("synchlib: error: hop_sec") and len(err.strip().splitlines()) == 1


def test_cli_accepts_sample_names(capsys):
    code, out, err = run(capsys, "predict", "synthetic-demo", "--checkpoint", TINY, "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["video"].endswith("synthetic_demo.mp4")
    code, out, err = run(capsys, "sweep", "synthetic-demo", "--offsets", "0", "--starts", "1", "--checkpoint", TINY,
                         "--device", "cpu")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n"] == 1
    code, out, err = run(capsys, "timeline", "synthetic-demo", "--end-sec", "6", "--checkpoint", TINY,
                         "--device", "cpu")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["n_windows"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Python API


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(offset_sec=math.nan), "offset_sec"),
        (dict(offset_sec=math.inf), "offset_sec"),
        (dict(offset_sec=5.5), "from -5 to 5"),
        (dict(offset_sec="0.4"), "offset_sec"),
        (dict(offset_sec=True), "offset_sec"),
        (dict(start_sec=-0.5), "start_sec"),
        (dict(start_sec=60.0, pad=True), "from 0 to 5"),  # padding to there would repeat frames for a minute
        (dict(k=0), "k must"),
        (dict(k=2.0), "k must"),
        (dict(precision="fp64"), "precision"),
        (dict(audio_priming="both"), "audio_priming"),
        (dict(pad="yes"), "pad"),
    ],
)
def test_predict_refuses_bad_arguments_before_decoding(model, kwargs, word):
    with pytest.raises(InvalidArgumentError, match=word):
        synchlib.predict(model, MISSING, **kwargs)


def test_load_clip_refuses_values_past_the_limits_and_takes_the_limits(cfg):
    with pytest.raises(InvalidArgumentError, match="start_sec"):
        load_clip(MISSING, 0.0, -1.0, cfg)
    with pytest.raises(InvalidArgumentError, match="offset_sec"):
        load_clip(MISSING, np.float32(np.nan), 0.0, cfg)
    with pytest.raises(InvalidArgumentError, match="offset_sec"):
        load_clip(MISSING, -5.01, 5.0, cfg)
    with pytest.raises(InvalidArgumentError, match="video"):
        load_clip(3, 0.0, 0.0, cfg)
    # the limits themselves, as NumPy numbers: the 10 s sample holds both windows exactly
    for offset, start in [(np.float32(-5.0), np.int64(5)), (5.0, 0)]:
        with pytest.warns(OffsetOutsideGridWarning):
            clip = load_clip(SAMPLE, offset, start, cfg)
        assert (clip.offset_sec, clip.start_sec) == (offset, start) and clip.target_class is None


def test_argument_errors_are_synchlib_and_value_errors(model):
    with pytest.raises(SynchlibError):
        synchlib.predict(model, MISSING, k=-1)
    with pytest.raises(ValueError):
        synchlib.predict(model, MISSING, k=-1)
    with pytest.raises(ClipTooShortError):  # in range, but no room on this 10 s clip: the clip's limit, not ours
        synchlib.predict(model, SAMPLE, offset_sec=2.0, start_sec=4.0)
    pred = synchlib.predict(model, SAMPLE, offset_sec=0.4, start_sec=1.0, k=100)  # k above the classes: all listed
    assert len(pred.topk) == 21 and pred.target_class == 12


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(offsets=[0.0, math.nan]), r"offsets\[1\]"),
        (dict(offsets=[-6.0]), r"offsets\[0\]"),
        (dict(offsets=[]), "offsets is empty"),
        (dict(offsets=0.4), "list of numbers"),
        (dict(starts=[-1.0]), r"starts\[0\]"),
        (dict(starts=[math.inf]), r"starts\[0\]"),
        (dict(starts=[]), "starts is empty"),
        (dict(offsets=itertools.repeat(0.0)), str(MAX_SWEEP_WINDOWS)),  # endless: read only so far
        (dict(starts=np.linspace(0, 5, 1000)), str(MAX_SWEEP_WINDOWS)),  # 21 grid offsets x 1000 starts
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=MAX_BATCH_SIZE + 1), "batch_size"),
        (dict(precision="int8"), "precision"),
    ],
)
def test_sweep_refuses_bad_arguments_before_decoding(model, kwargs, word):
    with pytest.raises(InvalidArgumentError, match=word):
        sweep(model, MISSING, progress=False, **kwargs)


def test_predictor_checks_its_arguments(model):
    with pytest.raises(InvalidArgumentError, match="precision"):
        Predictor(model, precision="half")
    with pytest.raises(InvalidArgumentError, match="audio_priming"):
        Predictor(model, audio_priming="none")
    pr = Predictor(model).set_video(SAMPLE)
    with pytest.raises(InvalidArgumentError, match="start_sec"):
        pr.vfeats(math.nan)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        pr.logits([0.0], 0.0, batch_size=0)
    with pytest.raises(InvalidArgumentError, match=r"offsets\[0\]"):
        pr.logits([math.inf], 0.0)


def test_predictor_keeps_one_visual_entry_per_first_frame(model):
    """Starts that pick the same first frame share their visual features, so a sweep over many starts holds at most
    one entry per frame of the clip."""
    pr = Predictor(model).set_video(SAMPLE)
    table = pr.sweep([0.0], [1.0, 1.01, 1.02, 1.039], progress=False)
    assert len(table) == 4 and len(pr._vfeats) == 1


def test_sweep_manifest_refuses_bad_arguments_once(model, tmp_path):
    from synchlib.sweep import sweep_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{synchlib.sample_path('synthetic-demo')}\n{MISSING}\n")
    with pytest.raises(InvalidArgumentError, match="offsets"):
        sweep_manifest(model, manifest, offsets=[math.nan], progress=False)


def test_sweep_manifest_records_unusable_rows(model, tmp_path):
    """A row without a path fails alone, with the manifest's own reason (not as a sweep of an empty path)."""
    from synchlib.sweep import sweep_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,name\n,empty\n{synchlib.sample_path('synthetic-demo')},demo\n")
    table, failures = sweep_manifest(model, manifest, offsets=[0.0], starts=[1.0], progress=False)
    assert len(table) == 1 and len(failures) == 1
    assert "line" in failures["video"][0] and "directory" not in failures["error"][0]


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(hop_sec=0), "hop_sec"),
        (dict(hop_sec=-1.0), "hop_sec"),
        (dict(hop_sec=math.nan), "hop_sec"),
        (dict(hop_sec=1e-12), ">= 0.04"),
        (dict(hop_sec=math.inf), "hop_sec"),
        (dict(start_sec=-1.0), "start_sec"),
        (dict(start_sec=math.nan), "start_sec"),
        (dict(end_sec=math.nan), "end_sec"),
        (dict(start_sec=3.0, end_sec=2.0), "end_sec"),
        (dict(batch_size=0), "batch_size"),
        (dict(precision="fp8"), "precision"),
        (dict(audio_priming="skip"), "audio_priming"),
    ],
)
def test_timeline_refuses_bad_arguments_before_reading(model, kwargs, word):
    with pytest.raises(InvalidArgumentError, match=word):
        offset_over_time(model, MISSING, progress=False, **kwargs)


def test_desync_refuses_a_bad_batch_size_instead_of_failing_every_clip(model):
    items = [(synchlib.sample_path("synthetic-demo"), None)]
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        desync(model, items, batch_size=0, progress=False)
    with pytest.raises(InvalidArgumentError, match="precision"):
        desync(model, items, precision="fp64", progress=False)
    with pytest.raises(InvalidArgumentError, match="workers"):
        desync(model, items, workers=-1, progress=False)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        clip_desync(model, items[0][0], batch_size=-2)


@pytest.mark.parametrize("device", ["tpu", "", "cuda:x", "meta", 0, None])
def test_resolve_device_refuses_unknown_devices(device):
    with pytest.raises(InvalidArgumentError, match="device must be"):
        resolve_device(device)


@NO_CUDA
def test_cuda_without_a_gpu_is_an_argument_error():
    with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
        synchlib.load_model(TINY, device="cuda:0")


def test_cuda_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InvalidArgumentError, match="1 CUDA device"):
        resolve_device("cuda:3")
