"""Tests of the synthetic clip generator: determinism, ground truth through H.264/AAC, distractors, datasets."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import av
import numpy as np
import pytest

from synchlib import synthetic as S
from synchlib.errors import SynchlibError

SEED = 3
SHORT_SEC = 4.0
ONSET_TOLERANCE_SEC = 0.010  # sound onsets must survive AAC within 10 ms
PEAK_TOLERANCE_SEC = 0.040  # loudest part of a sound within one frame of its event
FLASH_MEAN_JUMP = 1.0  # grey levels: whole-frame mean brightness rise at a paired event frame
QUIET_FRACTION = 0.1  # audio near a silent visual event stays below this share of the paired sounds' peak


def decode(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Frames uint8 (T, H, W, 3), frame times (T,) s, audio float32 (N,), time of the first audio sample."""
    with av.open(str(path)) as c:
        decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        chunks = [(float(f.pts * f.time_base), f.to_ndarray()[0]) for f in c.decode(audio=0)]
    frames = np.stack([f for _, f in decoded])
    times = np.array([t for t, _ in decoded])
    return frames, times, np.concatenate([a for _, a in chunks]), chunks[0][0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("synth") / "clip.mp4"
    info = S.make_clip(path, SEED)
    return info, decode(path)


# ---------------------------------------------------------------------------------------------- arrays


def test_render_shapes_and_types():
    frames, audio, info = S.render(SEED, duration_sec=SHORT_SEC, size=48)
    assert frames.shape == (100, 48, 48, 3) and frames.dtype == np.uint8
    assert audio.shape == (64000,) and audio.dtype == np.float32
    assert np.abs(audio).max() <= S.PEAK_LIMIT
    assert info.path is None and info.duration == SHORT_SEC and info.size == 48
    assert info.fps == 25 and info.sample_rate == 16000


def test_render_is_deterministic_and_seed_dependent():
    f1, a1, i1 = S.render(11, duration_sec=SHORT_SEC)
    f2, a2, i2 = S.render(11, duration_sec=SHORT_SEC)
    f3, a3, i3 = S.render(12, duration_sec=SHORT_SEC)
    assert np.array_equal(f1, f2) and np.array_equal(a1, a2) and i1 == i2
    assert not np.array_equal(f1, f3) and i1.av_events != i3.av_events


@pytest.mark.parametrize("seed", range(12))
def test_event_timing_rules(seed):
    _, _, info = S.render(seed, duration_sec=10.0)
    ev = np.array(info.av_events)
    gaps = np.diff(ev)
    assert gaps.min() >= S.MIN_GAP_SEC - 1e-9
    assert gaps.max() <= S.MAX_GAP_SEC + 1e-9
    assert 0 < ev[0] and ev[-1] < info.duration - S.EDGE_MARGIN_SEC + 1e-9
    assert S.EVENT_RATE_RANGE[0] * 0.6 <= len(ev) / info.duration <= S.EVENT_RATE_RANGE[1] * 1.3
    assert len(set(np.round(gaps, 3))) > len(gaps) // 3, "gaps should be irregular"
    frames = np.round(ev * info.fps).astype(int)
    assert S.lineup_fraction(frames, int(info.duration * info.fps), info.fps) < S.MAX_LINEUP_FRACTION


def test_lineup_fraction_flags_regular_timing():
    regular = np.arange(10, 250, 10)  # every 0.4 s: a 2-step shift lines everything up again
    assert S.lineup_fraction(regular, 250, 25) == pytest.approx(1.0)
    assert S.lineup_fraction(np.array([10, 40]), 250, 25) == 0.5  # 1.2 s apart = 6 steps: one of two hits
    assert S.lineup_fraction(np.array([10, 43]), 250, 25) == 0.0  # 1.32 s: not on the grid
    assert S.lineup_fraction(np.array([], dtype=int), 250, 25) == 0.0


@pytest.mark.parametrize("seed", range(12))
def test_distractors_present_and_rarer(seed):
    _, _, info = S.render(seed, duration_sec=10.0)
    n = len(info.av_events)
    assert 1 <= len(info.visual_only) <= max(1, n // 2)
    assert 1 <= len(info.audio_only) < n / 2


# ---------------------------------------------------------------------------------------------- files


def test_make_clip_is_deterministic(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    ia, ib = S.make_clip(a, 5, duration_sec=SHORT_SEC), S.make_clip(b, 5, duration_sec=SHORT_SEC)
    assert ia.av_events == ib.av_events and ia.path == a
    fa, _, aa, _ = decode(a)
    fb, _, ab, _ = decode(b)
    assert np.array_equal(fa, fb) and np.array_equal(aa, ab)
    assert a.read_bytes() == b.read_bytes()


def test_streams_and_timestamps(clip):
    info, (frames, times, audio, first_audio) = clip
    n = int(info.duration * info.fps)
    assert frames.shape == (n, info.size, info.size, 3)
    assert np.allclose(times, np.arange(n) / info.fps)
    assert first_audio == 0.0
    assert len(audio) >= info.duration * info.sample_rate
    with av.open(str(info.path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.audio[0].codec_context.sample_rate == 16000
        assert c.streams.audio[0].codec_context.layout.name == "mono"


def test_decoded_close_to_rendered(clip):
    info, (frames, _, audio, _) = clip
    rf, ra, _ = S.render(info.seed)
    assert np.abs(frames.astype(float) - rf).mean() < 5.0
    err = audio[: len(ra)] - ra
    assert 10 * np.log10((ra**2).sum() / (err**2).sum()) > 15.0  # dB


def test_paired_events_visible_after_decoding(clip):
    info, (frames, _, _, _) = clip
    mean = frames.astype(np.float32).mean(axis=(1, 2, 3))
    for t in info.av_events:
        f = int(round(t * info.fps))
        assert mean[f] - mean[f - 1] > FLASH_MEAN_JUMP, f"no flash at {t:.2f} s"
        lo, hi = max(0, f - 3), min(len(mean), f + 4)
        assert lo + int(np.argmax(mean[lo:hi])) == f, f"flash at {t:.2f} s is not the brightest nearby frame"


def test_paired_events_audible_after_decoding(clip):
    info, (_, _, audio, _) = clip
    sr = info.sample_rate
    for t in info.av_events + info.audio_only:
        i = int(round(t * sr))
        peak = np.abs(audio[i : i + int(0.06 * sr)]).max()
        before = np.abs(audio[i - int(0.15 * sr) : i - int(0.02 * sr)]).max()
        assert peak > 4 * before, f"sound at {t:.3f} s does not stand out"
        window = np.abs(audio[i - int(0.05 * sr) : i + int(0.05 * sr)])
        onset = np.argmax(window > 0.25 * peak) / sr - 0.05
        assert abs(onset) <= ONSET_TOLERANCE_SEC, f"onset at {t:.3f} s off by {onset * 1000:.1f} ms"
        env = np.convolve(np.abs(audio), np.ones(80) / 80, mode="same")  # 5 ms envelope
        lo = i - int(0.08 * sr)
        loudest = (lo + int(np.argmax(env[lo : i + int(0.08 * sr)])) - i) / sr
        assert -0.005 <= loudest <= PEAK_TOLERANCE_SEC


def test_distractors_behave(clip):
    info, (frames, _, audio, _) = clip
    sr, fps = info.sample_rate, info.fps
    paired_peak = min(np.abs(audio[int(t * sr) : int(t * sr) + 960]).max() for t in info.av_events)
    sounds = np.array(info.av_events + info.audio_only)
    for t in info.visual_only:  # silent
        if np.abs(sounds - t).min() > 0.1:
            i = int(t * sr)
            assert np.abs(audio[i - 320 : i + 960]).max() < QUIET_FRACTION * paired_peak
    mean = frames.astype(np.float32).mean(axis=(1, 2, 3))
    for t in info.audio_only:  # nothing flashes
        f = int(np.ceil(t * fps))
        if np.abs(np.array(info.av_events + info.visual_only) - t).min() > 0.25:
            assert abs(mean[f] - mean[f - 1]) < FLASH_MEAN_JUMP / 2
    offscreen_peak = max(np.abs(audio[int(t * sr) : int(t * sr) + 960]).max() for t in info.audio_only)
    assert offscreen_peak < np.median([np.abs(audio[int(t * sr) : int(t * sr) + 960]).max() for t in info.av_events])


def test_sidecar_round_trip(clip, tmp_path):
    info, _ = clip
    side = info.path.with_name("clip.events.json")
    assert side.is_file() and S.sidecar_path(info.path) == side
    assert json.loads(side.read_text())["path"] == "clip.mp4"
    assert S.read_events(info.path) == info
    assert S.read_events(tmp_path / "nothing.mp4") is None
    bad = tmp_path / "bad.mp4"
    S.sidecar_path(bad).write_text("{not json")
    with pytest.raises(SynchlibError, match="sidecar"):
        S.read_events(bad)
    S.sidecar_path(bad).write_text('{"seed": 1}')
    with pytest.raises(SynchlibError, match="sidecar"):
        S.read_events(bad)


def test_make_clip_is_fast(tmp_path):
    S.make_clip(tmp_path / "warm.mp4", 0, duration_sec=SHORT_SEC)
    start = time.perf_counter()
    S.make_clip(tmp_path / "timed.mp4", 1)
    assert time.perf_counter() - start < 3.0  # ~0.3 s on an idle core; generous for a loaded machine


# ---------------------------------------------------------------------------------------------- datasets and CLI


def test_write_dataset(tmp_path):
    manifest = S.write_dataset(tmp_path / "ds", n=3, seed=2, duration_sec=2.0, size=32, progress=False)
    assert manifest == tmp_path / "ds" / "manifest.csv"
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(S.MANIFEST_COLUMNS)
    assert [int(r["seed"]) for r in rows] == [200000, 200001, 200002]
    for r in rows:
        path = manifest.parent / r["path"]
        assert path.name == f"synth_{int(r['seed']):07d}.mp4" and path.is_file()
        info = S.read_events(path)
        assert info.seed == int(r["seed"]) and float(r["duration_sec"]) == info.duration == 2.0
        assert int(r["n_av_events"]) == len(info.av_events) >= 1
        assert int(r["n_visual_only"]) == len(info.visual_only)
        assert int(r["n_audio_only"]) == len(info.audio_only)
    assert not list(manifest.parent.glob("*.partial.mp4"))


def test_synth_main(tmp_path, capsys):
    assert S.synth_main([str(tmp_path / "out"), "--n", "2", "--seed", "4", "--duration", "1.5",
                         "--no-progress"]) == 0
    assert "manifest.csv" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("synth_*.mp4"))) == 2
    with pytest.raises(SystemExit) as e:
        S.synth_main([str(tmp_path / "bad"), "--n", "1", "--size", "63", "--no-progress"])
    assert e.value.code == 2
    assert "even" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"duration_sec": 0.5}, "duration"),
        ({"duration_sec": float("nan")}, "duration"),
        ({"size": 63}, "even"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"fps": 0}, "fps"),
        ({"sample_rate": 12345}, "sample_rate"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"seed": 0, **kwargs}
    with pytest.raises(SynchlibError, match=match):
        S.render(**args)


def test_bad_file_and_dataset_arguments(tmp_path):
    with pytest.raises(SynchlibError, match="mp4"):
        S.make_clip(tmp_path / "clip.avi", 0)
    with pytest.raises(SynchlibError, match="n must"):
        S.write_dataset(tmp_path, n=0, seed=0, progress=False)
    with pytest.raises(SynchlibError, match="duration"):
        S.write_dataset(tmp_path, n=1, seed=0, duration_sec=0.2, progress=False)
    assert issubclass(S.SyntheticError, ValueError)
