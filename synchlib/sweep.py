"""Offset sweeps: many (start, offset) windows of one video for the price of a few.

Two phases, like segment-anything's ``set_image`` / ``predict``: :class:`Predictor` decodes a video once and
caches the visual features of each start time (the expensive part, and independent of the audio offset); each
offset then only needs the audio branch and the small synchronisation transformer, run in batches. The logits
equal those of :func:`synchlib.predict` for the same window (fp32, within rounding).
"""

from __future__ import annotations

import math
import warnings
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import pandas as pd

from .checks import one_of, real
from .config import DataConfig
from .errors import ClipTooShortError, InvalidArgumentError, SynchlibError
from .io import AUDIO_PRIMING_OPTIONS, AudioPriming, Decoded
from .manifests import read_manifest
from .model import Synchformer, autocast, check_precision
from .normalised import read_video
from .predict import check_batch_size, logits_to_prediction
from .preprocess import (
    Clip,
    audio_window,
    check_window,
    clip_from_decoded,
    equalify,
    max_shift_sec,
    offset_class,
    temporal_crop,
    video_window,
)  # fmt: skip

SWEEP_COLUMNS = [
    "video", "start_sec", "offset_sec", "target_class", "predicted_offset_sec", "predicted_class", "p",
    "correct", "within_one",
]  # fmt: skip
MAX_SWEEP_WINDOWS = 10_000  # (start, offset) windows of one sweep: 21 grid offsets x 476 starts


def _numbers(name: str, values: Any, data: DataConfig | None, *, low_is_zero: bool) -> list[float]:
    """At most :data:`MAX_SWEEP_WINDOWS` + 1 items of ``values`` as floats, each checked like ``predict``'s
    offset (``low_is_zero`` False) or start (True), see :func:`synchlib.preprocess.check_window`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{name} must be a list of numbers (seconds), got a {type(values).__name__}")
    items = [v.item() if hasattr(v, "item") else v for v in islice(iter(values), MAX_SWEEP_WINDOWS + 1)]
    if not items:
        raise InvalidArgumentError(f"{name} is empty; give at least one value (seconds)")
    limit = math.inf if data is None else max_shift_sec(data)
    why = "" if data is None else (f"no {data.crop_len_sec:g} s window with a larger one fits in the "
                                   f"{data.clip_max_len_sec:g} s of a clip the model reads")
    low = 0.0 if low_is_zero else -limit
    return [real(f"{name}[{i}]", v, low=low, high=limit, why=why) for i, v in enumerate(items)]


def check_sweep(
    offsets: Iterable[float] | None, starts: Iterable[float], data: DataConfig | None
) -> tuple[list[float] | None, list[float]]:
    """``(offsets, starts)`` of a sweep as lists of floats (``offsets`` None stays None: the model's grid).

    Each offset and start is checked as ``predict``'s (finite, within :func:`synchlib.preprocess.max_shift_sec`,
    starts >= 0; ``data`` None: finite, starts >= 0), both lists must hold something, and there may be at most
    :data:`MAX_SWEEP_WINDOWS` windows (offsets x starts); else :class:`InvalidArgumentError`."""
    offs = None if offsets is None else _numbers("offsets", offsets, data, low_is_zero=False)
    starts = _numbers("starts", starts, data, low_is_zero=True)
    n = len(offs) if offs is not None else len(data.grid) if data is not None else 1
    if n * len(starts) > MAX_SWEEP_WINDOWS:
        cut = MAX_SWEEP_WINDOWS + 1 in (n, len(starts))  # a list was read only that far
        raise InvalidArgumentError(
            f"a sweep may hold at most {MAX_SWEEP_WINDOWS} (start, offset) windows, got {'at least ' * cut}"
            f"{n * len(starts)} ({n} offsets x {len(starts)} starts); sweep fewer offsets or starts at a time"
        )
    return offs, starts


class Predictor:
    """Holds one decoded video and its cached visual features; predicts many windows cheaply.

    >>> pr = Predictor(model).set_video("clip.mp4")
    >>> table = pr.sweep(offsets=model.cfg.grid, starts=[0.0, 2.0])
    """

    def __init__(self, model: Synchformer, *, precision: str = "fp32", audio_priming: AudioPriming = "drop"):
        self.model = model
        self.cfg = model.cfg
        self.precision = check_precision(precision)
        self.audio_priming = one_of("audio_priming", audio_priming, AUDIO_PRIMING_OPTIONS)
        self.decoded: Decoded | None = None
        self.name = ""
        self._vfeats: dict[int, torch.Tensor] = {}  # first frame of the video crop -> its features

    def set_video(self, video: str | Path | Decoded) -> "Predictor":
        """Decode ``video`` once (normalising it if needed) and forget cached features of the previous one."""
        if not isinstance(video, (str, Path, Decoded)):
            raise InvalidArgumentError(
                f"the video must be a path (str or Path) or a Decoded, got {type(video).__name__}"
            )
        self.decoded = video if isinstance(video, Decoded) else read_video(video, self.cfg, audio_priming=self.audio_priming)
        self.name = str(video) if not isinstance(video, Decoded) else str(video.source.path)
        self._vfeats.clear()
        return self

    def _lengths(self) -> tuple[int, int]:
        if self.decoded is None:
            raise SynchlibError("this Predictor has no video yet; call set_video() first")
        return equalify(len(self.decoded.frames), len(self.decoded.audio), self.cfg.data)

    @torch.inference_mode()
    def vfeats(self, start_sec: float) -> torch.Tensor:
        """Visual features (S, tv, D) of the window at ``start_sec`` (computed once per first frame, then cached:
        at most one entry per frame of the clip)."""
        _, start_sec = check_window(0.0, start_sec, self.cfg.data)
        key = int(start_sec * self.cfg.data.vfps)  # the crop's first frame, as video_window takes it
        if key not in self._vfeats:
            _, _, vid = video_window(self.decoded, start_sec, self.cfg, self._lengths()[0])
            with autocast(self.model.device, self.precision):
                self._vfeats[key] = self.model.extract_vfeats(vid[None].to(self.model.device))[0].float()
        return self._vfeats[key]

    def clip(self, offset_sec: float, start_sec: float) -> Clip:
        """The full :class:`Clip` of one window (for display or the plain path)."""
        self._lengths()  # a video is set
        return clip_from_decoded(self.decoded, self.cfg, offset_sec, start_sec)

    @torch.inference_mode()
    def logits(self, offsets: Sequence[float], start_sec: float, batch_size: int = 8) -> torch.Tensor:
        """Logits (len(offsets), classes) of the windows at ``start_sec`` with each audio offset."""
        offsets, [start_sec] = check_sweep(offsets, [start_sec], self.cfg.data)
        batch_size = check_batch_size(batch_size)
        n_frames, n_samples = self._lengths()
        vf = self.vfeats(start_sec)
        out = []
        dev = self.model.device
        for i in range(0, len(offsets), batch_size):
            chunk = offsets[i : i + batch_size]
            auds = [
                audio_window(self.decoded, temporal_crop(n_frames, n_samples, o, start_sec, self.cfg.data), self.cfg)[1]
                for o in chunk
            ]
            aud = torch.stack(auds).to(dev)
            with autocast(dev, self.precision):
                af = self.model.extract_afeats(aud)
                out.append(self.model.sync_logits(vf[None].expand(len(chunk), *vf.shape).to(af.dtype), af).float())
        return torch.cat(out)

    def sweep(
        self,
        offsets: Iterable[float] | None = None,
        starts: Iterable[float] = (0.0,),
        *,
        batch_size: int = 8,
        progress: bool = True,
    ) -> pd.DataFrame:
        """One row per (start, offset) window with the columns of :data:`SWEEP_COLUMNS`. Arguments out of range
        (:func:`check_sweep`, batch_size 1 to :data:`synchlib.predict.MAX_BATCH_SIZE`) raise
        :class:`InvalidArgumentError`."""
        data = self.cfg.data
        offsets, starts = check_sweep(offsets, starts, data)
        batch_size = check_batch_size(batch_size)
        self._lengths()  # a video is set
        all_offsets = [float(o) for o in data.grid] if offsets is None else offsets
        rows, skipped = [], []
        for start in tqdm(starts, desc="sweep starts", disable=not progress or len(starts) < 2):
            offsets = [o for o in all_offsets if self.fits(o, start)]
            skipped += [(start, o) for o in all_offsets if o not in offsets]
            if not offsets:
                continue
            logits = self.logits(offsets, start, batch_size)
            for off, lg in zip(offsets, logits):
                target = offset_class(round(off, 2), data)
                pred = logits_to_prediction(
                    lg, data.grid, kind=self.cfg.sync.head, target_class=target, injected_offset_sec=off,
                    start_sec=start, k=1,
                )
                rows.append(
                    {
                        "video": self.name,
                        "start_sec": start,
                        "offset_sec": round(off, 2),
                        "target_class": target,
                        "predicted_offset_sec": pred.offset_sec,
                        "predicted_class": pred.class_index,
                        "p": pred.p,
                        "correct": pred.correct,
                        "within_one": pred.within_one,
                    }
                )
        if skipped:
            n_frames, n_samples = self._lengths()
            warnings.warn(
                f"{len(skipped)} of {len(skipped) + len(rows)} (start, offset) windows do not fit in the "
                f"{min(n_frames / data.vfps, n_samples / data.afps):.2f} s of usable clip and were skipped, e.g. "
                f"start {skipped[0][0]:g} s with offset {skipped[0][1]:+.2f} s; a window needs "
                f"max(start, start + offset) + {data.crop_len_sec:g} s",
                stacklevel=2,
            )
        import pandas as pd  # imported on use: keeps `import synchlib` light (peak memory of a prediction)

        return pd.DataFrame(rows, columns=SWEEP_COLUMNS)

    def fits(self, offset_sec: float, start_sec: float) -> bool:
        """Whether the window at ``start_sec`` with the audio shifted by ``offset_sec`` fits in the clip."""
        try:
            temporal_crop(*self._lengths(), offset_sec, start_sec, self.cfg.data)
        except ClipTooShortError:
            return False
        return True


def sweep(
    model: Synchformer,
    video: str | Path | Decoded,
    offsets: Iterable[float] | None = None,
    starts: Iterable[float] = (0.0,),
    *,
    batch_size: int = 8,
    precision: str = "fp32",
    audio_priming: AudioPriming = "drop",
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every (start, offset) window of ``video``; offsets default to the model's grid.

    Returns a tidy DataFrame: ``video, start_sec, offset_sec, target_class, predicted_offset_sec,
    predicted_class, p, correct, within_one``. Arguments are checked (:class:`InvalidArgumentError`) before the
    video is decoded.
    """
    check_sweep(offsets, starts, model.cfg.data)
    check_batch_size(batch_size)
    pr = Predictor(model, precision=precision, audio_priming=audio_priming).set_video(video)
    return pr.sweep(offsets, starts, batch_size=batch_size, progress=progress)


def sweep_manifest(
    model: Synchformer,
    manifest: str | Path,
    offsets: Iterable[float] | None = None,
    starts: Iterable[float] = (0.0,),
    *,
    progress: bool = True,
    **kwargs,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`sweep` every video of a manifest CSV (``path`` column; see :func:`synchlib.manifests.read_manifest`).

    Returns (results of all videos, failures with one ``error`` line per video that could not be swept).
    """
    tables, failures = [], []
    for item in tqdm(read_manifest(manifest), desc="videos", disable=not progress):
        if item["error"]:  # a row that names no usable video (bad encoding, no path, ...)
            failures.append({"video": item["video"] or f"{Path(manifest).name}, line {item['line']}",
                             "error": item["error"]})
            continue
        try:
            tables.append(sweep(model, item["video"], offsets, starts, progress=False, **kwargs))
        except InvalidArgumentError:  # checked before decoding: the arguments, not this video, are wrong
            raise
        except SynchlibError as e:
            failures.append({"video": item["video"], "error": str(e)})
    import pandas as pd

    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SWEEP_COLUMNS)
    return table, pd.DataFrame(failures, columns=["video", "error"])


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """acc@1, acc@1 within one class, and the number of windows with a target."""
    t = table.dropna(subset=["target_class"])
    return {
        "n": int(len(t)),
        "acc1": float(t["correct"].astype(bool).mean()) if len(t) else float("nan"),
        "acc1_within_one": float(t["within_one"].astype(bool).mean()) if len(t) else float("nan"),
    }


def per_offset_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """acc@1 and acc@1 within one class per injected offset."""
    t = table.dropna(subset=["target_class"]).copy()
    t["correct"] = t["correct"].astype(bool)
    t["within_one"] = t["within_one"].astype(bool)
    return t.groupby("offset_sec")[["correct", "within_one"]].mean().rename(
        columns={"correct": "acc1", "within_one": "acc1_within_one"}
    )


def confusion_matrix(table: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = target class, columns = predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    t = table.dropna(subset=["target_class"])
    for a, b in zip(t["target_class"].astype(int), t["predicted_class"].astype(int)):
        m[a, b] += 1
    return m
