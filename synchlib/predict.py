"""One-window prediction: ``predict(model, video, offset_sec, start_sec)`` -> :class:`Prediction`."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import integer
from .errors import UnreliableInputWarning
from .io import AudioPriming, Decoded
from .model import Synchformer, autocast, check_precision
from .preprocess import Clip, load_clip
from .rounding import LOGIT_DECIMALS, PROB_DECIMALS, grid_decimals, round_or_none

SILENT_RMS = 1e-4  # audio crops quieter than this (full scale 1.0) carry no usable sound
STILL_PIXEL_DELTA = 0.5  # mean absolute frame-to-frame change (0..255) below which the picture is still
MAX_BATCH_SIZE = 256  # segments (or windows) per model call: 256 of the released model's segments are 2.5 GB of input


def check_k(k: int) -> int:
    """How many top offsets to list: a whole number >= 1 (more than the model's classes lists them all)."""
    return integer("k", k, low=1)


def check_batch_size(batch_size: int) -> int:
    """Segments (or windows) per model call: 1 to :data:`MAX_BATCH_SIZE`."""
    return integer("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE,
                   why="larger batches take gigabytes of memory for little gain in speed")


@dataclass
class Prediction:
    """The model's answer for one window.

    ``grid`` and ``probs`` are (classes,) arrays; ``topk`` lists (offset_sec, class_index, probability), best
    first. For a synchronisability model the two classes are "not synchronisable" / "synchronisable" and
    ``offset_sec`` is None.
    """

    grid: np.ndarray
    probs: np.ndarray
    logits: np.ndarray
    topk: list[tuple[float, int, float]]
    offset_sec: float | None
    class_index: int
    target_class: int | None
    injected_offset_sec: float
    start_sec: float
    kind: str = "offset"
    video: str = ""
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def p(self) -> float:
        """Probability of the top-1 class."""
        return float(self.probs[self.class_index])

    @property
    def correct(self) -> bool | None:
        return None if self.target_class is None else self.class_index == self.target_class

    @property
    def within_one(self) -> bool | None:
        """Top-1 within one grid class of the target."""
        return None if self.target_class is None else abs(self.class_index - self.target_class) <= 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists instead of arrays), without float32 noise: grid values and offsets rounded to
        the grid's decimals, probabilities and logits as :mod:`synchlib.rounding` says."""
        d = asdict(self)
        off = grid_decimals(self.grid)
        d["grid"] = [round(float(x), off) for x in self.grid]
        d["probs"] = [round(float(x), PROB_DECIMALS) for x in self.probs]
        d["logits"] = [round(float(x), LOGIT_DECIMALS) for x in self.logits]
        d["topk"] = [{"offset_sec": round(float(o), off), "class_index": int(c), "p": round(float(p), PROB_DECIMALS)}
                     for o, c, p in self.topk]  # fmt: skip
        d["offset_sec"] = round_or_none(self.offset_sec, off)
        d["p"] = round(self.p, PROB_DECIMALS)
        d["correct"], d["within_one"] = self.correct, self.within_one
        return d

    @property
    def confidence(self) -> str:
        """How sure the model is, in words: :func:`how_sure` of ``probs``."""
        return how_sure(self.probs)

    def answer(self, cls: int) -> str:
        """Class ``cls`` in words: "audio 1.6 s early (+1.6 s, offset class 16)"; for a synchronisability model
        "synchronisable" / "not synchronisable"."""
        if self.kind != "offset":
            return "synchronisable" if cls == 1 else "not synchronisable"
        off, decimals = float(self.grid[cls]), grid_decimals(self.grid)
        return f"{offset_words(off, decimals)} ({off:+.{decimals}f} s, offset class {cls})"

    def injected(self) -> str:
        """The shift put in on purpose, in words, with its offset class when it has one."""
        if self.injected_offset_sec == 0:
            return "no shift injected (the file as it is)"
        words = f"injected shift: {offset_words(self.injected_offset_sec)}"
        return words if self.target_class is None else f"{words} (offset class {self.target_class})"

    def summary(self, decimals: int = 2) -> str:
        """Short, stable text: the injected shift, then the top-k answers with probabilities rounded to
        ``decimals`` (used by the notebook checks, so that CPU/GPU rounding differences do not show)."""
        lines = [f"{self.injected()}; window from {self.start_sec:g} s"]
        lines += [f"  {self.answer(cls)}  p={p:.{decimals}f}" for _, cls, p in self.topk]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [f"{self.video or 'clip'}: {self.injected()}; window from {self.start_sec:g} s"]
        for _, cls, p in self.topk:
            mark = "  <- the injected shift" if cls == self.target_class and self.injected_offset_sec != 0 else ""
            lines.append(f"  p={p:.4f}  {self.answer(cls)}{mark}")
        lines.append(f"  how sure: {self.confidence}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def offset_words(offset_sec: float, decimals: int | None = None) -> str:
    """An offset in plain words (+ = audio ahead of the picture): "audio 1.2 s early", "audio 0.4 s late",
    "in sync"; with ``decimals`` (e.g. a grid's) or else to the millisecond, trailing zeros dropped."""
    ms = round(float(offset_sec) * 1000)
    if ms == 0:
        return "in sync"
    size = f"{abs(ms) / 1000:.{decimals}f}" if decimals is not None else f"{abs(ms) / 1000:g}"
    return f"audio {size} s {'early' if ms > 0 else 'late'}"


def how_sure(probs) -> str:
    """The top-1 probability against the runner-up and against chance (1 / classes), e.g.
    "p=0.29: 2.1x the runner-up (0.14), 6.1x chance (0.048)". ``probs``: (classes,) probabilities."""
    p = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    if len(p) < 2:
        return f"p={p[0]:.2f} (the model has one class)"
    chance = 1.0 / len(p)
    runner_up = f"{_times(p[0] / p[1])} the runner-up ({p[1]:.2g})" if p[1] > 0 else "the runner-up has p=0"
    return f"p={p[0]:.2f}: {runner_up}, {_times(p[0] / chance)} chance ({chance:.2g})"


def _times(ratio: float) -> str:
    """A ratio as "2.1x" (one decimal below 10) or "35x"."""
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"


def input_warnings(clip: Clip) -> list[str]:
    """Reasons the answer for ``clip`` may be unreliable (silent audio, still picture)."""
    out = []
    if float(np.sqrt(np.mean(np.square(clip.wave, dtype=np.float64)))) < SILENT_RMS:
        out.append("the audio in this window is silent: there is nothing to synchronise with")
    f = clip.frames
    motion = [np.abs(f[i + 1].astype(np.int16) - f[i]).mean() for i in range(len(f) - 1)]
    if motion and float(np.mean(motion)) < STILL_PIXEL_DELTA:
        out.append("the picture in this window does not move: there are no visual events to synchronise with")
    return out


def logits_to_prediction(
    logits: torch.Tensor,
    grid: np.ndarray,
    *,
    kind: str = "offset",
    target_class: int | None = None,
    injected_offset_sec: float = 0.0,
    start_sec: float = 0.0,
    k: int = 5,
    video: str = "",
) -> Prediction:
    """logits (classes,) -> :class:`Prediction` with softmax probabilities and top-k over ``grid`` (classes,)."""
    logits = logits.detach().float().cpu()
    probs = torch.softmax(logits, dim=-1).numpy()
    grid = np.asarray(grid) if kind == "offset" else np.arange(len(probs), dtype=np.float32)
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(probs)))]
    top = int(order[0])
    return Prediction(
        grid=grid,
        probs=probs,
        logits=logits.numpy(),
        topk=[(float(grid[i]), int(i), float(probs[i])) for i in order],
        offset_sec=float(grid[top]) if kind == "offset" else None,
        class_index=top,
        target_class=target_class if kind == "offset" else None,
        injected_offset_sec=injected_offset_sec,
        start_sec=start_sec,
        kind=kind,
        video=video,
    )


def clip_prediction(logits: torch.Tensor, clip: Clip, kind: str, k: int = 5, video: str = "") -> Prediction:
    """:func:`logits_to_prediction` with the grid, target, offset and start of ``clip``."""
    return logits_to_prediction(
        logits, clip.grid, kind=kind, target_class=clip.target_class, injected_offset_sec=clip.offset_sec,
        start_sec=clip.start_sec, k=k, video=video,
    )


def clip_meta(clip: Clip) -> dict[str, Any]:
    """Metadata of the decoded file behind a clip, for reports."""
    d = clip.decoded
    if d is None:
        return {}
    s = d.source
    return {
        "source": {
            "path": str(s.path),
            "fps": s.fps,
            "width": s.width,
            "height": s.height,
            "sample_rate": s.sample_rate,
            "channels": s.channels,
            "duration_sec": s.duration_sec,
            "video_codec": s.video_codec,
            "audio_codec": s.audio_codec,
            "container": s.container,
            "rotation": s.rotation,
            "variable_frame_rate": s.variable_frame_rate,
        },
        "fps": d.fps,
        "sample_rate": d.sample_rate,
        "duration_sec": d.duration_sec,
        "video_start_sec": d.video_start_sec,
        "audio_start_sec": d.audio_start_sec,
        "normalised": str(d.decoded_path) != str(s.path),
        **d.meta,
    }


@torch.inference_mode()
def predict(
    model: Synchformer,
    video: str | Path | Decoded | Clip,
    offset_sec: float = 0.0,
    start_sec: float = 0.0,
    *,
    k: int = 5,
    audio_priming: AudioPriming = "drop",
    precision: str = "fp32",
    pad: bool = False,
) -> Prediction:
    """Predict the audio-visual offset of one window of ``video``.

    ``offset_sec`` shifts the audio on purpose (positive: audio early), ``start_sec`` picks the window. With
    ``offset_sec=0`` the answer is the offset of the file as it is. ``pad=True`` pads a clip too short for the
    window (see :func:`synchlib.preprocess.load_clip`) instead of raising :class:`ClipTooShortError`.

    ``Prediction.warnings`` lists every reason the answer may be unreliable: damage found in the file, padding,
    an offset outside the grid (all from ``Clip.warnings``), silent audio or a still picture in the window.

    Arguments out of range (see :func:`synchlib.preprocess.check_window`, :func:`check_k`, :data:`PRECISIONS`)
    raise :class:`InvalidArgumentError` before anything is decoded; ``offset_sec`` and ``start_sec`` are not used
    with a prepared :class:`Clip`.
    """
    k, precision = check_k(k), check_precision(precision)
    clip = video if isinstance(video, Clip) else load_clip(
        video, offset_sec, start_sec, model.cfg, audio_priming=audio_priming, pad=pad
    )
    name = str(video) if isinstance(video, (str, Path)) else (str(clip.decoded.source.path) if clip.decoded else "")
    meta = clip_meta(clip)
    found = input_warnings(clip)
    if not isinstance(video, (Clip, Decoded)):
        clip.decoded = None  # the whole decoded file is ours and no longer needed: free it before the forward pass
    device = model.device
    with autocast(device, precision):
        logits = model(clip.vid[None].to(device), clip.aud[None].to(device))[0]
    pred = clip_prediction(logits, clip, model.cfg.sync.head, k=k, video=name)
    for w in found:
        warnings.warn(w, UnreliableInputWarning, stacklevel=2)
    pred.warnings = [*clip.warnings, *found]
    pred.meta = {**meta, "device": str(device), "precision": precision, "model": model.cfg.name}
    return pred
