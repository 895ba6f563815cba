"""Train the tiny Synchformer on synthetic clips, on the CPU.

The data are real files: :mod:`synchlib.synthetic` writes H.264 + AAC ``.mp4`` clips, :func:`synchlib.io.read_video`
decodes them and every training and evaluation window goes through the inference pipeline
(:func:`synchlib.preprocess.clip_from_decoded`), so the model learns exactly what ``predict`` later feeds it.
Decoded clips are kept in memory; windows are drawn at random (clip, start time, offset from the grid).

One stage, end to end, from a structured start. Trained from random weights, the synchronisation transformer sits
on a plateau at chance far longer than a CPU budget allows (see the comment above :func:`init_lag_bank`), so by
default (``init="lag-bank"``) it starts as a bank of lag detectors: the positional table holds the tokens' times,
each of the 21 heads of the first block looks from the audio at the video one grid offset away, the first MLP
marks coincidences and the OFF token pools them. The feature extractors start random and must learn what an event
looks and sounds like: an auxiliary event-detection loss on the generator's ground truth (the event scores start as
linear probes fitted on ``probe_windows`` windows of the random features) trains them alone for the first
``detect_steps`` steps, then together with the offset cross-entropy, which trains everything (the synchronisation
module at a reduced learning rate). Training windows are augmented (:data:`AUGMENTATIONS`). ``init="random"``
trains the plain architecture (and shows the plateau). AdamW, linear warm-up then cosine decay, gradient
clipping, seeded and deterministic data order.

>>> record = train_tiny("tiny.pt", seed=0)                 # doctest: +SKIP  (about 9 minutes on 2 cores)
>>> record = train_short()                                 # doctest: +SKIP  (< 1.5 min, for a notebook)
>>> [(p["step"], p.get("loss"), p["event_loss"]) for p in record["curve"]]  # doctest: +SKIP

Seeds: training clip ``i`` uses ``synthetic.dataset_seed(seed, i)``; held-out clips use indices from
:data:`EVAL_INDEX0` and tests from :data:`TEST_INDEX0`, so the three sets never share a clip.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import synthetic
from .checkpoints import save_checkpoint
from .config import Config, load_config
from .errors import SynchlibError
from .io import Decoded
from .model import Synchformer, build_model
from .normalised import read_video
from .preprocess import Clip, clip_from_decoded, equalify, token_first_frames, token_times, window_token_times

CONFIG_NAME = "tiny-synthetic"
MODEL_TYPE = "Synchformer"
EVAL_INDEX0 = 50_000  # held-out clips: dataset_seed(seed, EVAL_INDEX0 + i)
TEST_INDEX0 = 90_000  # clips for tests and demos: dataset_seed(seed, TEST_INDEX0 + i)
MAX_TRAIN_CLIPS = EVAL_INDEX0
START_MARGIN_SEC = 1e-3  # keeps sampled windows clear of the clip ends despite float rounding
START_DECIMALS = 3  # sampled start times are rounded to a millisecond
EVAL_BATCH = 32
LOGIT_DRIFT_REL = 1e-5
"""How far the logits of one window move, relative to its largest |logit|, when the same model and input run on
another kind of CPU (other BLAS kernels) or on CUDA: about this much, as observed between AMD (AVX2) and Intel
(AVX-512) machines and on CUDA for these models."""
MARGIN_SAFETY = 100  # a window's top-1 is trusted when its margin exceeds this many times the possible drift
MARGIN_DECIMALS = 4  # margins and the logit scale in the record (far below any tolerance)
TRAIN_SEGMENT_CHUNK = 10**6  # run all segments of a batch in one visual forward (memory is no issue here)


class TrainError(SynchlibError, ValueError):
    """Bad training arguments."""


# --------------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run (recorded in the JSON record)."""

    config: str = CONFIG_NAME
    seed: int = 0
    steps: int = 400
    batch_size: int = 12
    lr: float = 2e-3
    min_lr_frac: float = 0.02  # cosine decays to lr * min_lr_frac
    weight_decay: float = 0.05
    warmup_steps: int = 10
    grad_clip: float = 1.0
    n_train_clips: int = 80
    n_eval_clips: int = 30
    n_eval_windows: int = 300
    eval_every: int = 90
    n_curve_windows: int = 42  # held-out windows per learning-curve point (the final point uses n_eval_windows)
    clip_duration_sec: float = synthetic.DEFAULT_DURATION_SEC
    threads: int = 2
    workers: int = 2  # processes generating and decoding clips
    pretrain_steps: int = 0  # > 0: two-stage training (contrastive pre-training, then frozen extractors)
    pretrain_lr: float = 2e-3
    temperature: float = 0.07
    init: str = "lag-bank"  # "lag-bank" (see init_lag_bank) or "random" (the model's own initialisation)
    event_weight: float = 2.0  # weight of the auxiliary event-detection loss (lag-bank init only; 0 turns it off)
    probe_windows: int = 16  # > 0: start the event scores as linear probes fitted on this many windows
    sync_lr_scale: float = 0.1  # learning-rate factor of the synchronisation module after a lag-bank init (0: frozen)
    detect_steps: int = 190  # the first steps train the event scores only (no synchronisation module: ~2x faster)
    jitter_sec: float = 0.0  # training offsets move up to this far off their grid point (audio-video timing jitter)
    augment: str = "hflip,rgb,retime"  # training-window augmentations (names from AUGMENTATIONS, or "none")


INITS = ("lag-bank", "random")
SHORT = dict(steps=60, detect_steps=20, n_train_clips=12, n_eval_clips=6, n_eval_windows=48, eval_every=20,
             n_curve_windows=24, warmup_steps=10, batch_size=8)
"""Overrides for a short run (a teaching notebook): about a minute on 2 cores, far from converged."""
AUGMENTATIONS = ("hflip", "rgb", "shift", "retime")
"""Video augmentations of training windows: ``hflip`` mirrors a window left-right (p = 0.5), ``rgb`` permutes its
colour channels (one of the 6 orders, uniformly), ``shift`` rolls the picture (with wrap-around) by up to
:data:`SHIFT_FRAC` of its size in each direction, ``retime`` (p = 0.5) shows the clip as a camera at another frame
rate in :data:`RETIME_FPS` would have recorded it and the decoder brought it back to 25 fps (some frames repeat,
some are dropped, events move up to a frame later; their times follow). The others keep the event times. Audio is
left alone (the loudness of a sound is a cue to whether it is paired)."""
SHIFT_FRAC = 0.25
RETIME_FPS = (26.0, 30.0)


def check_settings(s: TrainSettings) -> None:
    """Raise :class:`TrainError` for settings that cannot work."""
    positive = ("steps", "batch_size", "n_train_clips", "n_eval_clips", "n_eval_windows", "eval_every",
                "n_curve_windows", "threads", "workers")
    for name in positive:
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainError(f"{name} must be a positive integer, got {value!r}")
    if s.n_train_clips > MAX_TRAIN_CLIPS:
        raise TrainError(f"n_train_clips must be at most {MAX_TRAIN_CLIPS} (held-out seeds start there)")
    if s.seed < 0:
        raise TrainError(f"seed must be >= 0, got {s.seed}")
    if not (s.lr > 0 and 0 <= s.min_lr_frac <= 1 and s.weight_decay >= 0 and s.grad_clip > 0):
        raise TrainError("lr and grad_clip must be > 0, min_lr_frac in [0, 1], weight_decay >= 0")
    if s.init not in INITS:
        raise TrainError(f"init must be one of {INITS}, got {s.init!r}")
    if s.warmup_steps < 0 or s.pretrain_steps < 0:
        raise TrainError("warmup_steps and pretrain_steps must be >= 0")
    if not 0 <= s.detect_steps < s.steps:
        raise TrainError(f"detect_steps must be in [0, steps), got {s.detect_steps}")
    if s.detect_steps and (s.init != "lag-bank" or s.event_weight <= 0):
        raise TrainError("detect_steps needs init='lag-bank' and event_weight > 0 (they train the event scores)")
    if not 0 <= s.jitter_sec < synthetic.OFFSET_STEP_SEC / 2:
        raise TrainError(f"jitter_sec must be in [0, {synthetic.OFFSET_STEP_SEC / 2:g}) s (half a grid step), "
                         f"got {s.jitter_sec}")
    augmentation_names(s.augment)


def augmentation_names(spec: str) -> tuple[str, ...]:
    """``"hflip,rgb"`` -> ``("hflip", "rgb")``; ``"none"`` or ``""`` -> ``()``. Raises :class:`TrainError` for
    unknown names."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise TrainError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTATIONS)} or 'none'")
    return names


# --------------------------------------------------------------------------------------------------------------
# Data: synthetic files, decoded once


def clip_seeds(seed: int, n: int, first_index: int = 0) -> list[int]:
    """Seeds of ``n`` synthetic clips: ``dataset_seed(seed, first_index + i)``."""
    return [synthetic.dataset_seed(seed, first_index + i) for i in range(n)]


def _synth_and_decode(path: str, clip_seed: int, duration_sec: float, cfg: Config) -> Decoded:
    """Write synthetic clip ``clip_seed`` to ``path`` and decode it through :func:`read_video` (worker task).

    The paired event times (s) from the clip's sidecar go to ``decoded.meta["av_events"]``.
    """
    synthetic.make_clip(path, clip_seed, duration_sec=duration_sec, size=cfg.data.size_before_crop,
                        fps=cfg.data.vfps, sample_rate=cfg.data.afps)
    decoded = read_video(path, cfg)
    decoded.meta["av_events"] = tuple(synthetic.read_events(path).av_events)
    decoded.meta["seed"] = int(clip_seed)
    return decoded


def synth_clips(
    seeds: Sequence[int],
    cfg: Config,
    *,
    duration_sec: float = synthetic.DEFAULT_DURATION_SEC,
    out_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
    desc: str = "synth clips",
) -> list[Decoded]:
    """Generate, encode and decode one synthetic clip per seed; returns the decoded clips in seed order.

    Files go to ``out_dir`` (a temporary folder, removed afterwards, when None). With ``workers > 1`` clips are
    made in that many processes. Each :class:`Decoded` holds frames (T, H, W, 3) uint8 and audio (N,) float32.
    """
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="synchlib-train-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        tasks = [(str(folder / f"synth_{s:07d}.mp4"), int(s), float(duration_sec), cfg) for s in seeds]
        bar = tqdm(total=len(tasks), desc=desc, unit="clip", disable=not progress)
        if workers <= 1 or len(tasks) <= 1:
            out = []
            for task in tasks:
                out.append(_synth_and_decode(*task))
                bar.update()
        else:
            import multiprocessing as mp

            # fork (where there is one) needs no importable __main__; workers only run numpy and PyAV
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
                futures = [pool.submit(_synth_and_decode, *task) for task in tasks]
                for f in futures:
                    f.add_done_callback(lambda _: bar.update())
                out = [f.result() for f in futures]
        bar.close()
    return out


# --------------------------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class WindowSpec:
    """One training/evaluation example: a window of clip ``clip`` at ``start_sec``, audio shifted by grid
    class ``target`` plus ``jitter_sec`` (a shift well inside the class, for training)."""

    clip: int
    target: int
    start_sec: float
    jitter_sec: float = 0.0

    def offset_sec(self, cfg: Config) -> float:
        """The audio shift of this window (s): the grid offset of its class plus the jitter."""
        return float(cfg.data.grid[self.target]) + self.jitter_sec


def start_range(decoded: Decoded, offset_sec: float, cfg: Config) -> tuple[float, float]:
    """Closed interval of start times (s) at which a window with ``offset_sec`` fits inside ``decoded``."""
    data = cfg.data
    n_frames, n_samples = equalify(len(decoded.frames), len(decoded.audio), data)
    latest_video = (n_frames - int(data.crop_len_sec * data.vfps)) / data.vfps
    latest_audio = (n_samples - int(data.crop_len_sec * data.afps)) / data.afps - offset_sec
    lo = max(0.0, -offset_sec) + START_MARGIN_SEC
    hi = min(latest_video, latest_audio) - START_MARGIN_SEC
    return lo, hi


def sample_windows(rng: np.random.Generator, clips: Sequence[Decoded], n: int, cfg: Config,
                   clip_order: Sequence[int] | None = None, jitter_sec: float = 0.0) -> list[WindowSpec]:
    """``n`` windows: clip from ``clip_order`` (or uniform), offset class uniform over the grid, start uniform
    over where the window fits (rounded to 1 ms); with ``jitter_sec > 0`` the offset moves off the grid point by
    a uniform amount in ``[-jitter_sec, jitter_sec]`` (rounded to 10 ms, as the pipeline rounds offsets)."""
    grid = cfg.data.grid
    out = []
    for i in range(n):
        c = int(clip_order[i]) if clip_order is not None else int(rng.integers(len(clips)))
        target = int(rng.integers(len(grid)))
        jitter = round(float(rng.uniform(-jitter_sec, jitter_sec)), 2) if jitter_sec > 0 else 0.0
        lo, hi = start_range(clips[c], float(grid[target]) + jitter, cfg)
        if hi < lo:
            raise TrainError(f"clip {c} is too short for a {cfg.data.crop_len_sec:g} s window with offset "
                             f"{grid[target]:+.1f} s; use clips of at least "
                             f"{cfg.data.crop_len_sec + 2 * cfg.data.max_off_sec:g} s")
        out.append(WindowSpec(c, target, round(float(rng.uniform(lo, hi)), START_DECIMALS), jitter))
    return out


@dataclass
class Batch:
    """Model inputs and targets for a list of windows.

    vid (B, S, T, 3, H, W) and aud (B, S, 1, F, Tspec) float32; target (B,) int64 offset classes; event_v
    (B, S, tv) and event_a (B, S, ta) float32 event targets per token (see :func:`event_targets`) or None.
    """

    vid: Tensor
    aud: Tensor
    target: Tensor
    event_v: Tensor | None = None
    event_a: Tensor | None = None


def event_targets(clip: Clip, events_sec: Sequence[float], cfg: Config) -> tuple[Tensor, Tensor]:
    """Which tokens of a prepared window hold a paired event: (video (S, tv), audio (S, ta)) float32 0/1.

    A video token is marked when an event frame is one of its ``tubelet`` frames; an audio token when an event
    onset lies within half a token stride of its centre (:func:`synchlib.preprocess.token_times`). Both follow the
    clip's own frame indices and audio start, so they follow whatever the pipeline did.
    """
    d, vis, aud = cfg.data, cfg.visual, cfg.audio
    ev = np.asarray(events_sec, dtype=np.float64)
    ev_frames = np.round(ev * d.vfps).astype(np.int64)
    frames = clip.frame_indices[token_first_frames(cfg)[..., None] + np.arange(vis.tubelet)]  # (S, tv, tubelet)
    vt = np.isin(frames, ev_frames).any(-1)
    _, at = token_times(clip, cfg)  # (S, ta) s
    half = aud.tstride * d.hop_length / d.afps / 2
    ta = (np.abs(at[..., None] - ev[None, None]) <= half).any(-1) if len(ev) else np.zeros_like(at, bool)
    return torch.from_numpy(vt.astype(np.float32)), torch.from_numpy(ta.astype(np.float32))


def make_batch(clips: Sequence[Decoded], specs: Sequence[WindowSpec], cfg: Config, events: bool = False) -> Batch:
    """Model inputs for ``specs`` through the inference pipeline (:func:`clip_from_decoded`); with ``events``
    also the per-token event targets (needs ``meta["av_events"]`` on the clips)."""
    prepared = [clip_from_decoded(clips[s.clip], cfg, s.offset_sec(cfg), s.start_sec) for s in specs]
    for s, p in zip(specs, prepared):
        if p.target_class != s.target:  # the pipeline rounds the offset; it must land on the same class
            raise AssertionError(f"window {s} became class {p.target_class}")
    batch = Batch(torch.stack([p.vid for p in prepared]), torch.stack([p.aud for p in prepared]),
                  torch.tensor([s.target for s in specs], dtype=torch.long))
    if events:
        pairs = [event_targets(p, clips[s.clip].meta["av_events"], cfg) for s, p in zip(specs, prepared)]
        batch.event_v = torch.stack([v for v, _ in pairs])
        batch.event_a = torch.stack([a for _, a in pairs])
    return batch


def retime_map(n_frames: int, camera_fps: float, phase: float, fps: float) -> np.ndarray:
    """(n_frames,) int: which source frame each output frame shows when frames at ``fps`` are recorded by a camera
    at ``camera_fps`` (its frames at ``(j + phase) / camera_fps``, phase in [0, 1), each showing the source frame
    current then) and resampled back to ``fps`` by taking, at each output time, the nearest camera frame (as
    FFmpeg's fps filter does). Monotone; each output frame shows its own source frame or the one before."""
    t_out = np.arange(n_frames) / fps
    j = np.round(t_out * camera_fps - phase)  # the camera frame nearest to each output time
    shown = np.floor((j + phase) / camera_fps * fps + 1e-9)
    return np.clip(shown, 0, n_frames - 1).astype(np.int64)


def augment_clips(clips: Sequence[Decoded], specs: Sequence[WindowSpec], names: Sequence[str],
                  rng: np.random.Generator) -> tuple[list[Decoded], list[WindowSpec]]:
    """One augmented view of its clip per window, as ``names`` (see :data:`AUGMENTATIONS`) ask, and the windows
    renumbered to point at them. Audio is shared; frames are a mirrored numpy view and/or a (re-timed,
    channel-permuted, rolled) copy; a re-timed view carries its moved event times in ``meta["av_events"]``."""
    views, renumbered = [], []
    for i, spec in enumerate(specs):
        frames = clips[spec.clip].frames  # (T, H, W, 3) uint8
        if "hflip" in names and rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        if "rgb" in names:
            frames = frames[..., rng.permutation(3)]  # a copy (about 3 MB for a 10 s clip)
        meta = clips[spec.clip].meta
        if "retime" in names and rng.random() < 0.5:
            fps = clips[spec.clip].fps
            shown = retime_map(len(frames), float(rng.uniform(*RETIME_FPS)), float(rng.random()), fps)
            frames = frames[shown]
            first_showing = np.searchsorted(shown, np.round(np.asarray(meta["av_events"]) * fps).astype(np.int64))
            meta = {**meta, "av_events": tuple(np.minimum(first_showing, len(shown) - 1) / fps)}
        if "shift" in names:
            h, w = frames.shape[1:3]
            dy, dx = (int(rng.integers(-round(SHIFT_FRAC * n), round(SHIFT_FRAC * n) + 1)) for n in (h, w))
            frames = np.roll(frames, (dy, dx), axis=(1, 2))
        views.append(replace(clips[spec.clip], frames=frames, meta=meta))
        renumbered.append(replace(spec, clip=i))
    return views, renumbered


# --------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def window_logits(model: Synchformer, clips: Sequence[Decoded], specs: Sequence[WindowSpec], cfg: Config,
                  batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Logits of each window, float32 (n, classes); the model is put in eval mode for the call."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(specs), batch_size):
            b = make_batch(clips, specs[i : i + batch_size], cfg)
            out.append(model(b.vid, b.aud).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, cfg.sync.num_classes), dtype=np.float32)
    finally:
        model.train(was_training)


def accuracy(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """acc@1 and acc@1 within one grid class (both in [0, 1]) for int arrays (n,)."""
    pred, target = np.asarray(pred), np.asarray(target)
    return {"acc1": float(np.mean(pred == target)), "acc1_pm1": float(np.mean(np.abs(pred - target) <= 1))}


def top_margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row of ``logits`` (n, classes), float64 (n,) >= 0; a continuous function
    of the logits (it goes through 0 where the top two swap)."""
    top2 = np.sort(np.asarray(logits, dtype=np.float64), axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def margin_tolerance(logit_scale: float) -> float:
    """How far a window's top-1 minus top-2 margin may move when the same model runs on another machine:
    each logit moves by up to :data:`LOGIT_DRIFT_REL` x ``logit_scale`` (the largest |logit|), the margin by
    twice that; :data:`MARGIN_SAFETY` times this. A window whose margin is below it may flip its top-1 class."""
    return 2 * MARGIN_SAFETY * LOGIT_DRIFT_REL * float(logit_scale)


def window_record(logits: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Per-window results of an evaluation, compact for the JSON record: ``target``, ``pred`` (space-separated
    ints), ``margin`` (top-1 minus top-2 logit, space-separated, :data:`MARGIN_DECIMALS` decimals),
    ``logit_scale`` (largest |logit|) and the ``margin_tol`` it gives (:func:`margin_tolerance`)."""
    logits = np.asarray(logits, dtype=np.float64)
    scale = round(float(np.abs(logits).max()), MARGIN_DECIMALS) if logits.size else 0.0
    return {"logit_scale": scale, "margin_tol": round(margin_tolerance(scale), 2 * MARGIN_DECIMALS),
            "target": " ".join(str(int(t)) for t in target),
            "pred": " ".join(str(int(c)) for c in logits.argmax(-1)),
            "margin": " ".join(f"{m:.{MARGIN_DECIMALS}f}" for m in top_margins(logits))}


def parse_window_record(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of the per-window part of :func:`window_record`: int arrays ``target``, ``pred`` and float
    ``margin``, all (n,)."""
    try:
        out = {k: np.array(rec[k].split(), dtype=np.int64) for k in ("target", "pred")}
        out["margin"] = np.array(rec["margin"].split(), dtype=np.float64)
    except (KeyError, AttributeError, ValueError) as e:
        raise TrainError(f"the per-window evaluation record is missing or malformed ({e!r}); re-measure it with "
                         "scripts/eval_tiny.py --write-record") from None
    if not len(out["target"]) == len(out["pred"]) == len(out["margin"]):
        raise TrainError("the per-window evaluation record has fields of different lengths; re-measure it")
    return out


def compare_windows(recorded: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Differences between a recorded per-window evaluation and a fresh one of the same windows (both as
    :func:`window_record` writes them), beyond what another machine's rounding explains; [] when they agree.

    With ``tol`` the recorded ``margin_tol``: every window whose recorded margin is above ``tol`` must predict
    the recorded class (below it the top two may swap), and every margin must be within ``tol`` of the recorded
    one. So the acc@1 (and acc@1 +-1) counts equal the recorded ones up to the number of windows below ``tol``."""
    rec, new = parse_window_record(recorded), parse_window_record(fresh)
    tol = float(recorded["margin_tol"])
    if not np.array_equal(rec["target"], new["target"]):
        return ["the windows differ (other offsets): the evaluation seed or the window sampling changed"]
    problems = []
    sure = rec["margin"] > tol
    for i in np.flatnonzero(sure & (rec["pred"] != new["pred"])):
        problems.append(f"window {i}: class {new['pred'][i]} instead of {rec['pred'][i]} "
                        f"(recorded margin {rec['margin'][i]:.4f} > tolerance {tol:.4f})")
    moved = np.abs(new["margin"] - rec["margin"]) > tol
    for i in np.flatnonzero(moved):
        problems.append(f"window {i}: margin {new['margin'][i]:.4f} instead of {rec['margin'][i]:.4f} "
                        f"(tolerance {tol:.4f})")
    return problems


def evaluate(model: Synchformer, decoded_clips: Sequence[Decoded], cfg: Config | str, n_windows: int, seed: int,
             batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Accuracy on ``n_windows`` random windows of ``decoded_clips`` (clips taken in turn, random grid offsets
    and start times from ``seed``). Returns ``{"acc1", "acc1_pm1", "n_windows", "n_clips", "seed"}`` and the
    per-window results of :func:`window_record`."""
    cfg = load_config(cfg)
    rng = np.random.default_rng(seed)
    order = np.arange(n_windows) % len(decoded_clips)
    specs = sample_windows(rng, decoded_clips, n_windows, cfg, clip_order=order)
    logits = window_logits(model, decoded_clips, specs, cfg, batch_size)
    target = np.array([s.target for s in specs], dtype=np.int64)
    return {**accuracy(logits.argmax(-1), target), "n_windows": int(n_windows), "n_clips": len(decoded_clips),
            "seed": int(seed), **window_record(logits, target)}


# --------------------------------------------------------------------------------------------------------------
# Lag-bank initialisation of the synchronisation module
#
# Trained from random weights, the synchronisation transformer sits on a long plateau at chance: the offset is
# carried only by *pairs* of tokens (a sound at audio time t and a flash at video time t + offset), so no single
# weight change helps until attention already pairs tokens by relative time. We measured no progress at all
# within 1,300 steps of batch 32 even on ideal, noise-free event features. Instead the module starts as a
# bank of lag detectors that computes the audio-visual cross-correlation at the 21 grid offsets; training then
# teaches the feature extractors to mark events and fine-tunes every weight. Same architecture, same forward
# code: only the initial values differ.
#
#   positional table  time code (sin/cos of the token's time at LAG_BANK_PERIODS) of each visual token in the
#                     dims T_v, of each audio token in T_a (times from the segment layout); for each audio token
#                     and offset c, E[c] = whether its look at offset c lands inside the video window;
#   input norms       pass one "event" dim each (visual: EV, audio: EA), in [0, content];
#   block 1 attention head c (one per offset class) lets audio token t look at the video at time t + grid[c]
#                     (query = time code rotated by grid[c]) and copies that token's EV into L[c]; a flash one
#                     token away from that time wins over an empty token at it (an event bonus in the logit);
#                     when the time is outside the video window, it looks at the OFF/MOD tokens instead (a sink:
#                     they hold no event), not at whichever video token the time code aliases to;
#   block 1 MLP       hidden unit c fires when EA and L[c] are both high and writes B[c] (a coincidence);
#   block 2 attention the OFF token attends to the audio tokens that hold a sound (key: EA) and averages
#                     B[c] - penalty * E[c] into S[c]: per offset, the sounds a flash matches minus a share of
#                     those that could have been matched (a log-likelihood ratio: offsets at the grid's ends,
#                     where fewer sounds are in view, are not outvoted by chance coincidences in the middle);
#   head              logit c = gain * S[c].
#
# On perfect event scores this module, untrained, finds the offset of 98 % of random windows
# (tests/test_train.py); trained, it is as good as the event scores the extractors learn to give it.

LAG_BANK_PERIODS = (0.63, 0.67, 1.2, 3.5)  # s; chosen so the kernel sum cos(2 pi d / p) is high only for |d| < 0.1 s
LAG_BANK_BETA = 5.0  # attention logit per unit of kernel
LAG_BANK_EVENT_BONUS = 5.0  # block-1 logit added for a video token with a full event score: a look finds a flash
#                             one token away from the looked-at time rather than the empty token at that time
LAG_BANK_CONTENT = 0.5  # event dims range over [0, CONTENT] (in units of the time-code amplitude)
LAG_BANK_HIT = 0.5  # L[c] for a full match
LAG_BANK_AND_GAIN = 8.0  # slope of the coincidence units
LAG_BANK_AND_THRESHOLD = 1.2  # EA/CONTENT + L/HIT must exceed this (2 at a full match)
LAG_BANK_COINCIDENCE = 0.3  # B[c] written per coincidence
LAG_BANK_SINK_LEVEL = 0.5  # audio tokens' constant (sink query), in units of amp
LAG_BANK_SINK_MARGIN = 1.0  # the sink scores like a video token whose kernel is this far below a perfect match
LAG_BANK_POOL_BETA = 5.0  # block-2 attention logit of the OFF token on an audio token with a full event score
LAG_BANK_POOLED = 0.3  # S[c] when every attended token is a coincidence at offset c
LAG_BANK_ELIGIBLE = 0.1  # E[c] of an audio token whose look at offset c lands inside the video window
LAG_BANK_ELIGIBLE_PENALTY = 0.3  # S[c] loses this much (x POOLED) per sound whose look at offset c could match
LAG_BANK_HEAD_GAIN = 3.0
FAN_IN_REF = 64  # fan-in up to which a weight trains at the full learning rate (see lr_scale)
EVENT_POS_WEIGHT = 4.0  # events are sparse (about 1 token in 8): weigh the positives up in the detection loss
PROBE_L2 = 1e-2  # ridge penalty of the event probes (on standardised features)
PROBE_STD_FLOOR = 0.3  # of the overall feature spread
PROBE_LOGIT_STD = 4.0  # the probes' scores are scaled down to at most this spread
PROBE_ITERS = 100
PROBE_WINDOWS = 16  # windows whose tokens fit the event probes at the start


@dataclass(frozen=True)
class LagBankLayout:
    """Which residual dims of the synchronisation transformer hold what after :func:`init_lag_bank`."""

    time_v: np.ndarray  # (2F,)
    time_a: np.ndarray  # (2F,)
    event_v: int
    event_a: int
    const: int
    sink: int  # audio tokens' constant: lets them attend to the OFF/MOD tokens when the video is out of view
    lag: np.ndarray  # (C,) L: video event seen at each offset
    hit: np.ndarray  # (C,) B: coincidences
    pooled: np.ndarray  # (C,) S: pooled coincidences (OFF token)
    eligible: np.ndarray  # (C,) E: the audio token's look at each offset lands inside the video window


def time_code(t: np.ndarray, periods: Sequence[float], amp: float = 1.0) -> np.ndarray:
    """(n,) times -> (n, 2F) codes ``amp * [cos(w_j t), sin(w_j t)]_j`` with w_j = 2 pi / periods[j]."""
    ang = np.asarray(t, dtype=np.float64)[:, None] * (2 * np.pi / np.asarray(periods))[None]
    out = np.empty((len(ang), 2 * len(periods)))
    out[:, 0::2], out[:, 1::2] = np.cos(ang), np.sin(ang)
    return amp * out


def _rotation(theta: float) -> np.ndarray:
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def lag_bank_layout(cfg: Config) -> LagBankLayout:
    """The residual layout :func:`init_lag_bank` uses; raises :class:`TrainError` when the config cannot hold it."""
    sync, C = cfg.sync, cfg.sync.num_classes
    F = len(LAG_BANK_PERIODS)
    E = 2 * F + 2  # time code + attention sink + event bonus
    if sync.heads != C or sync.dim % sync.heads or sync.dim // sync.heads < E or sync.depth < 2:
        raise TrainError(
            f"the lag-bank initialisation needs one attention head per offset class (n_head = {C}), a head size "
            f"of at least {E} (n_embd >= {E * C}, divisible by n_head) and n_layer >= 2; the config has "
            f"n_head={sync.heads}, n_embd={sync.dim}, n_layer={sync.depth}"
        )
    first = 4 * F + 4
    if first + 4 * C > sync.dim or sync.head != "offset":
        raise TrainError(f"n_embd={sync.dim} is too small for the lag bank (needs {first + 4 * C}) or the head "
                         "is not an offset head")
    lag = np.arange(first, first + C)
    return LagBankLayout(np.arange(0, 2 * F), np.arange(2 * F, 4 * F), 4 * F, 4 * F + 1, 4 * F + 2, 4 * F + 3,
                         lag, lag + C, lag + 2 * C, lag + 3 * C)


@torch.no_grad()
def init_lag_bank(model: Synchformer, cfg: Config, amp: float = 1.0) -> LagBankLayout:
    """Set the projections and the synchronisation transformer to a cross-correlation over the offset grid
    (see the comment above). Extra blocks (n_layer > 2) start as identities."""
    lay = lag_bank_layout(cfg)
    tr = model.transformer
    D, C = cfg.sync.dim, cfg.sync.num_classes
    E = D // cfg.sync.heads
    F = len(LAG_BANK_PERIODS)
    grid = cfg.data.grid.astype(np.float64)
    tv, ta = (t.reshape(-1) for t in window_token_times(cfg))
    norm = amp * math.sqrt(F)  # every token's residual has this norm (time code or constant)
    sig = norm / math.sqrt(D)  # ... so the pre-norms divide by about this
    content = LAG_BANK_CONTENT * amp
    hit = LAG_BANK_HIT * amp
    eligible = LAG_BANK_ELIGIBLE * amp

    def zero(*modules: nn.Module) -> None:
        for mod in modules:
            for p in mod.parameters():
                p.zero_()

    def f32(x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, dtype=torch.float32)

    # positional table and special tokens
    pos = torch.zeros(tr.pos_emb_cfg.pos_emb.shape[1:])
    nv, na = len(tv), len(ta)
    pos[0, lay.const] = norm  # OFF
    pos[1 : 1 + nv, lay.time_v] = f32(time_code(tv, LAG_BANK_PERIODS, amp))
    pos[1 + nv, lay.const] = norm  # MOD
    pos[2 + nv : 2 + nv + na, lay.time_a] = f32(time_code(ta, LAG_BANK_PERIODS, amp))
    pos[2 + nv : 2 + nv + na, lay.sink] = LAG_BANK_SINK_LEVEL * amp
    half_token = (tv[1] - tv[0]) / 2
    look = ta[:, None] + grid[None]  # (na, C) video time each audio token looks at, per offset
    in_view = (look >= tv.min() - half_token) & (look <= tv.max() + half_token)
    pos[2 + nv : 2 + nv + na, lay.eligible] = f32(in_view * eligible)
    tr.pos_emb_cfg.pos_emb.copy_(pos[None])
    tr.OFF_tok.zero_()
    tr.MOD_tok.zero_()

    # features -> one event dim each: proj puts a learnable score in the event dim and a constant elsewhere, so
    # the input norm turns the score into a soft indicator; the norm's affine maps it to [0, content]
    spare = D - 1
    for proj, ln, dim in ((model.vproj, tr.vis_in_lnorm, lay.event_v), (model.aproj, tr.aud_in_lnorm, lay.event_a)):
        w = proj.weight[dim].clone()
        zero(proj, ln)
        proj.weight[dim] = w / (w.norm() + 1e-12)
        proj.bias[spare] = 1.0
        ln.weight[dim] = content / (2 * math.sqrt(D))
        ln.bias[dim] = content / 2

    b1, b2 = tr.blocks[0], tr.blocks[1]
    zero(b1.attn, b1.mlp, b2.attn, b2.mlp)
    for extra in tr.blocks[2:]:
        zero(extra.attn.proj, extra.mlp[2])
    # block 1 attention: head c, audio time t -> video time t + grid[c]
    a = b1.attn
    kq = math.sqrt(LAG_BANK_BETA) * E**0.25 * sig / amp  # q.k / sqrt(E) = BETA * sum_j cos(...)
    sink_qk = LAG_BANK_BETA * (F - LAG_BANK_SINK_MARGIN) * math.sqrt(E) * sig**2 / (LAG_BANK_SINK_LEVEL * amp * norm)
    sink_q = sink_k = math.sqrt(sink_qk)
    w = 2 * np.pi / np.asarray(LAG_BANK_PERIODS)
    for c in range(C):
        rows = slice(c * E, c * E + 2 * F)
        rot = np.zeros((2 * F, 2 * F))
        for j in range(F):
            rot[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = _rotation(w[j] * grid[c])
        a.query.weight[rows, lay.time_a] = f32(rot * kq)
        a.key.weight[rows, lay.time_v] = torch.eye(2 * F) * kq
        # sink: OFF and MOD (constant dim) score BETA * (F - SINK_MARGIN) for every audio token, more than any
        # video token away from the looked-at time, so a look past the video's edge finds no event
        a.query.weight[c * E + 2 * F, lay.sink] = sink_q
        a.key.weight[c * E + 2 * F, lay.const] = sink_k
        # event bonus: the audio tokens' constant (query) times the video tokens' event dim (key)
        bonus_qk = LAG_BANK_EVENT_BONUS * math.sqrt(E) * sig**2 / (LAG_BANK_SINK_LEVEL * amp * content)
        a.query.weight[c * E + 2 * F + 1, lay.sink] = math.sqrt(bonus_qk)
        a.key.weight[c * E + 2 * F + 1, lay.event_v] = math.sqrt(bonus_qk)
        a.value.weight[c * E, lay.event_v] = sig * hit / content
        a.proj.weight[lay.lag[c], c * E] = 1.0
    # block 1 MLP: coincidence units
    up, down = b1.mlp[0], b1.mlp[2]
    for c in range(C):
        up.weight[c, lay.lag[c]] = LAG_BANK_AND_GAIN * sig / hit
        up.weight[c, lay.event_a] = LAG_BANK_AND_GAIN * sig / content
        up.bias[c] = -LAG_BANK_AND_GAIN * LAG_BANK_AND_THRESHOLD
        down.weight[lay.hit[c], c] = LAG_BANK_COINCIDENCE * amp / (LAG_BANK_AND_GAIN * (2 - LAG_BANK_AND_THRESHOLD))
    # block 2 attention: the OFF token (query from its constant dim) attends to the audio tokens with a sound
    qk = math.sqrt(LAG_BANK_POOL_BETA * math.sqrt(E)) * sig
    for c in range(C):
        rows = c * E
        b2.attn.query.weight[rows, lay.const] = qk / norm
        b2.attn.key.weight[rows, lay.event_a] = qk / content
        b2.attn.value.weight[c * E, lay.hit[c]] = LAG_BANK_POOLED * sig / LAG_BANK_COINCIDENCE
        # ... minus PENALTY for each sound that could have been matched at offset c (its look lands in view):
        # a log-likelihood ratio rather than a count, so that offsets near the ends of the grid (fewer sounds in
        # view) are not outvoted by chance coincidences at the offsets in the middle
        b2.attn.value.weight[c * E, lay.eligible[c]] = -LAG_BANK_ELIGIBLE_PENALTY * LAG_BANK_POOLED * sig / eligible
        b2.attn.proj.weight[lay.pooled[c], c * E] = 1.0
    zero(tr.off_head)
    for c in range(C):
        tr.off_head.weight[c, lay.pooled[c]] = LAG_BANK_HEAD_GAIN
    return lay


def fit_logistic(x: Tensor, y: Tensor, pos_weight: float = EVENT_POS_WEIGHT, l2: float = PROBE_L2,
                 max_iter: int = PROBE_ITERS) -> tuple[Tensor, float]:
    """Weighted logistic regression of y (n,) in {0, 1} on x (n, d) with L-BFGS; returns (w (d,), b) on the
    original scale of x. Features are standardised for the fit, with a floor on the scale (a feature that barely
    varies must not get a huge weight, or the first training steps would swing the score wildly)."""
    mean = x.mean(0)
    std = torch.maximum(x.std(0), PROBE_STD_FLOOR * x.std()) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    pw = torch.tensor(pos_weight)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y, pos_weight=pw) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_orig = (w / std).detach()
    return w_orig, float(b.detach() - (w_orig * mean).sum())


@torch.no_grad()
def init_event_readouts(model: Synchformer, batch: Batch, layout: LagBankLayout) -> dict[str, float]:
    """Set the lag bank's event scores (rows ``event_v`` / ``event_a`` of the projections) to linear probes
    fitted on the freshly initialised features of ``batch`` (which must hold event targets). Random features
    already tell events apart linearly; finding that readout by gradient steps alone takes many steps.
    Returns the probes' training accuracies."""
    out = {}
    for name, feats, proj, dim, target in (
        ("video", model.extract_vfeats(batch.vid), model.vproj, layout.event_v, batch.event_v),
        ("audio", model.extract_afeats(batch.aud), model.aproj, layout.event_a, batch.event_a),
    ):
        x, y = feats.reshape(-1, feats.shape[-1]), target.reshape(-1)
        with torch.enable_grad():
            w, b = fit_logistic(x, y)
        logits = x @ w + b
        shrink = min(1.0, PROBE_LOGIT_STD / float(logits.std()))  # a separable fit has huge weights: tame them
        proj.weight[dim] = w * shrink
        proj.bias[dim] = b * shrink
        out[f"{name}_probe_acc"] = float(((x @ w + b > 0).float() == y).float().mean())
    return out


# --------------------------------------------------------------------------------------------------------------
# Optimisation


def lr_at(step: int, steps: int, lr: float, warmup_steps: int, min_lr_frac: float) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine to
    ``lr * min_lr_frac`` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_scale(p: Tensor) -> float:
    """Learning-rate factor of a parameter: ``FAN_IN_REF / fan_in`` (at most 1) for weight matrices and kernels,
    1 for vectors. Adam moves every weight by about the learning rate, so a unit's output moves by about
    ``lr * fan_in``: the visual tubelet embedding (fan-in 3*2*32*32) would swing its features at the rate that
    suits a 64-wide layer."""
    if p.ndim < 2:
        return 1.0
    return min(1.0, FAN_IN_REF / p[0].numel())


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                   extra_scale: dict[int, float] | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only (not on biases, norms, tokens or tables of ndim < 2)
    and a learning rate scaled down for large fan-ins (:func:`lr_scale`); ``extra_scale`` multiplies the
    learning rate of chosen parameters (by ``id``)."""
    params = [p for p in params if p.requires_grad]
    extra_scale = extra_scale or {}
    groups: dict[tuple[float, float], list] = {}
    for p in params:
        key = (weight_decay if p.ndim >= 2 else 0.0, lr_scale(p) * extra_scale.get(id(p), 1.0))
        groups.setdefault(key, []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr_scale": sc, "lr": lr * sc}
                              for (wd, sc), ps in groups.items()], lr=lr, betas=(0.9, 0.98))


def train_only_row(linear: nn.Linear, row: int) -> list:
    """Zero the gradients of every output row of ``linear`` but ``row`` (weight and bias); returns the hook
    handles. Keeps the lag bank's projections sparse while the event score trains."""
    mask = torch.zeros(linear.out_features, 1)
    mask[row] = 1.0
    return [linear.weight.register_hook(lambda g: g * mask), linear.bias.register_hook(lambda g: g * mask[:, 0])]


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def event_loss(model: Synchformer, vfeats: Tensor, afeats: Tensor, batch: Batch, layout: LagBankLayout) -> Tensor:
    """Auxiliary detection loss: BCE of the lag bank's event scores (the projections' event dims, before the
    input norms) against the per-token event targets; mean of the video and audio terms."""
    zv = model.vproj(vfeats)[..., layout.event_v]  # (B, S, tv)
    za = model.aproj(afeats)[..., layout.event_a]  # (B, S, ta)
    lv = F.binary_cross_entropy_with_logits(zv, batch.event_v, pos_weight=torch.tensor(EVENT_POS_WEIGHT))
    la = F.binary_cross_entropy_with_logits(za, batch.event_a, pos_weight=torch.tensor(EVENT_POS_WEIGHT))
    return 0.5 * (lv + la)


def train_step(model: Synchformer, opt: torch.optim.Optimizer, batch: Batch, grad_clip: float,
               event_weight: float = 0.0, layout: LagBankLayout | None = None) -> dict[str, float]:
    """One step of cross-entropy on the offset (plus ``event_weight`` x :func:`event_loss`); returns the loss
    terms and the batch accuracy."""
    vfeats = model.extract_vfeats(batch.vid)
    afeats = model.extract_afeats(batch.aud)
    logits = model.sync_logits(vfeats, afeats)
    ce = F.cross_entropy(logits, batch.target)
    loss = ce
    out = {}
    if event_weight > 0 and layout is not None:
        ev = event_loss(model, vfeats, afeats, batch, layout)
        loss = loss + event_weight * ev
        out["event_loss"] = float(ev.detach())
    apply_gradients(opt, loss, model.parameters(), grad_clip)
    acc = float((logits.detach().argmax(-1) == batch.target).float().mean())
    return {"loss": float(ce.detach()), **out, "train_acc": acc}


def detect_step(model: Synchformer, opt: torch.optim.Optimizer, batch: Batch, grad_clip: float,
                layout: LagBankLayout) -> dict[str, float]:
    """One step of :func:`event_loss` alone: the feature extractors and the projections' event rows learn what an
    event looks and sounds like without running the synchronisation module. Returns ``{"event_loss"}``."""
    ev = event_loss(model, model.extract_vfeats(batch.vid), model.extract_afeats(batch.aud), batch, layout)
    apply_gradients(opt, ev, model.parameters(), grad_clip)
    return {"event_loss": float(ev.detach())}


def apply_gradients(opt: torch.optim.Optimizer, loss: Tensor, params: Iterable[nn.Parameter], grad_clip: float) -> None:
    """One optimiser update from ``loss``: fresh gradients, their global norm clipped to ``grad_clip``, a step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def segment_embeddings(model: Synchformer, vid: Tensor, aud: Tensor) -> tuple[Tensor, Tensor]:
    """Per-segment visual and audio vectors for contrastive pre-training: (B*S, D) each, L2-normalised
    (features averaged over the segment's temporal tokens)."""
    v = model.extract_vfeats(vid).mean(2).flatten(0, 1)
    a = model.extract_afeats(aud).mean(2).flatten(0, 1)
    return F.normalize(v, dim=-1), F.normalize(a, dim=-1)


def contrastive_loss(v: Tensor, a: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between matching rows of v and a, both (N, D) normalised."""
    logits = v @ a.T / temperature
    labels = torch.arange(len(v))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


# --------------------------------------------------------------------------------------------------------------
# Training


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python and torch versions."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_at_start": load}


def reproduce_command(out_path: str | Path, s: TrainSettings) -> str:
    """The ``synchlib train-tiny`` command line that repeats a run with settings ``s``."""
    defaults = TrainSettings()
    parts = ["synchlib", "train-tiny", str(out_path)]
    for f in TrainSettings.__dataclass_fields__:
        value = getattr(s, f)
        if f == "seed" or value != getattr(defaults, f):
            parts += [f"--{f.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_tiny(
    out_path: str | Path | None,
    *,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the tiny model from scratch; write ``out_path`` (checkpoint) and ``out_path`` with ``.json`` (record).

    ``overrides`` are :class:`TrainSettings` fields (``steps``, ``n_train_clips``, ``lr``, ...). ``out_path=None``
    writes nothing. ``callback`` receives every learning-curve point as it is measured. Returns the record:
    settings, held-out accuracy (``metrics``) and the final evaluation window by window (``heldout_eval``, see
    :func:`evaluate`), the learning curve (``curve``: step, loss, train_acc, lr and, at evaluation steps,
    held-out acc1/acc1_pm1), timings, machine, and ``command`` to reproduce the run. The
    trained model is under the key ``"model"`` of the returned dict (not written to the JSON file).
    """
    unknown = set(overrides) - set(TrainSettings.__dataclass_fields__)
    if unknown:
        raise TrainError(f"unknown training settings {sorted(unknown)}; see synchlib.train.TrainSettings")
    s = replace(TrainSettings(), seed=seed, **overrides)
    check_settings(s)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    machine = machine_info()
    try:
        cfg = load_config(s.config)
        train_clips = synth_clips(clip_seeds(s.seed, s.n_train_clips), cfg, duration_sec=s.clip_duration_sec,
                                  workers=s.workers, progress=progress, desc="train clips")
        eval_clips = synth_clips(clip_seeds(s.seed, s.n_eval_clips, EVAL_INDEX0), cfg,
                                 duration_sec=s.clip_duration_sec, workers=s.workers, progress=progress,
                                 desc="held-out clips")
        t_data = time.perf_counter() - t0

        model, curve, t_train, final = fit(cfg, train_clips, eval_clips, s, progress=progress, callback=callback)
    finally:
        torch.set_num_threads(threads_before)

    wall = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    record: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "config": s.config,
        "seed": s.seed,
        "steps": s.steps,
        "n_train_clips": s.n_train_clips,
        "train_clip_seeds": [clip_seeds(s.seed, 1)[0], clip_seeds(s.seed, s.n_train_clips)[-1]],
        "heldout_clip_seeds": [clip_seeds(s.seed, 1, EVAL_INDEX0)[0],
                               clip_seeds(s.seed, s.n_eval_clips, EVAL_INDEX0)[-1]],
        "settings": asdict(s),
        "n_params": n_params,
        "metrics": {"heldout_acc1": final["acc1"], "heldout_acc1_pm1": final["acc1_pm1"],
                    "heldout_windows": s.n_eval_windows, "heldout_clips": s.n_eval_clips,
                    "heldout_eval_seed": eval_seed(s.seed)},
        "heldout_eval": final,
        "curve": curve,
        "wall_time_sec": round(wall, 1),
        "data_time_sec": round(t_data, 1),
        "train_time_sec": round(t_train, 1),
        "machine": {**machine, "load_avg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "command": reproduce_command(out_path if out_path is not None else "OUT.pt", s),
    }
    if out_path is not None:
        write_outputs(out_path, model, cfg, record)
    return {**record, "model": model}


def eval_seed(seed: int) -> int:
    """Seed of the held-out windows (offsets and start times) of a run with ``seed``."""
    return seed * 1000 + 7


def fit(
    cfg: Config,
    train_clips: Sequence[Decoded],
    eval_clips: Sequence[Decoded],
    s: TrainSettings,
    *,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> tuple[Synchformer, list[dict], float, dict[str, Any]]:
    """Build a fresh model and train it on decoded clips; returns (model in eval mode, curve, seconds, the final
    held-out evaluation as :func:`evaluate` returns it).

    The curve has one point per step; every ``eval_every`` steps (and at the last one, on ``n_eval_windows``
    windows) it also holds the held-out accuracy.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    _seed_everything(s.seed)
    model = build_model(cfg).train()
    layout = init_lag_bank(model, cfg) if s.init == "lag-bank" else None
    inference_chunk = model.segment_chunk
    model.segment_chunk = TRAIN_SEGMENT_CHUNK
    rng = np.random.default_rng([s.seed, 1])
    curve: list[dict] = []
    if layout is not None and s.probe_windows:
        probe = make_batch(train_clips, sample_windows(rng, train_clips, s.probe_windows, cfg), cfg, events=True)
        init_event_readouts(model, probe, layout)

    if s.pretrain_steps:
        pretrain_contrastive(model, train_clips, cfg, s, rng, progress)
        for module in (model.vfeat_extractor, model.afeat_extractor):
            module.requires_grad_(False)

    hooks, scales = [], {}
    if layout is not None:  # the lag bank trains slowly (or not at all): Adam would blur its sparse weights
        hooks = train_only_row(model.vproj, layout.event_v) + train_only_row(model.aproj, layout.event_a)
        model.transformer.requires_grad_(s.sync_lr_scale > 0)
        scales = {id(p): s.sync_lr_scale for p in model.transformer.parameters()}
    opt = make_optimizer(model.parameters(), s.lr, s.weight_decay, scales)
    augment = augmentation_names(s.augment)
    bar = tqdm(range(s.steps), desc="train", unit="step", disable=not progress)
    for step in bar:
        lr = lr_at(step, s.steps, s.lr, s.warmup_steps, s.min_lr_frac)
        _set_lr(opt, lr)
        specs = sample_windows(rng, train_clips, s.batch_size, cfg, jitter_sec=s.jitter_sec)
        use_events = s.event_weight > 0 and layout is not None
        batch_clips = train_clips
        if augment:
            batch_clips, specs = augment_clips(train_clips, specs, augment, rng)
        batch = make_batch(batch_clips, specs, cfg, events=use_events)
        if step < s.detect_steps:
            terms = detect_step(model, opt, batch, s.grad_clip, layout)
        else:
            terms = train_step(model, opt, batch, s.grad_clip, s.event_weight if use_events else 0.0, layout)
        point = {"step": step + 1, **{k: round(v, 5) for k, v in terms.items()}, "lr": lr}
        last = step + 1 == s.steps
        if (step + 1) % s.eval_every == 0 or last:
            n = s.n_eval_windows if last else s.n_curve_windows
            res = evaluate(model, eval_clips, cfg, n, eval_seed(s.seed))
            point.update(acc1=res["acc1"], acc1_pm1=res["acc1_pm1"], heldout_windows=n)
        bar.set_postfix({k: f"{point[k]:.3f}" for k in ("loss", "event_loss", "train_acc", "acc1") if k in point})
        point["time_sec"] = round(time.perf_counter() - t0, 2)
        curve.append(point)
        if callback is not None:
            callback(point)
    bar.close()
    for handle in hooks:
        handle.remove()
    model.requires_grad_(True)
    model.segment_chunk = inference_chunk
    return model.eval(), curve, time.perf_counter() - t0, res


def write_outputs(out_path: str | Path, model: Synchformer, cfg: Config, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write the checkpoint (released layout) and the JSON record next to it (same stem, ``.json``)."""
    out_path = Path(out_path).expanduser()
    ckpt = save_checkpoint(out_path, model.state_dict(), dict(cfg.raw), epoch=record["steps"],
                           model_type=MODEL_TYPE, metrics=record["metrics"],
                           train={k: record[k] for k in ("seed", "steps", "n_train_clips", "command")})
    rec_path = out_path.with_suffix(".json")
    rec_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return ckpt, rec_path


def pretrain_contrastive(model: Synchformer, clips: Sequence[Decoded], cfg: Config, s: TrainSettings,
                         rng: np.random.Generator, progress: bool = True) -> list[float]:
    """Stage 1 of the reference recipe: segment-level audio-visual InfoNCE on synchronised windows (offset 0)
    for ``s.pretrain_steps`` steps; trains the two feature extractors only. Returns the losses."""
    from tqdm.auto import tqdm

    params = list(model.vfeat_extractor.parameters()) + list(model.afeat_extractor.parameters())
    opt = make_optimizer(params, s.pretrain_lr, s.weight_decay)
    zero = int(np.abs(cfg.data.grid).argmin())
    losses = []
    bar = tqdm(range(s.pretrain_steps), desc="pretrain", unit="step", disable=not progress)
    for step in bar:
        _set_lr(opt, lr_at(step, s.pretrain_steps, s.pretrain_lr, s.warmup_steps, s.min_lr_frac))
        specs = [replace(w, target=zero, start_sec=round(float(rng.uniform(*start_range(clips[w.clip], 0.0, cfg))),
                                                           START_DECIMALS))
                 for w in sample_windows(rng, clips, s.batch_size, cfg)]
        batch = make_batch(clips, specs, cfg)
        v, a = segment_embeddings(model, batch.vid, batch.aud)
        loss = contrastive_loss(v, a, s.temperature)
        apply_gradients(opt, loss, params, s.grad_clip)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{float(loss):.3f}")
    return losses


def train_short(out_path: str | Path | None = None, *, seed: int = 0, progress: bool = True, **overrides: Any) -> dict:
    """A short run for a notebook (:data:`SHORT` settings, about a minute on 2 cores); returns the record with
    its learning curve (``record["curve"]``). Far from converged: use it to see the loss fall."""
    settings = {**SHORT, "workers": 1, **overrides}
    if "detect_steps" not in overrides:  # keep a third of a shortened run for the offset loss
        settings["detect_steps"] = min(SHORT["detect_steps"], settings["steps"] // 3)
    return train_tiny(out_path, seed=seed, progress=progress, **settings)


# --------------------------------------------------------------------------------------------------------------
# Command line (wired as ``synchlib train-tiny``)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``OUT [--seed S] [--steps N] ... [--short] [--no-progress]`` (one flag per :class:`TrainSettings`)."""
    parser.add_argument("out", metavar="OUT", type=Path, help="checkpoint to write (.pt); the record goes to OUT.json")
    defaults = TrainSettings()
    for name, f in TrainSettings.__dataclass_fields__.items():
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(value), default=None,
                            help=f"(default {value})")
    parser.add_argument("--short", action="store_true", help="short run for demos (about a minute)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return parser


def run_train(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run ``synchlib train-tiny`` from parsed arguments; returns the exit status (0)."""
    overrides = {k: getattr(args, k) for k in TrainSettings.__dataclass_fields__ if getattr(args, k, None) is not None}
    if getattr(args, "short", False):
        overrides = {**SHORT, **overrides}
    seed = overrides.pop("seed", 0)
    record = train_tiny(args.out, seed=seed, progress=getattr(args, "progress", True), **overrides)
    m = record["metrics"]
    echo(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}: held-out acc@1 {m['heldout_acc1']:.3f}, "
         f"acc@1 +-1 {m['heldout_acc1_pm1']:.3f} on {m['heldout_windows']} windows, {record['wall_time_sec']:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m synchlib.train OUT ...``."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="synchlib train-tiny",
                                                         description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except SynchlibError as e:
        parser.exit(2, f"synchlib train-tiny: error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(main())
