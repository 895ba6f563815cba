"""The cache of normalised copies checks itself: a copy that does not belong to its source, or is damaged, or whose
report is missing or broken, is rebuilt; an edit of the source in place gets a new entry. Small generated clips
(30 fps, so the tiny config re-encodes them) and a fresh cache per test."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from synchlib import normalised as nsd
from synchlib import paths
from synchlib.errors import SynchlibError
from synchlib.normalised import normalise, read_video, report_path
from synchlib.paths import source_digest

from .helpers import scribble_on_the_heap, write_av

CLIP = dict(seconds=2.0, fps=30, size=(80, 64))  # not at 25 fps: normalised through the cache
RAW = dict(container="matroska", vcodec="rawvideo", acodec="pcm_s16le")  # size depends on length only, not pixels


def same_clip(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether decoded frames (T, H, W, 3) uint8 are those of the same clip: re-encoding is deterministic, so a
    rebuilt copy decodes to exactly the frames of the first one."""
    return x.shape == y.shape and np.array_equal(x, y)


def vouched(copy: Path) -> bool:
    """Whether the report of a cached copy names the copy as it is now."""
    report = json.loads(report_path(copy).read_text())
    return report["copy_sha256"] == paths.file_sha256(copy) and report["copy_bytes"] == copy.stat().st_size


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SYNCHLIB_CACHE", str(path))
    return path


@pytest.fixture
def clips(tmp_path) -> tuple[Path, Path]:
    """Two different clips; the first one's audio starts 0.2 s after its video (so its report says so)."""
    a = write_av(tmp_path / "a.mp4", seed=1, audio_start_sec=0.2, **CLIP)
    b = write_av(tmp_path / "b.mp4", seed=2, **CLIP)
    return a, b


def entries(cache: Path) -> list[str]:
    """Names of everything in the cache's folder of normalised copies."""
    return sorted(p.name for p in (cache / "normalised").iterdir())


def test_a_copy_swapped_for_another_clip_s_is_rebuilt(cache, clips, cfg):
    a, b = clips
    want = read_video(a, cfg)
    copy_a, copy_b = normalise(a, cfg.data), normalise(b, cfg.data)
    other = read_video(b, cfg)
    shutil.copyfile(copy_b, copy_a)
    got = read_video(a, cfg)
    assert same_clip(got.frames, want.frames) and not same_clip(got.frames, other.frames)
    assert got.meta["audio_delay_sec"] == want.meta["audio_delay_sec"] != other.meta["audio_delay_sec"]
    # the swapped copy and its own report together do not pass for a's either (the report names its source)
    shutil.copyfile(copy_b, copy_a)
    shutil.copyfile(report_path(copy_b), report_path(copy_a))
    assert same_clip(read_video(a, cfg).frames, want.frames) and vouched(copy_a)


def test_a_truncated_copy_is_rebuilt(cache, clips, cfg):
    a, _ = clips
    want = read_video(a, cfg).frames
    copy = normalise(a, cfg.data)
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size // 2)
    assert same_clip(read_video(a, cfg).frames, want)
    assert normalise(a, cfg.data) == copy and vouched(copy)


def test_a_copy_that_matches_its_report_but_does_not_decode_is_rebuilt_once(cache, clips, cfg):
    """A damaged entry written consistently (copy and report agree) is caught when decoding and rebuilt."""
    a, _ = clips
    want = read_video(a, cfg).frames
    copy = normalise(a, cfg.data)
    junk = b"not a video" * 100
    copy.write_bytes(junk)
    report = json.loads(report_path(copy).read_text())
    report.update(copy_bytes=len(junk), copy_sha256=hashlib.sha256(junk).hexdigest())
    report_path(copy).write_text(json.dumps(report))
    assert same_clip(read_video(a, cfg).frames, want)
    assert copy.read_bytes() != junk and vouched(copy)


def test_a_rebuilt_copy_that_still_fails_is_an_error_not_a_loop(cache, clips, cfg, monkeypatch):
    a, _ = clips
    builds = []

    def broken_reencode(src, dst, info, data):
        builds.append(src)
        Path(dst).write_bytes(b"\0" * 4096)
        return {"version": nsd.REENCODE_VERSION, "notes": [], "audio_delay_sec": 0.0}

    monkeypatch.setattr(nsd, "_reencode", broken_reencode)
    with pytest.raises(SynchlibError, match="re-encoded to the model's format does not decode"):
        read_video(a, cfg)
    assert len(builds) == 1 and entries(cache) == []  # built once, and nothing broken left behind


def test_an_edit_in_place_with_the_same_size_and_time_is_not_served_the_old_copy(cache, tmp_path, cfg):
    a = write_av(tmp_path / "a.mkv", seed=1, **CLIP, **RAW)
    b = write_av(tmp_path / "b.mkv", seed=2, **CLIP, **RAW)
    assert a.stat().st_size == b.stat().st_size  # raw pictures and samples: the same size for the same length
    old = read_video(a, cfg).frames
    want = read_video(b, cfg).frames
    st = a.stat()
    a.write_bytes(b.read_bytes())
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert a.stat().st_size == st.st_size and a.stat().st_mtime_ns == st.st_mtime_ns
    got = read_video(a, cfg).frames
    assert same_clip(got, want) and not same_clip(got, old)


@pytest.mark.parametrize("damage", ["garbage", "not an object", "notes not a list", "delay not a number", "missing"])
def test_a_broken_or_missing_report_means_a_rebuild(cache, clips, cfg, damage):
    a, _ = clips
    want = read_video(a, cfg)
    copy = normalise(a, cfg.data)
    good = json.loads(report_path(copy).read_text())
    if damage == "missing":
        report_path(copy).unlink()
    else:
        text = {"garbage": "{not json", "not an object": "[1, 2]",
                "notes not a list": json.dumps({**good, "notes": "three words here"}),
                "delay not a number": json.dumps({**good, "audio_delay_sec": "soon"})}[damage]
        report_path(copy).write_text(text)
    got = read_video(a, cfg)
    assert same_clip(got.frames, want.frames)
    assert got.meta["notes"] == want.meta["notes"] and got.meta["audio_delay_sec"] == want.meta["audio_delay_sec"]
    rebuilt = json.loads(report_path(copy).read_text())
    same = [k for k in good if not k.startswith("copy_")]  # the copy's own hash may differ (see SAME_CLIP_LEVELS)
    assert {k: rebuilt[k] for k in same} == {k: good[k] for k in same}
    assert vouched(copy)


def test_entries_hold_a_copy_and_its_report_only(cache, clips, cfg):
    a, b = clips
    for clip in (a, b):
        read_video(clip, cfg)
    names = entries(cache)
    assert len(names) == 4 and not [n for n in names if n.startswith(".partial-")]
    report = json.loads(report_path(normalise(a, cfg.data)).read_text())
    assert report["source_digest"] == source_digest(a) and len(report["copy_sha256"]) == 64


def test_source_digest_covers_a_small_file_whole_and_samples_a_large_one(tmp_path, monkeypatch):
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    before = source_digest(small)
    with small.open("r+b") as f:
        f.seek(500_000)
        f.write(b"\xff")
    assert source_digest(small) != before and source_digest(small).startswith("sha256:")

    monkeypatch.setattr(paths, "WHOLE_DIGEST_BYTES", 64 << 10)
    monkeypatch.setattr(paths, "DIGEST_SAMPLE_BYTES", 4 << 10)  # samples at 0, ~510 KiB and ~1020 KiB
    before = source_digest(small)
    assert before.startswith("sampled-sha256:")
    with small.open("r+b") as f:
        f.seek(200_000)  # between the samples: a sampled digest cannot see this (documented)
        f.write(b"\x00")
    assert source_digest(small) == before
    with small.open("r+b") as f:
        f.seek(len(small.read_bytes()) - 10)  # in the last sample
        f.write(b"\x00")
    assert source_digest(small) != before
    with small.open("ab") as f:  # a longer file
        f.write(b"\x00")
    assert source_digest(small) != before


def test_re_encoding_is_deterministic(cache, clips, cfg):
    """Two builds of one copy are the same bytes, whatever the heap held before (x264's wider SIMD code read memory
    it never wrote, so rebuilt copies differed and a prediction changed with each rebuild)."""
    a, _ = clips
    digests = set()
    for seed in range(3):
        scribble_on_the_heap(seed)
        copy = normalise(a, cfg.data, force=True)
        digests.add(paths.file_sha256(copy))
        copy.unlink()
    assert len(digests) == 1
