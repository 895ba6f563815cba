"""Synthetic audio-visual clips with known event times, for training and teaching.

Each clip is a real ``.mp4`` (H.264 video + AAC audio, written with PyAV) showing a few coloured shapes
("actors") on a dark, noisy background. Every *paired event* is visible and audible at the same instant:

* the actor flashes (brightens towards white at the event frame and fades over ~3 frames); depending on its style it also
  changes colour or is a ball bouncing on the floor, touching it at the event frame;
* the actor's own sound (a click, a knock or a beep, 20-60 ms, sharp onset) starts at the exact time of the
  event frame.

Paired events come at an irregular rate (0.7-2 per second, gaps of at least 0.32 s and at most 2 s, drawn from
a shifted gamma distribution); a timing pattern is resampled when shifting it by a multiple of the 0.2 s offset
step makes half of the events in some 4.8 s window line up again.

Distractors, weaker or rarer than the paired events, keep either stream alone from being enough:

* a dim "drifter" that glides across the frame without sound; its wall bounces and a few weak silent glints are
  the ``visual_only`` events;
* a few quieter off-screen sounds with nothing to see (``audio_only``), fewer than half the paired events;
* background noise (audio) and sensor noise (video) at random levels.

:func:`render` returns the raw arrays, :func:`make_clip` renders and encodes one file plus a JSON sidecar
(``clip.mp4`` -> ``clip.events.json``), :func:`write_dataset` writes many clips and a ``manifest.csv``.
The same seed always gives the same file, byte for byte, on every run and every x86-64 CPU with AVX2 and FMA3
(see :func:`write_mp4`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .config import DataConfig
from .errors import SynchlibError

if TYPE_CHECKING:
    import av

# --------------------------------------------------------------------------------------------------------------
# Constants

_DATA = DataConfig()
DEFAULT_FPS = _DATA.vfps  # 25
DEFAULT_SAMPLE_RATE = _DATA.afps  # 16000
DEFAULT_SIZE = 64
DEFAULT_DURATION_SEC = 10.0
MIN_DURATION_SEC = 1.0
MAX_DURATION_SEC = 600.0
MIN_SIZE = 32
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

# Offset grid the clips must make learnable (0.2 s steps, +-2 s) and the window the model sees (4.8 s).
OFFSET_STEP_SEC = 2 * _DATA.max_off_sec / (_DATA.num_off_cls - 1)
MAX_RELATIVE_SHIFT_SEC = 2 * _DATA.max_off_sec  # a wrong class can be up to 4 s away from the true one
WINDOW_SEC = _DATA.window_sec

# Paired-event timing.
EVENT_RATE_RANGE = (0.7, 2.0)  # events per second, drawn per clip
MIN_GAP_SEC = 0.3  # rounded up to whole frames (0.32 s at 25 fps)
MAX_GAP_SEC = 2.0
GAP_GAMMA_SHAPE = 2.0  # extra gap over the minimum ~ Gamma(shape, .); 2 is irregular but not bursty
EDGE_MARGIN_SEC = 0.12  # no event closer than this to either end of the clip
MAX_LINEUP_FRACTION = 0.5  # reject timings where a wrong shift lines up this fraction of a window's events
TIMING_TRIES = 24

# Actors (objects with paired events).
N_ACTORS_RANGE = (2, 3)  # inclusive
ACTOR_RADIUS_FRAC = (0.09, 0.12)  # of the frame size
ACTOR_SHAPES = ("circle", "square", "triangle", "diamond")
ACTOR_STYLES = ("flash", "colour", "bounce")
BASE_VALUE = 0.55  # actors' resting brightness (fraction of full colour); flashes blend towards white
FLASH_PEAK = {"flash": 1.0, "colour": 0.75, "bounce": 0.7}
FLASH_DECAY = 0.4  # per frame after the event frame
BOUNCE_FULL_HEIGHT_GAP_SEC = 1.0  # a hop this long (or longer) reaches the top of the frame
EDGE_PAD_FRAC = 0.06  # keep shapes this far (fraction of size) from the border

PALETTE = np.array(
    [
        [1.00, 0.18, 0.12],  # red
        [0.15, 0.90, 0.25],  # green
        [0.25, 0.40, 1.00],  # blue
        [1.00, 0.88, 0.10],  # yellow
        [0.95, 0.25, 0.90],  # magenta
        [0.10, 0.90, 0.95],  # cyan
        [1.00, 0.55, 0.05],  # orange
    ],
    dtype=np.float32,
)

# Drifter (silent motion) and its glints.
DRIFTER_RADIUS_FRAC = (0.06, 0.08)
DRIFTER_SHAPES = ("ring", "circle", "square")
DRIFTER_VALUE = 0.38
DRIFTER_SPEED_X_FRAC = (0.1, 0.25)  # of the size, per second
DRIFTER_SPEED_Y_FRAC = (0.02, 0.08)
DRIFTER_SLOWDOWN = 0.8  # speed factor applied while wall bounces + glints exceed half the paired events
DRIFTER_SLOWDOWN_TRIES = 20
GLINT_RATE_RANGE = (0.0, 0.15)  # per second
GLINT_PEAK = 0.45
GLINT_MIN_DISTANCE_FRAMES = 4  # from any paired event

# Background.
BG_LEVEL_RANGE = (0.03, 0.12)
BG_TEXTURE_AMPLITUDE = 0.03
BG_TEXTURE_CELLS = 8
VIDEO_NOISE_STD_RANGE = (0.0, 0.02)  # sensor noise, up to ~5 grey levels

# Audio.
SOUND_KINDS = ("click", "knock", "beep")
SOUND_GAIN_RANGE = (0.5, 0.75)  # peak amplitude of an actor's sound
EVENT_GAIN_JITTER = (0.85, 1.0)
OFFSCREEN_RATE_RANGE = (0.1, 0.3)  # per second
OFFSCREEN_GAIN_RANGE = (0.2, 0.45)  # relative to the paired sounds' gain range
OFFSCREEN_MIN_DISTANCE_SEC = 0.15  # from paired onsets and from each other
OFFSCREEN_MIN_DURATION_SEC = 3.0  # shorter clips get no guaranteed off-screen sound
AUDIO_NOISE_RMS_LOG10_RANGE = (-3.0, -1.7)  # 0.001 .. 0.02
AUDIO_NOISE_SMOOTHING = 0.6  # one-pole low-pass coefficient (a slightly dull hiss)
AUDIO_NOISE_TAPS = 16  # truncated impulse response of that low-pass
PEAK_LIMIT = 0.95

# Encoding (see write_mp4 for why these give the same bytes on every run and CPU).
VIDEO_CODEC = "libx264"
VIDEO_PIX_FMT = "yuv420p"
# crf 12: near-lossless, flashes survive; asm=0: x264's plain C code, the same instructions on every CPU
VIDEO_OPTIONS = {"crf": "12", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
GOP_SEC = 2
# RGB -> Y'CbCr: ITU-R BT.601 weights, limited ("TV") range as swscale's default, in fixed point
BT601_KR, BT601_KB = 0.299, 0.114
LUMA_BLACK, LUMA_SPAN = 16, 219  # Y' = 16 + 219 * luma: black 16, white 235
CHROMA_ZERO, CHROMA_SPAN = 128, 224  # Cb, Cr = 128 + 224 * colour difference in [-1/2, 1/2]: 16..240
YUV_FRACTION_BITS = 16
AUDIO_CODEC = "aac"
AUDIO_BIT_RATE = 96_000
AUDIO_OPTIONS = {"aac_coder": "fast"}  # 3x faster than the default "twoloop" and cleaner on these sounds
AUDIO_CHUNK = 1024  # samples per AAC frame

SIDECAR_SUFFIX = ".events.json"
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "seed", "duration_sec", "n_av_events", "n_visual_only", "n_audio_only")
DATASET_SEED_STRIDE = 100_000
TIME_DECIMALS = 6


class SyntheticError(SynchlibError, ValueError):
    """Bad arguments for the synthetic clip generator, or an unreadable sidecar."""


# --------------------------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class ClipInfo:
    """What a synthetic clip contains; event times in seconds from the start of the clip.

    ``av_events``: paired events (visible and audible at the same time).
    ``visual_only``: silent visual events (drifter wall bounces and glints).
    ``audio_only``: off-screen sounds with nothing to see.
    """

    path: Path | None
    seed: int
    duration: float
    fps: int
    sample_rate: int
    size: int
    av_events: tuple[float, ...]
    visual_only: tuple[float, ...]
    audio_only: tuple[float, ...]

    def to_json_dict(self) -> dict:
        """JSON-ready dict; ``path`` is the file name only (the sidecar sits next to the clip)."""
        out = asdict(self)
        out["path"] = None if self.path is None else Path(self.path).name
        for key in ("av_events", "visual_only", "audio_only"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_json_dict(cls, data: dict, path: Path | None = None) -> "ClipInfo":
        """Inverse of :meth:`to_json_dict`; ``path`` replaces the stored file name."""
        try:
            return cls(
                path=path,
                seed=int(data["seed"]),
                duration=float(data["duration"]),
                fps=int(data["fps"]),
                sample_rate=int(data["sample_rate"]),
                size=int(data["size"]),
                av_events=tuple(float(t) for t in data["av_events"]),
                visual_only=tuple(float(t) for t in data["visual_only"]),
                audio_only=tuple(float(t) for t in data["audio_only"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SyntheticError(f"events sidecar is missing or has a bad field ({e!r}); rewrite the clip") from None


def sidecar_path(path: str | Path) -> Path:
    """``clip.mp4`` -> ``clip.events.json``."""
    path = Path(path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def read_events(path: str | Path) -> ClipInfo | None:
    """Ground truth of a clip written by :func:`make_clip`, or None when it has no sidecar."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SyntheticError(f"cannot read events sidecar {side}: {e}; delete it or rewrite the clip") from None
    if not isinstance(data, dict):
        raise SyntheticError(f"events sidecar {side} does not hold a JSON object; rewrite the clip")
    return ClipInfo.from_json_dict(data, path=Path(path))


# --------------------------------------------------------------------------------------------------------------
# Argument checks


def _check_args(seed: int, duration_sec: float, size: int, fps: int, sample_rate: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(duration_sec, (int, float)) or not math.isfinite(duration_sec):
        raise SyntheticError(f"duration_sec must be a finite number of seconds, got {duration_sec!r}")
    if not MIN_DURATION_SEC <= duration_sec <= MAX_DURATION_SEC:
        raise SyntheticError(
            f"duration_sec={duration_sec} is outside [{MIN_DURATION_SEC}, {MAX_DURATION_SEC}] s; "
            f"clips need room for several events (the model window is {WINDOW_SEC:.1f} s)"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE or size % 2:
        raise SyntheticError(f"size must be an even integer >= {MIN_SIZE} (H.264 yuv420p needs even sides), "
                             f"got {size!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 5 <= fps <= 120:
        raise SyntheticError(f"fps must be an integer in [5, 120], got {fps!r}")
    if sample_rate not in AAC_SAMPLE_RATES:
        raise SyntheticError(f"sample_rate must be one AAC supports {AAC_SAMPLE_RATES}, got {sample_rate!r}")


# --------------------------------------------------------------------------------------------------------------
# Event timing


def shift_frames(fps: int) -> np.ndarray:
    """Relative shifts (frames) between a wrong and the true offset class, +-1..+-20 steps, int (40,)."""
    steps = np.arange(1, int(round(MAX_RELATIVE_SHIFT_SEC / OFFSET_STEP_SEC)) + 1)
    pos = np.round(steps * OFFSET_STEP_SEC * fps).astype(np.int64)
    return np.concatenate([pos, -pos])


def lineup_fraction(event_frames: np.ndarray, n_frames: int, fps: int) -> float:
    """Worst share of a window's events that a wrong offset lines up with other events exactly.

    For every window of ``WINDOW_SEC`` (any start frame) and every nonzero shift on the offset grid, count the
    events in the window whose shifted time hits another event's frame, divided by the events in the window.
    ``event_frames`` int (E,). Returns a float in [0, 1]; 0 when there are no events.
    """
    ev = np.asarray(event_frames, dtype=np.int64)
    if ev.size == 0:
        return 0.0
    win = max(1, int(round(WINDOW_SEC * fps)))
    diffs = ev[None, :] - ev[:, None]  # (E, E): j minus i
    shifts = shift_frames(fps)
    hits = (diffs[:, :, None] == shifts[None, None, :]).any(axis=1)  # (E, S): event i lands on some j
    starts = np.arange(0, max(1, n_frames - win + 1))
    inside = (ev[None, :] >= starts[:, None]) & (ev[None, :] < starts[:, None] + win)  # (W, E)
    counts = inside.sum(axis=1)
    keep = counts >= 2
    if not keep.any():
        return 0.0
    lined = inside[keep].astype(np.int64) @ hits.astype(np.int64)  # (W', S)
    return float((lined / counts[keep, None]).max())


def _sample_event_frames(rng: np.random.Generator, n_frames: int, fps: int) -> np.ndarray:
    """One candidate timing: sorted int frame indices (E,) with irregular gaps, at least one event."""
    rate = rng.uniform(*EVENT_RATE_RANGE)
    min_gap = math.ceil(MIN_GAP_SEC * fps - 1e-9)
    max_gap = max(min_gap, int(MAX_GAP_SEC * fps))
    mean_gap = max(fps / rate, min_gap + 1.0)
    first = math.ceil(EDGE_MARGIN_SEC * fps)
    last = n_frames - 1 - math.ceil(EDGE_MARGIN_SEC * fps)
    frames = []
    f = first + int(rng.integers(0, max(1, int(mean_gap))))
    while f <= last:
        frames.append(f)
        extra = rng.gamma(GAP_GAMMA_SHAPE, (mean_gap - min_gap) / GAP_GAMMA_SHAPE)
        f += int(min(max_gap, min_gap + round(extra)))
    if not frames:
        frames.append((first + last) // 2)
    return np.asarray(frames, dtype=np.int64)


def _event_frames(rng: np.random.Generator, n_frames: int, fps: int) -> np.ndarray:
    """Paired-event frames (E,): the first candidate whose lineup fraction is below the limit, else the best."""
    best, best_score = None, math.inf
    for _ in range(TIMING_TRIES):
        frames = _sample_event_frames(rng, n_frames, fps)
        score = lineup_fraction(frames, n_frames, fps)
        if score < best_score:
            best, best_score = frames, score
        if score < MAX_LINEUP_FRACTION:
            break
    return best


def _pick_away(rng: np.random.Generator, count: int, low: float, high: float, avoid: np.ndarray,
               min_distance: float) -> np.ndarray:
    """Up to ``count`` sorted values in [low, high] at least ``min_distance`` from ``avoid`` and each other."""
    picked: list[float] = []
    taken = list(np.asarray(avoid, dtype=np.float64))
    for _ in range(count * 20):
        if len(picked) == count or high <= low:
            break
        x = float(rng.uniform(low, high))
        if all(abs(x - t) >= min_distance for t in taken):
            picked.append(x)
            taken.append(x)
    return np.sort(np.asarray(picked, dtype=np.float64))


# --------------------------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class _Actor:
    shape: str
    style: str
    x: float  # centre, px
    y: float  # centre (resting / floor position for bounce), px
    radius: float
    colours: np.ndarray  # (2, 3) float in [0, 1]; "colour" style toggles between them
    events: np.ndarray  # int frames (e,)
    sound: np.ndarray  # float32 (n,), peak 1
    gain: float


@dataclass(frozen=True)
class _Drifter:
    shape: str
    radius: float
    colour: np.ndarray  # (3,)
    start: np.ndarray  # (2,) unfolded x, y at t=0, px
    velocity: np.ndarray  # (2,) px/s
    low: float  # centre range [low, high] on both axes
    high: float
    glints: np.ndarray  # int frames (g,)


@dataclass(frozen=True)
class _Scene:
    n_frames: int
    n_samples: int
    fps: int
    sample_rate: int
    size: int
    actors: tuple[_Actor, ...]
    drifter: _Drifter
    bg_colour: np.ndarray  # (3,)
    bg_texture: np.ndarray  # (H, W) float32
    video_noise_std: float
    offscreen_times: np.ndarray  # float seconds (o,)
    offscreen_sounds: tuple[np.ndarray, ...]
    offscreen_gains: np.ndarray  # (o,)
    audio_noise_rms: float


def _sound(rng: np.random.Generator, kind: str, sample_rate: int) -> np.ndarray:
    """A short percussive sound, float32 (n,) with peak 1 and full level within ~1 ms of sample 0."""
    if kind == "click":
        n = int(rng.uniform(0.02, 0.03) * sample_rate)
        t = np.arange(n) / sample_rate
        x = rng.standard_normal(n) * np.exp(-t / 0.004)
        x = np.diff(x, prepend=0.0)  # brighter, no low rumble
    elif kind == "knock":
        n = int(rng.uniform(0.045, 0.06) * sample_rate)
        t = np.arange(n) / sample_rate
        f = rng.uniform(150.0, 400.0)
        x = np.sin(2 * np.pi * f * t) * np.exp(-t / 0.014)
        x += 0.5 * np.sin(2 * np.pi * 2.7 * f * t) * np.exp(-t / 0.006)
        x += 0.6 * rng.standard_normal(n) * np.exp(-t / 0.002)  # the strike
    elif kind == "beep":
        n = int(rng.uniform(0.03, 0.05) * sample_rate)
        t = np.arange(n) / sample_rate
        f = rng.uniform(500.0, 2500.0)
        attack = np.clip(t / 0.001, 0.0, 1.0)
        release = np.clip((t[-1] - t) / 0.008, 0.0, 1.0)
        x = np.sin(2 * np.pi * f * t) * attack * release
    else:
        raise SyntheticError(f"unknown sound kind {kind!r}; expected one of {SOUND_KINDS}")
    return (x / np.abs(x).max()).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark base colour (3,) and a smooth static texture (size, size) with zero mean."""
    colour = rng.uniform(*BG_LEVEL_RANGE, size=3).astype(np.float32)
    coarse = rng.standard_normal((BG_TEXTURE_CELLS + 1, BG_TEXTURE_CELLS + 1))
    pos = np.linspace(0, BG_TEXTURE_CELLS, size)
    i0 = np.minimum(pos.astype(int), BG_TEXTURE_CELLS - 1)
    w = pos - i0
    rows = coarse[i0] * (1 - w)[:, None] + coarse[i0 + 1] * w[:, None]  # (size, cells+1)
    tex = rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]
    tex = (tex - tex.mean()) / (tex.std() + 1e-8) * BG_TEXTURE_AMPLITUDE
    return colour, tex.astype(np.float32)


def _actors(rng: np.random.Generator, events: np.ndarray, size: int, sample_rate: int) -> tuple[_Actor, ...]:
    """2-3 actors in separate columns, distinct colours/shapes/sounds; each paired event goes to one actor."""
    n = int(rng.integers(N_ACTORS_RANGE[0], N_ACTORS_RANGE[1] + 1))
    owner = rng.integers(0, n, size=len(events))
    owner[:n] = rng.permutation(n)[: min(n, len(events))]  # everyone gets an event when there are enough
    hues = rng.permutation(len(PALETTE))
    shapes = rng.permutation(len(ACTOR_SHAPES))
    styles = rng.permutation(len(ACTOR_STYLES))
    kinds = rng.permutation(len(SOUND_KINDS))
    pad = EDGE_PAD_FRAC * size
    column = size / n
    actors = []
    for i in range(n):
        radius = rng.uniform(*ACTOR_RADIUS_FRAC) * size
        style = ACTOR_STYLES[styles[i % len(ACTOR_STYLES)]]
        x = column * (i + 0.5) + rng.uniform(-0.15, 0.15) * column
        if style == "bounce":
            y = size - pad - radius
        else:
            y = rng.uniform(pad + radius, size - pad - radius)
        actors.append(
            _Actor(
                shape=ACTOR_SHAPES[shapes[i % len(ACTOR_SHAPES)]],
                style=style,
                x=float(x),
                y=float(y),
                radius=float(radius),
                colours=PALETTE[[hues[i], hues[n + i]]],
                events=events[owner == i],
                sound=_sound(rng, SOUND_KINDS[kinds[i % len(SOUND_KINDS)]], sample_rate),
                gain=float(rng.uniform(*SOUND_GAIN_RANGE)),
            )
        )
    return tuple(actors)


def _drifter(rng: np.random.Generator, events: np.ndarray, n_frames: int, size: int, fps: int) -> _Drifter:
    """A dim shape gliding at constant speed and bouncing silently off the walls, plus a few weak glints.

    Wall bounces plus glints number at most half the paired events (at least one allowed).
    """
    radius = rng.uniform(*DRIFTER_RADIUS_FRAC) * size
    low, high = EDGE_PAD_FRAC * size + radius, size - EDGE_PAD_FRAC * size - radius
    speed = np.array([rng.uniform(*DRIFTER_SPEED_X_FRAC), rng.uniform(*DRIFTER_SPEED_Y_FRAC)]) * size
    velocity = speed * rng.choice([-1.0, 1.0], size=2)
    start = rng.uniform(low, high, size=2)
    duration = n_frames / fps
    n_glints = min(int(rng.poisson(rng.uniform(*GLINT_RATE_RANGE) * duration)), len(events) // 4)
    margin = math.ceil(EDGE_MARGIN_SEC * fps)
    glints = _pick_away(rng, n_glints, margin, n_frames - 1 - margin, events, GLINT_MIN_DISTANCE_FRAMES)
    drifter = _Drifter(
        shape=DRIFTER_SHAPES[int(rng.integers(len(DRIFTER_SHAPES)))],
        radius=float(radius),
        colour=(np.full(3, 0.6) + rng.uniform(-0.2, 0.2, size=3)).astype(np.float32) * DRIFTER_VALUE / 0.6,
        start=start,
        velocity=velocity,
        low=float(low),
        high=float(high),
        glints=np.round(glints).astype(np.int64),
    )
    # keep silent visual events rarer than paired ones: slow the drifter down until it bounces less often
    limit = max(1, len(events) // 2)
    for _ in range(DRIFTER_SLOWDOWN_TRIES):
        if len(_wall_hit_times(drifter, duration)) + len(glints) <= limit:
            break
        drifter = replace(drifter, velocity=drifter.velocity * DRIFTER_SLOWDOWN)
    return drifter


def _offscreen(rng: np.random.Generator, events: np.ndarray, n_frames: int, fps: int,
               sample_rate: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]:
    """Off-screen sound times (o,) in seconds (sample-aligned), their sounds and gains; o < E / 2."""
    duration = n_frames / fps
    wanted = int(round(rng.uniform(*OFFSCREEN_RATE_RANGE) * duration))
    if duration >= OFFSCREEN_MIN_DURATION_SEC:
        wanted = max(1, wanted)
    count = min(wanted, (len(events) - 1) // 2)
    times = _pick_away(rng, count, EDGE_MARGIN_SEC, duration - EDGE_MARGIN_SEC - 0.06, events / fps,
                       OFFSCREEN_MIN_DISTANCE_SEC)
    times = np.round(times * sample_rate) / sample_rate
    sounds = tuple(_sound(rng, SOUND_KINDS[int(rng.integers(len(SOUND_KINDS)))], sample_rate) for _ in times)
    gains = rng.uniform(*OFFSCREEN_GAIN_RANGE, size=len(times)) * SOUND_GAIN_RANGE[1]
    return times, sounds, gains


_RNG_STREAMS = ("timing", "layout", "drifter", "sounds", "levels", "video_noise", "audio_noise", "gains")


def _rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, so changing one part of the recipe leaves the others alone."""
    children = np.random.SeedSequence(int(seed)).spawn(len(_RNG_STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(_RNG_STREAMS, children)}


def _scene(seed: int, duration_sec: float, size: int, fps: int, sample_rate: int) -> _Scene:
    """Draw everything random about a clip; independent streams so parts do not perturb each other."""
    rngs = _rngs(seed)
    timing, layout, drift, sounds, noise = (rngs[k] for k in ("timing", "layout", "drifter", "sounds", "levels"))
    n_frames = int(round(duration_sec * fps))
    events = _event_frames(timing, n_frames, fps)
    bg_colour, bg_texture = _background(layout, size)
    off_times, off_sounds, off_gains = _offscreen(sounds, events, n_frames, fps, sample_rate)
    return _Scene(
        n_frames=n_frames,
        n_samples=int(round(n_frames * sample_rate / fps)),
        fps=fps,
        sample_rate=sample_rate,
        size=size,
        actors=_actors(layout, events, size, sample_rate),
        drifter=_drifter(drift, events, n_frames, size, fps),
        bg_colour=bg_colour,
        bg_texture=bg_texture,
        video_noise_std=float(noise.uniform(*VIDEO_NOISE_STD_RANGE)),
        offscreen_times=off_times,
        offscreen_sounds=off_sounds,
        offscreen_gains=off_gains,
        audio_noise_rms=float(10 ** noise.uniform(*AUDIO_NOISE_RMS_LOG10_RANGE)),
    )


# --------------------------------------------------------------------------------------------------------------
# Drawing


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Approximate signed distance (px, negative inside) of a shape centred at 0; dx, dy (h, w)."""
    if shape == "circle":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * radius
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.25 * radius) / math.sqrt(2.0)
    if shape == "triangle":  # pointing up (image y grows downwards)
        inradius = 0.6 * radius
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        up = -dy
        return np.maximum.reduce([-up, c * dx + s * up, -c * dx + s * up]) - inradius
    if shape == "ring":
        return np.abs(np.hypot(dx, dy) - 0.75 * radius) - 0.28 * radius
    raise SyntheticError(f"unknown shape {shape!r}")


def _draw(canvas: np.ndarray, shape: str, x: float, y: float, radius: float, colour: np.ndarray) -> None:
    """Alpha-blend an anti-aliased shape onto ``canvas`` (H, W, 3) float32 in place."""
    h, w = canvas.shape[:2]
    reach = 1.5 * radius + 1
    x0, x1 = max(0, int(x - reach)), min(w, int(math.ceil(x + reach)) + 1)
    y0, y1 = max(0, int(y - reach)), min(h, int(math.ceil(y + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    alpha = np.clip(0.5 - _signed_distance(shape, dx + 0.5 - x, dy + 0.5 - y, radius), 0.0, 1.0)[..., None]
    patch = canvas[y0:y1, x0:x1]
    patch *= 1.0 - alpha
    patch += alpha * colour


def flash_envelope(events: np.ndarray, n_frames: int, peak: float) -> np.ndarray:
    """Flash strength per frame, float32 (T,): ``peak`` at each event frame, decaying geometrically after."""
    env = np.zeros(n_frames, dtype=np.float32)
    lags = np.arange(n_frames)
    for e in np.asarray(events, dtype=np.int64):
        after = lags >= e
        env[after] = np.maximum(env[after], peak * FLASH_DECAY ** (lags[after] - e))
    return env


def _bounce_height(events: np.ndarray, n_frames: int, fps: int, max_height: float) -> np.ndarray:
    """Height above the floor per frame, float (T,): parabolic hops touching the floor at each event frame.

    Before the first event the ball falls from rest; after the last one it stays on the floor.
    """
    t = np.arange(n_frames, dtype=np.float64)
    height = np.zeros(n_frames)
    if len(events) == 0:
        return height

    def hop_height(gap: float) -> float:
        return max_height * min(1.0, (gap / (BOUNCE_FULL_HEIGHT_GAP_SEC * fps)) ** 2)

    first = events[0]
    before = t < first
    if first > 0:
        height[before] = hop_height(2 * first) * (1 - (t[before] / first) ** 2)
    for a, b in zip(events[:-1], events[1:]):
        seg = (t >= a) & (t < b)
        s = (t[seg] - a) / (b - a)
        height[seg] = hop_height(b - a) * 4 * s * (1 - s)
    return height


def _drifter_positions(d: _Drifter, n_frames: int, fps: int) -> np.ndarray:
    """Centre per frame, float (T, 2), reflecting off the walls."""
    t = np.arange(n_frames)[:, None] / fps
    unfolded = d.start[None, :] + d.velocity[None, :] * t - d.low
    span = d.high - d.low
    m = np.mod(unfolded, 2 * span)
    return d.low + np.where(m < span, m, 2 * span - m)


def _wall_hit_times(d: _Drifter, duration: float) -> np.ndarray:
    """Exact times (s) at which the drifter bounces off a wall, sorted (h,)."""
    span = d.high - d.low
    times = []
    for u0, v in zip(d.start - d.low, d.velocity):
        # bounces happen when the unfolded coordinate crosses a multiple of span
        u_end = u0 + v * duration
        lo, hi = sorted((u0, u_end))
        for j in range(math.floor(lo / span) + 1, math.ceil(hi / span)):
            times.append((j * span - u0) / v)
    return np.sort(np.asarray([t for t in times if 0 < t < duration], dtype=np.float64))


def _render_frames(scene: _Scene, noise_rng: np.random.Generator) -> np.ndarray:
    """All frames, uint8 (T, H, W, 3)."""
    n, size, fps = scene.n_frames, scene.size, scene.fps
    base = scene.bg_colour[None, None, :] + scene.bg_texture[..., None]  # (H, W, 3)
    frames = np.empty((n, size, size, 3), dtype=np.float32)
    frames[:] = base
    if scene.video_noise_std > 0:
        frames += noise_rng.standard_normal((n, size, size, 1), dtype=np.float32) * scene.video_noise_std

    d = scene.drifter
    drifter_xy = _drifter_positions(d, n, fps)
    glint = flash_envelope(d.glints, n, GLINT_PEAK)
    pad = EDGE_PAD_FRAC * size
    looks = []
    for a in scene.actors:
        flash = flash_envelope(a.events, n, FLASH_PEAK[a.style])
        if a.style == "bounce":
            ys = a.y - _bounce_height(a.events, n, fps, a.y - a.radius - pad)
        else:
            ys = np.full(n, a.y)
        if a.style == "colour":
            which = np.searchsorted(a.events, np.arange(n), side="right") % 2  # toggles at each event
        else:
            which = np.zeros(n, dtype=np.int64)
        looks.append((flash, ys, which))

    white = np.ones(3, dtype=np.float32)
    for t in range(n):
        canvas = frames[t]
        colour = d.colour * (1 - glint[t]) + white * glint[t]
        _draw(canvas, d.shape, drifter_xy[t, 0], drifter_xy[t, 1], d.radius, colour)
        for a, (flash, ys, which) in zip(scene.actors, looks):
            colour = a.colours[which[t]] * BASE_VALUE * (1 - flash[t]) + white * flash[t]
            _draw(canvas, a.shape, a.x, ys[t], a.radius, colour)
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _add_at(audio: np.ndarray, start: int, sound: np.ndarray, gain: float) -> None:
    """Mix ``gain * sound`` (n,) into ``audio`` (N,) from sample ``start`` on, in place (cut at the end)."""
    end = min(len(audio), start + len(sound))
    if start < end:
        audio[start:end] += gain * sound[: end - start]


def _render_audio(scene: _Scene, noise_rng: np.random.Generator, gain_rng: np.random.Generator) -> np.ndarray:
    """Mono waveform, float32 (N,) in [-1, 1]: background hiss, paired sounds, off-screen sounds."""
    sr, fps = scene.sample_rate, scene.fps
    white = noise_rng.standard_normal(scene.n_samples)
    taps = (1 - AUDIO_NOISE_SMOOTHING) * AUDIO_NOISE_SMOOTHING ** np.arange(AUDIO_NOISE_TAPS)  # one-pole low-pass
    hiss = np.convolve(white, taps, mode="same")
    hiss *= scene.audio_noise_rms / (hiss.std() + 1e-12)
    audio = hiss.astype(np.float32)
    for a in scene.actors:
        jitter = gain_rng.uniform(*EVENT_GAIN_JITTER, size=len(a.events))
        for e, j in zip(a.events, jitter):
            _add_at(audio, int(round(e * sr / fps)), a.sound, a.gain * j)
    for t, sound, g in zip(scene.offscreen_times, scene.offscreen_sounds, scene.offscreen_gains):
        _add_at(audio, int(round(t * sr)), sound, float(g))
    return np.clip(audio, -PEAK_LIMIT, PEAK_LIMIT)


# --------------------------------------------------------------------------------------------------------------
# Public API: arrays, files, datasets


def _clip_info(scene: _Scene, seed: int, path: Path | None) -> ClipInfo:
    """Ground truth of a scene: sorted event times in seconds, rounded to a microsecond."""
    fps = scene.fps
    duration = scene.n_frames / fps
    av_frames = np.sort(np.concatenate([a.events for a in scene.actors]))
    visual = np.concatenate([_wall_hit_times(scene.drifter, duration), scene.drifter.glints / fps])

    def seconds(x: np.ndarray) -> tuple[float, ...]:
        return tuple(round(float(t), TIME_DECIMALS) for t in np.sort(x))

    return ClipInfo(
        path=path,
        seed=int(seed),
        duration=duration,
        fps=fps,
        sample_rate=scene.sample_rate,
        size=scene.size,
        av_events=seconds(av_frames / fps),
        visual_only=seconds(visual),
        audio_only=seconds(scene.offscreen_times),
    )


def render(
    seed: int,
    duration_sec: float = DEFAULT_DURATION_SEC,
    size: int = DEFAULT_SIZE,
    fps: int = DEFAULT_FPS,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> tuple[np.ndarray, np.ndarray, ClipInfo]:
    """Render a clip without encoding it.

    Returns ``frames`` uint8 (T, size, size, 3) RGB with T = round(duration_sec * fps), ``audio`` float32 (N,)
    mono in [-1, 1] with N = T * sample_rate / fps (rounded), and its :class:`ClipInfo` (``path`` None).
    Frame ``t`` shows time ``t / fps``; sample ``i`` plays at ``i / sample_rate``.
    """
    _check_args(seed, duration_sec, size, fps, sample_rate)
    scene = _scene(seed, duration_sec, size, fps, sample_rate)
    rngs = _rngs(seed)
    frames = _render_frames(scene, rngs["video_noise"])
    audio = _render_audio(scene, rngs["audio_noise"], rngs["gains"])
    return frames, audio, _clip_info(scene, seed, None)


def _bt601_matrix() -> np.ndarray:
    """(3, 3) int64 fixed-point weights (rows Y', Cb, Cr; columns R, G, B; scale 2**YUV_FRACTION_BITS per unit of
    8-bit input). Green takes the rounding remainder, so each row sums exactly: every grey has Cb = Cr = 128 and
    white has Y' = 235."""
    one = 1 << YUV_FRACTION_BITS
    kr, kb = BT601_KR, BT601_KB
    kg = 1.0 - kr - kb
    luma = np.array([kr, kg, kb]) * LUMA_SPAN / 255
    cb = np.array([-kr, -kg, 1.0 - kb]) / (2 * (1.0 - kb)) * CHROMA_SPAN / 255
    cr = np.array([1.0 - kr, -kg, -kb]) / (2 * (1.0 - kr)) * CHROMA_SPAN / 255
    m = np.round(np.stack([luma, cb, cr]) * one).astype(np.int64)
    m[0, 1] = round(LUMA_SPAN / 255 * one) - m[0, 0] - m[0, 2]
    m[1:, 1] = -(m[1:, 0] + m[1:, 2])
    return m


BT601_MATRIX = _bt601_matrix()


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """RGB frames uint8 (T, H, W, 3), H and W even -> yuv420p frames uint8 (T, 3H/2, W), in integers only.

    Each frame is the Y' plane (H, W) followed by the Cb and Cr planes (H/2, W/2 each), as PyAV's
    ``VideoFrame.from_ndarray(..., format="yuv420p")`` takes them. BT.601 limited range (swscale's default for
    RGB input); a chroma sample is the rounded mean over its 2x2 block of pixels. Fixed-point integer arithmetic,
    rounded half up: the same numbers on every machine (swscale's converters are SIMD code chosen per CPU).
    """
    t, h, w, _ = frames.shape
    rgb = frames.astype(np.int32)
    shift = YUV_FRACTION_BITS
    m = BT601_MATRIX.astype(np.int32)
    luma = LUMA_BLACK + ((rgb @ m[0] + (1 << (shift - 1))) >> shift)  # (T, H, W)
    block = rgb.reshape(t, h // 2, 2, w // 2, 2, 3).sum(axis=(2, 4))  # (T, H/2, W/2, 3): 4 pixels each
    chroma = [CHROMA_ZERO + ((block @ m[i] + (1 << (shift + 1))) >> (shift + 2)) for i in (1, 2)]
    out = np.empty((t, h * 3 // 2, w), dtype=np.uint8)
    out[:, :h] = luma
    flat = out.reshape(t, -1)
    quarter = h * w // 4
    flat[:, h * w : h * w + quarter] = chroma[0].reshape(t, -1)
    flat[:, h * w + quarter :] = chroma[1].reshape(t, -1)
    return out


def _encode(path: str | Path, n_frames: int, picture: Callable[[int], av.VideoFrame],
            sound: Callable[[int, int], np.ndarray], n_samples: int, size: tuple[int, int], fps: int, sample_rate: int,
            video_options: dict[str, str]) -> None:
    """Write an H.264 + AAC ``.mp4`` of ``n_frames`` pictures (``picture(i)``: frame ``i`` as a yuv420p
    ``av.VideoFrame`` of ``size`` (w, h)) and ``n_samples`` mono samples (``sound(start, end)``: float32
    (end - start,)). Packets are interleaved: after each frame, the audio up to that frame's end in whole
    :data:`AUDIO_CHUNK` blocks."""
    import av  # local import: PyAV is heavy and only needed here

    per_frame = sample_rate / fps
    audio_tb, video_tb = Fraction(1, sample_rate), Fraction(1, fps)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream(VIDEO_CODEC, rate=fps, options=dict(video_options))
        video.width, video.height = size
        video.pix_fmt = VIDEO_PIX_FMT
        video.codec_context.gop_size = GOP_SEC * fps
        aac = container.add_stream(AUDIO_CODEC, rate=sample_rate, layout="mono", options=dict(AUDIO_OPTIONS))
        aac.bit_rate = AUDIO_BIT_RATE
        written = 0

        def encode_audio_until(end: int) -> None:
            nonlocal written
            while written < end:
                stop = min(written + AUDIO_CHUNK, end)
                frame = av.AudioFrame.from_ndarray(sound(written, stop)[None, :], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, written, audio_tb
                container.mux(aac.encode(frame))
                written = stop

        for i in range(n_frames):
            frame = picture(i)
            frame.pts, frame.time_base = i, video_tb
            container.mux(video.encode(frame))
            encode_audio_until(min(n_samples, int((i + 1) * per_frame) // AUDIO_CHUNK * AUDIO_CHUNK))
        container.mux(video.encode())
        encode_audio_until(n_samples)
        container.mux(aac.encode())


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> None:
    """Encode ``frames`` uint8 (T, H, W, 3) RGB and ``audio`` float32 (N,) mono into an H.264 + AAC ``.mp4``.

    The same inputs give the same file, byte for byte, on every run and on every x86-64 CPU with AVX2 and FMA3
    (Intel since Haswell, AMD since Zen; with or without AVX-512), given the same PyAV wheel (its FFmpeg and x264
    builds) and glibc:

    * video: the frames are converted to yuv420p here, in integers (:func:`rgb_to_yuv420p`), not by swscale;
      x264 runs single-threaded on its plain C code (``asm=0``). Its assembly is not bit-identical to the C code
      (float code such as the macroblock-tree propagation has AVX2 and AVX-512 versions that round differently),
      and with it, two encodes of the same frames in one process could differ (measured: the output depended on
      what the heap held before). The C code is the same instructions on every CPU; the glibc maths it calls
      (exp, log, pow) is its FMA variant on all these CPUs. Cost: encoding a default clip (10 s at 64x64, 250
      frames) takes about 1.8x as long as with x264's assembly, about 0.2 s instead of 0.11 s on a 2-core AMD
      EPYC (``benchmarks/bench_synthetic.py``).
    * audio: FFmpeg's native AAC encoder has no plain-C switch, but the SIMD code it runs is chosen the same way
      on all these CPUs: its float DSP and transforms have SSE, AVX, AVX2 and FMA3 versions and none for AVX-512,
      and the one choice that differs between them (the FFT's AVX2 split-radix is skipped on CPUs with slow
      gathers: AMD Zen 1-4, Intel before Ice Lake) swaps two versions whose arithmetic is the same FMA3 code
      (they differ in how they load the input only). Older CPUs without AVX2/FMA3 may give other AAC bytes.

    Both encoders run single-threaded. Packets are interleaved (audio up to the end of each frame). The AAC
    encoder's priming samples are marked in the file (edit list), so a decoder such as PyAV returns sample 0 at
    pts 0.
    """
    import av

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise SyntheticError(f"frames must be uint8 (T, H, W, 3) with even H and W, got shape {frames.shape}")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    yuv = rgb_to_yuv420p(frames)
    _encode(path, len(frames), lambda i: av.VideoFrame.from_ndarray(yuv[i], format=VIDEO_PIX_FMT),
            lambda start, end: audio[start:end], len(audio), (frames.shape[2], frames.shape[1]), fps, sample_rate,
            VIDEO_OPTIONS)


def write_looped_mp4(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray,
    duration_sec: float,
    fps: int = DEFAULT_FPS,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    *,
    frame_size: tuple[int, int] | None = None,
    video_options: dict[str, str] | None = None,
    progress: bool = False,
) -> Path:
    """Encode a rendered clip (``frames`` (T, H, W, 3) uint8, ``audio`` (N,) float32 mono, T / fps = N / sample_rate)
    played in a loop for ``duration_sec`` into an H.264 + AAC ``.mp4``, frame by frame: memory stays that of the
    loop, whatever the duration (no :data:`MAX_DURATION_SEC` limit). For long-video tests and benchmarks.

    With the defaults the file is written as :func:`write_mp4` writes (the same bytes on every run and CPU).
    ``frame_size`` (w, h): each frame is scaled (swscale, bicubic) to it before encoding (e.g. (1920, 1080), to
    measure decoding cost); ``video_options`` replace :data:`VIDEO_OPTIONS` (e.g. x264's assembly and threads for
    large frames). Either gives up the byte-for-byte guarantee (swscale's and x264's SIMD code vary by CPU).
    """
    import av
    from tqdm.auto import tqdm

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise SyntheticError(f"frames must be uint8 (T, H, W, 3) with even H and W, got shape {frames.shape}")
    width, height = frame_size or (frames.shape[2], frames.shape[1])
    if width % 2 or height % 2:
        raise SyntheticError(f"frame_size must have even sides (H.264 yuv420p), got {width}x{height}")
    n_frames = int(round(duration_sec * fps))
    n_samples = int(round(n_frames * sample_rate / fps))
    yuv = rgb_to_yuv420p(frames)  # the loop's frames, converted once
    bar = tqdm(total=n_frames, desc="writing looped clip", unit="frame", disable=not progress)

    def picture(i: int) -> "av.VideoFrame":
        bar.update()
        frame = av.VideoFrame.from_ndarray(yuv[i % len(yuv)], format=VIDEO_PIX_FMT)
        if frame_size is not None:
            frame = frame.reformat(width=width, height=height, interpolation="BICUBIC")
        return frame

    def sound(start: int, end: int) -> np.ndarray:
        return audio[np.arange(start, end) % len(audio)]

    try:
        _encode(path, n_frames, picture, sound, n_samples, (width, height), fps, sample_rate,
                video_options or VIDEO_OPTIONS)
    finally:
        bar.close()
    return Path(path)


def _write_sidecar(info: ClipInfo) -> Path:
    """Write ``<stem>.events.json`` next to ``info.path``; returns its path."""
    side = sidecar_path(info.path)
    side.write_text(json.dumps(info.to_json_dict(), indent=1) + "\n", encoding="utf-8")
    return side


def make_clip(
    path: str | Path,
    seed: int,
    duration_sec: float = DEFAULT_DURATION_SEC,
    size: int = DEFAULT_SIZE,
    fps: int = DEFAULT_FPS,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> ClipInfo:
    """Render and encode one clip to ``path`` (``.mp4``) plus its sidecar ``<stem>.events.json``.

    The file is written under a temporary name and renamed, so an interrupted run leaves no half clip.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise SyntheticError(f"synthetic clips are .mp4 files; got {path.name!r}")
    frames, audio, info = render(seed, duration_sec, size, fps, sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.mp4")
    try:
        write_mp4(partial, frames, audio, fps, sample_rate)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    info = replace(info, path=path)
    _write_sidecar(info)
    return info


def dataset_seed(seed: int, index: int) -> int:
    """Seed of clip ``index`` in a dataset seeded with ``seed``."""
    return seed * DATASET_SEED_STRIDE + index


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    duration_sec: float = DEFAULT_DURATION_SEC,
    size: int = DEFAULT_SIZE,
    progress: bool = True,
) -> Path:
    """Write ``n`` clips ``synth_{seed_i:07d}.mp4`` (+ sidecars) and ``manifest.csv`` into ``out_dir``.

    Clip ``i`` uses seed ``seed * 100000 + i``. The manifest has one row per clip with the columns
    ``path`` (relative to the manifest), ``seed``, ``duration_sec``, ``n_av_events``, ``n_visual_only``,
    ``n_audio_only``. Returns the manifest path.
    """
    from tqdm.auto import tqdm

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= DATASET_SEED_STRIDE:
        raise SyntheticError(f"n must be an integer in [1, {DATASET_SEED_STRIDE}], got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticError(f"seed must be a non-negative integer, got {seed!r}")
    _check_args(dataset_seed(seed, 0), duration_sec, size, DEFAULT_FPS, DEFAULT_SAMPLE_RATE)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc="synth clips", unit="clip", disable=not progress):
        clip_seed = dataset_seed(seed, i)
        info = make_clip(out_dir / f"synth_{clip_seed:07d}.mp4", clip_seed, duration_sec, size)
        rows.append(
            {
                "path": info.path.name,
                "seed": clip_seed,
                "duration_sec": info.duration,
                "n_av_events": len(info.av_events),
                "n_visual_only": len(info.visual_only),
                "n_audio_only": len(info.audio_only),
            }
        )
    manifest = out_dir / MANIFEST_NAME
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


# --------------------------------------------------------------------------------------------------------------
# Command line (wired as ``synchlib synth`` elsewhere)


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synth`` arguments: OUT_DIR --n N [--seed S] [--duration D] [--size S] [--no-progress]."""
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder for the clips and manifest.csv")
    parser.add_argument("--n", type=int, required=True, help="number of clips to write")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; clip i gets seed*100000+i (default 0)")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_SEC,
                        help=f"clip length in seconds (default {DEFAULT_DURATION_SEC:g})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"frame width = height in pixels, even (default {DEFAULT_SIZE})")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return parser


def run_synth(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run ``synchlib synth`` from parsed arguments; returns the exit status (0)."""
    manifest = write_dataset(args.out_dir, args.n, args.seed, args.duration, args.size,
                             progress=getattr(args, "progress", True))
    echo(f"wrote {args.n} clips and {manifest}")
    return 0


def synth_main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m synchlib.synthetic OUT_DIR --n N ...``."""
    parser = add_synth_arguments(argparse.ArgumentParser(prog="synchlib synth", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_synth(args)
    except SynchlibError as e:
        parser.exit(2, f"synchlib synth: error: {e}\n")


if __name__ == "__main__":
    raise SystemExit(synth_main())
