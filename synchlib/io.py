"""Reading audio and video: one pipeline from a file to the model's frames and samples, on FFmpeg's filters.

What is read. The released models were trained and tested on videos that ffmpeg re-encoded to H.264 at 25 fps, a
256 px short side and AAC at 16 kHz (``ffmpeg -vf fps=25,scale=iw*256/min(iw,ih):ih*256/min(iw,ih),crop=
trunc(iw/2)*2:trunc(ih/2)*2 -ar 16000``). synchlib decides once, from the headers (:func:`is_normalised`): a file
already in that format (constant 25 fps, that short side with even sides, 16 kHz, upright, streams starting
together) is read as it is; any other file is re-encoded once, in-process, into the cache (H.264 + mono AAC in MP4,
the *normalised copy*, :mod:`synchlib.normalised`), and the copy is read. The H.264/AAC round trip is kept on
purpose: the reference makes it and the released models' training data went through it. ``predict``, ``sweep``,
``offset_over_time``, ``desync`` and training all read the file :func:`synchlib.normalised.prepare` names, so they
see the same frames and samples (a timeline window gives ``predict``'s logits at its start).

The pipeline. Each stream runs through an FFmpeg filter graph (``av.filter.Graph``), the same when making the copy
and when reading (:func:`iter_video`, :func:`iter_audio`: streaming, memory independent of the length), all by
presentation timestamps:

* Orientation: the display matrix's rotation (phone videos) is applied (``transpose``); flips are ignored.
* Frame rate: the ``fps`` filter, times counted from the first frame: output frame ``k`` shows the latest source
  frame whose time rounds to ``k / 25`` s or earlier, so 29.97, 60, 15 fps and variable rates are resampled by
  time, never by count. Timestamps a container stores permuted (AVI with B-frames) are sorted first.
* Size: ``scale`` (bicubic, the ffmpeg command line's default) by the reference's rule from the stored size (the
  sample aspect ratio is ignored, as there), then ``crop`` to even sides from the top left.
* Sound: the mean over all channels (``pan``), ``aresample`` to 16 kHz placed by timestamps (its ``async``): gaps
  of at least :func:`audio_gap_sec` and packets that fail to decode become silence. The copy's sound starts at the
  first video frame (silence before sound that starts later, sound before it dropped), so the copy is exactly as
  much in (or out of) sync as the source.
* Output: frames (h, w, 3) uint8 RGB as ``VideoFrame.to_ndarray(format="rgb24")`` converts them, samples float32
  mono; each stream keeps its length (:func:`synchlib.preprocess.equalify` cuts the longer one).
* Damage: a packet that fails to decode is skipped (the previous frame stays on screen, its sound is silent) and
  counted; a read error ends the stream there. Both, gaps, and a file ending before its header says are reported
  as notes (predictions carry them as warnings). More than half of a stream's packets failing is a
  :class:`VideoDecodeError`.

AAC priming. AAC encoders put 1024 samples of encoder delay before the first real sample and mark them for removal;
current FFmpeg drops them while decoding, some older stacks delivered them (shifting the sound 64 ms late).
``audio_priming="drop"`` (the default) gives what the golden fixtures show, ``"keep"`` keeps them.
"""

from __future__ import annotations

import heapq
import math
import os
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .checks import one_of
from .config import DataConfig
from .errors import ClipTooShortError, MissingStreamError, VideoDecodeError, VideoNotFoundError

AudioPriming = Literal["drop", "keep"]
AUDIO_PRIMING_OPTIONS = ("drop", "keep")
SCALE_FLAGS = "bicubic"  # the ffmpeg command line's default scaler, which the reference's re-encoding used
START_TOLERANCE_SEC = 1e-3  # streams starting closer than this start together (also aresample's min_comp default)
AUDIO_GAP_SEC = 0.1  # an audio timestamp jump counts as a gap from this long and 2.5 frames (see audio_gap_sec)
MAX_BAD_PACKETS = 0.5  # fraction of a stream's packets that may fail to decode before the file is refused
TRUNCATION_SEC = 0.5  # decoded streams ending this much before the header's duration are reported
ROTATION_PROBE_PACKETS = 64  # packets probe() reads at most to find the first frame (and its rotation)
SORT_DEPTH = 16  # frames over which permuted timestamps are sorted (see _sorted_times)
NOT_VIDEO_FORMATS = {"tty": "a text file", "image2": "an image"}  # demuxers FFmpeg picks for non-videos (+ *_pipe)
TURN_FILTERS = {90: ["transpose=clock"], 180: ["hflip", "vflip"], 270: ["transpose=cclock"]}  # clockwise turns


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read from its headers (the rotation from its first frame)."""

    path: Path
    fps: float  # average frame rate
    width: int  # stored size (before rotation)
    height: int
    sample_rate: int  # 0: no audio stream (only where none was required)
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
    """Decoded streams of one file, at the model's rates.

    frames: (T, H, W, 3) uint8 RGB. audio: (N,) float32 mono (mean over channels).
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    video_start_sec: float  # presentation time of the first video frame in the file read
    audio_start_sec: float  # presentation time of the first audio sample in the file read
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


def _held(container: av.container.InputContainer) -> str:
    return ", ".join(sorted({s.type for s in container.streams})) or "no streams"


def _streams(container: av.container.InputContainer, path: Path, *, audio: bool = True):
    """(video stream, audio stream or None): the first of each; cover pictures of audio files do not count as video.

    The one place that says what a file must hold: a video stream always, an audio stream when ``audio`` (a video
    whose sound comes from another file may be muted)."""
    kind = _not_a_video(container)
    if kind:
        raise VideoDecodeError(
            f"{path} is {kind} ({container.format.name}), not a video; synchronisation needs a video with sound"
        )
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    audios = list(container.streams.audio)
    if not videos and not audios:
        raise MissingStreamError(f"{path} has neither video nor audio (it holds: {_held(container)}); give a video "
                                 "file with sound")
    if not videos:
        cover = " (only a cover picture)" if container.streams.video else ""
        raise MissingStreamError(f"{path} has no video stream{cover}; synchronisation needs both picture and sound")
    if audio and not audios:
        raise MissingStreamError(
            f"{path} has no audio stream; synchronisation needs both picture and sound (was it exported muted?)"
        )
    return videos[0], (audios[0] if audios else None)


def _audio_only_stream(container: av.container.InputContainer, path: Path):
    """The first audio stream of any file (audio-only files included)."""
    if _not_a_video(container) == "a text file":
        raise VideoDecodeError(f"{path} is a text file, not audio; give a wav, flac, m4a, mp3 or video file")
    if not container.streams.audio:
        raise MissingStreamError(f"{path} has no audio stream (it holds: {_held(container)}); give a file with sound")
    return container.streams.audio[0]


# ---------------------------------------------------------------------------------------------------------------
# Probing


def clockwise_rotation(ccw_degrees: float) -> int:
    """PyAV's ``VideoFrame.rotation`` (counter-clockwise degrees of the display matrix, in [-180, 180]) -> the
    clockwise turn a player applies, rounded to 0, 90, 180 or 270."""
    return int(round(-ccw_degrees / 90.0)) % 4 * 90


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


def probe(path: str | Path, *, audio: bool = True) -> MediaInfo:
    """Read a file's stream properties from its headers, and the rotation from its first frame. ``audio`` False
    accepts a video without sound (its sound comes from another file).

    PyAV 18 exposes the display matrix only on decoded frames (``VideoFrame.rotation``), hence the one frame.
    """
    path = Path(path)
    with _open(path) as c:
        v, a = _streams(c, path, audio=audio)
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
            sample_rate=a.codec_context.sample_rate if a else 0,
            channels=a.codec_context.channels if a else 0,
            duration_sec=float(c.duration / av.time_base) if c.duration else 0.0,
            video_codec=v.codec_context.name,
            audio_codec=a.codec_context.name if a else "",
            rotation=clockwise_rotation(first.rotation) if first is not None else 0,
            base_fps=float(v.base_rate or v.average_rate or 0),
            video_start_sec=float(v.start_time * v.time_base) if v.start_time is not None else 0.0,
            audio_start_sec=float(a.start_time * a.time_base) if a and a.start_time is not None else 0.0,
            container=c.format.name,
        )


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) of the reference rule ``scale=iw*S/min(iw,ih):ih*S/min(iw,ih)`` (before the crop to even sides)."""
    m = min(width, height)
    return int(width * short_side / m), int(height * short_side / m)


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) of a normalised frame: :func:`scaled_size` cropped to even sides."""
    w, h = scaled_size(width, height, short_side)
    return w - w % 2, h - h % 2


def is_normalised(info: MediaInfo, data: DataConfig) -> bool:
    """True when a file is already at the model's constant fps, short side (even sizes) and sample rate,
    upright, with both streams starting together (the sound is not checked when there is none)."""
    return (
        abs(info.fps - data.vfps) < 1e-6
        and abs(info.base_fps - data.vfps) < 1e-6
        and min(info.width, info.height) == data.size_before_crop
        and info.width % 2 == 0
        and info.height % 2 == 0
        and info.rotation == 0
        and (not info.sample_rate or (info.sample_rate == data.afps
                                      and abs(info.video_start_sec - info.audio_start_sec) <= START_TOLERANCE_SEC))
    )


# ---------------------------------------------------------------------------------------------------------------
# Filter graphs and packets


def filter_graph(source: str, args: str, filters: Sequence[str]) -> av.filter.Graph:
    """A configured chain ``source (buffer or abuffer) -> filters -> sink``; each filter as ``"name=args"`` or
    ``"name"``. Push frames with ``graph.push`` (None at the end), take what is ready with :func:`drain`."""
    graph = av.filter.Graph()
    nodes = [graph.add(source, args)]
    for spec in filters:
        name, _, arg = spec.partition("=")
        nodes.append(graph.add(name, arg or None))
    nodes.append(graph.add("buffersink" if source == "buffer" else "abuffersink"))
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def drain(graph: av.filter.Graph) -> Iterator[av.frame.Frame]:
    """The frames ``graph`` has ready."""
    while True:
        try:
            yield graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return


@dataclass
class StreamStats:
    """What reading one stream found: packets read and failed, errors, where it starts and ends (source seconds),
    and the silence put into gaps of its timestamps."""

    packets: int = 0
    failed: int = 0
    error: str = ""  # the first decoding error
    read_error: str = ""  # the read (demuxing) error that ended the stream
    start_sec: float = 0.0
    end_sec: float = 0.0
    gap_sec: float = 0.0


@dataclass(frozen=True)
class LostPacket:
    """A packet that failed to decode, and how long it should have lasted (None: unknown)."""

    duration_sec: float | None


def _decoded(container: av.container.InputContainer, stream, stats: StreamStats) -> Iterator[Any]:
    """Decoded frames of ``stream`` in order; a :class:`LostPacket` for a packet that fails to decode (counted in
    ``stats``); a read error ends the stream there (recorded in ``stats``)."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as e:
            stats.read_error = _reason(e)
            return
        stats.packets += packet.size > 0
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            stats.failed, stats.error = stats.failed + 1, stats.error or _reason(e)
            yield LostPacket(float(packet.duration * packet.time_base) if packet.duration and packet.time_base else None)
            continue
        yield from frames


def ending_notes(header_sec: float, decoded_sec: float, read_error: str = "") -> list[str]:
    """Notes when reading stopped on an error, or the streams (``decoded_sec``, the longer one) end well before the
    header's duration."""
    if read_error:
        return [f"reading stopped after {decoded_sec:.2f} s ({read_error}): the file is truncated or damaged "
                "there, and only what came before was used"]
    if header_sec and decoded_sec < header_sec - TRUNCATION_SEC:
        return [f"the file ends after {decoded_sec:.2f} s although its header says {header_sec:.2f} s: it "
                "is truncated or still being written, and only what is there was used"]
    return []


def _stream_notes(path: Path, kind: str, stats: StreamStats) -> list[str]:
    """Notes on packets that failed, a read error and gaps; raises :class:`VideoDecodeError` when the stream is
    mostly undecodable."""
    notes = []
    if stats.failed and stats.failed > MAX_BAD_PACKETS * stats.packets:
        raise VideoDecodeError(
            f"{path}: {stats.failed} of {stats.packets} {kind} packets could not be decoded ({stats.error}); the "
            "file is too damaged to use: re-export it or get an undamaged copy"
        )
    if stats.failed:
        notes.append(f"{stats.failed} of {stats.packets} {kind} packets could not be decoded ({stats.error}): the "
                     f"file is damaged and the {kind} has holes there, so the answer may be unreliable")
    if stats.gap_sec > AUDIO_GAP_SEC:
        notes.append(f"the audio has gaps ({stats.gap_sec:.2f} s in all) that were filled with silence: the "
                     "recording dropped sound or the file is damaged, so the answer may be unreliable there")
    if stats.read_error:
        notes += ending_notes(0.0, stats.end_sec - stats.start_sec, stats.read_error)
    return notes


# ---------------------------------------------------------------------------------------------------------------
# The pipeline: a stream of a file -> the model's frames and samples


def _sorted_times(frames: Iterable[av.VideoFrame], default_step: int) -> Iterator[av.VideoFrame]:
    """The frames, in decoding order, with their timestamps (pts) sorted over :data:`SORT_DEPTH` frames.

    Decoders output frames in presentation order, but some containers label them with permuted times: AVI stores
    only decoding times, so the frames of a stream with B-frames come as 1, 3, 2, 5, 4, ... Pairing each frame with
    the smallest of the next timestamps undoes that (as FFmpeg's best-effort timestamps do) and changes nothing for
    well-ordered input. A frame without a timestamp gets its decoding time, else the latest one plus ``default_step``.
    """
    times: list[int] = []
    held: deque[av.VideoFrame] = deque()
    latest = None

    def oldest() -> av.VideoFrame:
        frame = held.popleft()
        frame.pts = heapq.heappop(times)
        return frame

    for frame in frames:
        pts = frame.pts if frame.pts is not None else frame.dts
        pts = pts if pts is not None else (0 if latest is None else latest + default_step)
        latest = pts if latest is None else max(pts, latest)
        heapq.heappush(times, pts)
        held.append(frame)
        if len(held) > SORT_DEPTH:
            yield oldest()
    while held:
        yield oldest()


def _video_filters(width: int, height: int, rotation: int, data: DataConfig, pix_fmt: str | None) -> list[str]:
    """The video filters for a stored ``width`` x ``height`` picture turned by ``rotation``: upright, the frame
    rate, the reference's scale and crop to even sides, and a conversion to ``pix_fmt`` (None: none)."""
    w, h = (height, width) if rotation in (90, 270) else (width, height)
    sw, sh = scaled_size(w, h, data.size_before_crop)
    filters = [*TURN_FILTERS.get(rotation, []), f"fps={data.vfps}", f"scale={sw}:{sh}:flags={SCALE_FLAGS}"]
    if sw % 2 or sh % 2:
        filters.append(f"crop={sw - sw % 2}:{sh - sh % 2}:0:0")
    return filters + ([f"format={pix_fmt}"] if pix_fmt else [])


def _video_frames(
    path: Path, data: DataConfig, stats: StreamStats, *, pix_fmt: str | None = None
) -> Iterator[av.VideoFrame]:
    """The frames of ``path``'s video through the pipeline (module docstring), as FFmpeg frames in the decoder's
    pixel format (or ``pix_fmt``), timestamps counted from the first frame; ``stats`` filled as they come."""
    with _open(path) as c:
        stream = _streams(c, path, audio=False)[0]
        stream.thread_type = "AUTO"  # frame/slice threads: same pictures, faster for large frames
        tb, graph, n = stream.time_base, None, 0
        decoded = (f for f in _decoded(c, stream, stats) if not isinstance(f, LostPacket))
        for frame in chain(_sorted_times(decoded, max(1, round(1 / ((stream.average_rate or data.vfps) * tb)))), [None]):
            if graph is None:
                if frame is None:
                    raise VideoDecodeError(f"{path}: the video stream has no decodable frames; the file is damaged or empty")
                t0, stats.start_sec = frame.pts, float(frame.pts * tb)
                graph = filter_graph(
                    "buffer",
                    f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}:time_base={tb}:pixel_aspect=1/1",
                    _video_filters(frame.width, frame.height, clockwise_rotation(frame.rotation), data, pix_fmt),
                )
            if frame is not None:
                frame.pts -= t0
            graph.push(frame)
            for out in drain(graph):
                n += 1
                stats.end_sec = stats.start_sec + n / data.vfps
                yield out


def audio_gap_sec(frame_sec: float) -> float:
    """Shortest jump in audio timestamps that is a real gap, after a frame of ``frame_sec`` seconds.

    Shorter jumps are timestamp noise and are ignored, as players and FFmpeg's own re-encoding do: containers
    round times (Matroska to 1 ms), and AVI stores VBR audio (AAC, MP3) with block-counted times that jump by a
    whole frame whenever a packet is larger than the first ones, without any sound missing."""
    return max(AUDIO_GAP_SEC, 2.5 * frame_sec)


def _silence(like: av.AudioFrame, seconds: float) -> av.AudioFrame:
    """A silent frame of ``seconds`` in the format, layout and rate of ``like``."""
    frame = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=max(1, round(seconds * like.sample_rate)))
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = like.sample_rate
    return frame


def _audio_chunks(
    path: Path, rate: int, stats: StreamStats, *, start_sec: float | None = None, priming: AudioPriming = "drop",
    any_file: bool = False,
) -> Iterator[np.ndarray]:
    """float32 (n,) chunks of one mono track of ``path``'s sound at ``rate`` Hz through the pipeline (module
    docstring), from its first sample or, with ``start_sec``, from that source time (silence before sound that
    starts later, sound before it dropped). ``any_file``: audio-only files too. ``stats`` filled as they come."""
    with _open(path) as c:
        stream = _audio_only_stream(c, path) if any_file else _streams(c, path)[1]
        if priming == "keep":
            stream.codec_context.options = {"flags2": "skip_manual"}
        tb = stream.time_base
        shift = 0 if start_sec is None else round(start_sec / tb)
        graph = first = frame = next_pts = None  # next_pts: where the next frame should start (in tb)
        placed = 0
        for item in chain(_decoded(c, stream, stats), [None]):
            if graph is None and isinstance(item, av.AudioFrame):
                first, channels = item, len(item.layout.channels)
                stats.start_sec = float((item.pts or 0) * tb)
                mix = [f"pan=mono|c0<{'+'.join(f'c{i}' for i in range(channels))}"] if channels > 1 else []
                align = f"async=1:min_hard_comp={audio_gap_sec(item.samples / item.sample_rate)}"
                graph = filter_graph(
                    "abuffer",
                    f"sample_rate={item.sample_rate}:sample_fmt={item.format.name}:channel_layout={item.layout.name}:"
                    f"time_base={tb}",
                    [*mix, f"aresample={rate}:{align}" + (":first_pts=0" if start_sec is not None else ""),
                     "aformat=sample_fmts=fltp:channel_layouts=mono"],
                )
            if graph is None:
                continue
            if isinstance(item, LostPacket):  # silence where it should have been
                frame = _silence(first, item.duration_sec or frame.samples / frame.sample_rate)
                frame.pts = next_pts
            elif item is not None:
                frame = item
                if frame.sample_rate != first.sample_rate:
                    raise VideoDecodeError(
                        f"{path}: the audio sample rate changes from {first.sample_rate} to {frame.sample_rate} Hz at "
                        f"{frame.time or 0:.2f} s; re-encode the audio to one rate (e.g. ffmpeg -ar 48000) first"
                    )
                if frame.pts is None:
                    frame.pts = next_pts or 0
                elif next_pts is not None and (frame.pts - next_pts) * tb >= audio_gap_sec(frame.samples / frame.sample_rate):
                    stats.gap_sec += float((frame.pts - next_pts) * tb)
            if item is not None:
                next_pts = max(next_pts or frame.pts, frame.pts + round(frame.samples / frame.sample_rate / tb))
                stats.end_sec = float(next_pts * tb)
                frame.pts -= shift
            graph.push(None if item is None else frame)
            for out in drain(graph):
                placed += out.samples
                yield out.to_ndarray()[0]
        if not placed:
            raise VideoDecodeError(f"{path}: the audio stream has no decodable samples; the file is damaged or empty")


# ---------------------------------------------------------------------------------------------------------------
# Readers: frames and samples as the model takes them

FrameFilter = Callable[[int], bool]


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centred ``size`` x ``size`` crop, with Python's round (halves to even)."""
    if height < size or width < size:
        raise ClipTooShortError(f"frames of {width}x{height} are smaller than the {size}x{size} model input")
    return round((height - size) / 2), round((width - size) / 2)


def iter_video(
    path: str | Path,
    data: DataConfig,
    *,
    crop: bool = True,
    wanted: FrameFilter | None = None,
    notes: list[str] | None = None,
    stats: StreamStats | None = None,
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Stream the frames of ``path`` at ``data.vfps`` through the pipeline (module docstring): ``(index, frame)``
    pairs, frame (h, w, 3) uint8 RGB; with ``crop`` only the model's centred ``data.input_size`` square (a copy:
    the full frame is dropped at once). The file is read as it is: give :func:`synchlib.normalised.prepare`'s
    file for the model's.

    ``wanted(index)`` False: the frame is not converted and comes as ``(index, None)`` (cheap; decoding cannot be
    skipped). Damage (packets that failed to decode, a read error) is appended to ``notes`` when the stream ends;
    more than half the packets failing raises :class:`VideoDecodeError` then. Memory: a few source frames."""
    path, stats = Path(path), StreamStats() if stats is None else stats
    reformatter = VideoReformatter()  # keeps FFmpeg's conversion context: same pixels as to_ndarray, 3-6x faster
    size = data.input_size
    for index, frame in enumerate(_video_frames(path, data, stats)):
        if wanted is not None and not wanted(index):
            yield index, None
            continue
        img = reformatter.reformat(frame, format="rgb24").to_ndarray()
        if crop:
            top, left = center_crop_box(*img.shape[:2], size)
            img = np.ascontiguousarray(img[top : top + size, left : left + size])
        yield index, img
    if notes is not None:
        notes += _stream_notes(path, "video", stats)


def iter_audio(
    path: str | Path,
    data: DataConfig,
    *,
    audio_priming: AudioPriming = "drop",
    notes: list[str] | None = None,
    stats: StreamStats | None = None,
) -> Iterator[np.ndarray]:
    """Stream the sound of ``path`` through the pipeline (module docstring): float32 (n,) chunks of one mono track
    at ``data.afps``, from the first sample of the file as it is (give :func:`synchlib.normalised.prepare`'s file
    for the model's).
    Damage and gaps are appended to ``notes`` at the end. Memory: a few decoded frames."""
    one_of("audio_priming", audio_priming, AUDIO_PRIMING_OPTIONS)
    path, stats = Path(path), StreamStats() if stats is None else stats
    yield from _audio_chunks(path, data.afps, stats, priming=audio_priming)
    if notes is not None:
        notes += _stream_notes(path, "audio", stats)


def read_audio(path: str | Path, rate: int) -> np.ndarray:
    """The first audio stream of any file (wav, flac, m4a, mp3, or a video) as one mono float32 (N,) track at
    ``rate`` Hz, through the pipeline. It starts at its first sample (its start time is not used: the track is
    taken to start with the video it goes with)."""
    path, stats = Path(path), StreamStats()
    chunks = list(_audio_chunks(path, rate, stats, any_file=True))
    _stream_notes(path, "audio", stats)  # raises when the stream is mostly undecodable
    return np.concatenate(chunks)


def _stack(images: Iterable[np.ndarray], expected: int) -> np.ndarray:
    """(T, H, W, 3) uint8 of the images, written into one array sized ``expected`` (grown when short), so that
    memory holds the frames once."""
    buf, n = None, 0
    for img in images:
        if buf is None:
            buf = np.empty((max(expected, 1), *img.shape), np.uint8)
        elif n == len(buf):
            buf = np.concatenate([buf, np.empty_like(buf)])
        buf[n] = img
        n += 1
    return buf[:n]


def decode(path: str | Path, data: DataConfig, *, audio_priming: AudioPriming = "drop") -> Decoded:
    """Read a whole file as it is (no re-encoding) through the pipeline: RGB frames at ``data.vfps`` (not cropped),
    the mono track at ``data.afps``. A file already normalised gives its own frames and samples.
    ``meta["notes"]``: damage, gaps, a file ending early."""
    path = Path(path)
    info = probe(path)
    notes: list[str] = []
    vstats, astats = StreamStats(), StreamStats()
    frames = _stack((f for _, f in iter_video(path, data, crop=False, notes=notes, stats=vstats)),
                    math.ceil(info.duration_sec * data.vfps) + 1)
    audio = np.concatenate(list(iter_audio(path, data, audio_priming=audio_priming, notes=notes, stats=astats)))
    if not (vstats.read_error or astats.read_error):
        notes += ending_notes(info.duration_sec, max(len(frames) / data.vfps, len(audio) / data.afps))
    return Decoded(frames=frames, audio=audio, fps=float(data.vfps), sample_rate=data.afps,
                   video_start_sec=vstats.start_sec, audio_start_sec=astats.start_sec, source=info, decoded_path=path,
                   meta={"audio_priming": audio_priming, "notes": notes})
