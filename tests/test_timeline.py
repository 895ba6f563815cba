"""Streaming readers (synchlib.io.iter_video / iter_audio) and the offset timeline (synchlib.timeline).

Tiny config and small clips; the memory test runs two subprocesses on a 2- and a 10-minute 64x64 video.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import synchlib
from synchlib import plot
from synchlib.config import load_config
from synchlib.errors import ClipTooShortError
from synchlib.io import decode, is_normalised, iter_audio, iter_video, probe
from synchlib.normalised import prepare, read_video
from synchlib.preprocess import center_crop_box
from synchlib.synthetic import make_clip, render, write_looped_mp4, write_mp4
from synchlib.timeline import (
    TIMELINE_COLUMNS, WindowStream, iter_window_logits, offset_over_time, plan_window, snap_start_sec,
    summarize_timeline, window_starts,
)  # fmt: skip

from .helpers import TINY, write_av
from .onset_oracle import OnsetOracle

RELEASED = "24-01-04T16-39-21"
LOGIT_TOL = 1e-5
SHIFT_SEC = 0.8


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs the tiny model on one thread."""


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("timeline") / "clip ten é.mp4"
    make_clip(path, seed=7, duration_sec=10.0)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Streaming readers


def test_streams_of_a_normalised_file_equal_decode():
    data = load_config(RELEASED).data
    path = synchlib.sample_path("vggsound-3qesirWAGt4")
    dec = decode(path, data)
    top, left = center_crop_box(*dec.frames.shape[1:3], data.input_size)
    notes: list[str] = []
    frames = np.stack([f for _, f in iter_video(path, data, notes=notes)])
    assert np.array_equal(frames, dec.frames[:, top : top + data.input_size, left : left + data.input_size])
    assert np.array_equal(np.concatenate(list(iter_audio(path, data, notes=notes))), dec.audio)
    assert notes == []


@pytest.mark.parametrize("kw", [
    dict(fps=30, size=(128, 96), sample_rate=44100, channels=2, audio_start_sec=0.2),
    dict(fps=30, size=(128, 96), sample_rate=44100, channels=2, video_start_sec=0.3, rotation=90),
], ids=["30fps-late-audio", "rotated-late-video"])  # fmt: skip
def test_streams_of_the_prepared_file_equal_read_video(cfg, tmp_path, kw, monkeypatch):
    """Other files: streaming the file prepare() names (the normalised copy) gives exactly read_video's frames and
    samples."""
    monkeypatch.setenv("SYNCHLIB_CACHE", str(tmp_path / "cache"))
    data = cfg.data
    path = write_av(tmp_path / "odd.mp4", seconds=3.0, **kw)
    ref = read_video(path, data)
    target, _ = prepare(path, data)
    assert target != path and ref.decoded_path == target
    top, left = center_crop_box(*ref.frames.shape[1:3], data.input_size)
    frames = np.stack([f for _, f in iter_video(target, data)])
    assert np.array_equal(frames, ref.frames[:, top : top + data.input_size, left : left + data.input_size])
    assert np.array_equal(np.concatenate(list(iter_audio(target, data))), ref.audio)


# Non-normalised files of several kinds (7 s, so that the tiny model's 5 s windows start at 0 and 1.28 s)
ODD_FILES = {
    "29.97fps-44.1kHz-stereo": dict(fps=Fraction(30000, 1001), size=(112, 64), sample_rate=44100, channels=2),
    "portrait-rotated-48kHz": dict(fps=30, size=(112, 64), rotation=-90, sample_rate=48000, channels=2),
    "variable-frame-rate": dict(
        frame_times=np.cumsum(np.r_[0.0, np.random.default_rng(2).choice([0.016, 0.033, 0.05, 0.1], 160)]),
        size=(96, 64), sample_rate=44100),
    "15fps-8kHz": dict(fps=15, size=(96, 64), sample_rate=8000),
}
PREDICT_TOL = 1e-4  # relative: same frames and samples, only the batching of the extractors' float sums differs


@pytest.mark.parametrize("name", list(ODD_FILES))
def test_window_logits_equal_predict_on_files_that_need_normalising(name, tmp_path, monkeypatch):
    """predict re-encodes these files (cached copy); the timeline reads that same copy, so each window's logits are
    predict's at its start (the trained tiny model)."""
    monkeypatch.setenv("SYNCHLIB_CACHE", str(tmp_path / "cache"))
    model = synchlib.load_model(TINY, device="cpu")
    path = write_av(tmp_path / "odd.mp4", seconds=7.0, **ODD_FILES[name])
    assert not is_normalised(probe(path), model.cfg.data)
    got = list(iter_window_logits(model, path, progress=False))
    assert [t for t, _ in got] == pytest.approx([0.0, 1.28])
    for t, logits in got:
        ref = synchlib.predict(model, path, offset_sec=0.0, start_sec=t).logits
        assert np.abs(logits.numpy() - ref).max() <= PREDICT_TOL * np.abs(ref).max(), t


def test_unwanted_frames_are_not_converted(cfg, clip_path):
    got = list(iter_video(clip_path, cfg.data, wanted=lambda i: i % 10 == 0))
    assert [i for i, _ in got] == list(range(250))
    assert all((f is None) == (i % 10 != 0) for i, f in got)


# ---------------------------------------------------------------------------------------------------------------
# Windows


def test_snapped_starts_land_on_their_frame_and_sample(cfg):
    data = cfg.data
    assert int(1.16 * 25) == 28  # the reference's truncation, which snapping works around
    for k in range(2000):
        t = snap_start_sec(round(k * 1.28, 9), data)
        assert int(t * data.vfps) == 32 * k and int(t * data.afps) == 20480 * k
        assert abs(t - k * 1.28) < 1e-12
    assert snap_start_sec(0.7, data) == 0.7  # off the frame grid: unchanged
    assert list(window_starts(1.0, 1.28, data, end_sec=8.5)) == pytest.approx([1.0, 2.28])
    plan = plan_window(1.28, data)
    assert plan.frame_keys[:2] == (34, 42) and plan.sample_keys[:2] == (20480 + 1280, 20480 + 1280 + 5120)


@pytest.mark.parametrize("hop", [None, 0.7], ids=["default-hop", "hop-0.7"])
def test_window_logits_equal_predict(model, clip_path, hop):
    stats: dict = {}
    got = list(iter_window_logits(model, clip_path, hop_sec=hop, progress=False, stats=stats))
    expected_starts = [0.0, 1.28, 2.56, 3.84] if hop is None else [0.0, 0.7, 1.4, 2.1, 2.8, 3.5, 4.2, 4.9]
    assert [t for t, _ in got] == pytest.approx(expected_starts)
    for t, logits in got:
        ref = synchlib.predict(model, clip_path, offset_sec=0.0, start_sec=t).logits
        assert np.abs(logits.numpy() - ref).max() < LOGIT_TOL, t
    S = model.cfg.data.n_segments
    if hop is None:  # shared segments: 14 for the first window, 4 new ones for each next
        assert stats["video_segments"] == stats["audio_segments"] == S + 4 * (len(got) - 1)
    else:  # few shared segments (cache misses), same answers
        assert stats["video_segments"] > S + 4 * (len(got) - 1)


def test_table_range_and_errors(model, clip_path, tmp_path):
    df = offset_over_time(model, clip_path, start_sec=1.0, end_sec=8.5, progress=False)
    assert list(df.columns) == TIMELINE_COLUMNS
    assert df["start_sec"].tolist() == pytest.approx([1.0, 2.28])
    assert df["end_sec"].tolist() == pytest.approx([6.0, 7.28])
    assert np.allclose(df[["p", "p_2", "p_3"]].sum(axis=1) <= 1 + 1e-6, True)
    assert (df["p"] >= df["p_2"]).all() and (df["entropy"].between(0, np.log(21) + 1e-6)).all()
    ref = synchlib.predict(model, clip_path, 0.0, float(df["start_sec"].iloc[1]))
    assert df["predicted_class"].iloc[1] == ref.class_index and df["p"].iloc[1] == pytest.approx(ref.p, abs=1e-5)
    assert df.attrs["hop_sec"] == pytest.approx(1.28) and df.attrs["stats"]["windows"] == 2
    with pytest.raises(ValueError, match="hop_sec"):
        offset_over_time(model, clip_path, hop_sec=0, progress=False)
    with pytest.raises(ClipTooShortError, match="end_sec"):
        offset_over_time(model, clip_path, end_sec=4.0, progress=False)
    short = tmp_path / "short.mp4"
    make_clip(short, seed=1, duration_sec=3.0)
    with pytest.raises(ClipTooShortError, match="no window fits"):
        offset_over_time(model, short, progress=False)


def test_oracle_timeline_finds_a_constant_offset(cfg, tmp_path):
    """With a model that can tell (the onset oracle), every window of a clip whose sound is SHIFT_SEC early says
    so; the summary and the plot agree."""
    frames, audio, _ = render(21, 16.0, 64)
    n = int(SHIFT_SEC * 16000)
    path = tmp_path / "early.mp4"
    write_mp4(path, frames, np.concatenate([audio[n:], np.zeros(n, np.float32)]), 25, 16000)
    df = offset_over_time(OnsetOracle(cfg), path, hop_sec=2.56, progress=False)
    assert len(df) == 5 and np.allclose(df["predicted_offset_sec"], SHIFT_SEC)
    s = summarize_timeline(df, confident_p=0.0)
    assert s["median_offset_sec"] == pytest.approx(SHIFT_SEC) and abs(s["drift_sec_per_min"]) < 1e-6
    fig = plot.offset_timeline(df, grid=cfg.grid)
    assert len(fig.axes) == 2
    plot.plt.close(fig)


def test_summary_of_a_drifting_table():
    minutes = np.arange(10.0)
    df = pd.DataFrame({
        "start_sec": minutes * 60, "end_sec": minutes * 60 + 5, "center_sec": minutes * 60 + 2.5,
        "predicted_offset_sec": 0.2 * minutes, "p": np.where(minutes < 8, 0.9, 0.1),
    })  # fmt: skip
    s = summarize_timeline(df, confident_p=0.5)
    assert s["drift_sec_per_min"] == pytest.approx(0.2)
    assert s["n_windows"] == 10 and s["n_confident"] == 8 and s["confident_share"] == pytest.approx(0.8)
    assert s["median_offset_sec"] == pytest.approx(0.7)  # of the confident windows, 0 .. 1.4
    assert np.isnan(summarize_timeline(df, confident_p=0.95)["drift_sec_per_min"])
    assert summarize_timeline(df.iloc[:0])["n_windows"] == 0


# ---------------------------------------------------------------------------------------------------------------
# Memory


def test_window_stream_state_stays_bounded(cfg):
    """Feeding 10 minutes of frames and samples: the frames, samples, features and windows held never exceed
    what one window and one batch need, and every segment is computed once."""
    data, batch = cfg.data, 8
    engine = WindowStream(OnsetOracle(cfg), window_starts(0.0, 1.28, data), batch_size=batch)
    frame = np.zeros((4, 4, 3), np.uint8)
    rng = np.random.default_rng(0)
    chunk = (rng.standard_normal(1024) * 0.01).astype(np.float32)
    n_frames, per_chunk = 10 * 60 * data.vfps, len(chunk)
    peak = dict(frames=0, samples=0, vfeats=0, afeats=0, windows=0)
    i = samples = 0
    starts: list[float] = []
    while i < n_frames:
        if engine.next_stream() == "video":
            engine.add_frame(i, frame if engine.wants_frame(i) else None)
            i += 1
        else:
            engine.add_samples(chunk)
            samples += per_chunk
        starts += [t for t, _ in engine.results()]
        for key, value in (("frames", len(engine.frames.frames)), ("samples", len(engine.samples.samples)),
                           ("vfeats", len(engine.video.features)), ("afeats", len(engine.audio.features)),
                           ("windows", len(engine.open) + len(engine.closing))):  # fmt: skip
            peak[key] = max(peak[key], value)
    engine.end_video()
    engine.end_audio()
    starts += [t for t, _ in engine.results()]
    print("peaks:", peak)
    hop_strides, overlapping = 4, int(np.ceil(data.crop_len_sec / 1.28)) + 1
    held_windows = batch + overlapping  # a batch waiting for the transformer, and the windows still open
    assert peak["windows"] <= held_windows
    assert peak["vfeats"] <= data.n_segments + hop_strides * held_windows
    assert peak["afeats"] <= data.n_segments + hop_strides * held_windows
    assert peak["frames"] <= data.segment_size_vframes + data.step_vframes  # raw data goes to a batch at once
    assert peak["samples"] <= data.segment_size_asamples + data.step_asamples + per_chunk
    assert engine.windows_done == len(starts) == int((600 - data.crop_len_sec) / 1.28) + 1
    used = {k for t in starts for k in plan_window(t, data).frame_keys}
    # every segment once; with no known end, the windows begun in the last 5 s that turn out not to fit cost a few
    assert len(used) <= engine.video.computed <= len(used) + data.crop_len_sec * data.vfps / data.step_vframes


CHILD = r"""
import json, resource, sys, tracemalloc, torch
torch.set_num_threads(1)
from synchlib.config import load_config
from synchlib.model import build_model
from synchlib.timeline import offset_over_time
path, hop = sys.argv[1], float(sys.argv[2])
torch.manual_seed(0)
model = build_model(load_config("tiny-synthetic")).eval()
offset_over_time(model, path, hop_sec=hop, end_sec=20.0, progress=False)  # warm-up: first allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
df = offset_over_time(model, path, hop_sec=hop, progress=False)
py_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"windows": len(df), "rss_growth_kb": after - before, "rss_peak_kb": after,
                  "py_peak_kb": py_peak // 1024}))
"""
MEMORY_HOP_SEC = 9.6  # 30 strides: windows every 9.6 s keep the CI cost down; the bound does not depend on it
MINUTES = (2, 10)


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """64x64 videos of 2 and 10 minutes: a rendered 10 s clip played in a loop (fast to write)."""
    d = tmp_path_factory.mktemp("long")
    frames, audio, _ = render(11, 10.0, 64)
    return {m: write_looped_mp4(d / f"long{m}.mp4", frames, audio, m * 60.0) for m in MINUTES}


def test_memory_does_not_grow_with_length(long_clips):
    """Peak memory of a 10-minute timeline is not meaningfully above a 2-minute one's (fresh processes: peak RSS
    growth after a warm-up, and the peak of Python-tracked allocations, numpy arrays included)."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for m, path in long_clips.items():
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(MEMORY_HOP_SEC)], capture_output=True,
                             text=True, env=env, timeout=600, cwd=tempfile.gettempdir())
        assert out.returncode == 0, out.stderr[-2000:]
        runs[m] = json.loads(out.stdout.strip().splitlines()[-1])
    short, long = runs[MINUTES[0]], runs[MINUTES[1]]
    print("memory (KB):", runs)
    assert long["windows"] > 4 * short["windows"]
    assert long["py_peak_kb"] <= 1.2 * short["py_peak_kb"] + 1024  # holding the frames would be 92+ MB
    assert long["rss_growth_kb"] <= 1.2 * short["rss_growth_kb"] + 24 * 1024
