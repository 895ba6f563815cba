"""predict / sweep / attention / CLI on a small randomly initialised model with the tiny config (fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import synchlib
from synchlib.attention import capture_attention, explain
from synchlib.checkpoints import save_checkpoint
from synchlib.preprocess import load_clip
from synchlib.sweep import Predictor, confusion_matrix, per_offset_accuracy, summarize

from .helpers import write_av


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    from synchlib.synthetic import make_clip

    path = tmp_path_factory.mktemp("clips") / "clip one é.mp4"  # spaces and non-ASCII on purpose
    make_clip(path, seed=4242, duration_sec=10.0)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model, cfg):
    path = tmp_path_factory.mktemp("ckpt") / "random tiny.pt"
    return save_checkpoint(path, model.state_dict(), dict(cfg.raw))


def test_predict_result_fields(model, clip_path):
    pred = synchlib.predict(model, clip_path, offset_sec=1.6, start_sec=1.0)
    assert pred.grid.shape == pred.probs.shape == (21,)
    assert np.isclose(pred.probs.sum(), 1.0, atol=1e-5)
    assert pred.target_class == 18 and pred.injected_offset_sec == 1.6
    assert [c for _, c, _ in pred.topk] == list(np.argsort(-pred.probs, kind="stable")[:5])
    assert pred.offset_sec == pytest.approx(float(pred.grid[pred.class_index]))
    d = pred.to_dict()
    json.dumps(d)
    assert d["topk"][0]["class_index"] == pred.class_index and d["meta"]["fps"] == 25.0


def test_offset_outside_grid_warns_and_has_no_target(model, clip_path):
    with pytest.warns(synchlib.OffsetOutsideGridWarning, match="outside"):
        pred = synchlib.predict(model, clip_path, offset_sec=2.5, start_sec=0.0)
    assert pred.target_class is None and pred.correct is None


def test_sweep_equals_plain_predict(model, clip_path):
    offsets, starts = [-2.0, -0.4, 0.0, 0.6, 1.8], [2.0, 3.0]
    pr = Predictor(model).set_video(clip_path)
    table = pr.sweep(offsets, starts, batch_size=2, progress=False)
    assert list(table.columns[:3]) == ["video", "start_sec", "offset_sec"]
    assert len(table) == len(offsets) * len(starts)
    for start in starts:
        swept = pr.logits(offsets, start, batch_size=3)
        for i, off in enumerate(offsets):
            clip = load_clip(clip_path, off, start, model.cfg)
            with torch.inference_mode():
                plain = model(clip.vid[None], clip.aud[None])[0]
            torch.testing.assert_close(swept[i], plain, atol=1e-5, rtol=1e-5)
            row = table[(table.start_sec == start) & (table.offset_sec == off)].iloc[0]
            assert row.predicted_class == int(plain.argmax()) and row.target_class == clip.target_class
    s = summarize(table)
    assert s["n"] == 10 and 0 <= s["acc1"] <= s["acc1_within_one"] <= 1
    assert confusion_matrix(table, 21).sum() == 10
    assert set(per_offset_accuracy(table).index) == set(offsets)


def test_attention_capture_matches_default_path_and_shapes(model, clip_path, cfg):
    clip = load_clip(clip_path, 0.4, 1.0, cfg)
    with torch.inference_mode():
        plain = model(clip.vid[None], clip.aud[None])
        with capture_attention(model) as rec:
            captured = model(clip.vid[None], clip.aud[None])
    torch.testing.assert_close(plain, captured, atol=1e-5, rtol=1e-5)
    assert len(rec.sync) == cfg.sync.depth and rec.sync[0].shape[-1] == cfg.sync.pos_len
    assert all(m.store is None for m in model.modules() if hasattr(m, "store")), "capture must switch off again"
    ex = explain(model, clip)
    S, tv, ta, g = cfg.data.n_segments, cfg.visual.t_tokens, cfg.audio.t_tokens, cfg.visual.grid
    assert ex.off_visual.shape == (S, tv) and ex.off_audio.shape == (S, ta)
    assert ex.spatial.shape == (S, tv, g, g) and ex.freq.shape == (S, ta, cfg.audio.f_tokens)
    np.testing.assert_allclose(ex.spatial.sum(axis=(2, 3)), 1 - 0 * ex.spatial.sum(axis=(2, 3)), atol=0.5)
    assert ex.segment_importance.shape == (S,) and np.isclose(ex.segment_importance.sum(), 1)
    assert ex.visual_times.shape == (S * tv,) and ex.audio_times.shape == (S * ta,)


def test_token_times_follow_the_window(cfg, clip_path):
    """Token centres: a frame is the instant i / fps, a spectrogram frame is centred on j * hop; audio tokens sit
    where their sound came from (start + offset); times relative to the crop are the same for every window."""
    from synchlib.preprocess import segment_layout, token_times, window_token_times

    d, v, a = cfg.data, cfg.visual, cfg.audio
    clip = load_clip(clip_path, 0.4, 1.0, cfg)
    vt, at = token_times(clip, cfg)
    assert vt.shape == (d.n_segments, v.t_tokens) and at.shape == (d.n_segments, a.t_tokens)
    _, _, v0, a0 = segment_layout(d)
    assert vt[0, 0] == pytest.approx((25 + v0 + (v.tubelet - 1) / 2) / d.vfps)
    assert at[0, 0] == pytest.approx(1.4 + (a0 + (a.patch_size - 1) / 2 * d.hop_length) / d.afps)
    assert vt[1, 0] - vt[0, 0] == pytest.approx(d.step_vframes / d.vfps)
    wv, wa = window_token_times(cfg)
    np.testing.assert_allclose(vt - 1.0, wv, atol=1e-9)
    np.testing.assert_allclose(at - 1.4, wa, atol=1e-9)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "synchlib", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_predict_json(ckpt, clip_path):
    r = run_cli("predict", clip_path, "--offset-sec", "-1.2", "--start-sec", "1.5", "--checkpoint", ckpt, "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"offset_sec", "topk", "probs", "grid"} <= set(out) and out["target_class"] == 4


@pytest.mark.parametrize(
    "kind,pattern",
    [
        ("missing", "no such file"),
        ("no_audio", "no audio stream"),
        ("no_video", "no video stream"),
        ("too_short", "needs"),
        ("not_media", "not a media file"),
        ("empty", "empty"),
    ],
)
def test_cli_bad_input_one_line_exit_2(ckpt, tmp_path, kind, pattern):
    path = tmp_path / f"{kind}.mp4"
    if kind == "no_audio":
        write_av(path, audio=False)
    elif kind == "no_video":
        write_av(tmp_path / "a.m4a", video=False, container="mp4")
        path = tmp_path / "a.m4a"
    elif kind == "too_short":
        write_av(path, seconds=3.0)
    elif kind == "not_media":
        path.write_text("this is not a video\n" * 50)
    elif kind == "empty":
        path.touch()
    r = run_cli("predict", path, "--checkpoint", ckpt, "--device", "cpu")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert pattern in lines[0]


def test_cli_unknown_checkpoint_is_one_line(clip_path):
    r = run_cli("predict", clip_path, "--checkpoint", "no-such-model")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "released" in r.stderr
