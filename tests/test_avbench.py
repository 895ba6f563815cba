"""protocol="av-benchmark": parity with av-benchmark's own outputs on two (video, audio) pairs, the resampler, the
decode on other rates, sizes and formats, and DeSync over a folder of pairs (tiny model).

Goldens: tests/fixtures/desync_avbench/ (made by scripts/make_avbench_fixtures.py from the goldens av-benchmark's
code produced; see that script for what is kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from synchlib import avbench, desync
from synchlib.config import load_config
from synchlib.errors import ClipTooShortError, InvalidArgumentError, MissingStreamError
from synchlib.preprocess import log_mel
from synchlib.rounding import SUMMARY_DECIMALS

from .conftest import RELEASED_ID, SAMPLES
from .helpers import TINY, write_av, write_media

FIXTURES = Path(__file__).parent / "fixtures" / "desync_avbench"
GOLDENS = json.loads((FIXTURES / "goldens.json").read_text())
PAIRS = sorted(GOLDENS["pairs"])
KEPT = GOLDENS["kept_segments"]
REL_TOL = 1e-4  # the bound for features and logits (max error / max |golden|): float32 on another torch build
WAVE_TOL = 1e-4  # the bound for the 16 kHz waveform (full scale 1.0)
MEL_TOL = 1e-4  # the bound for the log-mel where the mel power is not near silence
# "Near silence": a mel band more than 60 dB (power ratio 1e-6) below the loudest band of its frame. float32 FFT
# rounding is relative to a frame's total energy (~1e-7 of it), so the log of a band 1e-8 below the peak is only
# good to ~1e-1; bands within 60 dB of the peak agree to ~4e-5 with av-benchmark's (torch 2.5) spectrogram.
QUIET_BAND = 1e-6
MEL_EPS = 1e-6  # the log-mel is log(power + 1e-6)


def pair_files(name: str) -> tuple[Path, Path]:
    """(video, audio) of a golden pair."""
    p = GOLDENS["pairs"][name]
    video = (SAMPLES if p["video_in"] == "package" else FIXTURES) / p["video"]
    return video, FIXTURES / p["audio"]


def golden_arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def rel_err(actual: torch.Tensor | np.ndarray, expected: np.ndarray) -> float:
    a = torch.as_tensor(actual).float().cpu().numpy()
    assert a.shape == expected.shape, f"shape {a.shape} != {expected.shape}"
    return float(np.abs(a - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def released_cfg():
    return load_config(RELEASED_ID)


# ---------------------------------------------------------------------------------------------------------------
# Inputs: frames, waveform, log-mel (no model)


@pytest.mark.parametrize("name", PAIRS)
def test_decoded_frames_are_av_benchmarks(name):
    """The first 200 frames after fps=25 and RGB conversion are byte-identical to torio's (SHA-256 per frame)."""
    video, _ = pair_files(name)
    want = GOLDENS["pairs"][name]["raw_frame_sha256"]
    got = []
    for frame in avbench.iter_rgb_frames(video, 25):
        assert list(frame.shape) == GOLDENS["pairs"][name]["raw_shape"][2:] + [3]
        got.append(hashlib.sha256(frame.tobytes()).hexdigest())
        if len(got) == len(want):
            break
    same = [a == b for a, b in zip(got, want)]
    assert len(got) == len(want) and all(same), f"frames differing: {[i for i, s in enumerate(same) if not s][:10]}"


@pytest.mark.parametrize("name", PAIRS)
def test_input_frames_are_av_benchmarks(name, released_cfg):
    """Resize(224, bicubic, antialias) + CenterCrop + ToDtype + Normalize: frames 0 and 100 exactly as torchvision's."""
    video, _ = pair_files(name)
    frames = avbench.read_frames(video, released_cfg.data)
    assert frames.shape == (200, 3, 224, 224) and frames.dtype == np.uint8
    x = avbench.frames_to_input(torch.from_numpy(frames[[0, 100]]), released_cfg.data).numpy()
    want = GOLDENS["pairs"][name]["input_frame_sha256"]
    assert [hashlib.sha256(x[i].tobytes()).hexdigest() for i in (0, 1)] == [want["0"], want["100"]]


@pytest.mark.parametrize("name", PAIRS)
def test_waveform_is_av_benchmarks(name, released_cfg):
    """torchaudio.load + mean over channels + Resample(sr, 16000), first 8 s."""
    _, audio = pair_files(name)
    wave = avbench.read_wave(audio, released_cfg.data)
    g = golden_arrays(name)["wave16k"]
    assert wave.shape == g.shape == (128000,) and wave.dtype == np.float32
    assert np.abs(wave - g).max() <= WAVE_TOL


@pytest.mark.parametrize("name", PAIRS)
def test_log_mel_is_av_benchmarks(name, released_cfg):
    """The log-mel of the kept segments (before the normalisation) where the band is not near silence."""
    data, cfg = released_cfg.data, released_cfg
    g = golden_arrays(name)
    segs = avbench.audio_segments(torch.from_numpy(g["wave16k"]), data)[KEPT].contiguous()
    ours = log_mel(segs, data, cfg.audio.max_spec_t)[:, 0].double() * (2 * data.ast_std) + data.ast_mean
    gold = g["mel_log"].astype(np.float64)
    assert ours.shape == gold.shape == (len(KEPT), 128, 66)
    power = np.exp(gold) - MEL_EPS
    silent = gold <= math.log(MEL_EPS) + 1e-6  # digital silence (power < 1e-12): log(1e-6) on both sides
    checked = silent | (power > QUIET_BAND * power.max(axis=1, keepdims=True))
    assert checked.mean() > 0.9  # most of the spectrogram is checked
    assert np.abs(ours.numpy() - gold)[checked].max() <= MEL_TOL


# ---------------------------------------------------------------------------------------------------------------
# The resampler on other rates


def sinc_reference(x: np.ndarray, orig: int, new: int, width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """torchaudio's Resample written out directly in float64: output j (time j / new) is the sum over inputs i
    of x[i] * sinc(pi * base * (i / orig - j / new)) * cos(pi * t / (2 * width))^2 * base / orig, t clamped to
    +-width, base = min(orig, new) * rolloff (rates reduced by their gcd; the signal zero outside). As in
    torchaudio, the output phase ``j / new`` is a float32 number (an integer tensor divided) before it meets the
    float64 input times."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    n_out = math.ceil(new * len(x) / orig)
    j = np.arange(n_out)
    block, phase = j // new, (-(j % new)).astype(np.float32) / np.float32(new)
    i = np.arange(len(x))[None, :] - (block * orig)[:, None]  # input index relative to the block
    t = np.clip((phase.astype(np.float64)[:, None] + i / orig) * base, -width, width)
    h = np.where(t == 0, 1.0, np.sin(np.pi * t) / np.where(t == 0, 1.0, np.pi * t))
    h *= np.cos(t * np.pi / width / 2) ** 2 * base / orig
    return h @ x.astype(np.float64)


@pytest.mark.parametrize("orig", [44100, 48000, 22050, 32000, 8000, 11025])
def test_resampler_is_torchaudios_windowed_sinc(orig):
    """Down- and up-sampling to 16 kHz (gcd-reduced rates; 8 kHz is upsampling) equals the formula, and the
    length is ceil(N * 16000 / orig)."""
    x = np.random.default_rng(orig).normal(0, 0.3, 3000).astype(np.float32)
    ours = avbench.resample(torch.from_numpy(x), orig, 16000).numpy()
    ref = sinc_reference(x, orig, 16000)
    assert ours.shape == ref.shape == (math.ceil(3000 * 16000 / orig),)
    assert np.abs(ours - ref).max() < 1e-6  # float32 taps and sums of ~100 terms of a 0.3-rms signal


def test_only_the_needed_input_is_decoded(tmp_path, released_cfg):
    """A long file is read only as far as the first 8 s depend on it, with the same samples as a whole read."""
    path = write_av(tmp_path / "long.wav", seconds=30, sample_rate=44100, channels=2, video=False,
                    container="wav", acodec="pcm_s16le")
    wave = avbench.read_wave(path, released_cfg.data)
    whole, rate = avbench.read_channels(path)
    full = avbench.resample(torch.from_numpy(whole).mean(dim=0), rate, 16000)[:128000].numpy()
    assert np.array_equal(wave, full)
    part, _ = avbench.read_channels(path, lambda r: avbench._input_needed(128000, r, 16000))
    assert part.shape[1] < whole.shape[1] // 2


# ---------------------------------------------------------------------------------------------------------------
# Other frame rates, sizes, sample rates, channel layouts and formats

BITS = 8  # frame index written as 8 black/white stripes


def write_indexed_video(path: Path, fps: Fraction, seconds: float, size: tuple[int, int]) -> int:
    """Frames at ``i / fps`` showing their index ``i`` (mod 256) in binary stripes; returns the frame count."""
    w, h = size
    n = int(seconds * fps)
    frames = np.zeros((n, h, w, 3), np.uint8)
    edges = np.linspace(0, w, BITS + 1).astype(int)
    for i in range(n):
        for bit in range(BITS):
            if (i % 256) >> bit & 1:
                frames[i, :, edges[bit] : edges[bit + 1]] = 255
    write_media(path, frames=frames, frame_times=[float(i / fps) for i in range(n)], audio=None, fps=fps)
    return n


def stripe_index(frame: np.ndarray) -> int:
    w = frame.shape[1]
    centres = ((np.arange(BITS) + 0.5) * w / BITS).astype(int)
    return sum(1 << b for b, x in enumerate(centres) if frame[:, x].mean() > 128)


def fps_filter_choice(n_out: int, fps: Fraction, out_fps: int = 25) -> list[int]:
    """What FFmpeg's fps filter shows (rounding to nearest, from the first frame): output tick k shows the
    latest input frame whose time, rounded to ticks (halves away from zero), is <= k."""
    ticks = [math.floor(Fraction(i, 1) / fps * out_fps + Fraction(1, 2)) for i in range(int(fps * 10) + 2)]
    return [max(i for i, t in enumerate(ticks) if t <= k) % 256 for k in range(n_out)]


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(50), Fraction(15), Fraction(24000, 1001)])
def test_frames_follow_ffmpegs_fps_filter(tmp_path, fps):
    """Any input rate becomes 25 fps by timestamps: repeated frames for 15 fps, dropped ones for 29.97 and 50."""
    video = tmp_path / "indexed.mp4"
    write_indexed_video(video, fps, 3.0, (128, 48))
    got = []
    for frame in avbench.iter_rgb_frames(video, 25):
        got.append(stripe_index(frame))
        if len(got) == 60:
            break
    assert got == fps_filter_choice(60, fps)


@pytest.mark.parametrize(
    "rate, channels, acodec, container",
    [
        (48000, 6, "flac", "flac"),  # 5.1 FLAC
        (22050, 1, "libmp3lame", "mp3"),  # mono MP3 (its encoder delay is removed by the decoder)
        (44100, 2, "aac", "mp4"),  # stereo AAC in .m4a
        (8000, 2, "pcm_s16le", "wav"),  # 8 kHz: upsampled
    ],
)
def test_any_sample_rate_layout_and_format(tmp_path, cfg, rate, channels, acodec, container):
    """The clicks (0.5 in every channel, at 0.3 s, 1.0 s, ...) stay where they are and as loud, after the mean over
    channels and the resampling to 16 kHz."""
    ext = {"mp4": ".m4a"}.get(container, "." + container)
    audio = write_av(tmp_path / f"a{ext}", seconds=8.5, sample_rate=rate, channels=channels, video=False,
                     acodec=acodec, container=container)
    wave = avbench.read_wave(audio, cfg.data)
    assert wave.shape == (128000,) and wave.dtype == np.float32
    for t in np.arange(0.3, 7.9, 0.7):
        at = int(round(t * 16000))
        onset = at - 80 + int(np.argmax(np.abs(wave[at - 80 : at + 80]) > 0.25))
        assert abs(onset - at) <= 16, f"click at {t:.1f} s found {(onset - at) / 16:+.1f} ms away"  # 1 ms
        assert 0.4 < np.abs(wave[at : at + 150]).max() < 0.65  # lossy codecs ring a little


def test_video_of_any_size_is_resized_and_cropped(tmp_path, cfg):
    video = write_av(tmp_path / "portrait.mp4", seconds=8.2, fps=Fraction(30000, 1001), size=(180, 320), audio=False)
    frames = avbench.read_frames(video, cfg.data)
    assert frames.shape == (200, 3, cfg.data.input_size, cfg.data.input_size) and frames.dtype == np.uint8
    assert avbench.resized_size(256, 454, 224) == (224, 397)  # int(224 * 454 / 256) = 397
    assert avbench.resized_size(640, 360, 224) == (398, 224)  # portrait: the width is the short side
    assert avbench.resized_size(224, 224, 224) == (224, 224)


def test_short_pairs_are_refused(tmp_path, cfg):
    short_video = write_av(tmp_path / "short.mp4", seconds=7.9, audio=False)
    long_video = write_av(tmp_path / "long.mp4", seconds=8.5, audio=False)
    short_audio = write_av(tmp_path / "short.wav", seconds=7.9, video=False, container="wav", acodec="pcm_s16le")
    long_audio = write_av(tmp_path / "long.wav", seconds=8.5, video=False, container="wav", acodec="pcm_s16le")
    with pytest.raises(ClipTooShortError, match="first 8 s"):
        avbench.read_pair(short_video, long_audio, cfg.data)
    with pytest.raises(ClipTooShortError, match="first 8 s"):
        avbench.read_pair(long_video, short_audio, cfg.data)
    with pytest.raises(MissingStreamError):
        avbench.read_pair(long_video, None, cfg.data)  # no sound in the video, and none given
    assert avbench.read_pair(long_video, long_audio, cfg.data).wave.shape == (128000,)


# ---------------------------------------------------------------------------------------------------------------
# One pair and many pairs with the tiny model


@pytest.fixture(scope="module")
def tiny(one_thread):
    import synchlib

    return synchlib.load_model(TINY, device="cpu")


def test_muted_video_with_separate_audio_is_scored(tiny):
    video, audio = pair_files("vgg_ZYc_2997_delay600_44k")  # the video has no audio track
    with av.open(str(video)) as c:
        assert not c.streams.audio
    row = desync.clip_desync(tiny, video, audio, protocol="av-benchmark", return_logits=True)
    assert row["error"] == "" and row["protocol"] == "av-benchmark" and row["duration_sec"] == 8.0
    assert row["first_logits"].shape == row["last_logits"].shape == (21,)
    grid = tiny.cfg.data.grid
    assert row["first_offset_sec"] == pytest.approx(float(grid[row["first_logits"].argmax()]))
    assert row["desync_sec"] == pytest.approx((abs(row["first_offset_sec"]) + abs(row["last_offset_sec"])) / 2)
    with pytest.raises(InvalidArgumentError, match="protocol"):
        desync.clip_desync(tiny, video, audio, protocol="avbench")


@pytest.fixture(scope="module")
def twenty_pairs(tmp_path_factory):
    """Folders av-benchmark's way: 20 videos (two clips, copied) and their audio by name, plus one video without
    audio and one pair whose audio is shorter than 8 s."""
    root = tmp_path_factory.mktemp("avbench_set")
    videos, audios = root / "videos", root / "audio"
    videos.mkdir(), audios.mkdir()
    sources = [pair_files(n) for n in PAIRS]
    for i in range(20):
        v, a = sources[i % 2]
        shutil.copyfile(v, videos / f"clip{i:02d}{v.suffix}")
        shutil.copyfile(a, audios / f"clip{i:02d}{a.suffix}")
    shutil.copyfile(sources[0][0], videos / "lonely.mp4")
    shutil.copyfile(sources[0][0], videos / "short.mp4")
    write_av(audios / "short.wav", seconds=6.0, video=False, container="wav", acodec="pcm_s16le")
    return videos, audios


def test_folder_of_pairs_resumes_and_reports(tiny, twenty_pairs, tmp_path, monkeypatch, capsys):
    videos, audios = twenty_pairs
    out = tmp_path / "desync.csv"
    args = add_args([str(videos), str(audios), "--protocol", "av-benchmark", "--csv", str(out), "-c", TINY,
                     "--device", "cpu", "--workers", "0", "--batch-size", "48", "--no-progress"])
    assert desync.run_desync(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 22 and list(df.columns) == desync.DESYNC_COLUMNS
    assert summary["n"] == 20 and summary["n_failed"] == 2 and summary["n_reused"] == 0
    errors = dict(zip(df["video"].map(lambda p: Path(p).stem), df["error"]))
    assert "no such file" in errors["lonely"] and "ClipTooShortError" in errors["short"]
    scored = pd.to_numeric(df["desync_sec"].replace("", np.nan)).dropna()
    half_unit = 0.5 * 10.0**-SUMMARY_DECIMALS  # the printed summary is rounded to SUMMARY_DECIMALS
    assert summary["desync_mean_sec"] == pytest.approx(scored.mean(), abs=half_unit)
    assert summary["desync_sem_sec"] == pytest.approx(scored.std(ddof=1) / math.sqrt(20), abs=half_unit)
    # the copies of one clip score alike: the two clips alternate
    assert scored.iloc[0::2].nunique() == 1 and scored.iloc[1::2].nunique() == 1

    def no_work(*_a, **_k):
        raise AssertionError("a finished table must not be computed again")

    monkeypatch.setattr(avbench, "read_pair", no_work)
    monkeypatch.setattr(desync, "load_model", no_work)
    before = out.read_bytes()
    assert desync.run_desync(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["n_reused"] == 21 and again["desync_mean_sec"] == summary["desync_mean_sec"]
    assert again["n_failed"] == 2  # the short pair is not tried again; the missing file is looked for again
    assert out.read_bytes().count(b"\n") == before.count(b"\n")


def add_args(argv: list[str]) -> argparse.Namespace:
    return desync.add_desync_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_workers_and_batches_give_the_same_rows(tiny, twenty_pairs, tmp_path):
    """Decoding in two worker processes and computing the segments of two pairs per call gives the rows of
    decoding here one pair at a time (same offsets, probabilities within float rounding)."""
    videos, audios = twenty_pairs
    items = desync.desync_items(videos, audios)[:4]
    one, _ = desync.desync(tiny, items, protocol="av-benchmark", workers=0, batch_size=8, progress=False)
    many, _ = desync.desync(tiny, items, protocol="av-benchmark", workers=2, batch_size=48, progress=False)
    cols = ["first_offset_sec", "last_offset_sec", "desync_sec"]
    assert one[cols].equals(many[cols])
    assert np.allclose(one[["first_p", "last_p"]], many[["first_p", "last_p"]], atol=1e-5)  # batch shapes differ
    assert one["error"].eq("").all()


def test_rows_of_a_changed_file_are_computed_again(tiny, twenty_pairs, tmp_path):
    videos, audios = twenty_pairs
    items = desync.desync_items(videos, audios)[:2]
    out = tmp_path / "d.csv"
    desync.desync(tiny, items, csv_path=out, protocol="av-benchmark", progress=False)
    assert desync.reusable_rows(items, out, "av-benchmark").keys() == {(str(v), str(a)) for v, a in items}
    assert not desync.reusable_rows(items, out, "synchformer")  # another protocol's numbers are not reused
    later = out.stat().st_mtime + 10
    os.utime(items[0][1], (later, later))
    assert desync.reusable_rows(items, out, "av-benchmark").keys() == {(str(items[1][0]), str(items[1][1]))}


# ---------------------------------------------------------------------------------------------------------------
# Parity with av-benchmark's features, logits and DeSync (full-size model)


@pytest.fixture(scope="module")
def avbench_runs(detweights_model):
    """Per golden pair: clip_desync's row (with logits) and the features it computed, spied on."""
    runs = {}
    real = avbench.pair_features
    for name in PAIRS:
        seen = {}

        def spy(*args, **kwargs):
            seen["v"], seen["a"] = real(*args, **kwargs)
            return seen["v"], seen["a"]

        avbench.pair_features = spy
        try:
            video, audio = pair_files(name)
            row = desync.clip_desync(detweights_model, video, audio, protocol="av-benchmark", return_logits=True)
        finally:
            avbench.pair_features = real
        runs[name] = (row, seen["v"][0], seen["a"][0])
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", PAIRS)
def test_features_logits_and_offsets_are_av_benchmarks(avbench_runs, name):
    row, vfeats, afeats = avbench_runs[name]
    g, s = golden_arrays(name), GOLDENS["pairs"][name]
    assert vfeats.shape[0] == afeats.shape[0] == s["n_segments"][0] == 24
    assert rel_err(vfeats[KEPT], g["vfeats"]) <= REL_TOL
    assert rel_err(afeats[KEPT], g["afeats"]) <= REL_TOL
    assert rel_err(row["first_logits"], g["logits_first"]) <= REL_TOL
    assert rel_err(row["last_logits"], g["logits_last"]) <= REL_TOL
    assert row["first_offset_sec"] == s["first_offset_sec"] and row["last_offset_sec"] == s["last_offset_sec"]
    assert row["desync_sec"] == pytest.approx(s["desync_sec"], abs=1e-7)


@pytest.mark.slow
def test_set_desync_is_av_benchmarks(avbench_runs):
    df = pd.DataFrame([run[0] for run in avbench_runs.values()], columns=desync.DESYNC_COLUMNS)
    assert desync.summarize_desync(df)["desync_mean_sec"] == pytest.approx(GOLDENS["set_desync_sec"], abs=1e-7)
