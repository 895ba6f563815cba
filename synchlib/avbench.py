"""The inputs of av-benchmark's DeSync, reproduced on current libraries (``protocol="av-benchmark"``).

av-benchmark (https://github.com/hkchengrex/av-benchmark), the evaluation code behind the DeSync numbers that
video-to-audio papers report, prepares a (video, audio) pair for Synchformer differently from Synchformer's own
test pipeline (:mod:`synchlib.preprocess`). What it does, and how this module does the same on today's stack
(its code was read, none was copied):

* Frames: torio's ``add_basic_video_stream(frame_rate=25, format="rgb24")``, i.e. the FFmpeg filter graph
  ``fps=25,format=pix_fmts=rgb24`` fed with the decoded frames (timestamps as decoded), first 200 frames (8 s).
  Here: the same graph through PyAV's ``av.filter.Graph`` (:func:`iter_rgb_frames`). The display matrix
  (rotation) is not applied, as there. On the parity clips (H.264, yuv420p) the RGB bytes of PyAV's FFmpeg equal
  those of the FFmpeg 5.1 that av-benchmark's torio used.
* Transform: torchvision v2 ``Resize(224, BICUBIC)`` on uint8 (short side 224, long side ``int(224 * long /
  short)``; on uint8 CPU tensors it is ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` run on
  the uint8 values), ``CenterCrop(224)``, ``ToDtype(float32, scale=True)`` (``x * (1 / 255)``) and
  ``Normalize(0.5, 0.5)`` (:func:`resize_crop`, :func:`frames_to_input`).
* Sound: ``torchaudio.load`` (FFmpeg; samples as float, e.g. int16 / 32768), mean over channels,
  ``torchaudio.transforms.Resample(sr, 16000)`` with its defaults when ``sr != 16000`` (:func:`resample`, a
  windowed-sinc polyphase filter computed as torchaudio computes it), first 128 000 samples; shorter sound is an
  error there and here (:func:`read_wave`).
* Segments from frame 0 / sample 0: 16 frames every 8, 10 240 samples every 5 120 (24 of each in 8 s); the log-mel
  of each audio segment as Synchformer computes it (:func:`synchlib.preprocess.log_mel`: torchaudio's
  ``MelSpectrogram(16000, win_length=400, hop_length=160, n_fft=1024, n_mels=128)``, ``log(x + 1e-6)``, pad or cut
  to 66 frames, ``(x + 4.2677393) / (2 * 4.5689974)``).
* DeSync (``av_bench/evaluate.py``): the model compares the first 14 and the last 14 segments; each of the two
  windows scores ``|grid[argmax]|``; the DeSync of a set is the mean over all windows.

The numbers come from the model's config (rates, segment layout, input size, normalisation, mel): for the
released ``24-01-04T16-39-21`` model they are exactly av-benchmark's; a smaller model (the tiny teaching model)
gets the same recipe at its own sizes. Only the 8 s length is this protocol's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig
from .errors import ClipTooShortError, VideoDecodeError
from .io import _audio_only_stream, _open, _reason, _streams, drain, filter_graph
from .model import Synchformer, autocast
from .preprocess import log_mel

DURATION_SEC = 8.0  # av-benchmark's --audio_length default: the first 8 s of both streams are scored
PIXEL_SCALE = 1 / 255  # torchvision's ToDtype(float32, scale=True) multiplies uint8 values by this
RESAMPLE_LOWPASS_WIDTH = 6  # torchaudio.transforms.Resample defaults: zero crossings of the windowed sinc
RESAMPLE_ROLLOFF = 0.99  # ... and the cut-off as a fraction of the lower Nyquist frequency


# ---------------------------------------------------------------------------------------------------------------
# Lengths


def frame_count(data: DataConfig) -> int:
    """Frames scored: ``int(vfps * 8 s)`` (200)."""
    return int(data.vfps * DURATION_SEC)


def sample_count(data: DataConfig) -> int:
    """Samples scored: ``int(afps * 8 s)`` (128 000)."""
    return int(data.afps * DURATION_SEC)


# ---------------------------------------------------------------------------------------------------------------
# Frames


def _fps_graph(stream, first: av.VideoFrame, fps: int) -> av.filter.Graph:
    """The filter graph ``buffer -> fps=FPS -> format=pix_fmts=rgb24 -> buffersink`` (:func:`synchlib.io.filter_graph`),
    with the source described as torio describes it (size and pixel format of the frames, the stream's time base,
    frame rate and sample aspect ratio)."""
    rate = stream.guessed_rate or stream.average_rate or Fraction(fps)
    sar = stream.codec_context.sample_aspect_ratio or Fraction(0, 1)
    args = (f"video_size={first.width}x{first.height}:pix_fmt={first.format.name}:time_base={stream.time_base}:"
            f"frame_rate={rate.numerator}/{rate.denominator}:pixel_aspect={sar.numerator}/{sar.denominator}")
    return filter_graph("buffer", args, [f"fps={fps}", "format=pix_fmts=rgb24"])


def iter_rgb_frames(path: str | Path, fps: int) -> Iterator[np.ndarray]:
    """The frames of ``path``'s first video stream after FFmpeg's ``fps`` filter and conversion to RGB, as
    torio's ``add_basic_video_stream(frame_rate=fps, format="rgb24")`` gives them: (H, W, 3) uint8 each, at the
    stored size, not rotated. Stops when the caller stops."""
    path = Path(path)
    with _open(path) as c:
        stream = _streams(c, path, audio=False)[0]
        graph = None
        try:
            for index, frame in enumerate(c.decode(stream)):
                if graph is None:
                    graph = _fps_graph(stream, frame, fps)
                if frame.pts is None:  # no timestamp: torio falls back to the decoder's estimate
                    frame.pts = frame.dts if frame.dts is not None else index
                graph.push(frame)
                yield from (f.to_ndarray() for f in drain(graph))
            if graph is not None:
                graph.push(None)
                yield from (f.to_ndarray() for f in drain(graph))
        except av.error.FFmpegError as e:
            raise VideoDecodeError(
                f"{path}: the video could not be decoded ({_reason(e)}); the file is damaged"
            ) from None


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after torchvision's ``Resize(size)``: the short side becomes ``size``, the long side
    ``int(size * long / short)``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> uint8 (n, 3, size, size): torchvision v2 ``Resize(size, BICUBIC)`` (antialiased, on
    the uint8 values) then ``CenterCrop(size)`` (offsets ``int(round((H - size) / 2))``)."""
    h, w = resized_size(*frames.shape[-2:], size)
    x = F.interpolate(frames, size=[h, w], mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return x[..., top : top + size, left : left + size]


def read_frames(path: str | Path, data: DataConfig) -> np.ndarray:
    """The scored frames of ``path``: (T, 3, S, S) uint8 (T = :func:`frame_count`, S = ``data.input_size``), each
    resized and cropped as it is decoded (memory: T small frames). Raises :class:`ClipTooShortError` when the
    video gives fewer than T frames at ``data.vfps``."""
    n = frame_count(data)
    out = np.empty((n, 3, data.input_size, data.input_size), np.uint8)
    got = 0
    frames = iter_rgb_frames(path, data.vfps)
    try:
        for frame in frames:
            out[got] = resize_crop(torch.from_numpy(frame).permute(2, 0, 1)[None], data.input_size)[0].numpy()
            got += 1
            if got == n:
                break
    finally:
        frames.close()
    if got < n:
        raise ClipTooShortError(
            f"{path} gives {got} frames at {data.vfps} fps ({got / data.vfps:.2f} s); av-benchmark's DeSync scores "
            f"the first {DURATION_SEC:g} s ({n} frames), so this pair cannot be scored in av-benchmark mode"
        )
    return out


def frames_to_input(frames: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (..., 3, H, W): torchvision's ``ToDtype(float32, scale=True)``
    (``x * (1 / 255)``) then ``Normalize(rgb_mean, rgb_std)`` (``(x - mean) / std``), the same float32 operations."""
    mean = torch.tensor(data.rgb_mean, dtype=torch.float32, device=frames.device)[:, None, None]
    std = torch.tensor(data.rgb_std, dtype=torch.float32, device=frames.device)[:, None, None]
    return (frames.float().mul(PIXEL_SCALE) - mean) / std


# ---------------------------------------------------------------------------------------------------------------
# Sound


@lru_cache(maxsize=16)
def _resample_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """(kernel (new, 1, 2 * width + orig) float32, width) of torchaudio's windowed-sinc resampler for the
    gcd-reduced rates ``orig -> new`` (Hann window, :data:`RESAMPLE_LOWPASS_WIDTH` zero crossings, cut-off
    :data:`RESAMPLE_ROLLOFF` of the lower Nyquist frequency), computed in float64 as its transform computes it.

    Output phase ``j`` (time ``j / new``) weighs input ``i`` (time ``i / orig``, relative to the block start) with
    ``sinc(pi * base * (i / orig - j / new)) * hann`` where ``base = min(orig, new) * rolloff``, scaled by
    ``base / orig``; the arguments are clamped to +-lowpass width, where the Hann window is zero.
    """
    base = min(orig, new) * RESAMPLE_ROLLOFF
    width = math.ceil(RESAMPLE_LOWPASS_WIDTH * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K)
    phases = torch.arange(0, -new, -1)[:, None, None] / new  # (new, 1, 1), float32 as torchaudio builds it
    t = ((phases + taps) * base).clamp_(-RESAMPLE_LOWPASS_WIDTH, RESAMPLE_LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / RESAMPLE_LOWPASS_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * (window * (base / orig))
    return kernel.to(torch.float32), width


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """float32 (..., N) at ``orig_rate`` -> (..., ceil(N * new / orig)) at ``new_rate``, equal to
    ``torchaudio.transforms.Resample(orig_rate, new_rate)(wave)`` (its defaults): a polyphase convolution with
    stride ``orig`` over the zero-padded signal, the ``new`` phases interleaved."""
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    kernel, width = _resample_kernel(orig, new)
    shape, n = wave.shape[:-1], wave.shape[-1]
    x = F.pad(wave.reshape(-1, n), (width, width + orig))
    y = F.conv1d(x[:, None], kernel, stride=orig)  # (B, new, blocks)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(new * n / orig)]
    return y.reshape(*shape, -1)


def _input_needed(n_out: int, orig_rate: int, new_rate: int) -> int:
    """Input samples that decide the first ``n_out`` outputs of :func:`resample` (the rest only pad)."""
    if orig_rate == new_rate:
        return n_out
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    _, width = _resample_kernel(orig, new)
    return math.ceil(n_out / new) * orig + orig + width


def read_channels(path: str | Path, needed: Callable[[int], int] | None = None) -> tuple[np.ndarray, int]:
    """(float32 (C, N) samples as FFmpeg's float conversion gives them, sample rate) of the first audio stream of
    any file (wav, flac, m4a, mp3, or a video), as ``torchaudio.load`` reads it. ``needed(rate)``: decoding stops
    once that many samples per channel are in (None: the whole stream)."""
    path = Path(path)
    chunks: list[np.ndarray] = []
    have, rate = 0, 0
    with _open(path) as c:
        stream = _audio_only_stream(c, path)
        to_float = av.AudioResampler(format="fltp")  # layout and rate kept: only the sample format changes
        try:
            for frame in c.decode(stream):
                for out in to_float.resample(frame):
                    chunks.append(out.to_ndarray())
                    have, rate = have + out.samples, out.sample_rate
                if needed is not None and rate and have >= needed(rate):
                    break
            else:
                for out in to_float.resample(None):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
        except av.error.FFmpegError as e:
            raise VideoDecodeError(
                f"{path}: the audio could not be decoded ({_reason(e)}); the file is damaged"
            ) from None
    if not chunks:
        raise VideoDecodeError(f"{path}: the audio stream has no decodable samples; the file is damaged or empty")
    return np.concatenate(chunks, axis=1), rate


def read_wave(path: str | Path, data: DataConfig) -> np.ndarray:
    """The scored sound of ``path``: (N,) float32 at ``data.afps`` (N = :func:`sample_count`): the mean over
    channels, :func:`resample`, the first N samples (only as much of the file is decoded as they depend on).
    Raises :class:`ClipTooShortError` when there are fewer."""
    n = sample_count(data)
    channels, rate = read_channels(path, lambda rate: _input_needed(n, rate, data.afps))
    wave = resample(torch.from_numpy(channels).mean(dim=0), rate, data.afps)
    if len(wave) < n:
        raise ClipTooShortError(
            f"{path} holds {channels.shape[1] / rate:.2f} s of sound; av-benchmark's DeSync scores the first "
            f"{DURATION_SEC:g} s, so this pair cannot be scored in av-benchmark mode"
        )
    return wave[:n].numpy()


@dataclass
class PairInputs:
    """What a (video, audio) pair gives the model: ``frames`` (T, 3, S, S) uint8, ``wave`` (N,) float32."""

    frames: np.ndarray
    wave: np.ndarray


def read_pair(video: str | Path, audio: str | Path | None, data: DataConfig) -> PairInputs:
    """The scored frames of ``video`` and sound of ``audio`` (None: the video's own track)."""
    return PairInputs(read_frames(video, data), read_wave(video if audio is None else audio, data))


# ---------------------------------------------------------------------------------------------------------------
# Features and windows


def video_segments(frames: np.ndarray | torch.Tensor, data: DataConfig) -> torch.Tensor:
    """uint8 (T, 3, S, S) -> (n, L, 3, S, S): the whole segments of L frames every ``step_vframes`` from frame 0
    (24 in 8 s), a view."""
    x = torch.as_tensor(frames)
    return x.unfold(0, data.segment_size_vframes, data.step_vframes).permute(0, 4, 1, 2, 3)


def audio_segments(wave: np.ndarray | torch.Tensor, data: DataConfig) -> torch.Tensor:
    """float32 (N,) -> (n, La): the whole segments of La samples every ``step_asamples`` from sample 0 (24 in
    8 s), a view."""
    return torch.as_tensor(wave).unfold(0, data.segment_size_asamples, data.step_asamples)


def _in_batches(compute: Callable[[torch.Tensor], torch.Tensor], segments: Sequence[torch.Tensor],
                batch_size: int) -> torch.Tensor:
    """Features (n, t, D) of ``segments``, stacked and computed ``batch_size`` at a time."""
    return torch.cat([compute(torch.stack(list(segments[i : i + batch_size])))
                      for i in range(0, len(segments), batch_size)])


def pair_features(
    model: Synchformer, pairs: Sequence[PairInputs], *, batch_size: int, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vfeats (P, n, tv, D), afeats (P, n, ta, D)), float32 on the model's device, of P pairs: every segment of
    every pair, ``batch_size`` segments per extractor call (segments of several pairs share a call).

    Video: the model input is :func:`frames_to_input` of the uint8 frames (float32, as torchvision computes it);
    audio: :func:`synchlib.preprocess.log_mel` of each segment, as av-benchmark's encoder computes it.
    """
    data = model.cfg.data
    vsegs = [s for p in pairs for s in video_segments(p.frames, data)]
    asegs = [s for p in pairs for s in audio_segments(p.wave, data)]

    def video(x: torch.Tensor) -> torch.Tensor:  # (b, L, 3, S, S) uint8 -> (b, tv, D)
        vid = frames_to_input(x.to(model.device), data)
        with autocast(model.device, precision):
            return model.extract_vfeats(vid[None])[0].float()

    def audio(x: torch.Tensor) -> torch.Tensor:  # (b, La) float32 -> (b, ta, D)
        aud = log_mel(x.to(model.device), data, model.cfg.audio.max_spec_t)
        with autocast(model.device, precision):
            return model.extract_afeats(aud[None])[0].float()

    vf, af = _in_batches(video, vsegs, batch_size), _in_batches(audio, asegs, batch_size)
    return vf.unflatten(0, (len(pairs), -1)), af.unflatten(0, (len(pairs), -1))


def window_logits(
    model: Synchformer, vfeats: torch.Tensor, afeats: torch.Tensor, *, batch_size: int, precision: str = "fp32"
) -> torch.Tensor:
    """vfeats (P, n, tv, D), afeats (P, n, ta, D) -> logits (P, 2, classes), float32 on the CPU: the model's
    answer for the first and for the last ``n_segments`` (14) segments of each pair (av-benchmark's
    ``compare_v_a(vfeats[:, :14], afeats[:, :14])`` and ``[:, -14:]``), ``batch_size`` windows per call."""
    S = model.cfg.data.n_segments
    v = torch.stack([vfeats[:, :S], vfeats[:, -S:]], dim=1).flatten(0, 1)  # (2P, S, tv, D)
    a = torch.stack([afeats[:, :S], afeats[:, -S:]], dim=1).flatten(0, 1)
    out = []
    for i in range(0, len(v), batch_size):
        with autocast(model.device, precision):
            out.append(model.sync_logits(v[i : i + batch_size], a[i : i + batch_size]).float().cpu())
    return torch.cat(out).unflatten(0, (len(vfeats), 2))
