"""Train the tiny Synchformer on synthetic clips, on the CPU.

The data are real files (:mod:`synchlib.synthetic`: H.264 + AAC ``.mp4``), decoded once and kept in memory; every
window goes through the inference pipeline (:func:`synchlib.preprocess.clip_from_decoded`), so the model learns
what ``predict`` later feeds it. Windows are drawn at random (clip, start time, offset from the grid).

The recipe: the synchronisation transformer starts as a lag bank (:mod:`synchlib.lagbank`; ``init="random"`` trains
the plain architecture instead and shows the plateau that the lag bank avoids). The feature extractors start random
and learn what an event looks and sounds like from an event-detection loss on the generator's ground truth, alone
for the first ``detect_steps`` steps, then beside the offset cross-entropy, which trains everything (the lag bank at
:data:`SYNC_LR_SCALE` of the learning rate). Optional augmentation; AdamW, linear warm-up then cosine decay
(:class:`~torch.optim.lr_scheduler.LambdaLR`), gradient clipping; seeded and deterministic.

>>> record = train_tiny("tiny.pt")                          # doctest: +SKIP  (the shipped recipe, ~10 min on 2 cores)
>>> record = train_tiny(None, SHORT)                       # doctest: +SKIP  (the notebook's run, ~1.5 min)
>>> [(p["step"], p.get("acc1")) for p in record["curve"]]  # doctest: +SKIP

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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import synthetic
from .checkpoints import save_checkpoint
from .config import Config, load_config
from .errors import SynchlibError
from .io import Decoded
from .lagbank import EVENT_POS_WEIGHT, LagBankLayout, init_event_readouts, init_lag_bank
from .margins import window_record
from .model import Synchformer, build_model
from .normalised import read_video
from .preprocess import Clip, clip_from_decoded, equalify, token_first_frames, token_times

CONFIG_NAME = "tiny-synthetic"
MODEL_TYPE = "Synchformer"
EVAL_INDEX0 = 50_000  # held-out clips: dataset_seed(seed, EVAL_INDEX0 + i)
TEST_INDEX0 = 90_000  # clips for tests and demos: dataset_seed(seed, TEST_INDEX0 + i)
START_MARGIN_SEC = 1e-3  # keeps sampled windows clear of the clip ends despite float rounding
START_DECIMALS = 3  # sampled start times are rounded to a millisecond
EVAL_BATCH = 32
TRAIN_SEGMENT_CHUNK = 10**6  # run all segments of a batch in one visual forward (memory is no issue here)
INITS = ("lag-bank", "random")
# the fixed parts of the recipe
MIN_LR_FRAC = 0.02  # the cosine decays to this share of the learning rate
WEIGHT_DECAY = 0.05  # on matrices and kernels only
GRAD_CLIP = 1.0  # global gradient norm
ADAM_BETAS = (0.9, 0.98)
EVENT_WEIGHT = 2.0  # weight of the event-detection loss beside the offset cross-entropy (lag-bank init)
SYNC_LR_SCALE = 0.1  # learning-rate factor of the lag bank: it trains slowly, or Adam would blur its sparse weights
FAN_IN_REF = 64  # fan-in up to which a weight trains at the full learning rate (see lr_scale)
PROBE_WINDOWS = 16  # windows whose tokens fit the event probes at the start
RETIME_FPS = (26.0, 30.0)  # camera frame rates of the re-timing augmentation
MIN_CLIP_SEC = 9.0  # a 5 s window with audio shifted by up to 2 s either way fits (the tiny config's data section)


class TrainError(SynchlibError, ValueError):
    """Bad training arguments."""


# --------------------------------------------------------------------------------------------------------------
# Settings


def _option(default: Any, help: str, **rule: Any) -> Any:
    """A settings field: its default, the help of its command-line option and its rule (``min``: lowest value,
    ``above``: exclusive lower bound, ``choices``)."""
    return field(default=default, metadata={"help": help, **rule})


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run: recorded in the JSON record, one ``synchlib train-tiny`` option
    per field. Checked when made (:class:`TrainError`); :meth:`updated` makes a changed copy."""

    seed: int = _option(0, "seeds the clips, the windows and the initial weights", min=0)
    steps: int = _option(400, "optimiser steps", min=1)
    batch_size: int = _option(12, "windows per step", min=1)
    lr: float = _option(2e-3, "peak learning rate (linear warm-up, then cosine decay)", above=0.0)
    warmup_steps: int = _option(10, "steps of linear learning-rate warm-up", min=0)
    detect_steps: int = _option(190, "the first steps train the event scores only (no offset loss, faster)", min=0)
    init: str = _option("lag-bank", "start of the synchronisation module ('random': the plain architecture)",
                        choices=INITS)
    augment: bool = _option(True, "mirror, permute colours and re-time training windows")
    n_train_clips: int = _option(80, "training clips", min=1)
    clip_duration_sec: float = _option(synthetic.DEFAULT_DURATION_SEC, "length of every clip (s)", min=MIN_CLIP_SEC)
    n_eval_clips: int = _option(30, "held-out clips", min=1)
    n_eval_windows: int = _option(300, "held-out windows of the final evaluation", min=1)
    eval_every: int = _option(90, "steps between held-out points of the learning curve", min=1)
    n_curve_windows: int = _option(42, "held-out windows per learning-curve point", min=1)
    threads: int = _option(2, "torch threads", min=1)
    workers: int = _option(2, "processes that write and decode the clips", min=1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, rule, kind = getattr(self, f.name), f.metadata, type(f.default)
            allowed_types = (int, float) if kind is float else kind
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, allowed_types):
                raise TrainError(f"{f.name} must be a {kind.__name__}, got {value!r}")
            if ("min" in rule and value < rule["min"]) or ("above" in rule and value <= rule["above"]) or (
                    "choices" in rule and value not in rule["choices"]):
                allowed = (f"one of {rule['choices']}" if "choices" in rule else
                           f">= {rule['min']}" if "min" in rule else f"> {rule['above']}")
                raise TrainError(f"{f.name} must be {allowed}, got {value!r}")
        if self.n_train_clips > EVAL_INDEX0:
            raise TrainError(f"n_train_clips must be at most {EVAL_INDEX0} (held-out seeds start there)")
        if self.detect_steps >= self.steps:
            raise TrainError(f"detect_steps must be below steps ({self.steps}), got {self.detect_steps}")
        if self.detect_steps and self.init != "lag-bank":
            raise TrainError("detect_steps needs init='lag-bank' (they train the lag bank's event scores); "
                             "set detect_steps=0 for init='random'")

    def updated(self, **changes: Any) -> TrainSettings:
        """A copy with ``changes`` (field names), checked."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TrainError(f"unknown training settings {unknown}; see synchlib.train.TrainSettings")
        return replace(self, **changes)


SHORT = TrainSettings(steps=280, detect_steps=240, batch_size=6, augment=False, n_train_clips=24, n_eval_clips=6,
                      n_eval_windows=60, eval_every=20, n_curve_windows=24)
"""The short run of the teaching notebook and of ``synchlib train-tiny --short``: about 1.5 minutes on 2 idle CPU
cores, held-out acc@1 0.6-0.9 (docs/tiny-model.md). Smaller batches and more steps than the full recipe (the
event detectors learn faster per window seen) and no augmentation."""


# --------------------------------------------------------------------------------------------------------------
# Data: synthetic files, decoded once


class Clips(NamedTuple):
    """Decoded training and held-out clips of a run (:func:`make_clips`)."""

    train: list[Decoded]
    heldout: list[Decoded]


def clip_seeds(seed: int, n: int, first_index: int = 0) -> list[int]:
    """Seeds of ``n`` synthetic clips: ``dataset_seed(seed, first_index + i)``."""
    return [synthetic.dataset_seed(seed, first_index + i) for i in range(n)]


def _synth_and_decode(path: str, clip_seed: int, duration_sec: float, cfg: Config) -> Decoded:
    """Write synthetic clip ``clip_seed`` to ``path`` and decode it (worker task); the paired event times (s) from
    the clip's sidecar go to ``decoded.meta["av_events"]``."""
    synthetic.make_clip(path, clip_seed, duration_sec=duration_sec, size=cfg.data.size_before_crop,
                        fps=cfg.data.vfps, sample_rate=cfg.data.afps)
    decoded = read_video(path, cfg)
    decoded.meta["av_events"] = tuple(synthetic.read_events(path).av_events)
    decoded.meta["seed"] = int(clip_seed)
    return decoded


def synth_clips(seeds: Sequence[int], cfg: Config, *, duration_sec: float = synthetic.DEFAULT_DURATION_SEC,
                out_dir: str | Path | None = None, workers: int = 1, progress: bool = True,
                desc: str = "synth clips") -> list[Decoded]:
    """Generate, encode and decode one synthetic clip per seed; returns the decoded clips in seed order.

    Files go to ``out_dir`` (a temporary folder, removed afterwards, when None). With ``workers > 1`` clips are
    made in that many processes. Each :class:`Decoded` holds frames (T, H, W, 3) uint8 and audio (N,) float32.
    """
    import multiprocessing as mp

    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="synchlib-train-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        tasks = [(str(folder / f"synth_{s:07d}.mp4"), int(s), float(duration_sec), cfg) for s in seeds]
        with tqdm(total=len(tasks), desc=desc, unit="clip", disable=not progress) as bar:
            if workers <= 1 or len(tasks) <= 1:
                out = []
                for task in tasks:
                    out.append(_synth_and_decode(*task))
                    bar.update()
                return out
            # fork (where there is one) needs no importable __main__; workers only run numpy and PyAV
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
                futures = [pool.submit(_synth_and_decode, *task) for task in tasks]
                for f in futures:
                    f.add_done_callback(lambda _: bar.update())
                return [f.result() for f in futures]


def make_clips(s: TrainSettings, progress: bool = True) -> Clips:
    """The training and held-out clips of a run with settings ``s``, decoded."""
    cfg = load_config(CONFIG_NAME)
    sets = {"train clips": clip_seeds(s.seed, s.n_train_clips),
            "held-out clips": clip_seeds(s.seed, s.n_eval_clips, EVAL_INDEX0)}
    return Clips(*(synth_clips(seeds, cfg, duration_sec=s.clip_duration_sec, workers=s.workers, progress=progress,
                               desc=desc) for desc, seeds in sets.items()))


# --------------------------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class WindowSpec:
    """One training/evaluation example: a window of clip ``clip`` at ``start_sec``, audio shifted by grid class
    ``target``."""

    clip: int
    target: int
    start_sec: float


def start_range(decoded: Decoded, offset_sec: float, cfg: Config) -> tuple[float, float]:
    """Closed interval of start times (s) at which a window with ``offset_sec`` fits inside ``decoded``."""
    data = cfg.data
    n_frames, n_samples = equalify(len(decoded.frames), len(decoded.audio), data)
    latest_video = (n_frames - int(data.crop_len_sec * data.vfps)) / data.vfps
    latest_audio = (n_samples - int(data.crop_len_sec * data.afps)) / data.afps - offset_sec
    return max(0.0, -offset_sec) + START_MARGIN_SEC, min(latest_video, latest_audio) - START_MARGIN_SEC


def sample_windows(rng: np.random.Generator, clips: Sequence[Decoded], n: int, cfg: Config,
                   clip_order: Sequence[int] | None = None) -> list[WindowSpec]:
    """``n`` windows: clip from ``clip_order`` (or uniform), offset class uniform over the grid, start uniform
    over where the window fits (rounded to 1 ms)."""
    grid = cfg.data.grid
    out = []
    for i in range(n):
        c = int(clip_order[i]) if clip_order is not None else int(rng.integers(len(clips)))
        target = int(rng.integers(len(grid)))
        lo, hi = start_range(clips[c], float(grid[target]), cfg)
        if hi < lo:
            raise TrainError(f"clip {c} is too short for a {cfg.data.crop_len_sec:g} s window with offset "
                             f"{grid[target]:+.1f} s; use clips of at least "
                             f"{cfg.data.crop_len_sec + 2 * cfg.data.max_off_sec:g} s")
        out.append(WindowSpec(c, target, round(float(rng.uniform(lo, hi)), START_DECIMALS)))
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
    grid = cfg.data.grid
    prepared = [clip_from_decoded(clips[s.clip], cfg, float(grid[s.target]), s.start_sec) for s in specs]
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


def augment_clips(clips: Sequence[Decoded], specs: Sequence[WindowSpec],
                  rng: np.random.Generator) -> tuple[list[Decoded], list[WindowSpec]]:
    """One augmented view of its clip per window, and the windows renumbered to point at them: mirrored left-right
    (p = 0.5), colour channels permuted (one of the 6 orders), and (p = 0.5) re-timed: shown as a camera at a
    frame rate in :data:`RETIME_FPS` would have recorded it and a decoder brought it back (:func:`retime_map`;
    events move up to a frame later, and ``meta["av_events"]`` with them). Audio is shared and left alone (the
    loudness of a sound is a cue to whether it is paired)."""
    views, renumbered = [], []
    for i, spec in enumerate(specs):
        frames = clips[spec.clip].frames  # (T, H, W, 3) uint8
        if rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        frames = frames[..., rng.permutation(3)]  # a copy (about 3 MB for a 10 s clip)
        meta = clips[spec.clip].meta
        if rng.random() < 0.5:
            fps = clips[spec.clip].fps
            shown = retime_map(len(frames), float(rng.uniform(*RETIME_FPS)), float(rng.random()), fps)
            frames = frames[shown]
            first_showing = np.searchsorted(shown, np.round(np.asarray(meta["av_events"]) * fps).astype(np.int64))
            meta = {**meta, "av_events": tuple(np.minimum(first_showing, len(shown) - 1) / fps)}
        views.append(replace(clips[spec.clip], frames=frames, meta=meta))
        renumbered.append(replace(spec, clip=i))
    return views, renumbered


# --------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model: Synchformer, decoded_clips: Sequence[Decoded], cfg: Config | str, n_windows: int, seed: int,
             batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Accuracy on ``n_windows`` random windows of ``decoded_clips`` (clips taken in turn, random grid offsets
    and start times from ``seed``), run on the model's device in eval mode. Returns ``{"acc1", "acc1_pm1",
    "n_windows", "n_clips", "seed"}`` (acc@1, and within one grid class, in [0, 1]) and the per-window results of
    :func:`synchlib.margins.window_record`."""
    cfg = load_config(cfg)
    order = np.arange(n_windows) % len(decoded_clips)
    specs = sample_windows(np.random.default_rng(seed), decoded_clips, n_windows, cfg, clip_order=order)
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        logits = []
        for i in range(0, len(specs), batch_size):
            b = make_batch(decoded_clips, specs[i : i + batch_size], cfg)
            logits.append(model(b.vid.to(device), b.aud.to(device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    logits = np.concatenate(logits)
    target, pred = np.array([s.target for s in specs], dtype=np.int64), logits.argmax(-1)
    return {"acc1": float(np.mean(pred == target)), "acc1_pm1": float(np.mean(np.abs(pred - target) <= 1)),
            "n_windows": int(n_windows), "n_clips": len(decoded_clips), "seed": int(seed),
            **window_record(logits, target)}


def eval_seed(seed: int) -> int:
    """Seed of the held-out windows (offsets and start times) of a run with ``seed``."""
    return seed * 1000 + 7


# --------------------------------------------------------------------------------------------------------------
# The detection loss and the two kinds of step


def event_loss(model: Synchformer, vfeats: Tensor, afeats: Tensor, batch: Batch, layout: LagBankLayout) -> Tensor:
    """Auxiliary detection loss: BCE of the lag bank's event scores (the projections' event dims, before the
    input norms) against the per-token event targets; mean of the video and audio terms."""
    pw = torch.tensor(EVENT_POS_WEIGHT)
    lv = F.binary_cross_entropy_with_logits(model.vproj(vfeats)[..., layout.event_v], batch.event_v, pos_weight=pw)
    la = F.binary_cross_entropy_with_logits(model.aproj(afeats)[..., layout.event_a], batch.event_a, pos_weight=pw)
    return 0.5 * (lv + la)


def apply_gradients(opt: torch.optim.Optimizer, loss: Tensor, params: Iterable[nn.Parameter]) -> None:
    """One optimiser update from ``loss``: fresh gradients, their global norm clipped to :data:`GRAD_CLIP`."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()


def train_step(model: Synchformer, opt: torch.optim.Optimizer, batch: Batch,
               layout: LagBankLayout | None = None) -> dict[str, float]:
    """One step of cross-entropy on the offset (plus :data:`EVENT_WEIGHT` x :func:`event_loss` with a lag bank);
    returns the loss terms and the batch accuracy."""
    vfeats, afeats = model.extract_vfeats(batch.vid), model.extract_afeats(batch.aud)
    logits = model.sync_logits(vfeats, afeats)
    ce = F.cross_entropy(logits, batch.target)
    out = {"loss": float(ce.detach())}
    if layout is not None:
        ev = event_loss(model, vfeats, afeats, batch, layout)
        ce = ce + EVENT_WEIGHT * ev
        out["event_loss"] = float(ev.detach())
    apply_gradients(opt, ce, model.parameters())
    return {**out, "train_acc": float((logits.detach().argmax(-1) == batch.target).float().mean())}


def detect_step(model: Synchformer, opt: torch.optim.Optimizer, batch: Batch,
                layout: LagBankLayout) -> dict[str, float]:
    """One step of :func:`event_loss` alone: the feature extractors and the projections' event rows learn what an
    event looks and sounds like without running the synchronisation module. Returns ``{"event_loss"}``."""
    ev = event_loss(model, model.extract_vfeats(batch.vid), model.extract_afeats(batch.aud), batch, layout)
    apply_gradients(opt, ev, model.parameters())
    return {"event_loss": float(ev.detach())}


# --------------------------------------------------------------------------------------------------------------
# Optimisation


def warmup_cosine(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at step i (0-based), for :class:`~torch.optim.lr_scheduler.LambdaLR`: linear
    warm-up to 1 over ``warmup_steps``, then cosine decay to :data:`MIN_LR_FRAC` at the last step."""
    span = max(1, steps - warmup_steps - 1)

    def factor(i: int) -> float:
        if i < warmup_steps:
            return (i + 1) / warmup_steps
        return MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warmup_steps) / span)))

    return factor


def lr_scale(p: Tensor) -> float:
    """Learning-rate factor of a parameter: ``FAN_IN_REF / fan_in`` (at most 1) for weight matrices and kernels,
    1 for vectors. Adam moves every weight by about the learning rate, so a unit's output moves by about
    ``lr * fan_in``: the visual tubelet embedding (fan-in 3*2*32*32) would swing its features at the rate that
    suits a 64-wide layer."""
    return 1.0 if p.ndim < 2 else min(1.0, FAN_IN_REF / p[0].numel())


def make_optimizer(params: Iterable[nn.Parameter], lr: float, extra_scale: dict[int, float]) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and kernels only (not on biases, norms, tokens or tables of ndim < 2)
    and a learning rate scaled down for large fan-ins (:func:`lr_scale`); ``extra_scale`` multiplies the learning
    rate of chosen parameters (by ``id``). Parameters that need no gradient are left out."""
    groups: dict[tuple[float, float], list] = {}
    for p in params:
        if p.requires_grad:
            key = (WEIGHT_DECAY if p.ndim >= 2 else 0.0, lr_scale(p) * extra_scale.get(id(p), 1.0))
            groups.setdefault(key, []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr": lr * sc} for (wd, sc), ps in groups.items()],
                             lr=lr, betas=ADAM_BETAS)


def train_only_row(linear: nn.Linear, row: int) -> list:
    """Zero the gradients of every output row of ``linear`` but ``row`` (weight and bias); returns the hook
    handles. Keeps the lag bank's projections sparse while the event score trains."""
    mask = torch.zeros(linear.out_features, 1)
    mask[row] = 1.0
    return [linear.weight.register_hook(lambda g: g * mask), linear.bias.register_hook(lambda g: g * mask[:, 0])]


# --------------------------------------------------------------------------------------------------------------
# Training


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python and torch versions, load average."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if ln.startswith("model name")]
    return {"cpu": names[0] if names else platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "load_avg_at_start": _load()}


def _load() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def reproduce_command(out_path: str | Path, s: TrainSettings) -> str:
    """The ``synchlib train-tiny`` command line that repeats a run with settings ``s``."""
    parts = ["synchlib", "train-tiny", str(out_path)]
    for f in fields(s):
        value, name = getattr(s, f.name), f.name.replace("_", "-")
        if isinstance(value, bool) and value != f.default:
            parts.append(f"--{name}" if value else f"--no-{name}")
        elif f.name == "seed" or value != f.default:
            parts += [f"--{name}", str(value)]
    return shlex.join(parts)


def train_tiny(out_path: str | Path | None, settings: TrainSettings = TrainSettings(), *, clips: Clips | None = None,
               progress: bool = True, callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train the tiny model from scratch; write ``out_path`` (checkpoint) and ``out_path`` with ``.json`` (record).

    ``out_path=None`` writes nothing. ``clips`` (from :func:`make_clips` with the same settings) saves decoding the
    clips again. ``callback`` receives every learning-curve point as it is measured. Returns the record: settings,
    held-out accuracy (``metrics``) and the final evaluation window by window (``heldout_eval``, see
    :func:`evaluate`), the learning curve (``curve``: step, loss, event_loss, train_acc, lr and, at evaluation
    steps, held-out acc1/acc1_pm1), timings, machine, and ``command`` to reproduce the run. The trained model is
    under the key ``"model"`` of the returned dict (not written to the JSON file).
    """
    s = settings
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    machine = machine_info()
    try:
        cfg = load_config(CONFIG_NAME)
        clips = clips if clips is not None else make_clips(s, progress)
        t_data = time.perf_counter() - t0
        model, curve, t_train, final = fit(cfg, clips, s, progress=progress, callback=callback)
    finally:
        torch.set_num_threads(threads_before)
    record: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "config": CONFIG_NAME,
        "seed": s.seed,
        "steps": s.steps,
        "n_train_clips": s.n_train_clips,
        "train_clip_seeds": [clip_seeds(s.seed, 1)[0], clip_seeds(s.seed, s.n_train_clips)[-1]],
        "heldout_clip_seeds": [clip_seeds(s.seed, 1, EVAL_INDEX0)[0],
                               clip_seeds(s.seed, s.n_eval_clips, EVAL_INDEX0)[-1]],
        "settings": asdict(s),
        "n_params": sum(p.numel() for p in model.parameters()),
        "metrics": {"heldout_acc1": final["acc1"], "heldout_acc1_pm1": final["acc1_pm1"],
                    "heldout_windows": s.n_eval_windows, "heldout_clips": s.n_eval_clips,
                    "heldout_eval_seed": eval_seed(s.seed)},
        "heldout_eval": final,
        "curve": curve,
        "wall_time_sec": round(time.perf_counter() - t0, 1),
        "data_time_sec": round(t_data, 1),
        "train_time_sec": round(t_train, 1),
        "machine": {**machine, "load_avg_at_end": _load()},
        "command": reproduce_command(out_path if out_path is not None else "OUT.pt", s),
    }
    if out_path is not None:
        write_outputs(out_path, model, cfg, record)
    return {**record, "model": model}


def fit(cfg: Config, clips: Clips, s: TrainSettings, *, progress: bool = True,
        callback: Callable[[dict], None] | None = None) -> tuple[Synchformer, list[dict], float, dict[str, Any]]:
    """Build a fresh model and train it on decoded clips; returns (model in eval mode, curve, seconds, the final
    held-out evaluation as :func:`evaluate` returns it).

    The curve has one point per step; every ``eval_every`` steps (and at the last one, on ``n_eval_windows``
    windows) it also holds the held-out accuracy.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    np.random.seed(s.seed % 2**32)
    model = build_model(cfg).train()
    layout = init_lag_bank(model, cfg) if s.init == "lag-bank" else None
    inference_chunk, model.segment_chunk = model.segment_chunk, TRAIN_SEGMENT_CHUNK
    rng = np.random.default_rng([s.seed, 1])
    hooks, scales = [], {}
    if layout is not None:
        probe = make_batch(clips.train, sample_windows(rng, clips.train, PROBE_WINDOWS, cfg), cfg, events=True)
        init_event_readouts(model, probe.vid, probe.aud, probe.event_v, probe.event_a, layout)
        hooks = train_only_row(model.vproj, layout.event_v) + train_only_row(model.aproj, layout.event_a)
        scales = {id(p): SYNC_LR_SCALE for p in model.transformer.parameters()}
    opt = make_optimizer(model.parameters(), s.lr, scales)
    lr_factor = warmup_cosine(s.steps, s.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    curve: list[dict] = []
    bar = tqdm(range(s.steps), desc="train", unit="step", disable=not progress)
    for step in bar:
        specs = sample_windows(rng, clips.train, s.batch_size, cfg)
        batch_clips = clips.train
        if s.augment:
            batch_clips, specs = augment_clips(clips.train, specs, rng)
        batch = make_batch(batch_clips, specs, cfg, events=layout is not None)
        if step < s.detect_steps:
            terms = detect_step(model, opt, batch, layout)
        else:
            terms = train_step(model, opt, batch, layout)
        schedule.step()
        point = {"step": step + 1, **{k: round(v, 5) for k, v in terms.items()}, "lr": s.lr * lr_factor(step)}
        last = step + 1 == s.steps
        if (step + 1) % s.eval_every == 0 or last:
            n = s.n_eval_windows if last else s.n_curve_windows
            res = evaluate(model, clips.heldout, cfg, n, eval_seed(s.seed))
            point.update(acc1=res["acc1"], acc1_pm1=res["acc1_pm1"], heldout_windows=n)
        bar.set_postfix({k: f"{point[k]:.3f}" for k in ("loss", "event_loss", "train_acc", "acc1") if k in point})
        point["time_sec"] = round(time.perf_counter() - t0, 2)
        curve.append(point)
        if callback is not None:
            callback(point)
    bar.close()
    for handle in hooks:
        handle.remove()
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


# --------------------------------------------------------------------------------------------------------------
# Command line (wired as ``synchlib train-tiny``)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``OUT [--short] [--seed S] [--steps N] ... [--no-progress]``: one option per :class:`TrainSettings`
    field, with its help and default."""
    parser.add_argument("out", metavar="OUT", type=Path, help="checkpoint to write (.pt); the record goes to OUT.json")
    parser.add_argument("--short", action="store_true",
                        help=f"the teaching notebook's short run ({SHORT.steps} steps of {SHORT.batch_size} windows "
                             f"on {SHORT.n_train_clips} clips, about 1.5 minutes on 2 idle CPU cores, held-out acc@1 "
                             "0.6-0.9) instead of the full recipe (about 10 minutes, 0.95); options given as well "
                             "change it")
    for f in fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        short = "" if getattr(SHORT, f.name) == f.default else f"; --short: {getattr(SHORT, f.name)}"
        kind = argparse.BooleanOptionalAction if isinstance(f.default, bool) else None
        parser.add_argument(flag, dest=f.name, default=None, help=f"{f.metadata['help']} (default {f.default}{short})",
                            **({"action": kind} if kind else {"type": type(f.default),
                                                               "choices": f.metadata.get("choices")}))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return parser


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The settings ``synchlib train-tiny`` runs with: :data:`SHORT` with ``--short``, else the defaults; changed
    by the options given."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if getattr(args, f.name, None) is not None}
    return (SHORT if getattr(args, "short", False) else TrainSettings()).updated(**given)


def run_train(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run ``synchlib train-tiny`` from parsed arguments; returns the exit status (0)."""
    record = train_tiny(args.out, settings_from_args(args), progress=getattr(args, "progress", True))
    m = record["metrics"]
    echo(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}: held-out acc@1 {m['heldout_acc1']:.3f}, "
         f"acc@1 +-1 {m['heldout_acc1_pm1']:.3f} on {m['heldout_windows']} windows, {record['wall_time_sec']:.0f} s")
    return 0
