"""Robustness on real-world input: a corpus of odd files, written by these tests into tmp dirs with PyAV, each with
its expected outcome.

Every file either gives a prediction (``synchlib predict`` exit 0, JSON on stdout, nothing on stderr) or one line
on stderr and exit 2 (never a traceback). Files the model can read are also checked for what normalisation must
keep: the flash in the picture and the click in the sound of each event stay together (within one output
frame, plus the source's own frame interval), the picture is upright and the streams keep their lengths.

The model is the tiny config with random weights (fast); only the comparison of a re-encoded copy with its
original needs the trained tiny model and is skipped without it.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import synchlib
from synchlib import cli
from synchlib import io as sio
from synchlib.checkpoints import ASSETS_DIR, save_checkpoint
from synchlib.errors import ClipTooShortError, UnreliableInputWarning, VideoDecodeError
from synchlib.io import StreamStats, _audio_chunks, clockwise_rotation, iter_video, probe
from synchlib.normalised import read_video
from synchlib.preprocess import load_clip

from .helpers import TINY, event_times, video_frame_times, write_av, write_media

VFR_TIMES = np.cumsum(np.r_[0.0, np.random.default_rng(1).choice([0.016, 0.033, 0.05, 0.1], 150)])
FPS_2997 = Fraction(30000, 1001)
COPY_SIZE = (640, 360)  # the re-encoded copy of the issue: 29.97 fps, 44.1 kHz stereo, 640x360
COPY_OFFSETS = (-1.6, -0.8, 0.0, 0.8, 1.6)  # windows compared between a copy and its original ...
COPY_START_SEC = 1.6  # ... all starting here

# name -> write_av arguments. Defaults: 6 s, 25 fps, 96x64 H.264 + 16 kHz mono AAC in MP4 (normalised for the
# tiny config, so decoded as it is).
FILES: dict[str, dict] = {
    "mp4_h264_aac": dict(),
    "phone_portrait_2997_48k_stereo": dict(fps=FPS_2997, size=(72, 128), sample_rate=48000, channels=2),
    "rotation_metadata_mov": dict(container="mov", fps=30, size=(128, 72), rotation=-90),
    "vfr_screen_recording": dict(frame_times=VFR_TIMES, sample_rate=44100),
    "webm_vp9_opus": dict(fps=30, vcodec="libvpx-vp9", acodec="libopus", sample_rate=48000, channels=2),
    "mkv_h264_mp3": dict(container="matroska", acodec="libmp3lame", sample_rate=44100, channels=2),
    "mkv_hevc_aac_5_1": dict(container="matroska", vcodec="libx265", sample_rate=48000, channels=6),
    "avi_mpeg4_pcm_22k": dict(vcodec="mpeg4", acodec="pcm_s16le", sample_rate=22050),
    "mp4_av1": dict(vcodec="libsvtav1", size=(128, 72)),
    "mov_pcm_8k": dict(container="mov", acodec="pcm_s16le", sample_rate=8000),
    "fps60_32k": dict(fps=60, sample_rate=32000),
    "fps15": dict(fps=15),
    "fps30_11k": dict(fps=30, sample_rate=11025),
    "tiny_32x24": dict(size=(32, 24)),
    "avi_h264_mp3_bframes": dict(container="avi", acodec="libmp3lame", sample_rate=44100, channels=2),
    "odd_size_75x45": dict(size=(75, 45), vcodec="mpeg4", container="matroska"),  # odd sizes: mpeg4 allows them
    "huge_1280x720": dict(size=(1280, 720), fps=5),
    "audio_starts_late": dict(audio_start_sec=0.5),
    "video_starts_late": dict(video_start_sec=0.5),
    "audio_longer": dict(seconds=6, audio_seconds=8),
    "video_longer": dict(seconds=8, audio_seconds=5.5),
    "short_3s": dict(seconds=3),
    "silent_audio": dict(silent=True),
    "still_video": dict(still=True),
    "mkv_12s": dict(seconds=12, container="matroska"),
    "mp4_12s": dict(seconds=12),
    "mp4_12s_faststart": dict(seconds=12, faststart=True),
    "mp4_12s_30fps": dict(seconds=12, fps=30, size=(128, 72)),
    "no_audio": dict(audio=False),
}
OPTIONAL_ENCODERS = {"mp4_av1": "libsvtav1", "mkv_hevc_aac_5_1": "libx265", "webm_vp9_opus": "libvpx-vp9"}


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _overwrite(src: Path, dst: Path, at: float, fraction: float) -> Path:
    """Copy ``src`` with ``fraction`` of its bytes from ``at`` (fraction of the size) replaced by noise."""
    data = bytearray(src.read_bytes())
    start, n = int(len(data) * at), max(1, int(len(data) * fraction))
    data[start : start + n] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _image(dst: Path, fmt: str) -> Path:
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(dst, format=fmt)
    return dst


# name -> how to make it from the corpus (a function of the Corpus and the target path)
DERIVED = {
    "mp4_truncated_no_moov": lambda c, p: _cut(c.get("mp4_12s"), p, 0.5),
    "mp4_faststart_truncated": lambda c, p: _cut(c.get("mp4_12s_faststart"), p, 0.6),
    "mkv_truncated": lambda c, p: _cut(c.get("mkv_12s"), p, 0.5),
    "mp4_corrupt_middle": lambda c, p: _overwrite(c.get("mp4_12s"), p, 0.4, 0.012),
    "mp4_30fps_corrupt_middle": lambda c, p: _overwrite(c.get("mp4_12s_30fps"), p, 0.4, 0.012),
    "mkv_corrupt_middle": lambda c, p: _overwrite(c.get("mkv_12s"), p, 0.4, 0.012),
    "mp4_mostly_corrupt": lambda c, p: _overwrite(c.get("mp4_12s"), p, 0.05, 0.8),
    "empty": lambda c, p: p.write_bytes(b"") or p,
    "text_as_mp4": lambda c, p: p.write_text("this is not a video\n" * 50) or p,
    "text_txt": lambda c, p: p.write_text("this is not a video\n" * 50) or p,
    "png_image": lambda c, p: _image(p, "PNG"),
    "jpeg_image": lambda c, p: _image(p, "JPEG"),
    "png_named_mp4": lambda c, p: _image(p, "PNG"),
    "directory": lambda c, p: p.mkdir() or p,
    "missing": lambda c, p: p,
    "fifo": lambda c, p: os.mkfifo(p) or p,
    "audio_only_m4a": lambda c, p: write_av(p, video=False, container="mp4"),
}
SUFFIX = {"rotation_metadata_mov": ".mov", "mov_pcm_8k": ".mov", "webm_vp9_opus": ".webm", "avi_mpeg4_pcm_22k": ".avi",
          "avi_h264_mp3_bframes": ".avi", "text_txt": ".txt", "png_image": ".png", "jpeg_image": ".jpg",
          "audio_only_m4a": ".m4a"}


class Corpus:
    """Writes each file of :data:`FILES` / :data:`DERIVED` once, on first use."""

    def __init__(self, root: Path):
        self.root, self.paths = root, {}

    def get(self, name: str) -> Path:
        if name not in self.paths:
            suffix = SUFFIX.get(name) or (".mkv" if "mkv" in name else ".mp4")
            path = self.root / f"{name}{suffix}"
            if name in FILES:
                encoder = OPTIONAL_ENCODERS.get(name)
                if encoder and encoder not in av.codecs_available:
                    pytest.skip(f"this PyAV build has no {encoder} encoder to write the test file")
                write_av(path, **FILES[name])
            else:
                DERIVED[name](self, path)
            self.paths[name] = path
        return self.paths[name]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Normalised copies go to a fresh cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("SYNCHLIB_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model, cfg):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "random tiny.pt", model.state_dict(), dict(cfg.raw))


def run_cli(capfd, *args) -> tuple[int, str, str]:
    """``synchlib.cli.main`` in-process; (exit code, stdout, stderr) at the file-descriptor level (FFmpeg's own
    logging would show there)."""
    capfd.readouterr()  # drop what writing the test file printed
    rc = cli.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------------------------------------------
# The corpus through the CLI

# name -> (extra CLI arguments, substrings the JSON warnings must contain)
VALID = {
    "mp4_h264_aac": ([], []),
    "phone_portrait_2997_48k_stereo": ([], []),
    "rotation_metadata_mov": ([], []),
    "vfr_screen_recording": ([], []),
    "webm_vp9_opus": ([], []),
    "mkv_h264_mp3": ([], []),
    "mkv_hevc_aac_5_1": ([], []),
    "avi_mpeg4_pcm_22k": ([], []),
    "avi_h264_mp3_bframes": ([], []),
    "mp4_av1": ([], []),
    "mov_pcm_8k": ([], []),
    "fps60_32k": ([], []),
    "fps15": ([], []),
    "fps30_11k": ([], []),
    "tiny_32x24": ([], []),
    "odd_size_75x45": ([], []),
    "huge_1280x720": ([], []),
    "audio_starts_late": ([], []),
    "video_starts_late": ([], []),
    "audio_longer": ([], []),
    "video_longer": ([], []),
    "short_3s": (["--pad"], ["padded"]),
    "silent_audio": ([], ["silent"]),
    "still_video": ([], ["does not move"]),
    "mp4_12s": (["--offset-sec", "2.5", "--start-sec", "0.5"], ["outside the model's offset grid"]),
    "mkv_truncated": ([], ["header says"]),
    "mp4_faststart_truncated": ([], ["header says"]),
    "mp4_corrupt_middle": ([], ["could not be decoded"]),
    "mp4_30fps_corrupt_middle": ([], ["could not be decoded"]),
    "mkv_corrupt_middle": ([], ["damaged"]),
}

# name -> substring of the one-line error
BROKEN = {
    "short_3s": "pad it",
    "mp4_truncated_no_moov": "still being written",
    "mp4_mostly_corrupt": "too damaged",
    "empty": "empty (0 bytes)",
    "text_as_mp4": "not a media file",
    "text_txt": "is a text file",
    "png_image": "is an image",
    "jpeg_image": "is an image",
    "png_named_mp4": "is an image",
    "directory": "is a directory",
    "missing": "no such file",
    "fifo": "not a regular file",
    "no_audio": "no audio stream",
    "audio_only_m4a": "no video stream",
}


@pytest.mark.parametrize("name", list(VALID))
def test_valid_input_gives_a_prediction(capfd, corpus, ckpt, name):
    extra, expected = VALID[name]
    path = corpus.get(name)
    rc, out, err = run_cli(capfd, "predict", path, "--checkpoint", ckpt, "--device", "cpu", "--json", *extra)
    assert rc == 0 and err == "", err
    result = json.loads(out)
    assert len(result["probs"]) == 21 and result["offset_sec"] in result["grid"]
    for text in expected:
        assert any(text in w for w in result["warnings"]), result["warnings"]
    if not expected:
        assert result["warnings"] == [], result["warnings"]


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_input_is_one_line_and_exit_2(capfd, corpus, ckpt, name):
    path = corpus.get(name)
    rc, out, err = run_cli(capfd, "predict", path, "--checkpoint", ckpt, "--device", "cpu", "--json")
    lines = err.strip().splitlines()
    assert rc == 2 and out == "", (rc, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("synchlib: error: ") and BROKEN[name] in lines[0], lines[0]


def test_permission_denied_is_one_line(capfd, corpus, ckpt, monkeypatch):
    """Tests run as root, which reads any file whatever its mode, so the check is exercised by making
    ``os.access`` say no; the real chmod case runs only as a normal user."""
    path = corpus.get("mp4_h264_aac")
    monkeypatch.setattr(sio.os, "access", lambda p, mode: False)
    rc, _, err = run_cli(capfd, "predict", path, "--checkpoint", ckpt, "--device", "cpu")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "permission denied" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_permission_denied_for_real(capfd, tmp_path, ckpt):
    path = write_av(tmp_path / "locked.mp4")
    path.chmod(0)
    rc, _, err = run_cli(capfd, "predict", path, "--checkpoint", ckpt, "--device", "cpu")
    assert rc == 2 and "permission denied" in err


# ---------------------------------------------------------------------------------------------------------------
# What normalisation keeps: sync by timestamps, orientation, lengths


def flash_times(frames: np.ndarray, fps: float) -> np.ndarray:
    """Times of the frames where the white box (a flash) appears."""
    on = (frames.min(axis=-1) > 230).mean(axis=(1, 2)) > 0.02
    return np.nonzero(on & ~np.r_[False, on[:-1]])[0] / fps


def click_times(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onsets of the clicks (|x| > 0.2 after at least 0.1 s of quiet)."""
    idx = np.nonzero(np.abs(audio) > 0.2)[0]
    return idx[np.r_[True, np.diff(idx) > 0.1 * sample_rate]] / sample_rate if len(idx) else idx / sample_rate


# name -> largest source frame interval (s): a flash can only show from the source frame on screen at its event
SYNC_CASES = {
    "phone_portrait_2997_48k_stereo": 1 / 29.97,
    "rotation_metadata_mov": 1 / 30,
    "vfr_screen_recording": 0.1,
    "webm_vp9_opus": 1 / 30,
    "mkv_h264_mp3": 0.04,
    "mkv_hevc_aac_5_1": 0.04,
    "avi_mpeg4_pcm_22k": 0.04,
    "avi_h264_mp3_bframes": 0.04,  # clicks within one frame: see AVI_CLICK_TOLERANCE
    "odd_size_75x45": 0.04,
    "mp4_av1": 0.04,
    "mov_pcm_8k": 0.04,
    "fps60_32k": 1 / 60,
    "fps15": 1 / 15,
    "fps30_11k": 1 / 30,
    "tiny_32x24": 0.04,
    "huge_1280x720": 0.2,
    "audio_starts_late": 0.04,
    "video_starts_late": 0.04,
    "audio_longer": 0.04,
    "video_longer": 0.04,
}


# AVI stores no presentation times: with B-frames FFmpeg's demuxer starts the frames one frame late, and the MP3
# encoder delay is not signalled, so the whole track sits up to a frame off (a limit of the container).
CLICK_TOLERANCE = {"avi_h264_mp3_bframes": 0.045}


@pytest.mark.parametrize("name", list(SYNC_CASES))
def test_normalisation_keeps_sync_by_timestamps(corpus, cfg, name):
    kwargs = FILES[name]
    d = read_video(corpus.get(name), cfg)
    assert d.fps == cfg.data.vfps and d.sample_rate == cfg.data.afps
    assert min(d.frames.shape[1:3]) == cfg.data.size_before_crop and d.frames.shape[1] % 2 == d.frames.shape[2] % 2 == 0
    flashes, clicks = flash_times(d.frames, d.fps), click_times(d.audio, d.sample_rate)
    # the output starts at the first video frame: what came before it (late video) is gone from both streams
    times = video_frame_times(kwargs.get("seconds", 6.0), kwargs.get("fps", 25), kwargs.get("frame_times"),
                              kwargs.get("video_start_sec", 0.0))
    start = times[0]
    video_sec = times[-1] + (1 / float(kwargs.get("fps", 25)) if "frame_times" not in kwargs else 0.0) - start
    audio_sec = kwargs.get("audio_seconds", kwargs.get("seconds", 6.0)) - start
    expected = event_times(10.0) - start
    audible = expected >= kwargs.get("audio_start_sec", 0.0) - start
    both = expected[audible & (expected >= 0) & (expected < min(video_sec, audio_sec) - 0.1)]
    assert len(both) >= 4
    tolerance = 1 / cfg.data.vfps + SYNC_CASES[name] + 1e-6
    for t in both:  # each event: a flash and a click within the tolerance of its true time, so of each other
        assert np.abs(flashes - t).min() <= tolerance, (t, flashes)
        assert np.abs(clicks - t).min() <= CLICK_TOLERANCE.get(name, 0.005), (t, clicks)
    assert abs(len(d.frames) / d.fps - video_sec) <= 0.05 + SYNC_CASES[name]
    assert abs(len(d.audio) / d.sample_rate - audio_sec) <= 0.03 + 1152 / kwargs.get("sample_rate", 16000)  # + a codec frame


def test_late_audio_is_padded_with_silence_not_shifted(corpus, cfg):
    d = read_video(corpus.get("audio_starts_late"), cfg)
    sr = d.sample_rate
    assert np.abs(d.audio[: int(0.25 * sr)]).max() < 1e-3  # silence before the audio starts (AAC blurs its edge)
    assert 0.005 < d.audio[int(0.6 * sr) : int(0.9 * sr)].std() < 0.02  # then the source's quiet noise
    # the source's AAC priming (64 ms) sits before its first real sample, with timestamps that say so
    assert d.meta["audio_delay_sec"] == pytest.approx(0.5, abs=0.07) and d.meta["normalised"]


def test_rotation_is_applied_clockwise(corpus, cfg):
    path = corpus.get("rotation_metadata_mov")
    info = probe(path)
    assert info.rotation == 90 and info.display_size == (72, 128)
    d = read_video(path, cfg)
    h, w = d.frames.shape[1:3]
    assert (w, h) == (64, 112)  # stored 128x72 landscape, shown portrait
    # the flash box sits in the stored top-left corner; a clockwise turn moves it to the top-right
    bright = d.frames[:, :, :, :].min(axis=-1) > 230
    frame = bright.mean(axis=(1, 2)).argmax()
    ys, xs = np.nonzero(bright[frame])
    assert ys.mean() < h / 4 and xs.mean() > 3 * w / 4


def test_rotation_helpers():
    assert [clockwise_rotation(r) for r in (0, -90, 90, 180, -180, -89.6)] == [0, 90, 270, 180, 180, 90]


def shown_frames(tmp_path, cfg, times, fps) -> list[int]:
    """Which source frame each output frame shows, for a video whose frame ``i`` (a grey level of 16 * i) starts
    at ``times[i]``: FFmpeg's ``fps`` filter picks them by time."""
    levels = (np.arange(len(times)) * 16).astype(np.uint8)
    frames = np.repeat(levels[:, None, None, None], 64 * 64 * 3, axis=1).reshape(len(times), 64, 64, 3)
    path = write_media(tmp_path / f"grey{len(list(tmp_path.iterdir()))}.mp4", frames=frames,
                       frame_times=np.asarray(times, dtype=np.float64), audio=None, fps=fps)
    return [int(round(f.mean() / 16)) for _, f in iter_video(path, cfg.data, crop=False)]  # x264 keeps greys +-2


def test_frames_are_picked_by_time(tmp_path, cfg):
    assert shown_frames(tmp_path, cfg, [i / 50 for i in range(10)], 50) == [0, 2, 4, 6, 8]  # 50 fps: on-tick ones
    assert shown_frames(tmp_path, cfg, [i / 12.5 for i in range(3)], Fraction(25, 2)) == [0, 0, 1, 1, 2, 2]  # twice
    variable = shown_frames(tmp_path, cfg, [0.0, 0.09, 0.13, 0.49], 25)  # the last frame lasts as the file says
    assert variable[:13] == [0, 0, 1] + [2] * 9 + [3]
    assert shown_frames(tmp_path, cfg, [10.0, 10.04, 10.08], 25) == [0, 1, 2]  # times count from the first frame


def test_audio_is_placed_by_timestamps(tmp_path):
    """The copy's sound starts at the first video frame: a later start is preceded by exactly that much silence,
    an earlier one loses what came before (PCM, so no codec blurs the edge)."""
    path = write_av(tmp_path / "late.mov", container="mov", acodec="pcm_s16le", audio_start_sec=0.25, fps=30)
    whole = np.concatenate(list(_audio_chunks(path, 16000, StreamStats())))  # from its own first sample
    late = np.concatenate(list(_audio_chunks(path, 16000, StreamStats(), start_sec=0.0)))
    early = np.concatenate(list(_audio_chunks(path, 16000, StreamStats(), start_sec=0.5)))
    assert len(late) == len(whole) + 4000 and not late[:4000].any() and np.array_equal(late[4000:], whole)
    assert len(early) == len(whole) - 4000 and np.array_equal(early, whole[4000:])


def test_normalised_files_are_read_as_they_are_damaged_or_not(corpus, cfg):
    """A damaged file in the model's format is read as it is too (frames held, sound silent where packets were
    lost), with notes, and keeps the clean file's lengths."""
    clean = read_video(corpus.get("mp4_12s"), cfg)
    assert clean.meta["normalised"] is False and clean.meta["notes"] == [] and clean.decoded_path == corpus.get("mp4_12s")
    damaged = read_video(corpus.get("mp4_corrupt_middle"), cfg)
    assert damaged.meta["normalised"] is False and any("could not be decoded" in n for n in damaged.meta["notes"])
    assert abs(len(damaged.frames) - len(clean.frames)) <= 1 and abs(len(damaged.audio) - len(clean.audio)) <= 1024


def test_mostly_corrupt_file_is_refused(corpus, cfg):
    with pytest.raises(VideoDecodeError, match="too damaged"):
        read_video(corpus.get("mp4_mostly_corrupt"), cfg)


# ---------------------------------------------------------------------------------------------------------------
# Short clips and padding; warnings in the Python API


def test_short_clip_raises_unless_padded(corpus, cfg):
    path = corpus.get("short_3s")
    with pytest.raises(ClipTooShortError, match="needs 5.00 s.*--pad"):
        load_clip(path, 0.0, 0.0, cfg)
    with pytest.warns(UnreliableInputWarning, match="padded"):
        clip = load_clip(path, 0.4, 0.0, cfg, pad=True)
    d = clip.decoded
    assert d.meta["padded_video_frames"] > 0 and d.meta["padded_audio_samples"] > 0
    n = len(d.frames) - d.meta["padded_video_frames"]
    assert np.array_equal(d.frames[n:], np.repeat(d.frames[n - 1 : n], d.meta["padded_video_frames"], axis=0))
    assert not d.audio[len(d.audio) - d.meta["padded_audio_samples"] :].any()
    assert clip.vid.shape[0] == cfg.data.n_segments and any("padded" in w for w in clip.warnings)


def test_padding_leaves_long_enough_clips_alone(corpus, cfg):
    path = corpus.get("mp4_h264_aac")
    assert not load_clip(path, 0.0, 0.0, cfg, pad=True).warnings
    with pytest.raises(ClipTooShortError, match="before the file"):  # audio before the start is not padded
        load_clip(path, -1.0, 0.0, cfg, pad=True)


def test_predict_records_every_warning(corpus, model):
    with pytest.warns(UnreliableInputWarning):
        pred = synchlib.predict(model, corpus.get("silent_audio"), pad=False)
    assert any("silent" in w for w in pred.warnings)
    with pytest.warns(synchlib.SynchlibWarning) as caught:
        pred = synchlib.predict(model, corpus.get("short_3s"), offset_sec=-2.4, start_sec=2.4, pad=True)
    assert {w.category for w in caught} == {synchlib.OffsetOutsideGridWarning, UnreliableInputWarning}
    assert any("outside" in w for w in pred.warnings) and any("padded" in w for w in pred.warnings)
    assert pred.meta["padded_audio_samples"] > 0
    with pytest.warns(UnreliableInputWarning, match="could not be decoded"):
        pred = synchlib.predict(model, corpus.get("mp4_corrupt_middle"), start_sec=0.5)
    assert any("could not be decoded" in w for w in pred.warnings)
    json.dumps(pred.to_dict())


# ---------------------------------------------------------------------------------------------------------------
# A re-encoded copy predicts like its original (needs the trained tiny model)


def _resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None], dtype=np.float32), format="fltp", layout="mono")
    frame.sample_rate = src
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=dst)
    return np.concatenate([f.to_ndarray()[0] for f in [*resampler.resample(frame), *resampler.resample(None)]])


def write_copy(src_frames: np.ndarray, src_audio: np.ndarray, path: Path, fps: Fraction, sample_rate: int,
               size: tuple[int, int] = COPY_SIZE) -> Path:
    """The rendered 25 fps clip as a phone would store it: ``fps`` (the frame on screen at each new frame time),
    stereo at ``sample_rate``, ``size`` (W, H) with the square picture scaled to the height and centred between black
    bars (so the model's centre crop sees the same picture)."""
    times = np.arange(int(len(src_frames) / 25 * fps)) / float(fps)
    frames = src_frames[np.minimum((times * 25 + 1e-9).astype(int), len(src_frames) - 1)]
    w, h = size
    scaled = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(h, h),
                                             mode="bilinear", antialias=True, align_corners=False)
    canvas = np.zeros((len(frames), h, w, 3), np.uint8)
    canvas[:, :, (w - h) // 2: (w - h) // 2 + h] = scaled.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    audio = _resample(src_audio, 16000, sample_rate)
    return write_media(path, frames=canvas, frame_times=times, audio=np.stack([audio, audio]), sample_rate=sample_rate,
                       fps=fps)


def test_reencoded_copy_predicts_like_the_original(tmp_path):
    if not (ASSETS_DIR / "tiny-synthetic.pt").is_file():
        pytest.skip("synchlib/assets/tiny-synthetic.pt is not there yet (the trained tiny model is being trained)")
    from synchlib.synthetic import make_clip, render

    model = synchlib.load_model(TINY, device="cpu")
    original = tmp_path / "original.mp4"
    info = make_clip(original, seed=777, duration_sec=9.0)
    frames, audio, _ = render(info.seed, duration_sec=9.0)
    copy = write_copy(frames, audio, tmp_path / "copy.mp4", FPS_2997, 44100)
    assert not sio.is_normalised(probe(copy), model.cfg.data)
    # The tiny model is right on most windows, not all (held-out acc@1 0.95-0.98), and a marginal window can flip
    # when the frames are re-timed from 29.97 fps: over seeds 777-786 (50 windows) 48 agree within one class, the
    # copy is right on all 50 and the original on 48; all 5 of seed 777 agree. A broken normalisation (time shift,
    # wrong rate, wrong crop) would move them all.
    agree, right = [], []
    for offset in COPY_OFFSETS:
        a = synchlib.predict(model, original, offset_sec=offset, start_sec=COPY_START_SEC)
        b = synchlib.predict(model, copy, offset_sec=offset, start_sec=COPY_START_SEC)
        agree.append(abs(a.class_index - b.class_index) <= 1)
        right.append(abs(a.class_index - a.target_class) <= 1 and abs(b.class_index - b.target_class) <= 1)
    assert all(agree) and sum(right) >= 4, (agree, right)
