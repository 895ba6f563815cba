"""The reference test-time pipeline, step by step, as pure functions.

Order (each step is one function below): equalise the stream lengths from the right (:func:`equalify`),
centre-crop the frames (:func:`center_crop_box`), cut a ``crop_len_sec`` window with the audio shifted by the
offset (:func:`temporal_crop`), split it into overlapping segments (:func:`segment_layout`), turn frames into the
model's input through the reference's fp16 normalisation (:func:`frames_to_input`), and the audio into normalised log-mel
spectrograms (:func:`log_mel`). :func:`load_clip` runs all of them on a file.

Sign convention: a positive offset means the audio crop starts later in the source than the video crop, i.e.
the audio is *ahead* of (early relative to) the picture.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import flag, one_of, real
from .config import Config, DataConfig, load_config
from .errors import ClipTooShortError, InvalidArgumentError, OffsetOutsideGridWarning, UnreliableInputWarning
from .io import AUDIO_PRIMING_OPTIONS, AudioPriming, Decoded, center_crop_box
from .normalised import read_video

MEL_EPS = 1e-6  # added before the log
SPEC_PAD_VALUE = 0.0  # PadOrTruncate pads the log-mel with this (before the AST normalisation)


# ---------------------------------------------------------------------------------------------------------------
# Geometry of the window


def equalify(n_frames: int, n_samples: int, data: DataConfig) -> tuple[int, int]:
    """Cut both streams from the right to a common length of at most ``clip_max_len_sec``.

    Returns (video frames, audio samples) to keep.
    """
    min_len = min(data.clip_max_len_sec, n_samples / data.afps, n_frames / data.vfps)
    v = int(data.vfps * min_len)
    return v, int((data.afps // data.vfps) * v)


def grid_warning(offset_sec: float, data: DataConfig) -> str | None:
    """Why ``offset_sec`` has no target class (it lies outside the offset grid), or None when it has one."""
    grid = data.grid
    half_step = (grid[1] - grid[0]) / 2 if len(grid) > 1 else 0.0
    if grid[0] - half_step - 1e-9 <= offset_sec <= grid[-1] + half_step + 1e-9:
        return None
    return (
        f"offset {offset_sec:+.2f} s lies outside the model's offset grid "
        f"[{grid[0]:+.1f}, {grid[-1]:+.1f}] s: there is no target class and the prediction cannot be right"
    )


def offset_class(offset_sec: float, data: DataConfig) -> int | None:
    """Index of the grid offset nearest to ``offset_sec``; None (with a warning) outside the grid."""
    message = grid_warning(offset_sec, data)
    if message:
        warnings.warn(message, OffsetOutsideGridWarning, stacklevel=3)
        return None
    return int(np.abs(data.grid - np.float32(offset_sec)).argmin())


@dataclass(frozen=True)
class Window:
    """Where one model window lies in the decoded streams (indices into frames / mono samples)."""

    v_start: int  # first frame of the crop
    a_start: int  # first sample of the crop
    v_len: int  # crop length in frames
    a_len: int  # crop length in samples
    offset_sec: float  # the applied offset, rounded as the reference does
    start_sec: float


def max_shift_sec(data: DataConfig) -> float:
    """The largest ``start_sec`` and ``|offset_sec|`` a window can have: a clip is cut to ``clip_max_len_sec``
    (10 s) and the window is ``crop_len_sec`` (5 s) long, so 5 s with the released layout."""
    return data.clip_max_len_sec - data.crop_len_sec


def check_window(offset_sec: float, start_sec: float, data: DataConfig | None) -> tuple[float, float]:
    """``(offset_sec, start_sec)`` as floats when both are finite and within :func:`max_shift_sec` (``start_sec``
    >= 0), else :class:`InvalidArgumentError`. ``data`` None (the model's config not known yet) checks only that
    both are finite and the start is not negative. Whether the window fits the clip at hand is checked later
    (:class:`ClipTooShortError`)."""
    limit = math.inf if data is None else max_shift_sec(data)
    room = "" if data is None else (f"leaves no room for the {data.crop_len_sec:g} s window in the "
                                    f"{data.clip_max_len_sec:g} s of a clip the model reads")
    offset = real("offset_sec", offset_sec, low=-limit, high=limit, why=room and f"a larger shift {room}")
    start = real("start_sec", start_sec, low=0.0, high=limit, why=room and f"a later start {room}")
    return offset, start


def min_duration_sec(offset_sec: float, start_sec: float, data: DataConfig) -> float:
    """Shortest clip that holds a window at ``start_sec`` with the audio shifted by ``offset_sec``."""
    return max(start_sec, start_sec + offset_sec) + data.crop_len_sec


def temporal_crop(
    n_frames: int, n_samples: int, offset_sec: float, start_sec: float, data: DataConfig
) -> Window:
    """The video window ``[v_start, v_start + crop_len)`` and the audio window shifted by ``offset_sec``.

    As the reference: ``offset = round(offset_sec, 2)``, ``v_start = int(start_sec * vfps)`` and
    ``a_start = int((start_sec + offset) * afps)`` (sum in double precision, truncated toward zero). A negative
    ``a_start`` of at most one video frame is clamped to 0.
    """
    if start_sec < 0:
        raise InvalidArgumentError(f"start_sec must be >= 0, got {start_sec}")
    offset = round(float(offset_sec), 2)
    v_len = int(data.crop_len_sec * data.vfps)
    a_len = int(data.crop_len_sec * data.afps)
    v_start = int(start_sec * data.vfps)
    a_start = int((start_sec + offset) * data.afps)
    if a_start < 0:
        if a_start < -(data.afps // data.vfps):
            raise ClipTooShortError(
                f"with offset {offset:+.2f} s the audio would start {-(start_sec + offset):.2f} s before the "
                f"file does; use start_sec >= {-offset:.2f}"
            )
        a_start = 0
    have = min(n_frames / data.vfps, n_samples / data.afps)
    if v_start + v_len > n_frames or a_start + a_len > n_samples:
        need = min_duration_sec(offset, start_sec, data)
        raise ClipTooShortError(
            f"the clip has {have:.2f} s of usable audio and video, but a {data.crop_len_sec:g} s window at "
            f"start {start_sec:g} s with offset {offset:+.2f} s needs {need:.2f} s"
            f"{f' (clips are cut to {data.clip_max_len_sec:g} s)' if need > data.clip_max_len_sec else ''}; "
            "use an earlier start, a smaller offset, or a longer clip, or pad it (pad=True, CLI --pad)"
        )
    return Window(v_start, a_start, v_len, a_len, offset, float(start_sec))


def segment_layout(data: DataConfig) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Segment starts inside the crop, centred: (video starts (S,), audio starts (S,), v0, a0).

    The S segments of ``segment_size_vframes`` frames with stride ``step_vframes`` span ``window_vframes``
    frames; the first starts ``v0 = (crop_frames - window_vframes) // 2`` frames into the crop and its audio
    ``a0 = int(v0 / vfps * afps)`` samples in.
    """
    crop_frames = int(data.crop_len_sec * data.vfps)
    v0 = (crop_frames - data.window_vframes) // 2
    a0 = int(v0 / data.vfps * data.afps)
    s = np.arange(data.n_segments)
    return v0 + s * data.step_vframes, a0 + s * data.step_asamples, v0, a0


# Token times. One convention everywhere: decoded frame ``i`` is the instant ``i / vfps`` (frame timestamps) and
# spectrogram frame ``j`` is centred on sample ``j * hop_length`` (centred STFT); a token sits at the mean of the
# instants it covers (a tubelet's frames, an audio patch's spectrogram frames).


def _token_offsets(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Visual token centres in frames from its segment's first frame, (tv,); audio token centres in samples from
    its segment's first sample, (ta,)."""
    v, a = cfg.visual, cfg.audio
    vt = np.arange(v.t_tokens) * v.tubelet + (v.tubelet - 1) / 2
    at = (np.arange(a.t_tokens) * a.tstride + (a.patch_size - 1) / 2) * cfg.data.hop_length
    return vt, at


def token_first_frames(cfg: Config) -> np.ndarray:
    """(S, tv) int: index, into a window's frames (``Clip.frames`` / ``Clip.frame_indices``), of the first frame of
    each visual token."""
    d, v = cfg.data, cfg.visual
    return np.arange(d.n_segments)[:, None] * d.step_vframes + np.arange(v.t_tokens)[None] * v.tubelet


def window_token_times(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Centre time (s) of each visual token from the start of the video crop, (S, tv), and of each audio token
    from the start of the (shifted) audio crop, (S, ta). Flatten segment-major to get the sync module's order."""
    d = cfg.data
    vstarts, astarts, _, _ = segment_layout(d)
    v_in, a_in = _token_offsets(cfg)
    return (vstarts[:, None] + v_in[None]) / d.vfps, (astarts[:, None] + a_in[None]) / d.afps


# ---------------------------------------------------------------------------------------------------------------
# Values


def frames_to_input(frames: np.ndarray | Tensor, data: DataConfig) -> Tensor:
    """uint8 frames (..., H, W, 3) -> float32 (..., 3, H, W), computed as the reference does: in fp16,
    ``x / 255``, then ``(x - mean) / std`` with fp16 mean and std, then cast to float32."""
    x = torch.as_tensor(frames).movedim(-1, -3).half() / 255  # (..., 3, H, W) fp16
    mean = torch.tensor(data.rgb_mean, dtype=torch.float16)[:, None, None]
    std = torch.tensor(data.rgb_std, dtype=torch.float16)[:, None, None]
    return ((x - mean) / std).float()


def rgb_lut(data: DataConfig) -> Tensor:
    """(3, 256) float32: the model input value of each uint8 level per channel (:func:`frames_to_input` of 0..255)."""
    levels = torch.arange(256, dtype=torch.uint8)[:, None, None, None].expand(256, 1, 1, 3)  # 256 one-pixel frames
    return frames_to_input(levels, data)[:, :, 0, 0].T.contiguous()


def segment_view(x: Tensor, data: DataConfig) -> Tensor:
    """(Tw, 3, H, W) frames -> (S, T, 3, H, W) overlapping segments, as a view (no copy)."""
    return x.unfold(0, data.segment_size_vframes, data.step_vframes).permute(0, 4, 1, 2, 3)


@lru_cache(maxsize=8)
def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """(n_freqs, n_mels) triangular filters on the HTK mel scale, unnormalised (``norm=None``).

    mel(f) = 2595 log10(1 + f / 700); n_mels + 2 points evenly spaced in mel between f_min and f_max are the
    filter edges and centres; each filter rises linearly from its left edge to its centre and falls to its
    right edge, evaluated at the STFT bin frequencies ``linspace(0, sample_rate // 2, n_freqs)``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    bins = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_lo = 2595.0 * math.log10(1.0 + f_min / 700.0)
    mel_hi = 2595.0 * math.log10(1.0 + f_max / 700.0)
    edges = 700.0 * (10.0 ** (torch.linspace(mel_lo, mel_hi, n_mels + 2) / 2595.0) - 1.0)  # (n_mels + 2,)
    widths = edges[1:] - edges[:-1]  # (n_mels + 1,)
    dist = edges[None, :] - bins[:, None]  # (n_freqs, n_mels + 2): edge minus bin frequency
    rising = -dist[:, :-2] / widths[:-1]
    falling = dist[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def log_mel(waves: Tensor, data: DataConfig, max_spec_t: int) -> Tensor:
    """waves (S, L) float32 at ``data.afps`` -> normalised log-mel (S, 1, n_mels, max_spec_t).

    Power spectrogram (periodic Hann window of ``win_length`` centred in ``n_fft``, reflect padding), HTK mel
    filters, natural log of (mel + 1e-6), right pad (or cut) the time axis to ``max_spec_t`` with 0.0, then
    AST normalisation ``(x - mean) / (2 * std)``.
    """
    window = torch.hann_window(data.win_length, periodic=True, dtype=waves.dtype, device=waves.device)
    spec = torch.stft(
        waves,
        n_fft=data.n_fft,
        hop_length=data.hop_length,
        win_length=data.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    power = spec.abs().pow(2.0)  # (S, n_freqs, frames)
    fb = mel_filterbank(data.n_fft // 2 + 1, data.n_mels, data.afps).to(waves.device, waves.dtype)
    mel = torch.matmul(power.transpose(-1, -2), fb).transpose(-1, -2)  # (S, n_mels, frames)
    x = torch.log(mel + MEL_EPS)
    t = x.shape[-1]
    if t < max_spec_t:
        x = torch.nn.functional.pad(x, (0, max_spec_t - t), value=SPEC_PAD_VALUE)
    else:
        x = x[..., :max_spec_t]
    x = (x - data.ast_mean) / (2 * data.ast_std)
    return x.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------------------
# One clip


@dataclass
class Clip:
    """A model window cut from a video, ready for the model, with what is needed to show it.

    vid: (S, T, 3, H, W) float32; aud: (S, 1, F, Tspec) float32; frames: (window_vframes, H, W, 3) uint8, the
    unique cropped frames the segments use; wave: (crop samples,) float32, the shifted audio crop.
    """

    vid: Tensor
    aud: Tensor
    frames: np.ndarray
    wave: np.ndarray
    target_class: int | None
    offset_sec: float
    start_sec: float
    window: Window
    frame_indices: np.ndarray  # (window_vframes,) index of each used frame in the decoded video
    audio_start_sample: int  # where ``wave`` starts in the decoded mono track
    audio_seg_starts: np.ndarray  # (S,) segment starts inside ``wave``
    grid: np.ndarray
    decoded: Decoded | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)  # why the answer may be unreliable (damage, padding, grid)


def token_times(clip: Clip, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Centre time (s, on the decoded source's timeline) of each visual token (S, tv) and each audio token
    (S, ta) of a prepared window. Audio tokens sit where their sound was taken from (shifted by the offset);
    visual tokens follow ``clip.frame_indices``, so repeated frames of a padded window are timed as such."""
    d = cfg.data
    _, a_in = _token_offsets(cfg)
    first = token_first_frames(cfg)  # (S, tv)
    vt = clip.frame_indices[first[..., None] + np.arange(cfg.visual.tubelet)].mean(-1) / d.vfps
    at = (clip.audio_start_sample + clip.audio_seg_starts[:, None] + a_in[None]) / d.afps
    return vt, at


def video_window(decoded: Decoded, start_sec: float, cfg: Config, n_frames: int | None = None) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Frames for a window at ``start_sec``: (frame indices (Tw,), cropped uint8 (Tw, h, w, 3), vid (S, T, 3, h, w))."""
    data = cfg.data
    n_frames = len(decoded.frames) if n_frames is None else n_frames
    v_start = int(start_sec * data.vfps)
    _, _, v0, _ = segment_layout(data)
    idx = v_start + v0 + np.arange(data.window_vframes)
    H, W = decoded.frames.shape[1:3]
    top, left = center_crop_box(H, W, data.input_size)
    frames = decoded.frames[idx, top : top + data.input_size, left : left + data.input_size]
    vid = segment_view(frames_to_input(np.ascontiguousarray(frames), data), data)  # (S, T, 3, h, w) view
    return idx, frames, vid


def audio_window(decoded: Decoded, window: Window, cfg: Config) -> tuple[np.ndarray, Tensor, np.ndarray]:
    """The shifted audio crop and its spectrograms: (wave (a_len,), aud (S, 1, F, T), segment starts (S,))."""
    data = cfg.data
    wave = decoded.audio[window.a_start : window.a_start + window.a_len]
    _, astarts, _, _ = segment_layout(data)
    w = torch.from_numpy(np.ascontiguousarray(wave))
    segs = torch.stack([w[s : s + data.segment_size_asamples] for s in astarts])
    return wave, log_mel(segs, data, cfg.audio.max_spec_t), astarts


def window_lengths(offset_sec: float, start_sec: float, data: DataConfig) -> tuple[int, int]:
    """(video frames, audio samples) a clip needs so that :func:`equalify` keeps a window at ``start_sec`` with
    the audio shifted by ``offset_sec`` (one frame of slack for the float arithmetic of :func:`equalify`)."""
    offset = round(float(offset_sec), 2)
    v_need = int(start_sec * data.vfps) + int(data.crop_len_sec * data.vfps)
    a_need = max(0, int((start_sec + offset) * data.afps)) + int(data.crop_len_sec * data.afps)
    frames = max(v_need, math.ceil(a_need * data.vfps / data.afps)) + 1
    return frames, frames * (data.afps // data.vfps)


def pad_for_window(decoded: Decoded, offset_sec: float, start_sec: float, data: DataConfig) -> tuple[Decoded, str | None]:
    """Extend a clip too short for the window at its end: the last frame repeated, silence for the audio.

    Returns the (new) decoded streams and a note saying what was added, or ``(decoded, None)`` when nothing was
    missing. Windows that would need audio before the start of the file are not padded (that stays an error).
    """
    frames_needed, samples_needed = window_lengths(offset_sec, start_sec, data)
    add_v = max(0, frames_needed - len(decoded.frames))
    add_a = max(0, samples_needed - len(decoded.audio))
    if not add_v and not add_a:
        return decoded, None
    frames = np.concatenate([decoded.frames, np.repeat(decoded.frames[-1:], add_v, axis=0)]) if add_v else decoded.frames
    audio = np.concatenate([decoded.audio, np.zeros(add_a, np.float32)]) if add_a else decoded.audio
    added = [f"the last frame repeated for {add_v / data.vfps:.2f} s"] * bool(add_v)
    added += [f"{add_a / data.afps:.2f} s of silence"] * bool(add_a)
    note = (
        f"padded: the clip has {len(decoded.frames) / data.vfps:.2f} s of video and "
        f"{len(decoded.audio) / data.afps:.2f} s of audio, the window needs "
        f"{min_duration_sec(round(offset_sec, 2), start_sec, data):.2f} s; added {' and '.join(added)} at the "
        "end, so the answer may be unreliable"
    )
    meta = {**decoded.meta, "padded_video_frames": add_v, "padded_audio_samples": add_a}
    return replace(decoded, frames=frames, audio=audio, meta=meta), note


def clip_from_decoded(
    decoded: Decoded, cfg: Config, offset_sec: float = 0.0, start_sec: float = 0.0, *, pad: bool = False
) -> Clip:
    """Cut and prepare one window from already decoded streams (see :func:`load_clip`).

    ``Clip.warnings`` collects why the answer may be unreliable: damage found while decoding (also emitted here
    as :class:`UnreliableInputWarning`), padding, and an offset outside the grid (:class:`OffsetOutsideGridWarning`).
    """
    data = cfg.data
    offset_sec, start_sec = check_window(offset_sec, start_sec, data)
    notes = list(decoded.meta.get("notes", []))
    if flag("pad", pad):
        decoded, note = pad_for_window(decoded, offset_sec, start_sec, data)
        notes += [note] if note else []
    for note in notes:
        warnings.warn(note, UnreliableInputWarning, stacklevel=3)
    n_frames, n_samples = equalify(len(decoded.frames), len(decoded.audio), data)
    window = temporal_crop(n_frames, n_samples, offset_sec, start_sec, data)
    target = offset_class(window.offset_sec, data)
    outside = grid_warning(window.offset_sec, data)
    idx, frames, vid = video_window(decoded, start_sec, cfg, n_frames)
    wave, aud, astarts = audio_window(decoded, window, cfg)
    return Clip(
        vid=vid,
        aud=aud,
        frames=frames,
        wave=wave,
        target_class=target,
        offset_sec=window.offset_sec,
        start_sec=float(start_sec),
        window=window,
        frame_indices=idx,
        audio_start_sample=window.a_start,
        audio_seg_starts=astarts,
        grid=data.grid,
        decoded=decoded,
        warnings=notes + ([outside] if outside else []),
    )


def load_clip(
    path: str | Path | Decoded,
    offset_sec: float = 0.0,
    start_sec: float = 0.0,
    cfg: Config | str | None = None,
    *,
    audio_priming: AudioPriming = "drop",
    pad: bool = False,
) -> Clip:
    """Decode ``path`` (normalising it if needed) and prepare the window at ``start_sec`` with the audio shifted
    by ``offset_sec`` seconds (positive: audio early). ``cfg`` defaults to the released AudioSet model's.

    A clip too short for the window raises :class:`ClipTooShortError`; with ``pad=True`` its end is padded
    instead (last frame repeated, silence) and ``Clip.warnings`` says so. Arguments out of range
    (:func:`check_window`) raise :class:`InvalidArgumentError` before anything is decoded.
    """
    cfg = load_config(cfg if cfg is not None else "24-01-04T16-39-21")
    check_window(offset_sec, start_sec, cfg.data)
    flag("pad", pad)
    one_of("audio_priming", audio_priming, AUDIO_PRIMING_OPTIONS)
    if not isinstance(path, (str, Path, Decoded)):
        raise InvalidArgumentError(
            f"the video must be a path (str or Path) or a Decoded, got {type(path).__name__}"
        )
    decoded = path if isinstance(path, Decoded) else read_video(path, cfg, audio_priming=audio_priming)
    return clip_from_decoded(decoded, cfg, offset_sec, start_sec, pad=pad)
