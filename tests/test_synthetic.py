"""Tests of the synthetic clip generator: determinism, ground truth through H.264/AAC, distractors, datasets."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import av
import numpy as np
import pytest

from synchlib import synthetic as S
from synchlib.errors import SynchlibError

from .helpers import scribble_on_the_heap

SEED = 3
SHORT_SEC = 4.0
ONSET_TOLERANCE_SEC = 0.010  # sound onsets must survive AAC within 10 ms
PEAK_TOLERANCE_SEC = 0.040  # loudest part of a sound within one frame of its event
FLASH_MEAN_JUMP = 1.0  # grey levels: whole-frame mean brightness rise at a paired event frame
QUIET_FRACTION = 0.1  # audio near a silent visual event stays below this share of the paired sounds' peak

# Golden of make_clip(seed=GOLDEN_SEED, duration_sec=SHORT_SEC), written with the PyAV 18.1 wheel (FFmpeg 8,
# libavcodec 62.28, x264 core 165): sha256 of the concatenated packets of each stream, and the decoded audio at
# GOLDEN_AUDIO_AT. The packets are the same bytes on every x86-64 CPU with AVX2 + FMA3 (see write_mp4). The
# decoded samples are compared with a tolerance: FFmpeg's AAC decoder picks SIMD code per CPU for its inverse
# transform, whose float rounding differs from its C code by up to 1.2e-7 (measured on these samples with the
# C code forced); a changed bitstream or a decoder off by one sample moves these values by ~1e-3.
GOLDEN_SEED = 5
GOLDEN_SHA256 = {
    "video": "2d5c84ba7addee050ac9ba88ee01c0a2bdd5d4875926fff56f0cf4c0daaae2b3",
    "audio": "ee598f59fdff168d0f7d3b3cdba0d7ae1375f35367c59385336e962db893e102",
}
GOLDEN_AUDIO_AT = np.linspace(0, 64000 - 1, 32).round().astype(int)
GOLDEN_AUDIO = [
    0.0029328, -0.0018731, -0.002206, -0.0012756, -7.41e-05, -1.76e-05, -0.0009372, 0.671049, 0.0020965, -0.0001728,
    -0.0010629, -0.0004145, -0.0003404, -0.0014467, -0.0003654, 0.0009116, -0.000766, 0.0010431, -0.0020625,
    -0.0011165, -0.0027705, 0.0375152, -0.0019682, -4.47e-05, 0.0019159, -0.0019988, -1.3e-06, 0.0017902, 0.0008181,
    -0.0008063, 0.0027177, -8.35e-05,
]  # fmt: skip
GOLDEN_AUDIO_ATOL = 1e-6  # 8x the decoder's measured SIMD-vs-C difference (values stored to 7 decimals: +-5e-8)


def decode(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Frames uint8 (T, H, W, 3), frame times (T,) s, audio float32 (N,), time of the first audio sample."""
    with av.open(str(path)) as c:
        decoded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        chunks = [(float(f.pts * f.time_base), f.to_ndarray()[0]) for f in c.decode(audio=0)]
    frames = np.stack([f for _, f in decoded])
    times = np.array([t for t, _ in decoded])
    return frames, times, np.concatenate([a for _, a in chunks]), chunks[0][0]


def packet_sha256(path: Path) -> dict[str, str]:
    """sha256 of the concatenated payloads of each stream's packets, in file order: {"video": ..., "audio": ...}."""
    digests = {}
    with av.open(str(path)) as c:
        for packet in c.demux():
            if packet.size:
                digests.setdefault(packet.stream.type, hashlib.sha256()).update(bytes(packet))
    return {kind: d.hexdigest() for kind, d in digests.items()}


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
    """Same seed, same bytes, whatever the heap held before the encode."""
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    scribble_on_the_heap(0)
    ia = S.make_clip(a, GOLDEN_SEED, duration_sec=SHORT_SEC)
    scribble_on_the_heap(1)
    ib = S.make_clip(b, GOLDEN_SEED, duration_sec=SHORT_SEC)
    assert ia.av_events == ib.av_events and ia.path == a
    assert a.read_bytes() == b.read_bytes()


def test_make_clip_matches_the_golden_bitstream(tmp_path):
    """A stored golden, so that a machine of another kind checks the same bytes (see GOLDEN_SHA256)."""
    path = tmp_path / "golden.mp4"
    S.make_clip(path, GOLDEN_SEED, duration_sec=SHORT_SEC)
    assert packet_sha256(path) == GOLDEN_SHA256, "the encoder's output changed: another PyAV/FFmpeg/x264 build?"
    _, _, audio, first = decode(path)
    assert first == 0.0
    np.testing.assert_allclose(audio[GOLDEN_AUDIO_AT], GOLDEN_AUDIO, rtol=0, atol=GOLDEN_AUDIO_ATOL)


def test_looped_clip_is_the_clip_itself(tmp_path):
    """One loop of write_looped_mp4 with the default options is write_mp4's file, byte for byte."""
    frames, audio, info = S.render(GOLDEN_SEED, duration_sec=SHORT_SEC)
    scribble_on_the_heap(2)
    S.write_mp4(tmp_path / "once.mp4", frames, audio, info.fps, info.sample_rate)
    scribble_on_the_heap(3)
    S.write_looped_mp4(tmp_path / "looped.mp4", frames, audio, SHORT_SEC, info.fps, info.sample_rate)
    assert (tmp_path / "once.mp4").read_bytes() == (tmp_path / "looped.mp4").read_bytes()


def test_rgb_to_yuv420p_is_bt601_limited_range():
    """Black, white and greys on the luma scale 16..235 with neutral chroma; pure red and blue at the BT.601
    values; a chroma sample is the rounded mean of its 2x2 block; planes laid out as PyAV's yuv420p arrays."""
    def convert(rgb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frame = np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (1, 2, 2, 3))
        yuv = S.rgb_to_yuv420p(frame)[0].reshape(-1)
        return yuv[:4], yuv[4], yuv[5]

    for value, luma in [(0, 16), (255, 235), (128, 126)]:
        y, u, v = convert([value] * 3)
        assert list(y) == [luma] * 4 and (u, v) == (128, 128)
    y, u, v = convert([255, 0, 0])  # 16 + 219 * 0.299 = 81.5, 128 - 112 * 0.299 / 0.886 = 90.2, Cr 240
    assert (y[0], u, v) == (81, 90, 240)
    y, u, v = convert([0, 0, 255])  # 16 + 219 * 0.114 = 41.0, Cb 240, 128 - 112 * 0.114 / 0.701 = 109.8
    assert (y[0], u, v) == (41, 240, 110)
    block = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    block[0, 0, 0] = [0, 0, 255]  # one blue pixel of four: Cb 128 + (240 - 128) / 4 = 156
    assert S.rgb_to_yuv420p(block)[0].reshape(-1)[4] == 156
    frames = np.random.default_rng(0).integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)
    yuv = S.rgb_to_yuv420p(frames)
    assert yuv.shape == (3, 9, 8) and yuv.dtype == np.uint8
    rgb = frames.astype(np.float64)
    luma = rgb @ [0.299, 0.587, 0.114]
    mean = rgb.reshape(3, 3, 2, 4, 2, 3).mean(axis=(2, 4))  # (T, 3, 4, 3) 2x2 block means
    block_luma = mean @ [0.299, 0.587, 0.114]
    want = [16 + 219 / 255 * luma, 128 + 224 / 255 * (mean[..., 2] - block_luma) / 1.772,
            128 + 224 / 255 * (mean[..., 0] - block_luma) / 1.402]
    pictures = [av.VideoFrame.from_ndarray(f, format="yuv420p") for f in yuv]  # the planes the encoder gets
    for i, expected in enumerate(want):
        planes = [p.planes[i] for p in pictures]
        got = np.stack([np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in planes])
        # rounded to the nearest integer, up to the 16-bit weights' own rounding (3 * 255 * 2**-17 < 0.01)
        assert np.abs(got - expected).max() <= 0.5 + 0.01, i


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
