"""DeSync (synchlib.desync): window geometry, audio replacement, failures recorded, CSV and CLI; tiny config."""

from __future__ import annotations

import argparse
import csv
import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

import synchlib
from synchlib.checkpoints import save_checkpoint
from synchlib.config import load_config
from synchlib.desync import (
    DESYNC_COLUMNS, add_desync_arguments, clip_desync, desync, desync_items, desync_windows, run_desync,
)  # fmt: skip
from synchlib.errors import ClipTooShortError, MissingStreamError, SynchlibError
from synchlib.io import decode, read_audio
from synchlib.preprocess import frames_to_input, log_mel
from synchlib.synthetic import make_clip

from .helpers import TINY, write_av
from .onset_oracle import OnsetOracle

SHIFT_SEC = 0.8  # four grid steps
CLIP_SEC = 8.0  # av-benchmark's usual clip length: the two windows share 4 segments


def write_audio(path: Path, wave: np.ndarray, *, rate: int = 16000, layout: str = "mono", codec: str = "aac") -> Path:
    """Encode a 16 kHz mono float32 ``wave`` into an audio-only file at ``rate`` Hz with ``layout`` channels."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        for i in range(0, len(wave), 1024):
            chunk = np.ascontiguousarray(wave[None, i : i + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i, Fraction(1, 16000)
            for f in resampler.resample(frame):
                c.mux(stream.encode(f))
        for f in resampler.resample(None):
            c.mux(stream.encode(f))
        c.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs the tiny model on one thread."""


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A synthetic clip with its own sound, its sound SHIFT_SEC early (44.1 kHz stereo AAC) and late (16 kHz WAV),
    and a broken file."""
    d = tmp_path_factory.mktemp("desync")
    video = d / "clip.mp4"
    make_clip(video, seed=3, duration_sec=CLIP_SEC)
    wave = decode(video, load_config(TINY).data).audio
    n = int(SHIFT_SEC * 16000)
    early_wave = np.concatenate([wave[n:], np.zeros(n, np.float32)])
    early = write_audio(d / "early.m4a", early_wave, rate=44100, layout="stereo")
    late = write_audio(d / "late.wav", np.concatenate([np.zeros(n, np.float32), wave[:-n]]), codec="pcm_s16le")
    broken = d / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return {"dir": d, "video": video, "early": early, "late": late, "broken": broken, "wave": wave}


def test_windows_follow_av_benchmark(cfg):
    data = cfg.data
    first, last = desync_windows(200, 128000, data)  # 8 s: 24 segments of each stream
    assert first.frame_keys == tuple(range(0, 112, 8)) and first.sample_keys == tuple(range(0, 71680, 5120))
    assert last.frame_keys[0] == 80 and last.frame_keys[-1] + 16 == 200  # the last 4.8 s exactly
    assert last.sample_keys[0] == 51200 and last.sample_keys[-1] + 10240 == 128000
    assert last.start_sec == pytest.approx(3.2)
    one, same = desync_windows(120, 76800, data)  # exactly 4.8 s: one window, twice
    assert one == same
    _, by_audio = desync_windows(250, 128000, data)  # audio shorter: the last window ends with the audio
    assert by_audio.sample_keys[-1] + 10240 == 128000 and by_audio.frame_keys[0] == 80
    with pytest.raises(ClipTooShortError, match="4.80 s"):
        desync_windows(119, 160000, data)


def test_read_audio_mixes_and_resamples(clips):
    track = read_audio(clips["early"], 16000)  # 44.1 kHz stereo AAC -> 16 kHz mono
    n = int(SHIFT_SEC * 16000)
    ref = clips["wave"][n:]
    m = min(len(ref), len(track)) - 2000
    assert abs(len(track) - len(clips["wave"])) < 2048  # up to an AAC frame of padding
    assert np.corrcoef(track[:m], ref[:m])[0, 1] > 0.99
    assert np.array_equal(read_audio(clips["video"], 16000), clips["wave"])  # a 16 kHz mono track as it is
    with pytest.raises(SynchlibError):
        read_audio(clips["broken"], 16000)


def test_first_window_equals_direct_computation(model, cfg, clips):
    """The first window's answer equals the model run directly on segments cut from frame 0 and sample 0."""
    data = cfg.data
    row = clip_desync(model, clips["video"])
    dec = decode(clips["video"], data)
    S, L, La = data.n_segments, data.segment_size_vframes, data.segment_size_asamples
    vid = torch.stack([frames_to_input(dec.frames[8 * i : 8 * i + L], data) for i in range(S)])
    waves = torch.stack([torch.from_numpy(dec.audio[5120 * i : 5120 * i + La]) for i in range(S)])
    with torch.inference_mode():
        probs = torch.softmax(model(vid[None], log_mel(waves, data, cfg.audio.max_spec_t)[None])[0], -1)
    assert row["first_offset_sec"] == pytest.approx(float(data.grid[int(probs.argmax())]))
    assert row["first_p"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert row["duration_sec"] == pytest.approx(CLIP_SEC)
    assert row["desync_sec"] == pytest.approx((abs(row["first_offset_sec"]) + abs(row["last_offset_sec"])) / 2)


def test_shifted_audio_raises_desync_in_the_expected_direction(cfg, clips):
    oracle = OnsetOracle(cfg)
    own = clip_desync(oracle, clips["video"])
    early = clip_desync(oracle, clips["video"], clips["early"])
    late = clip_desync(oracle, clips["video"], clips["late"])
    assert own["first_offset_sec"] == own["last_offset_sec"] == own["desync_sec"] == 0.0
    assert early["first_offset_sec"] == pytest.approx(SHIFT_SEC) == early["last_offset_sec"]  # + = audio early
    assert late["first_offset_sec"] == pytest.approx(-SHIFT_SEC) == late["last_offset_sec"]
    assert early["desync_sec"] == pytest.approx(SHIFT_SEC) == late["desync_sec"]
    assert early["audio"] == str(clips["early"]) and own["audio"] == ""


def mute(src: Path, dst: Path) -> Path:
    """``src`` without its sound (the video packets copied)."""
    with av.open(str(src)) as cin, av.open(str(dst), "w") as cout:
        vin = cin.streams.video[0]
        vout = cout.add_stream_from_template(vin)
        for packet in cin.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                cout.mux(packet)
    return dst


def test_muted_video_with_separate_audio_is_scored(cfg, clips, tmp_path, monkeypatch):
    """Default protocol: frames from the muted video (as it is, or its normalised copy), sound from the audio file."""
    monkeypatch.setenv("SYNCHLIB_CACHE", str(tmp_path / "cache"))
    oracle = OnsetOracle(cfg)
    muted = mute(clips["video"], tmp_path / "muted.mp4")
    early = clip_desync(oracle, muted, clips["early"])
    assert early["error"] == "" and early["first_offset_sec"] == pytest.approx(SHIFT_SEC) == early["last_offset_sec"]
    assert early["desync_sec"] == clip_desync(oracle, clips["video"], clips["early"])["desync_sec"]
    odd = write_av(tmp_path / "odd.mp4", fps=30, size=(96, 64), seconds=6.0, audio=False)  # through a silent copy
    assert clip_desync(oracle, odd, clips["late"])["duration_sec"] == pytest.approx(6.0, abs=0.05)
    with pytest.raises(MissingStreamError, match="no audio stream"):
        clip_desync(oracle, muted)


@pytest.mark.skipif(not (Path(synchlib.__file__).parent / "assets" / "tiny-synthetic.pt").is_file(),
                    reason="no trained tiny checkpoint in synchlib/assets")
def test_trained_tiny_model_sees_the_shift(clips):
    trained = synchlib.load_model(TINY, device="cpu")
    own = clip_desync(trained, clips["video"])
    early = clip_desync(trained, clips["video"], clips["early"])
    assert early["desync_sec"] > own["desync_sec"]


def test_manifest_records_failures_and_writes_csv(model, clips, tmp_path):
    manifest = tmp_path / "pairs.csv"
    pd.DataFrame({
        "video": [str(clips["video"]), str(clips["video"]), str(clips["broken"]), "missing.mp4", str(clips["video"])],
        "audio": ["", str(clips["early"]), "", "", str(clips["broken"])],
    }).to_csv(manifest, index=False)  # fmt: skip
    out = tmp_path / "out" / "desync.csv"
    df, summary = desync(model, manifest, csv_path=out, progress=False)
    assert list(df.columns) == DESYNC_COLUMNS and len(df) == 5
    assert summary["n"] == 2 and summary["n_failed"] == 3
    assert df["error"].iloc[:2].eq("").all() and df["error"].iloc[2:].str.len().gt(0).all()
    assert df["desync_sec"].iloc[:2].between(0, 2).all()
    assert summary["desync_mean_sec"] == pytest.approx(df["desync_sec"].iloc[:2].mean())
    failed = {str(clips["broken"]), str(tmp_path / "missing.mp4"), str(clips["video"])}  # the last: broken audio
    assert {f["video"] for f in summary["failures"]} == failed
    assert pd.read_csv(out).shape == (5, len(DESYNC_COLUMNS))


def test_sources_and_cli(model, cfg, clips, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clips["video"].read_bytes())
    (folder / "notes.txt").write_text("not a video")
    assert desync_items(folder) == [(folder / "a.mp4", None)]
    with pytest.raises(SynchlibError, match=r"no 'path' \(or 'video'\) column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("clip\nx.mp4\n")
        desync_items(bad)
    with pytest.raises(SynchlibError, match="no such folder"):
        desync_items(tmp_path / "nowhere")
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model.state_dict(), dict(cfg.raw))
    parser = add_desync_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(folder), "--csv", str(tmp_path / "d.csv"), "-c", str(ckpt), "--device", "cpu",
                              "--no-progress"])
    assert run_desync(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 1 and summary["n_failed"] == 0 and summary["csv"] == str(tmp_path / "d.csv")
    (folder / "a.mp4").write_bytes(b"broken")
    assert run_desync(args) == 1  # nothing scored


def test_rows_carry_logits_and_protocol(model, cfg, clips):
    """Synchformer protocol: ``return_logits`` adds the two windows' logits, whose argmax are the offsets."""
    row = clip_desync(model, clips["video"], return_logits=True)
    assert row["protocol"] == "synchformer" and row["first_logits"].shape == (cfg.data.num_off_cls,)
    grid = cfg.data.grid
    assert row["first_offset_sec"] == pytest.approx(float(grid[row["first_logits"].argmax()]))
    assert row["last_offset_sec"] == pytest.approx(float(grid[row["last_logits"].argmax()]))
    assert "first_logits" not in clip_desync(model, clips["video"])


def test_csv_and_summary_numbers_are_rounded(model, clips, tmp_path, capsys):
    """The CSV and the printed summary carry no float32 noise: offsets written as grid values (0.6, not
    0.6000000238418579), DeSync to one decimal more, probabilities to 6 decimals."""
    out = tmp_path / "desync.csv"
    args = argparse.Namespace(source=clips["dir"], audio_dir=None, csv=out, checkpoint=str(
        save_checkpoint(tmp_path / "tiny.pt", model.state_dict(), dict(model.cfg.raw))), device="cpu",
        precision="fp32", batch_size=8, workers=0, progress=False)  # fmt: skip
    run_desync(args)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    with out.open(newline="") as f:
        scored = [row for row in csv.DictReader(f) if not row["error"]]
    assert scored
    for row in scored:
        for column in ("first_offset_sec", "last_offset_sec"):
            assert len(row[column].split(".")[-1]) <= 1, row  # the 0.2 s grid: one decimal
        assert len(row["desync_sec"].split(".")[-1]) <= 2, row
        for column in ("first_p", "last_p"):
            assert len(row[column].split(".")[-1]) <= 6, row
    numbers = re.findall(r"\d+\.\d+", summary)
    assert numbers and all(len(n.split(".")[1]) <= 6 for n in numbers), summary
