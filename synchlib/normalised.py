"""The normalised copy: the file the model's readers read for any input, made once and cached.

:func:`prepare` names it: the input itself when it is already at the model's rates and size
(:func:`synchlib.io.is_normalised`), else its copy re-encoded through :mod:`synchlib.io`'s filter pipeline to H.264 +
mono AAC (see that module's docstring for why the round trip is kept). :func:`read_video` decodes that file whole.

The cache. A copy is named from its source's path, size, time and content digest
(:func:`synchlib.paths.source_digest`), the target format and :data:`REENCODE_VERSION`; its report (JSON beside it)
records that digest and the copy's size and sha256, checked on every use: a copy that does not match, or does not
open, is built again (once). Re-encoding is deterministic, so a rebuilt copy is the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from contextlib import contextmanager, suppress
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np

from .config import Config, DataConfig
from .errors import MissingStreamError, VideoDecodeError
from .io import (
    AudioPriming,
    Decoded,
    MediaInfo,
    StreamStats,
    _audio_chunks,
    _stream_notes,
    _video_frames,
    decode,
    ending_notes,
    is_normalised,
    probe,
)  # fmt: skip
from .paths import cache_dir, file_sha256, source_digest

REENCODE_VERSION = 4  # bump when the re-encoding recipe changes, so cached files are rebuilt
MAX_REPORT_BYTES = 1 << 20  # a cached copy's report is a few hundred bytes; a larger file is not read
# x264 on one thread and, on x86-64, on its SSE2 code only: its wider SIMD code (the AVX2/AVX-512 macroblock-tree
# kernels) reads memory it never wrote and rounds differently per CPU, so two re-encodes of one file differed; the
# SSE2 code gives the bytes of x264's plain C code, on every x86-64 CPU, at nearly full speed (a 10 s 640x360 clip:
# 2.8 s instead of 2.5 s, against 6.7 s in C). Elsewhere (e.g. ARM) x264 runs its C code.
X264_ASM = "sse2" if platform.machine().lower() in ("x86_64", "amd64") else "0"
X264_OPTIONS = {"crf": "18", "preset": "fast", "threads": "1", "x264-params": f"asm={X264_ASM}"}
AAC_BITRATE = 128_000


def prepare(path: str | Path, data: DataConfig, *, audio: bool = True, info: MediaInfo | None = None
            ) -> tuple[Path, dict[str, Any]]:
    """(the file the model's readers read for ``path``, what making it found): ``path`` itself when it
    :func:`is_normalised`, else its normalised copy in the cache, made now or checked and reused. The report holds
    ``notes`` (damage, gaps, truncation of the source) and ``audio_delay_sec`` (how much later the source's sound
    starts than its picture). ``audio`` False: a video without sound is accepted (its sound comes from elsewhere)."""
    path = Path(path).expanduser()
    info = info or probe(path, audio=audio)
    if is_normalised(info, data):
        delay = info.audio_start_sec - info.video_start_sec if info.sample_rate else 0.0
        return path, {"notes": [], "audio_delay_sec": delay}
    return _cached_copy(path, data, info)


def read_video(path: str | Path, cfg: Config | DataConfig, *, audio_priming: AudioPriming = "drop") -> Decoded:
    """The whole of ``path`` as the model reads it: :func:`decode` of :func:`prepare`'s file.

    ``meta["notes"]`` lists reasons the input may be unreliable (damage found while re-encoding or reading);
    ``meta["audio_delay_sec"]`` how much later the source's audio started than its video; ``meta["normalised"]``
    whether a normalised copy was read."""
    data = cfg.data if isinstance(cfg, Config) else cfg
    path = Path(path).expanduser()
    source = probe(path)
    target, report = prepare(path, data, info=source)
    decoded = decode(target, data, audio_priming=audio_priming)
    decoded.source = source
    decoded.meta.update(notes=list(report["notes"]) + decoded.meta["notes"], normalised=target != path,
                        audio_delay_sec=report["audio_delay_sec"])
    return decoded


def normalise(path: str | Path, data: DataConfig, *, force: bool = False) -> Path:
    """A path to ``path`` at the model's rates and size: :func:`prepare`'s file, or with ``force`` the normalised
    copy even of a file that is already normalised."""
    path = Path(path).expanduser()
    return _cached_copy(path, data, probe(path))[0] if force else prepare(path, data)[0]


# ---------------------------------------------------------------------------------------------------------------
# The normalised copy and its cache


def _cache_key(path: Path, data: DataConfig, digest: str | None = None) -> str:
    """Name of the normalised copy of ``path`` in the cache: from its resolved path, size, modification time and
    content digest (:func:`source_digest`, computed when None), so that an edit in place gets a new entry even
    when it keeps the size and the time, and from the target rates and :data:`REENCODE_VERSION`."""
    st = path.stat()
    digest = source_digest(path) if digest is None else digest
    spec = (f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{digest}|{data.vfps}|{data.size_before_crop}|"
            f"{data.afps}|{REENCODE_VERSION}")
    return hashlib.sha256(spec.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def report_path(normalised: Path) -> Path:
    """The JSON written next to a normalised copy: what re-encoding found (notes, audio delay, damage), the
    digest of the source it was made from and the sha256 of the copy."""
    return normalised.with_suffix(".json")


def _verified_report(copy: Path, digest: str) -> dict[str, Any] | None:
    """The report of the cached ``copy`` when the copy is still the file that was written (size and sha256 as
    recorded), was made from the source with ``digest`` by this version, and the report is well formed; else
    None."""
    try:
        size = copy.stat().st_size
        if report_path(copy).stat().st_size > MAX_REPORT_BYTES:
            return None
        report = json.loads(report_path(copy).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(report, dict):
        return None
    notes, delay = report.get("notes"), report.get("audio_delay_sec")
    if (
        report.get("version") != REENCODE_VERSION
        or report.get("source_digest") != digest
        or not (isinstance(notes, list) and all(isinstance(n, str) for n in notes))
        or not (isinstance(delay, (int, float)) and not isinstance(delay, bool) and math.isfinite(delay))
        or report.get("copy_bytes") != size
    ):
        return None
    return report if report.get("copy_sha256") == file_sha256(copy) else None


def _opens(copy: Path, info: MediaInfo) -> bool:
    """Whether a copy opens with the streams of its source and a decodable first frame."""
    try:
        probe(copy, audio=bool(info.sample_rate))
    except (VideoDecodeError, MissingStreamError):
        return False
    return True


def _discard(copy: Path) -> None:
    """Remove a cached copy and its report (whatever is there of them)."""
    for p in (copy, report_path(copy)):
        with suppress(FileNotFoundError):
            p.unlink()


def _temp_beside(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent, prefix=".partial-")
    os.close(fd)
    return Path(tmp)


def _cached_copy(path: Path, data: DataConfig, info: MediaInfo) -> tuple[Path, dict[str, Any]]:
    """(the normalised copy of ``path`` in the cache, its report).

    A copy is used only when :func:`_verified_report` vouches for it and it opens; one that does not (swapped,
    truncated, edited, no or a broken report, made from an older version of the source) is deleted and built
    again; a copy built now that does not open is a :class:`VideoDecodeError` (built once, not in a loop)."""
    digest = source_digest(path)
    out = cache_dir() / "normalised" / f"{_cache_key(path, data, digest)}.mp4"
    report = _verified_report(out, digest)
    if report is not None and _opens(out, info):
        return out, report
    _discard(out)
    report = _build(path, out, info, data, digest)
    if not _opens(out, info):
        _discard(out)
        raise VideoDecodeError(f"{path}: the copy re-encoded to the model's format does not decode; convert the "
                               "file to H.264/AAC MP4 with another tool and try that")
    return out, report


def _build(src: Path, out: Path, info: MediaInfo, data: DataConfig, digest: str) -> dict[str, Any]:
    """Re-encode ``src`` to ``out`` and write its report; both are written to temporary files next to them and
    moved into place (a reader never sees half a file). Returns the report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, tmp_report = _temp_beside(out, ".mp4"), _temp_beside(out, ".json")
    try:
        try:
            report = _reencode(src, tmp, info, data)
        except av.error.FFmpegError as e:  # encoder side: decoding errors are handled inside
            raise VideoDecodeError(f"{src}: re-encoding to the model's format failed ({e}); convert the file "
                                   "to H.264/AAC MP4 with another tool and try that") from None
        report.update(source_digest=digest, copy_bytes=tmp.stat().st_size, copy_sha256=file_sha256(tmp))
        tmp_report.write_text(json.dumps(report, indent=1), encoding="utf-8")
        os.replace(tmp, out)
        os.replace(tmp_report, report_path(out))
    finally:
        for p in (tmp, tmp_report):
            with suppress(FileNotFoundError):
                p.unlink()
    return report


@contextmanager
def _output(path: Path) -> Iterator[av.container.OutputContainer]:
    """An MP4 output container that, when the body fails, is closed without letting a closing error (no
    packets written yet) replace the body's exception."""
    container = av.open(str(path), "w", format="mp4")
    try:
        yield container
    except BaseException:
        with suppress(Exception):
            container.close()
        raise
    container.close()


def _reencode(src: Path, dst: Path, info: MediaInfo, data: DataConfig) -> dict[str, Any]:
    """Write the normalised copy of ``src`` to ``dst`` (the pipeline's frames as H.264, its samples from the first
    frame on as mono AAC; a video without sound stays without); returns the report (notes, audio delay, damage)."""
    vstats, astats = StreamStats(), StreamStats()
    frames = _video_frames(src, data, vstats, pix_fmt="yuv420p")
    with _output(dst) as out:
        first = next(frames)
        vout = out.add_stream("libx264", rate=data.vfps, options=dict(X264_OPTIONS))
        vout.width, vout.height, vout.pix_fmt = first.width, first.height, "yuv420p"
        if info.sample_rate:
            aout = out.add_stream("aac", rate=data.afps, layout="mono")
            aout.bit_rate = AAC_BITRATE
        written = 0
        for written, frame in enumerate(chain([first], frames), 1):
            frame.pts, frame.time_base = written - 1, Fraction(1, data.vfps)
            out.mux(vout.encode(frame))
        out.mux(vout.encode(None))
        if info.sample_rate:
            placed = 0
            for chunk in _audio_chunks(src, data.afps, astats, start_sec=vstats.start_sec):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None]), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = data.afps, placed, Fraction(1, data.afps)
                out.mux(aout.encode(frame))
                placed += len(chunk)
            out.mux(aout.encode(None))
    streams = [("video", vstats)] + ([("audio", astats)] if info.sample_rate else [])
    notes = [note for kind, stats in streams for note in _stream_notes(src, kind, stats)]
    if not any(stats.read_error for _, stats in streams):
        notes += ending_notes(info.duration_sec, max(s.end_sec for _, s in streams) - min(s.start_sec for _, s in streams))
    return {
        "version": REENCODE_VERSION,
        "notes": notes,
        "audio_delay_sec": round(astats.start_sec - vstats.start_sec, 6) if info.sample_rate else 0.0,
        "video_frames": written,
        "audio_gap_sec": round(astats.gap_sec, 6),
        "failed_packets": {kind: stats.failed for kind, stats in streams},
    }
