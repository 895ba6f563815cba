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
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from .config import Config, DataConfig
from .errors import MissingStreamError, VideoDecodeError, VideoNotFoundError

AudioPriming = Literal["drop", "keep"]
AUDIO_PRIMING_OPTIONS = ("drop", "keep")
REENCODE_VERSION = 1  # bump when the re-encoding recipe changes, so cached files are rebuilt
X264_OPTIONS = {"crf": "18", "preset": "fast", "threads": "1"}
AAC_BITRATE = 128_000


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, read from its headers (and, for the duration, the streams)."""

    path: Path
    fps: float
    width: int
    height: int
    sample_rate: int
    channels: int
    duration_sec: float
    video_codec: str
    audio_codec: str
    rotation: int = 0


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
    meta: dict = field(default_factory=dict)

    @property
    def duration_sec(self) -> float:
        return min(len(self.frames) / self.fps, len(self.audio) / self.sample_rate)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file; check the path (relative paths are from {Path.cwd()})")
    if path.is_dir():
        raise VideoNotFoundError(f"{path} is a directory; give the path of a video file")
    if not os.access(path, os.R_OK):
        raise VideoNotFoundError(f"{path}: permission denied; make the file readable")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path} is empty (0 bytes); the file may still be being written")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoDecodeError(
            f"{path} is not a media file FFmpeg can read ({e.__class__.__name__}: {e}); "
            "check that it is a complete video with audio"
        ) from None


def _streams(container: av.container.InputContainer, path: Path):
    if not container.streams.video:
        raise MissingStreamError(f"{path} has no video stream; synchronisation needs both picture and sound")
    if not container.streams.audio:
        raise MissingStreamError(
            f"{path} has no audio stream; synchronisation needs both picture and sound (was it exported muted?)"
        )
    return container.streams.video[0], container.streams.audio[0]


def _rotation(stream) -> int:
    """Clockwise rotation in degrees that a player applies (from the display matrix), a multiple of 90."""
    for frame_attr in ("rotation",):
        pass
    try:
        matrix = stream.side_data.get("DISPLAYMATRIX") if hasattr(stream, "side_data") else None
    except Exception:  # pragma: no cover - depends on the PyAV build
        matrix = None
    if matrix is None:
        return 0
    return int(round(float(matrix))) % 360


def probe(path: str | Path) -> MediaInfo:
    """Read a file's stream properties without decoding it."""
    path = Path(path)
    with _open(path) as c:
        v, a = _streams(c, path)
        fps = float(v.average_rate or v.guessed_rate or 0)
        duration = float(c.duration / av.time_base) if c.duration else 0.0
        return MediaInfo(
            path=path,
            fps=fps,
            width=v.codec_context.width,
            height=v.codec_context.height,
            sample_rate=a.codec_context.sample_rate,
            channels=a.codec_context.channels,
            duration_sec=duration,
            video_codec=v.codec_context.name,
            audio_codec=a.codec_context.name,
            rotation=_rotation(v),
        )


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) after the reference rule ``scale=iw*S/min(iw,ih):ih*S/min(iw,ih)``, then crop to even sizes."""
    m = min(width, height)
    w, h = int(width * short_side / m), int(height * short_side / m)
    return w - w % 2, h - h % 2


def is_normalised(info: MediaInfo, data: DataConfig) -> bool:
    """True when a file is already at the model's fps, short side (even sizes) and sample rate."""
    return (
        abs(info.fps - data.vfps) < 1e-6
        and min(info.width, info.height) == data.size_before_crop
        and info.width % 2 == 0
        and info.height % 2 == 0
        and info.sample_rate == data.afps
        and info.rotation == 0
    )


def cache_dir() -> Path:
    """Where synchlib keeps downloads and normalised copies: ``$SYNCHLIB_CACHE`` or the user cache dir."""
    from .checkpoints import cache_dir as _cache_dir

    return _cache_dir()


def _cache_key(path: Path, data: DataConfig) -> str:
    st = path.stat()
    spec = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{data.vfps}|{data.size_before_crop}|{data.afps}|{REENCODE_VERSION}"
    return hashlib.sha256(spec.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def normalise(path: str | Path, data: DataConfig, *, progress: bool = False) -> Path:
    """Return a path to a copy of ``path`` at ``data.vfps`` fps, short side ``data.size_before_crop`` and
    ``data.afps`` Hz (H.264 + AAC in MP4), re-encoding it into the cache on first use. Already-normalised
    inputs are returned as they are."""
    path = Path(path)
    info = probe(path)
    if is_normalised(info, data):
        return path
    out = cache_dir() / "normalised" / f"{_cache_key(path, data)}.mp4"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=out.parent, prefix=".partial-")
    os.close(fd)
    try:
        _reencode(path, Path(tmp), info, data)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _frame_times(frames_pts: list[float], fps: float, t0: float, n_out: int) -> list[int]:
    """For each output tick k (time t0 + k/fps) the index of the input frame shown then.

    Each input frame i starts at ``frames_pts[i]`` and is assigned to tick ``round((pts - t0) * fps)``; an output
    tick shows the latest input frame assigned at or before it (frames are duplicated or dropped by time, not by
    count, as FFmpeg's ``fps`` filter does)."""
    ticks = [round((p - t0) * fps) for p in frames_pts]
    out, j = [], 0
    for k in range(n_out):
        while j + 1 < len(ticks) and ticks[j + 1] <= k:
            j += 1
        out.append(j)
    return out


def _reencode(src: Path, dst: Path, info: MediaInfo, data: DataConfig) -> None:
    w, h = target_size(info.width, info.height, data.size_before_crop)
    if info.rotation in (90, 270):
        w, h = target_size(info.height, info.width, data.size_before_crop)
    with _open(src) as cin, av.open(str(dst), "w", format="mp4") as cout:
        vin, ain = _streams(cin, src)
        vout = cout.add_stream("libx264", rate=data.vfps, options=dict(X264_OPTIONS))
        vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
        aout = cout.add_stream("aac", rate=data.afps)
        aout.bit_rate = AAC_BITRATE
        layout = ain.codec_context.layout.name if ain.codec_context.layout else "mono"
        aout.layout = layout

        # video: decode all frames with their times, then pick by time for the 25 fps grid
        pts, imgs = [], []
        for frame in cin.decode(vin):
            if frame.pts is None or frame.time is None:
                continue
            pts.append(float(frame.time))
            img = frame.to_ndarray(format="rgb24")
            if info.rotation:
                img = np.rot90(img, k=-info.rotation // 90)
            imgs.append(img)
        if not imgs:
            raise VideoDecodeError(f"{src}: the video stream has no decodable frames")
        order = np.argsort(pts, kind="stable")
        pts = [pts[i] for i in order]
        imgs = [imgs[i] for i in order]
        t0 = pts[0]
        last = pts[-1] + (pts[-1] - pts[-2] if len(pts) > 1 else 1.0 / max(info.fps, 1.0))
        n_out = max(1, round((last - t0) * data.vfps))
        for k, i in enumerate(_frame_times(pts, data.vfps, t0, n_out)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(imgs[i]), format="rgb24")
            frame = frame.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC")
            frame.pts = k
            frame.time_base = Fraction(1, data.vfps)
            for packet in vout.encode(frame):
                cout.mux(packet)
        for packet in vout.encode(None):
            cout.mux(packet)

        cin.seek(0)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=data.afps)
        for frame in cin.decode(ain):
            for out in resampler.resample(frame):
                for packet in aout.encode(out):
                    cout.mux(packet)
        for out in resampler.resample(None):
            for packet in aout.encode(out):
                cout.mux(packet)
        for packet in aout.encode(None):
            cout.mux(packet)


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


def decode(path: str | Path, *, audio_priming: AudioPriming = "drop") -> Decoded:
    """Decode a whole file as it is (no normalisation): RGB frames, mono audio, rates and start times."""
    if audio_priming not in AUDIO_PRIMING_OPTIONS:
        raise ValueError(f"audio_priming must be one of {AUDIO_PRIMING_OPTIONS}, got {audio_priming!r}")
    path = Path(path)
    info = probe(path)
    with _open(path) as c:
        v, a = _streams(c, path)
        try:
            vframes = [f for f in c.decode(v)]
            frames = np.stack([f.to_ndarray(format="rgb24") for f in vframes]) if vframes else None
            video_start = float(vframes[0].time) if vframes and vframes[0].time is not None else 0.0
            c.seek(0)
            if audio_priming == "keep":
                a.codec_context.options = {"flags2": "skip_manual"}
            aframes = list(c.decode(a))
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{path}: decoding failed ({e}); the file may be truncated or corrupt") from None
    if frames is None or len(frames) == 0:
        raise VideoDecodeError(f"{path}: the video stream has no decodable frames")
    audio = _audio_to_mono(aframes)
    if audio.size == 0:
        raise VideoDecodeError(f"{path}: the audio stream has no decodable samples")
    audio_start = float(aframes[0].time) if aframes[0].time is not None else 0.0
    return Decoded(
        frames=frames,
        audio=audio,
        fps=float(v.average_rate or info.fps),
        sample_rate=a.codec_context.sample_rate,
        video_start_sec=video_start,
        audio_start_sec=audio_start,
        source=info,
        decoded_path=path,
        meta={"audio_priming": audio_priming},
    )


def read_video(
    path: str | Path, cfg: Config | DataConfig, *, audio_priming: AudioPriming = "drop"
) -> Decoded:
    """Decode ``path`` at the model's rates: normalise (re-encode, cached) when needed, then :func:`decode`."""
    data = cfg.data if isinstance(cfg, Config) else cfg
    path = Path(path).expanduser()
    source = probe(path)
    decoded = decode(normalise(path, data), audio_priming=audio_priming)
    decoded.source = source
    return decoded
