"""Reading audio and video with PyAV, and normalising inputs to the model's rates and size.

The released models were trained and tested on videos re-encoded to H.264 at 25 fps with a 256 px short side
and AAC at 16 kHz. :func:`read_video` re-encodes any other input to exactly that (in-process with PyAV, no
ffmpeg binary), caches the result, and decodes it the way the reference does: all RGB frames, and mono audio as
the mean of the channels.

AAC priming. AAC encoders put ``encoder delay`` samples (1024 for FFmpeg's encoder) before the first real
sample and mark them for removal (pts -1024, skip-samples side data). Current FFmpeg drops them while decoding;
some older decoder stacks delivered them, which shifts the audio 64 ms later relative to the video (a known
cause of different accuracy across PyAV versions). ``audio_priming="drop"`` (the default) gives what the golden
fixtures show; ``"keep"`` keeps those samples at the start of the track.

What normalisation (:func:`normalise`) does with real-world input, all by presentation timestamps:

* Orientation: the rotation of the display matrix (phone videos) is applied, so frames are upright as a player
  shows them. Flips in the matrix are ignored.
* Frame rate: output frame ``k`` (time ``k / vfps`` after the first source frame) shows the latest source frame
  whose time rounds to a tick at or before ``k`` (FFmpeg's ``fps`` filter), so 29.97, 60, 15 fps and variable
  frame rates are resampled by time, never by frame count.
* Size: the short side is scaled (up or down, bicubic) to ``size_before_crop`` and both sides cut to even
  numbers, from the stored size (the sample aspect ratio is ignored, as the reference's ``scale`` does).
* Audio: the mean over all channels (mono, stereo, 5.1, ...: what :func:`decode` takes anyway), resampled to
  ``afps`` with FFmpeg's swresample and stored as mono AAC.
* A/V alignment: the output starts at the first video frame. Audio is placed by its timestamps: audio that
  starts after the video is preceded by silence, audio before the first frame is dropped, gaps inside the
  audio become silence. So the output is exactly as much in (or out of) sync as the source.
* Lengths: each stream keeps its own length; :func:`synchlib.preprocess.equalify` cuts the longer one.
* Damage: a packet that fails to decode is skipped (the previous frame stays on screen, its audio time is
  silent) and counted; a read error ends the file there. Both, and a file that ends before its header says,
  are reported in ``Decoded.meta["notes"]`` (predictions carry them as warnings). More than half of a stream's
  packets failing is a :class:`VideoDecodeError`.

A file already at the model's rates and size (constant frame rate, upright, streams starting together) is
decoded as it is; if it turns out not to decode cleanly (errors, gaps in its timestamps, frame size changes),
:func:`read_video` re-encodes it as above instead.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import platform
import tempfile
from collections import deque
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .config import Config, DataConfig
from .errors import ClipTooShortError, InvalidArgumentError, MissingStreamError, VideoDecodeError, VideoNotFoundError
from .paths import cache_dir, file_sha256, source_digest

AudioPriming = Literal["drop", "keep"]
AUDIO_PRIMING_OPTIONS = ("drop", "keep")
REENCODE_VERSION = 3  # bump when the re-encoding recipe changes, so cached files are rebuilt
MAX_REPORT_BYTES = 1 << 20  # a cached copy's report is a few hundred bytes; a larger file is not read
# x264 on one thread and, on x86-64, on its SSE2 code only: its wider SIMD code (the AVX2/AVX-512 macroblock-tree
# kernels) reads memory it never wrote and rounds differently per CPU, so two re-encodes of one file differed; the
# SSE2 code gives the bytes of x264's plain C code, on every x86-64 CPU, at nearly full speed (a 10 s 640x360 clip:
# 2.8 s instead of 2.5 s, against 6.7 s in C). Elsewhere (e.g. ARM) x264 runs its C code.
X264_ASM = "sse2" if platform.machine().lower() in ("x86_64", "amd64") else "0"
X264_OPTIONS = {"crf": "18", "preset": "fast", "threads": "1", "x264-params": f"asm={X264_ASM}"}
AAC_BITRATE = 128_000
AAC_FRAME = 1024  # samples per frame handed to the AAC encoder
START_TOLERANCE_SEC = 1e-3  # streams starting closer than this start together
AUDIO_GAP_SEC = 0.1  # an audio timestamp jump counts as a gap from this long and 2.5 frames (see audio_gap_sec)
MAX_BAD_PACKETS = 0.5  # fraction of a stream's packets that may fail to decode before the file is refused
TRUNCATION_SEC = 0.5  # decoded streams ending this much before the header's duration are reported
ROTATION_PROBE_PACKETS = 64  # packets probe() reads at most to find the first frame (and its rotation)
NOT_VIDEO_FORMATS = {"tty": "a text file", "image2": "an image"}  # demuxers FFmpeg picks for non-videos (+ *_pipe)


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read from its headers (the rotation from its first frame)."""

    path: Path
    fps: float  # average frame rate
    width: int  # stored size (before rotation)
    height: int
    sample_rate: int
    channels: int
    duration_sec: float  # from the container header; 0.0 when it has none
    video_codec: str
    audio_codec: str
    rotation: int = 0  # clockwise degrees a player turns the picture by: 0, 90, 180 or 270
    base_fps: float = 0.0  # FFmpeg's r_frame_rate (the tick of the timestamps): differs from fps when variable
    video_start_sec: float = 0.0
    audio_start_sec: float = 0.0
    container: str = ""

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a player shows it, after the rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    @property
    def variable_frame_rate(self) -> bool:
        """The timestamps tick faster than the average rate (by more than 1 %): frames come irregularly."""
        return abs(self.fps - self.base_fps) > 0.01 * max(self.fps, 1e-9)


@dataclass
class Decoded:
    """Decoded streams of one file, at the model's rates after normalisation.

    frames: (T, H, W, 3) uint8 RGB. audio: (N,) float32 mono (mean over channels).
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    video_start_sec: float  # presentation time of the first decoded video frame
    audio_start_sec: float  # presentation time of the first decoded audio sample
    source: MediaInfo
    decoded_path: Path  # the file actually decoded (the source, or its normalised copy in the cache)
    meta: dict = field(default_factory=dict)  # "notes": reasons the input may be unreliable (damage), and more

    @property
    def duration_sec(self) -> float:
        return min(len(self.frames) / self.fps, len(self.audio) / self.sample_rate)


# ---------------------------------------------------------------------------------------------------------------
# Opening a file and picking its streams


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file; check the path (relative paths are from {Path.cwd()})")
    if path.is_dir():
        raise VideoNotFoundError(f"{path} is a directory; give the path of a video file")
    if not path.is_file():
        raise VideoNotFoundError(f"{path} is not a regular file (a pipe or device?); save the video to a file first")
    if not os.access(path, os.R_OK):
        raise VideoNotFoundError(f"{path}: permission denied; make the file readable (chmod +r) or copy it")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path} is empty (0 bytes); the file may still be being written, or a copy failed")


def _reason(e: Exception) -> str:
    """FFmpeg's words for an error, without the errno and call site PyAV adds."""
    return getattr(e, "strerror", None) or str(e)


def _open(path: Path) -> av.container.InputContainer:
    _check_readable(path)
    try:
        return av.open(str(path))
    except PermissionError:  # av.error.PermissionError is one too
        raise VideoNotFoundError(f"{path}: permission denied; make the file readable (chmod +r) or copy it") from None
    except (av.error.FFmpegError, OSError) as e:
        raise VideoDecodeError(
            f"{path} is not a media file FFmpeg can read ({_reason(e)}): it is no video at all, or it is incomplete "
            "(truncated, or still being written: an unfinished MP4 lacks its index) or corrupt; check that it "
            "plays in a media player, or wait until it has been written completely"
        ) from None


def _not_a_video(container: av.container.InputContainer) -> str | None:
    """What the file is when FFmpeg opens it as something other than a video (a text file, a still image)."""
    name = container.format.name
    return NOT_VIDEO_FORMATS.get(name) or ("an image" if name.endswith("_pipe") else None)


def _is_cover_art(stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _streams(container: av.container.InputContainer, path: Path):
    """(video stream, audio stream): the first of each; cover pictures of audio files do not count as video."""
    kind = _not_a_video(container)
    if kind:
        raise VideoDecodeError(
            f"{path} is {kind} ({container.format.name}), not a video; synchronisation needs a video with sound"
        )
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    audios = list(container.streams.audio)
    if not videos and not audios:
        held = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        raise MissingStreamError(f"{path} has neither video nor audio (it holds: {held}); give a video file with sound")
    if not videos:
        cover = " (only a cover picture)" if container.streams.video else ""
        raise MissingStreamError(
            f"{path} has no video stream{cover}; synchronisation needs both picture and sound"
        )
    if not audios:
        raise MissingStreamError(
            f"{path} has no audio stream; synchronisation needs both picture and sound (was it exported muted?)"
        )
    return videos[0], audios[0]


# ---------------------------------------------------------------------------------------------------------------
# Probing


def clockwise_rotation(ccw_degrees: float) -> int:
    """PyAV's ``VideoFrame.rotation`` (counter-clockwise degrees of the display matrix, in [-180, 180]) -> the
    clockwise turn a player applies, rounded to 0, 90, 180 or 270."""
    return int(round(-ccw_degrees / 90.0)) % 4 * 90


def rotate_clockwise(img: np.ndarray, degrees: int) -> np.ndarray:
    """(H, W, C) turned clockwise by ``degrees`` (a multiple of 90)."""
    return np.rot90(img, k=-(degrees // 90)) if degrees % 360 else img


def _first_frame(container: av.container.InputContainer, stream) -> av.VideoFrame | None:
    """The first video frame that decodes within :data:`ROTATION_PROBE_PACKETS` packets, or None."""
    for i, packet in enumerate(container.demux(stream)):
        if i >= ROTATION_PROBE_PACKETS:
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        if frames:
            return frames[0]
    return None


def _seconds(value, time_base) -> float:
    return float(value * time_base) if value is not None and time_base else 0.0


def probe(path: str | Path) -> MediaInfo:
    """Read a file's stream properties from its headers, and the rotation from its first frame.

    PyAV 18 exposes the display matrix only on decoded frames (``VideoFrame.rotation``), hence the one frame.
    """
    path = Path(path)
    with _open(path) as c:
        v, a = _streams(c, path)
        try:
            first = _first_frame(c, v)
        except av.error.FFmpegError:
            first = None
        width = v.codec_context.width or (first.width if first else 0)
        height = v.codec_context.height or (first.height if first else 0)
        if not width or not height:
            raise VideoDecodeError(f"{path}: the video stream has no picture size and no decodable frame; the file is damaged")
        return MediaInfo(
            path=path,
            fps=float(v.average_rate or v.guessed_rate or 0),
            width=width,
            height=height,
            sample_rate=a.codec_context.sample_rate,
            channels=a.codec_context.channels,
            duration_sec=float(c.duration / av.time_base) if c.duration else 0.0,
            video_codec=v.codec_context.name,
            audio_codec=a.codec_context.name,
            rotation=clockwise_rotation(first.rotation) if first is not None else 0,
            base_fps=float(v.base_rate or v.average_rate or 0),
            video_start_sec=_seconds(v.start_time, v.time_base),
            audio_start_sec=_seconds(a.start_time, a.time_base),
            container=c.format.name,
        )


# ---------------------------------------------------------------------------------------------------------------
# What normalised means, and the cache


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) after the reference rule ``scale=iw*S/min(iw,ih):ih*S/min(iw,ih)``, then crop to even sizes."""
    m = min(width, height)
    w, h = int(width * short_side / m), int(height * short_side / m)
    return w - w % 2, h - h % 2


def is_normalised(info: MediaInfo, data: DataConfig) -> bool:
    """True when a file is already at the model's constant fps, short side (even sizes) and sample rate,
    upright, with both streams starting together."""
    return (
        abs(info.fps - data.vfps) < 1e-6
        and abs(info.base_fps - data.vfps) < 1e-6
        and min(info.width, info.height) == data.size_before_crop
        and info.width % 2 == 0
        and info.height % 2 == 0
        and info.sample_rate == data.afps
        and info.rotation == 0
        and abs(info.video_start_sec - info.audio_start_sec) <= START_TOLERANCE_SEC
    )


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


def read_report(normalised: Path) -> dict[str, Any]:
    """The report of a normalised copy, or ``{}`` when there is none or it is not a readable JSON object."""
    try:
        if report_path(normalised).stat().st_size > MAX_REPORT_BYTES:
            return {}
        report = json.loads(report_path(normalised).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return report if isinstance(report, dict) else {}


def _verified_report(copy: Path, digest: str) -> dict[str, Any] | None:
    """The report of the cached ``copy`` when the copy is still the file that was written (size and sha256 as
    recorded), was made from the source with ``digest`` by this version, and the report is well formed; else
    None."""
    report = read_report(copy)
    try:
        size = copy.stat().st_size
    except OSError:
        return None
    notes = report.get("notes")
    if (
        report.get("version") != REENCODE_VERSION
        or report.get("source_digest") != digest
        or not (isinstance(notes, list) and all(isinstance(n, str) for n in notes))
        or not _finite_number(report.get("audio_delay_sec"))
        or report.get("copy_bytes") != size
    ):
        return None
    return report if report.get("copy_sha256") == file_sha256(copy) else None


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _discard(copy: Path) -> None:
    """Remove a cached copy and its report (whatever is there of them)."""
    for p in (copy, report_path(copy)):
        with suppress(FileNotFoundError):
            p.unlink()


def _temp_beside(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent, prefix=".partial-")
    os.close(fd)
    return Path(tmp)


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


def _cached_copy(
    path: Path, data: DataConfig, info: MediaInfo, *, rebuild: bool = False
) -> tuple[Path, dict[str, Any], bool]:
    """(the normalised copy of ``path`` in the cache, its report, whether it was built now).

    A copy is used only when :func:`_verified_report` vouches for it; one that does not (swapped, truncated,
    edited, no or a broken report, made from an older version of the source) is deleted and built again, as is
    any copy when ``rebuild``."""
    digest = source_digest(path)
    out = cache_dir() / "normalised" / f"{_cache_key(path, data, digest)}.mp4"
    report = None if rebuild else _verified_report(out, digest)
    if report is not None:
        return out, report, False
    _discard(out)
    return out, _build(path, out, info, data, digest), True


def normalise(
    path: str | Path, data: DataConfig, *, info: MediaInfo | None = None, force: bool = False, progress: bool = False
) -> Path:
    """Return a path to a copy of ``path`` at ``data.vfps`` fps, short side ``data.size_before_crop`` and
    ``data.afps`` Hz (H.264 + mono AAC in MP4), re-encoding it into the cache on first use (see the module
    docstring for what that does). Already-normalised inputs are returned as they are unless ``force``.

    A cached copy is checked on every use against the digest of its source and its own sha256 (both in its
    report) and rebuilt when it does not match (see :func:`_cached_copy`)."""
    path = Path(path)
    info = info or probe(path)
    if not force and is_normalised(info, data):
        return path
    return _cached_copy(path, data, info)[0]


# ---------------------------------------------------------------------------------------------------------------
# Re-encoding: pieces


@dataclass
class FrameClock:
    """Constant-rate output from timestamped input frames, as FFmpeg's ``fps`` filter (rounding to nearest).

    Output tick ``k`` (time ``t0 + k / fps``, ``t0`` the first input frame) shows the latest input frame whose
    time rounds to a tick at or before ``k``: frames are repeated or dropped by time, not by count. Feed frames
    in presentation order with :meth:`push`; each call says how many ticks the *previous* frame fills.
    """

    fps: float
    t0: float | None = None
    next_tick: int = 0  # first output tick not yet filled
    held: Any = None  # the input frame on screen now

    def _tick(self, t: float) -> int:
        return math.floor((t - self.t0) * self.fps + 0.5)  # halves up, as FFmpeg's AV_ROUND_NEAR_INF

    def push(self, t: float, item: Any) -> tuple[Any, int]:
        """Input frame ``item`` starts at ``t`` s: returns (previous frame, ticks it fills); 0 drops it."""
        if self.t0 is None:
            self.t0, self.held = t, item
            return None, 0
        tick = self._tick(t)
        prev, n = self.held, max(0, tick - self.next_tick)
        self.next_tick += n
        self.held = item
        return prev, n

    def finish(self, t_end: float) -> tuple[Any, int]:
        """The stream ends at ``t_end`` s: (last frame, ticks it fills), at least one output frame in all."""
        if self.t0 is None:
            return None, 0
        n = max(self._tick(t_end) - self.next_tick, 0 if self.next_tick else 1)
        self.next_tick += n
        return self.held, n


@dataclass
class TimeSorter:
    """Hands frames on with their timestamps sorted, keeping the frames in decoding order.

    Decoders output frames in presentation order, but some containers label them with permuted times: AVI
    stores only decoding times, so the frames of a stream with B-frames come out as 1, 3, 2, 5, 4, ...
    Pairing each frame with the smallest of the last ``depth`` timestamps undoes that (as FFmpeg's
    best-effort timestamps do) and changes nothing for well-ordered input.
    """

    depth: int = 16
    _times: list = field(default_factory=list)
    _items: deque = field(default_factory=deque)

    def push(self, t: float, item: Any) -> list[tuple[float, Any]]:
        heapq.heappush(self._times, t)
        self._items.append(item)
        return [self._pop()] if len(self._items) > self.depth else []

    def drain(self) -> list[tuple[float, Any]]:
        return [self._pop() for _ in range(len(self._items))]

    def _pop(self) -> tuple[float, Any]:
        return heapq.heappop(self._times), self._items.popleft()


def frame_ticks(times: list[float], fps: float, t_end: float) -> list[int]:
    """Index of the input frame each output tick shows, for frames starting at ``times`` (see :class:`FrameClock`)."""
    clock, out = FrameClock(fps), []
    for i, t in enumerate(times):
        prev, n = clock.push(t, i)
        out += [prev] * n
    last, n = clock.finish(t_end)
    return out + [last] * n


def audio_gap_sec(frame_sec: float) -> float:
    """Shortest jump in audio timestamps that is a real gap, after a frame of ``frame_sec`` seconds.

    Shorter jumps are timestamp noise and are ignored, as players and FFmpeg's own re-encoding do: containers
    round times (Matroska to 1 ms), and AVI stores VBR audio (AAC, MP3) with block-counted times that jump by a
    whole frame whenever a packet is larger than the first ones, without any sound missing."""
    return max(AUDIO_GAP_SEC, 2.5 * frame_sec)


@dataclass
class MonoTrack:
    """Audio frames -> one mono float32 track at ``rate`` Hz.

    Each frame is the mean over its channels; frames follow each other sample by sample, anchored at the first
    frame's time. Silence is inserted where samples are known to be missing: a timestamp jump of at least
    :func:`audio_gap_sec` (dropped sound, a damaged stretch the demuxer skipped) and packets that failed to
    decode (:meth:`lose`). Backward jumps are ignored. Resampled with FFmpeg's swresample.
    """

    rate: int
    start_sec: float | None = None  # time of the first sample
    src_rate: int = 0
    placed: int = 0  # source samples so far, silence included
    gap_sec: float = 0.0  # silence inserted for timestamp gaps
    lost_sec: float = 0.0  # silence inserted for packets that failed to decode
    _next_sec: float | None = None  # where the next frame should start
    _frame_sec: float = 0.0  # duration of the last frame
    _resampler: Any = None
    _chunks: list = field(default_factory=list)

    def add(self, frame: av.AudioFrame) -> None:
        x = _audio_to_mono([frame])
        t = float(frame.time) if frame.time is not None else None
        if self.start_sec is None:
            self.start_sec = t if t is not None else 0.0
            self.src_rate = frame.sample_rate
            self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.rate)
        elif frame.sample_rate != self.src_rate:
            raise VideoDecodeError(
                f"the audio sample rate changes from {self.src_rate} to {frame.sample_rate} Hz at "
                f"{t or 0:.2f} s; re-encode the audio to one rate (e.g. ffmpeg -ar 48000) first"
            )
        if t is not None and self._next_sec is not None and t - self._next_sec >= audio_gap_sec(self._frame_sec):
            self.gap_sec += t - self._next_sec
            self._silence(t - self._next_sec)
        self._frame_sec = len(x) / self.src_rate
        self._next_sec = (t if t is not None else self._next_sec or 0.0) + self._frame_sec
        self._feed(x)

    def lose(self, duration_sec: float | None) -> None:
        """A packet that should have held ``duration_sec`` (None: as long as the last frame) failed to decode."""
        if self.start_sec is None:
            return
        seconds = duration_sec or self._frame_sec
        self.lost_sec += seconds
        self._silence(seconds)
        self._next_sec = (self._next_sec or 0.0) + seconds

    def _silence(self, seconds: float) -> None:
        self._feed(np.zeros(round(seconds * self.src_rate), np.float32))

    def _feed(self, x: np.ndarray) -> None:
        if not len(x):
            return
        self.placed += len(x)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[None], dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = self.src_rate
        self._chunks += [f.to_ndarray()[0] for f in self._resampler.resample(frame)]

    def take(self) -> np.ndarray:
        """The samples resampled since the last call (float32), forgotten here: for streaming. :meth:`finish`
        then returns only what came after the last call."""
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """The whole track at ``rate`` (float32); empty when no frame was added."""
        if self._resampler is not None:
            self._chunks += [f.to_ndarray()[0] for f in self._resampler.resample(None)]
        return np.concatenate(self._chunks).astype(np.float32, copy=False) if self._chunks else np.zeros(0, np.float32)


def align_audio(track: np.ndarray, delay_sec: float, rate: int) -> np.ndarray:
    """Start the track at the video's first frame: ``delay_sec`` (audio start minus video start) > 0 puts that
    much silence before it, < 0 drops the audio before the first frame."""
    n = round(delay_sec * rate)
    return np.concatenate([np.zeros(n, np.float32), track]) if n > 0 else track[-n:]


@dataclass(frozen=True)
class LostPacket:
    """A packet that failed to decode: which stream, and how long it should have lasted (None: unknown)."""

    stream_index: int
    duration_sec: float | None


@dataclass
class PacketStats:
    """Packets read and failed per stream while demuxing and decoding."""

    packets: int = 0
    failed: int = 0
    error: str = ""


def _decode_packets(
    container: av.container.InputContainer, streams: list, stats: dict[int, PacketStats]
) -> Iterator[av.frame.Frame | LostPacket]:
    """Decoded frames of ``streams`` in file order. A packet that fails to decode is counted in ``stats`` and
    yields a :class:`LostPacket`; a read (demuxing) error ends the file there and is recorded under key -1."""
    packets = container.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            stats[-1] = PacketStats(error=_reason(e))
            return
        s = stats[packet.stream.index]
        s.packets += packet.size > 0
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            s.failed, s.error = s.failed + 1, s.error or _reason(e)
            duration = float(packet.duration * packet.time_base) if packet.duration and packet.time_base else None
            yield LostPacket(packet.stream.index, duration)
            continue
        yield from frames


def _damage_notes(src: Path, stats: dict[int, PacketStats], kinds: dict[int, str]) -> list[str]:
    """Notes on packets that failed; raises :class:`VideoDecodeError` when a stream is mostly undecodable."""
    notes = []
    for index, kind in kinds.items():
        s = stats[index]
        if s.failed and s.failed > MAX_BAD_PACKETS * s.packets:
            raise VideoDecodeError(
                f"{src}: {s.failed} of {s.packets} {kind} packets could not be decoded ({s.error}); the file is "
                "too damaged to use: re-export it or get an undamaged copy"
            )
        if s.failed:
            notes.append(
                f"{s.failed} of {s.packets} {kind} packets could not be decoded ({s.error}): the file is damaged "
                f"and the {kind} has holes there, so the answer may be unreliable"
            )
    return notes


def _picture(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> av.VideoFrame:
    """A source frame scaled (bicubic) and turned upright to ``size`` (w, h), in yuv420p."""
    w, h = size
    sw, sh = (h, w) if rotation in (90, 270) else (w, h)
    img = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="BICUBIC")
    img = np.ascontiguousarray(rotate_clockwise(img, rotation))
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


class _VideoOut:
    """Source frames -> the normalised video stream: timestamps sorted (:class:`TimeSorter`), frames picked by
    time (:class:`FrameClock`), each frame used scaled and turned upright once, then encoded."""

    def __init__(self, container: av.container.OutputContainer, stream, size: tuple[int, int], rotation: int,
                 fps: int, frame_sec: float):
        self.container, self.stream, self.size, self.rotation = container, stream, size, rotation
        self.time_base = Fraction(1, fps)
        self.sorter, self.clock = TimeSorter(), FrameClock(fps)
        self.frame_sec = frame_sec  # duration of the last frame: from the frame, else 1 / the average rate
        self.last_sec: float | None = None  # latest frame time seen
        self.written = 0

    def add(self, frame: av.VideoFrame) -> None:
        if frame.time is not None:
            t = float(frame.time)
        else:
            t = self.last_sec + self.frame_sec if self.last_sec is not None else 0.0
        if frame.duration and frame.time_base:
            self.frame_sec = float(frame.duration * frame.time_base)
        self.last_sec = t if self.last_sec is None else max(t, self.last_sec)
        for t_sorted, item in self.sorter.push(t, frame):
            self._write(*self.clock.push(t_sorted, item))

    def finish(self) -> tuple[float, float] | None:
        """Encode what is left; (first frame time, end of the last frame) in source seconds, None if no frame."""
        for t_sorted, item in self.sorter.drain():
            self._write(*self.clock.push(t_sorted, item))
        if self.clock.t0 is None:
            return None
        end = self.last_sec + self.frame_sec
        self._write(*self.clock.finish(end))
        self.container.mux(self.stream.encode(None))
        return self.clock.t0, end

    def _write(self, frame: av.VideoFrame | None, count: int) -> None:
        if frame is None or count <= 0:
            return
        picture = _picture(frame, self.size, self.rotation)
        for _ in range(count):
            picture.pts, picture.time_base = self.written, self.time_base
            self.container.mux(self.stream.encode(picture))
            self.written += 1


def _write_audio(container: av.container.OutputContainer, stream, track: np.ndarray, rate: int) -> None:
    for start in range(0, len(track), AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(track[None, start : start + AAC_FRAME]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


# ---------------------------------------------------------------------------------------------------------------
# Re-encoding


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
    """Write the normalised copy of ``src`` to ``dst``; returns the report (notes, audio delay, damage)."""
    size = target_size(*info.display_size, data.size_before_crop)
    with _open(src) as cin, _output(dst) as cout:
        vin, ain = _streams(cin, src)
        kinds = {vin.index: "video", ain.index: "audio"}  # stream attributes are invalid after closing
        vout = cout.add_stream("libx264", rate=data.vfps, options=dict(X264_OPTIONS))
        vout.width, vout.height, vout.pix_fmt = size[0], size[1], "yuv420p"
        aout = cout.add_stream("aac", rate=data.afps, layout="mono")
        aout.bit_rate = AAC_BITRATE

        video = _VideoOut(cout, vout, size, info.rotation, data.vfps, 1.0 / (info.fps or data.vfps))
        track = MonoTrack(data.afps)
        stats = {index: PacketStats() for index in kinds}
        for frame in _decode_packets(cin, [vin, ain], stats):
            if isinstance(frame, LostPacket):  # a lost video frame: the previous one stays until the next
                if kinds[frame.stream_index] == "audio":
                    track.lose(frame.duration_sec)
            elif isinstance(frame, av.AudioFrame):
                track.add(frame)
            else:
                video.add(frame)
        span = video.finish()
        if span is None:
            raise VideoDecodeError(f"{src}: the video stream has no decodable frames; the file is damaged or empty")
        audio = track.finish()
        if not len(audio):
            raise VideoDecodeError(f"{src}: the audio stream has no decodable samples; the file is damaged or empty")
        delay = track.start_sec - span[0]
        _write_audio(cout, aout, align_audio(audio, delay, data.afps), data.afps)

    notes = _damage_notes(src, stats, kinds)
    decoded_sec = max(span[1], track.start_sec + track.placed / track.src_rate) - min(span[0], track.start_sec)
    notes += _ending_notes(info.duration_sec, decoded_sec, stats[-1].error if -1 in stats else "")
    if track.gap_sec > AUDIO_GAP_SEC:
        notes.append(f"the audio has gaps ({track.gap_sec:.2f} s in all) that were filled with silence: the "
                     "recording dropped sound or the file is damaged, so the answer may be unreliable there")
    return {
        "version": REENCODE_VERSION,
        "notes": notes,
        "audio_delay_sec": round(delay, 6),
        "video_frames": video.written,
        "audio_gap_sec": round(track.gap_sec, 6),
        "failed_packets": {kind: stats[index].failed for index, kind in kinds.items()},
    }


def _ending_notes(header_sec: float, decoded_sec: float, read_error: str = "") -> list[str]:
    """Notes when reading stopped on an error, or the streams end well before the header's duration."""
    if read_error:
        return [f"reading stopped after {decoded_sec:.2f} s ({read_error}): the file is truncated or damaged "
                "there, and only what came before was used"]
    if header_sec and decoded_sec < header_sec - TRUNCATION_SEC:
        return [f"the file ends after {decoded_sec:.2f} s although its header says {header_sec:.2f} s: it "
                "is truncated or still being written, and only what is there was used"]
    return []


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def _audio_to_mono(frames: list[av.AudioFrame]) -> np.ndarray:
    """Decoded audio frames -> (N,) float32, the mean over channels."""
    chunks = []
    for frame in frames:
        if frame.format.is_planar and frame.format.name == "fltp":
            x = frame.to_ndarray()  # (C, n)
        else:
            x = frame.to_ndarray().astype(np.float32)
            if not frame.format.is_planar:
                x = x.reshape(-1, len(frame.layout.channels)).T
            if frame.format.name in ("s16", "s16p"):
                x = x / 32768.0
            elif frame.format.name in ("s32", "s32p"):
                x = x / 2147483648.0
            elif frame.format.name in ("u8", "u8p"):
                x = (x - 128.0) / 128.0
        chunks.append(x.astype(np.float32, copy=False))
    if not chunks:
        return np.zeros(0, np.float32)
    return np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)


def timing_problems(
    video_times: list[float | None], fps: float, audio_times: list[float | None], audio_lengths: list[int], sample_rate: int
) -> list[str]:
    """Why decoded streams cannot be used index by index: frames off the constant-rate grid (by half a frame or
    more), or an audio frame starting a gap (:func:`audio_gap_sec`) after, or as much before, the previous one's end."""
    problems = []
    if video_times and all(t is not None for t in video_times):
        t = np.sort(np.asarray(video_times, dtype=np.float64))  # the frames are in order; times may be permuted
        if np.abs(t - t[0] - np.arange(len(t)) / fps).max() >= 0.5 / fps:
            problems.append("video frames are not on a constant-rate grid")
    if len(audio_times) > 1 and all(t is not None for t in audio_times):
        t = np.asarray(audio_times, dtype=np.float64)
        seconds = np.asarray(audio_lengths, dtype=np.float64) / sample_rate
        jumps = t[1:] - (t[:-1] + seconds[:-1])
        if any(abs(j) >= audio_gap_sec(s) for j, s in zip(jumps, seconds[:-1])):
            problems.append("audio frames have gaps or overlaps")
    return problems


def _rgb_frames(frames: Iterator[av.VideoFrame], expected: int, path: Path) -> tuple[np.ndarray | None, list]:
    """Decoded video frames -> (RGB (T, H, W, 3) uint8, presentation times (T,) in seconds or None).

    Frames are converted one at a time into one array sized by the container's frame count (grown if that
    count is low), so memory holds the RGB frames once, not also a list of decoded frames.
    """
    buf, n, times = None, 0, []
    for f in frames:
        img = f.to_ndarray(format="rgb24")
        if buf is None:
            buf = np.empty((max(int(expected or 0), 1), *img.shape), np.uint8)
        elif img.shape != buf.shape[1:]:
            raise VideoDecodeError(f"{path}: the picture size changes within the video; let synchlib "
                                   "normalise it (read_video) or re-encode it to one size")
        if n == len(buf):
            buf = np.concatenate([buf, np.empty_like(buf)])
        buf[n] = img
        n += 1
        times.append(None if f.time is None else float(f.time))
    if buf is None:
        return None, times
    return (buf[:n] if n == len(buf) else buf[:n].copy()), times


def decode(path: str | Path, *, audio_priming: AudioPriming = "drop") -> Decoded:
    """Decode a whole file as it is (no normalisation): RGB frames, mono audio, rates and start times.

    ``meta["timing_problems"]`` lists why frames or samples cannot be taken index by index (variable frame rate,
    gaps); :func:`read_video` re-encodes such files.
    """
    if audio_priming not in AUDIO_PRIMING_OPTIONS:
        raise InvalidArgumentError(f"audio_priming must be one of {AUDIO_PRIMING_OPTIONS}, got {audio_priming!r}")
    path = Path(path)
    info = probe(path)
    with _open(path) as c:
        v, a = _streams(c, path)
        try:
            frames, vtimes = _rgb_frames(c.decode(v), expected=v.frames, path=path)
            video_start = vtimes[0] if vtimes and vtimes[0] is not None else 0.0
            c.seek(0)
            if audio_priming == "keep":
                a.codec_context.options = {"flags2": "skip_manual"}
            aframes = list(c.decode(a))
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{path}: decoding failed ({e}); the file may be truncated or corrupt") from None
        fps = float(v.average_rate or info.fps)  # read while open: stream attributes are invalid after closing
        sample_rate = a.codec_context.sample_rate
    if frames is None or len(frames) == 0:
        raise VideoDecodeError(f"{path}: the video stream has no decodable frames")
    audio = _audio_to_mono(aframes)
    if audio.size == 0:
        raise VideoDecodeError(f"{path}: the audio stream has no decodable samples")
    audio_start = float(aframes[0].time) if aframes[0].time is not None else 0.0
    problems = timing_problems(vtimes, fps,
                               [None if f.time is None else float(f.time) for f in aframes],
                               [f.samples for f in aframes], sample_rate)
    return Decoded(
        frames=frames,
        audio=audio,
        fps=fps,
        sample_rate=sample_rate,
        video_start_sec=video_start,
        audio_start_sec=audio_start,
        source=info,
        decoded_path=path,
        meta={"audio_priming": audio_priming, "timing_problems": problems},
    )


def _decode_as_is(path: Path, audio_priming: AudioPriming) -> Decoded | None:
    """:func:`decode` of a file that looked normalised, or None when it does not decode cleanly."""
    try:
        decoded = decode(path, audio_priming=audio_priming)
    except VideoDecodeError:
        return None
    return None if decoded.meta["timing_problems"] else decoded


def _decode_cached(
    path: Path, data: DataConfig, source: MediaInfo, audio_priming: AudioPriming
) -> tuple[Path, dict[str, Any], Decoded]:
    """(copy, its report, :func:`decode` of it) for the normalised copy of ``path`` in the cache. A cached copy
    that does not decode is deleted and built once more; a copy built now that does not decode is a
    :class:`VideoDecodeError`."""
    target, report, built = _cached_copy(path, data, source)
    if not built:
        try:
            return target, report, decode(target, audio_priming=audio_priming)
        except VideoDecodeError:
            target, report, _ = _cached_copy(path, data, source, rebuild=True)
    try:
        return target, report, decode(target, audio_priming=audio_priming)
    except VideoDecodeError as e:
        _discard(target)
        raise VideoDecodeError(
            f"{path}: the copy re-encoded to the model's format does not decode ({e}); convert the file to "
            "H.264/AAC MP4 with another tool and try that"
        ) from None


def read_video(
    path: str | Path, cfg: Config | DataConfig, *, audio_priming: AudioPriming = "drop"
) -> Decoded:
    """Decode ``path`` at the model's rates: normalise (re-encode, cached) when needed, then :func:`decode`.

    ``meta["notes"]`` lists reasons the input may be unreliable (damage found while re-encoding);
    ``meta["audio_delay_sec"]`` how much later the source's audio started than its video.
    """
    data = cfg.data if isinstance(cfg, Config) else cfg
    path = Path(path).expanduser()
    source = probe(path)
    target = path
    decoded = _decode_as_is(path, audio_priming) if is_normalised(source, data) else None
    if decoded is not None:
        extent = max(len(decoded.frames) / decoded.fps, len(decoded.audio) / decoded.sample_rate)
        report = {"notes": _ending_notes(source.duration_sec, extent),
                  "audio_delay_sec": source.audio_start_sec - source.video_start_sec}
    else:  # not normalised, or looked normalised but does not decode cleanly: the cached copy
        target, report, decoded = _decode_cached(path, data, source, audio_priming)
    decoded.source = source
    decoded.meta.update(notes=list(report.get("notes", [])), audio_delay_sec=report.get("audio_delay_sec", 0.0),
                        normalised=target != path)
    return decoded


# ---------------------------------------------------------------------------------------------------------------
# Streaming: normalised frames and samples a piece at a time, for videos of any length
#
# The same rules as normalisation (frames picked by time on the fps grid, the short side scaled, rotation applied,
# mono audio placed by its timestamps and started at the first video frame), without the H.264/AAC round trip and
# without ever holding more than one source frame. A file that is already normalised streams exactly what
# :func:`decode` (and so :func:`read_video`) gives.

FrameFilter = Callable[[int], bool]


def _clocked_frames(
    container: av.container.InputContainer, stream, stats: dict[int, PacketStats], clock: FrameClock, frame_sec: float
) -> Iterator[tuple[av.VideoFrame | None, int]]:
    """Decoded frames of ``stream`` on ``clock``'s constant-rate grid, timestamps sorted (:class:`TimeSorter`):
    (source frame, output ticks it fills), in order; 0 ticks is a dropped frame. ``frame_sec`` is the duration
    of a frame without one (1 / the average rate). Packets that fail to decode leave the previous frame on screen."""
    sorter = TimeSorter()
    last_sec: float | None = None
    for frame in _decode_packets(container, [stream], stats):
        if isinstance(frame, LostPacket):
            continue
        t = float(frame.time) if frame.time is not None else (last_sec + frame_sec if last_sec is not None else 0.0)
        if frame.duration and frame.time_base:
            frame_sec = float(frame.duration * frame.time_base)
        last_sec = t if last_sec is None else max(t, last_sec)
        for t_sorted, item in sorter.push(t, frame):
            yield clock.push(t_sorted, item)
    for t_sorted, item in sorter.drain():
        yield clock.push(t_sorted, item)
    if last_sec is not None:
        yield clock.finish(last_sec + frame_sec)


def _rgb(frame: av.VideoFrame, size: tuple[int, int], rotation: int, reformatter: VideoReformatter) -> np.ndarray:
    """A source frame as (h, w, 3) uint8 RGB at ``size`` (w, h), upright. A frame already at that size and upright
    is converted as :func:`decode` does (no scaling); others are scaled bicubically and turned as :func:`_picture`.
    ``reformatter`` keeps FFmpeg's conversion context between frames (same pixels as ``to_ndarray``, 3-6x faster)."""
    if rotation == 0 and (frame.width, frame.height) == tuple(size):
        return reformatter.reformat(frame, format="rgb24").to_ndarray()
    w, h = size
    sw, sh = (h, w) if rotation in (90, 270) else (w, h)
    img = reformatter.reformat(frame, width=sw, height=sh, format="rgb24", interpolation="BICUBIC").to_ndarray()
    return np.ascontiguousarray(rotate_clockwise(img, rotation))


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centred ``size`` x ``size`` crop, with Python's round (halves to even)."""
    if height < size or width < size:
        raise ClipTooShortError(f"frames of {width}x{height} are smaller than the {size}x{size} model input")
    return round((height - size) / 2), round((width - size) / 2)


def _center_box(size: tuple[int, int], crop: int) -> tuple[slice, slice]:
    """(rows, columns) of the centred ``crop`` x ``crop`` square in a (w, h) picture, as the model's crop."""

    top, left = center_crop_box(size[1], size[0], crop)
    return slice(top, top + crop), slice(left, left + crop)


def _stream_notes(path: Path, stats: dict[int, PacketStats], kinds: dict[int, str], decoded_sec: float) -> list[str]:
    """Damage and read-error notes of a streamed file (raises when a stream is mostly undecodable). An end before
    the header's duration is left to the caller, who knows both streams' lengths (:func:`ending_notes`)."""
    read_error = stats[-1].error if -1 in stats else ""
    return _damage_notes(path, stats, kinds) + (_ending_notes(0.0, decoded_sec, read_error) if read_error else [])


def ending_notes(header_sec: float, decoded_sec: float) -> list[str]:
    """A note when the streams (``decoded_sec``, the longer one) end well before the header's duration."""
    return _ending_notes(header_sec, decoded_sec)


def iter_video(
    path: str | Path,
    data: DataConfig,
    *,
    crop: bool = True,
    wanted: FrameFilter | None = None,
    notes: list[str] | None = None,
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Stream the frames of ``path`` at ``data.vfps`` as normalisation places them: ``(index, frame)`` pairs, frame
    (h, w, 3) uint8 RGB.

    Frames are picked by timestamp (:class:`FrameClock`, the rule of FFmpeg's ``fps`` filter), turned upright, the
    short side scaled (bicubic) to ``data.size_before_crop``; with ``crop`` only the model's centred
    ``data.input_size`` square is kept (a copy: the full frame is dropped at once). A file already at that size,
    upright, is converted without scaling, so a normalised file gives bit for bit ``decode(path).frames`` (cropped).
    Other files skip the H.264 round trip of :func:`normalise`, so they differ from :func:`read_video` by that
    re-encoding's loss only.

    ``wanted(index)`` False: the frame is not converted and comes as ``(index, None)`` (cheap; decoding cannot be
    skipped). A frame repeated by the clock is the same array each time: do not modify frames in place. Damage
    (packets that failed to decode, an early end) is appended to ``notes`` when the stream ends; more than half the
    packets failing raises :class:`VideoDecodeError` then. Memory: one source frame, one converted frame.
    """
    path = Path(path)
    info = probe(path)
    size = target_size(*info.display_size, data.size_before_crop)
    box = _center_box(size, data.input_size) if crop else None
    index = 0
    reformatter = VideoReformatter()
    with _open(path) as c:
        vin, _ = _streams(c, path)
        vin.thread_type = "AUTO"  # frame/slice threads: same pictures, faster for large frames
        kinds = {vin.index: "video"}
        stats = {vin.index: PacketStats()}
        for frame, count in _clocked_frames(c, vin, stats, FrameClock(data.vfps), 1.0 / (info.fps or data.vfps)):
            img = None
            for _ in range(count):
                if wanted is not None and not wanted(index):
                    yield index, None
                else:
                    if img is None:
                        img = _rgb(frame, size, info.rotation, reformatter)
                        img = np.ascontiguousarray(img[box]) if box is not None else img
                    yield index, img
                index += 1
    if index == 0:
        raise VideoDecodeError(f"{path}: the video stream has no decodable frames; the file is damaged or empty")
    if notes is not None:
        notes += _stream_notes(path, stats, kinds, index / data.vfps)


def first_frame_time(path: str | Path, data: DataConfig) -> float:
    """Presentation time (s) of the first video frame as normalisation's clock takes it (the earliest of the first
    timestamps, see :class:`TimeSorter`): where the streamed audio starts."""
    path = Path(path)
    with _open(path) as c:
        vin, _ = _streams(c, path)
        clock = FrameClock(data.vfps)
        for _ in _clocked_frames(c, vin, {vin.index: PacketStats()}, clock, 1.0 / data.vfps):
            break
    if clock.t0 is None:
        raise VideoDecodeError(f"{path}: the video stream has no decodable frames; the file is damaged or empty")
    return clock.t0


def _audio_only_stream(container: av.container.InputContainer, path: Path):
    """The first audio stream of any file (audio-only files included)."""
    if not container.streams.audio:
        held = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        raise MissingStreamError(f"{path} has no audio stream (it holds: {held}); give a file with sound")
    return container.streams.audio[0]


def _mono_chunks(
    container: av.container.InputContainer, stream, track: MonoTrack, stats: dict[int, PacketStats]
) -> Iterator[np.ndarray]:
    """The samples of ``stream`` as ``track`` makes them (mono, resampled, gaps silent), chunk by chunk."""
    for frame in _decode_packets(container, [stream], stats):
        if isinstance(frame, LostPacket):
            track.lose(frame.duration_sec)
        else:
            track.add(frame)
        chunk = track.take()
        if len(chunk):
            yield chunk
    chunk = track.finish()
    if len(chunk):
        yield chunk


def _aligned(chunks: Iterator[np.ndarray], shift: Callable[[], int]) -> Iterator[np.ndarray]:
    """``chunks`` started ``shift()`` samples later (silence first) or, when negative, that many samples earlier
    (dropped); ``shift`` is asked once, after the first chunk arrived."""
    drop = None
    for chunk in chunks:
        if drop is None:
            n = shift()
            if n > 0:
                yield np.zeros(n, np.float32)
            drop = max(0, -n)
        if drop:
            chunk, drop = chunk[drop:], max(0, drop - len(chunk))
        if len(chunk):
            yield chunk


def iter_audio(
    path: str | Path,
    data: DataConfig,
    *,
    video_start_sec: float | None = None,
    audio_priming: AudioPriming = "drop",
    notes: list[str] | None = None,
) -> Iterator[np.ndarray]:
    """Stream the sound of ``path`` as normalisation makes it: float32 (n,) chunks of one mono track at
    ``data.afps`` (mean over channels, FFmpeg's swresample, silence for timestamp gaps and undecodable packets).

    The track starts at the first video frame (``video_start_sec``, found with :func:`first_frame_time` when
    None): audio that starts later is preceded by silence, audio before it is dropped. A file that is already
    normalised is taken as it is (as :func:`read_video` does: no shift), so it gives exactly ``decode(path).audio``.
    Damage and gaps are appended to ``notes`` at the end. Memory: a few decoded frames.
    """
    if audio_priming not in AUDIO_PRIMING_OPTIONS:
        raise InvalidArgumentError(f"audio_priming must be one of {AUDIO_PRIMING_OPTIONS}, got {audio_priming!r}")
    path = Path(path)
    info = probe(path)
    as_is = is_normalised(info, data)
    if not as_is and video_start_sec is None:
        video_start_sec = first_frame_time(path, data)
    track = MonoTrack(data.afps)
    placed = 0

    def shift() -> int:
        return 0 if as_is else round((track.start_sec - video_start_sec) * data.afps)

    with _open(path) as c:
        _, ain = _streams(c, path)
        if audio_priming == "keep":
            ain.codec_context.options = {"flags2": "skip_manual"}
        kinds = {ain.index: "audio"}
        stats = {ain.index: PacketStats()}
        for chunk in _aligned(_mono_chunks(c, ain, track, stats), shift):
            placed += len(chunk)
            yield chunk
    if not placed:
        raise VideoDecodeError(f"{path}: the audio stream has no decodable samples; the file is damaged or empty")
    if notes is not None:
        notes += _stream_notes(path, stats, kinds, placed / data.afps)
        if track.gap_sec > AUDIO_GAP_SEC:
            notes.append(f"the audio has gaps ({track.gap_sec:.2f} s in all) that were filled with silence: the "
                         "recording dropped sound or the file is damaged, so the answer may be unreliable there")


def read_audio(path: str | Path, rate: int) -> np.ndarray:
    """The first audio stream of any file (wav, flac, m4a, mp3, or a video) as one mono float32 (N,) track at
    ``rate`` Hz: mean over channels, FFmpeg's swresample, silence for gaps. It starts at its first sample (its
    start time is not used: the track is taken to start with the video it goes with)."""
    path = Path(path)
    track = MonoTrack(rate)
    with _open(path) as c:
        if _not_a_video(c) == "a text file":
            raise VideoDecodeError(f"{path} is a text file, not audio; give a wav, flac, m4a, mp3 or video file")
        stream = _audio_only_stream(c, path)
        kinds = {stream.index: "audio"}
        stats = {stream.index: PacketStats()}
        chunks = list(_mono_chunks(c, stream, track, stats))
    _damage_notes(path, stats, kinds)  # raises when the stream is mostly undecodable
    if not chunks:
        raise VideoDecodeError(f"{path}: the audio stream has no decodable samples; the file is damaged or empty")
    return np.concatenate(chunks)
