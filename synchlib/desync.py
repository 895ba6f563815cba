"""DeSync: how far out of sync (generated) audio is with its video, as the av-benchmark project measures it.

Definition, from av-benchmark (https://github.com/hkchengrex/av-benchmark; its README, "DeSync Score", and
``av_bench/evaluate.py`` with ``extract_video.py`` were read for this, no code was copied): Synchformer (the
``24-01-04T16-39-21`` AudioSet model) predicts the offset of the first 4.8 s and of the last 4.8 s of each
(video, audio) pair, the audio taken as it is; a pair scores the mean of the two absolute predicted offsets (grid
values, seconds); DeSync of a set is the mean over pairs (av-benchmark averages all 2N window scores, which is
the same number). av-benchmark cuts the whole clip into segments from its very first frame and sample (16 frames
and 10 240 samples, stride 8 frames / 5 120 samples) and uses the first 14 and the last 14 of them; so does
:func:`desync_windows`. (A ``predict`` window at ``start_sec=0`` starts 2 frames later, as the reference's 5 s
crop centres its 4.8 s of segments.)

Input frames are prepared as synchlib prepares them for ``predict`` (25 fps by timestamps, short side scaled to
``size_before_crop``, the centred ``input_size`` crop: the Synchformer test pipeline, streamed by
:func:`synchlib.io.iter_video`); av-benchmark's own video loader may scale differently, so numbers can differ
slightly from its. Sound is the video's own track, or a separate file (generated audio) decoded with PyAV, mean
over channels, resampled to 16 kHz (:func:`synchlib.io.read_audio`) and taken to start at the first frame.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import DataConfig
from .errors import ClipTooShortError, InvalidArgumentError, SynchlibError
from .io import iter_audio, iter_video, read_audio
from .model import Synchformer
from .predict import check_batch_size, check_precision, logits_to_prediction, resolve_device
from .timeline import (
    DEFAULT_BATCH_SIZE, WindowPlan, audio_segment_features, check_offset_model, video_segment_features,
    windows_logits,
)  # fmt: skip

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
DESYNC_COLUMNS = [
    "video", "audio", "first_offset_sec", "last_offset_sec", "desync_sec", "first_p", "last_p", "duration_sec",
    "notes", "error",
]  # fmt: skip
DEFAULT_CSV = "desync.csv"
DEFAULT_CHECKPOINT = "24-01-04T16-39-21"  # the model av-benchmark uses

# ---------------------------------------------------------------------------------------------------------------
# Geometry


def segment_count(length: int, segment: int, stride: int) -> int:
    """Whole segments of ``segment`` items every ``stride`` items from item 0 in ``length`` items (0 if none)."""
    return max(0, (length - segment) // stride + 1)


def desync_windows(n_frames: int, n_samples: int, data: DataConfig) -> tuple[WindowPlan, WindowPlan]:
    """The first and the last window of a clip of ``n_frames`` frames and ``n_samples`` samples, av-benchmark's way.

    Both streams are cut into segments from frame / sample 0; the clip has ``n = min(video segments, audio
    segments)`` aligned segments; the windows are segments ``0 .. S-1`` and ``n-S .. n-1`` (S = ``n_segments``).
    Raises :class:`ClipTooShortError` when ``n < S`` (less than ``window_sec``, 4.8 s, of both streams).
    """
    sv, sa, S = data.step_vframes, data.step_asamples, data.n_segments
    n = min(segment_count(n_frames, data.segment_size_vframes, sv),
            segment_count(n_samples, data.segment_size_asamples, sa))
    if n < S:
        have = min(n_frames / data.vfps, n_samples / data.afps)
        raise ClipTooShortError(
            f"the clip has {have:.2f} s of video and audio, DeSync needs at least {data.window_sec:.2f} s "
            f"({S} segments); this clip cannot be scored"
        )

    def window(first: int) -> WindowPlan:
        segments = range(first, first + S)
        return WindowPlan(first * sv / data.vfps, tuple(sv * i for i in segments), tuple(sa * i for i in segments))

    return window(0), window(n - S)


# ---------------------------------------------------------------------------------------------------------------
# Reading a clip with bounded memory


def _kept_frames(
    frames: Iterable[tuple[int, np.ndarray | None]], keep: Callable[[int], bool], tail: int
) -> tuple[dict[int, np.ndarray], int]:
    """Frames whose index passes ``keep`` plus the last ``tail`` ones, and the number of frames."""
    kept: dict[int, np.ndarray] = {}
    last: deque[tuple[int, np.ndarray]] = deque(maxlen=tail)
    n = 0
    for index, frame in frames:
        n = index + 1
        if keep(index):
            kept[index] = frame
        else:
            last.append((index, frame))
    kept.update(last)
    return kept, n


def clip_streams(
    video: str | Path, audio: str | Path | None, data: DataConfig, notes: list[str] | None = None
) -> tuple[dict[int, np.ndarray], int, np.ndarray]:
    """(frames the two windows can need, by index; number of frames; the mono track at ``afps``).

    The track is read whole (one float per sample); of the frames (cropped to the model's input), only the first
    window's, the window the audio's length allows last, and the last ``window + stride`` are kept.
    """
    if audio is not None:
        track = read_audio(audio, data.afps)
    else:
        track = np.concatenate(list(iter_audio(video, data, notes=notes)))
    sv, L, S = data.step_vframes, data.segment_size_vframes, data.n_segments
    n_audio = segment_count(len(track), data.segment_size_asamples, data.step_asamples)
    by_audio = range(sv * (n_audio - S), sv * (n_audio - 1) + L) if n_audio >= S else range(0)
    kept, n_frames = _kept_frames(
        iter_video(video, data, notes=notes),
        keep=lambda i: i < data.window_vframes or i in by_audio,
        tail=data.window_vframes + sv - 1,
    )
    return kept, n_frames, track


# ---------------------------------------------------------------------------------------------------------------
# One clip, many clips


def _features(
    compute: Callable[[np.ndarray], torch.Tensor], segments: list[np.ndarray], batch_size: int
) -> torch.Tensor:
    """Features (n, t, D) of raw segments, computed ``batch_size`` at a time."""
    return torch.cat([compute(np.stack(segments[i : i + batch_size])) for i in range(0, len(segments), batch_size)])


@torch.inference_mode()
def clip_desync(
    model: Synchformer,
    video: str | Path,
    audio: str | Path | None = None,
    *,
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """DeSync of one (video, audio) pair: a row of :data:`DESYNC_COLUMNS` (``error`` empty, ``notes``: damage
    found while decoding).

    ``audio`` None: the video's own track. Segments shared by the two windows (clips under 9.6 s) are computed
    once. Raises :class:`SynchlibError` subclasses on unusable input (see :func:`desync` for recording them), and
    :class:`InvalidArgumentError` for a precision or batch size out of range (1 to
    :data:`synchlib.predict.MAX_BATCH_SIZE`).
    """
    check_offset_model(model)
    precision, batch_size = check_precision(precision), check_batch_size(batch_size)
    data = model.cfg.data
    notes: list[str] = []
    frames, n_frames, track = clip_streams(video, audio, data, notes)
    first, last = desync_windows(n_frames, len(track), data)
    vkeys = sorted(set(first.frame_keys + last.frame_keys))
    akeys = sorted(set(first.sample_keys + last.sample_keys))
    L, La = data.segment_size_vframes, data.segment_size_asamples
    vf = _features(lambda x: video_segment_features(model, x, precision),
                   [np.stack([frames[i] for i in range(k, k + L)]) for k in vkeys], batch_size)
    af = _features(lambda x: audio_segment_features(model, x, precision),
                   [track[k : k + La] for k in akeys], batch_size)
    vrow, arow = {k: i for i, k in enumerate(vkeys)}, {k: i for i, k in enumerate(akeys)}
    vfeats = torch.stack([vf[[vrow[k] for k in w.frame_keys]] for w in (first, last)])
    afeats = torch.stack([af[[arow[k] for k in w.sample_keys]] for w in (first, last)])
    preds = [logits_to_prediction(lg, data.grid, k=1) for lg in windows_logits(model, vfeats, afeats, precision)]
    return {
        "video": str(video),
        "audio": "" if audio is None else str(audio),
        "first_offset_sec": preds[0].offset_sec,
        "last_offset_sec": preds[1].offset_sec,
        "desync_sec": (abs(preds[0].offset_sec) + abs(preds[1].offset_sec)) / 2,
        "first_p": preds[0].p,
        "last_p": preds[1].p,
        "duration_sec": min(n_frames / data.vfps, len(track) / data.afps),
        "notes": "; ".join(notes),  # damage found while decoding: scored anyway, but worth a look
        "error": "",
    }


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def desync_items(source: str | Path) -> list[tuple[Path, Path | None]]:
    """(video, audio or None) pairs of a folder of videos (sound inside; sorted by name) or of a manifest CSV with
    a ``video`` column (or ``path``) and an optional ``audio`` column (replaces the video's sound); relative
    paths are relative to the manifest."""
    source = Path(source).expanduser()
    if source.is_dir():
        videos = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not videos:
            raise SynchlibError(f"{source} holds no videos ({', '.join(VIDEO_EXTENSIONS)}); give a folder of "
                                "videos or a manifest CSV")
        return [(v, None) for v in videos]
    if not source.is_file():
        raise SynchlibError(f"{source}: no such folder or manifest; give a folder of videos or a CSV with a "
                            "'video' column")
    with source.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SynchlibError(f"{source} has no rows; a manifest needs a header with 'video' (and optionally 'audio')")
    key = "video" if "video" in rows[0] else "path" if "path" in rows[0] else None
    if key is None:
        raise SynchlibError(f"{source} needs a 'video' column (and optionally 'audio'); it has {list(rows[0])}")
    base = source.parent
    return [(_resolve(base, r[key]), _resolve(base, r["audio"]) if (r.get("audio") or "").strip() else None)
            for r in rows]


def _failure_row(video: Path, audio: Path | None, error: Exception) -> dict:
    nan = math.nan
    return {"video": str(video), "audio": "" if audio is None else str(audio), "first_offset_sec": nan,
            "last_offset_sec": nan, "desync_sec": nan, "first_p": nan, "last_p": nan, "duration_sec": nan,
            "notes": "", "error": f"{type(error).__name__}: {error}"}  # fmt: skip


def summarize_desync(df: pd.DataFrame) -> dict:
    """``desync_mean_sec`` (DeSync of the set), ``desync_median_sec``, ``n`` scored pairs, ``n_failed`` and the
    ``failures`` (video, error)."""
    ok = df[df["desync_sec"].notna()]
    bad = df[df["desync_sec"].isna()]
    return {
        "desync_mean_sec": float(ok["desync_sec"].mean()) if len(ok) else math.nan,
        "desync_median_sec": float(ok["desync_sec"].median()) if len(ok) else math.nan,
        "n": int(len(ok)),
        "n_failed": int(len(bad)),
        "failures": [{"video": v, "error": e} for v, e in zip(bad["video"], bad["error"])],
    }


def desync(
    model: Synchformer,
    source: str | Path | Iterable[tuple[str | Path, str | Path | None]],
    *,
    csv_path: str | Path | None = None,
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """DeSync of every pair of ``source`` (a folder of videos, a manifest CSV, see :func:`desync_items`, or
    (video, audio or None) pairs): (one row per pair, :data:`DESYNC_COLUMNS`; :func:`summarize_desync`).

    A pair that cannot be scored (unreadable, no sound, shorter than 4.8 s) is a row with NaN scores and its
    ``error``, not an exception. ``csv_path``: also write the table there. A precision or batch size out of range
    is an :class:`InvalidArgumentError` before any clip is read.
    """
    precision, batch_size = check_precision(precision), check_batch_size(batch_size)
    if isinstance(source, (str, Path)):
        items = desync_items(source)
    else:
        items = [(Path(v), None if a is None else Path(a)) for v, a in source]
    rows = []
    for video, audio in tqdm(items, desc="DeSync", unit="clip", disable=not progress):
        try:
            rows.append(clip_desync(model, video, audio, precision=precision, batch_size=batch_size))
        except InvalidArgumentError:  # the arguments, not this clip, are wrong
            raise
        except Exception as e:  # recorded, not fatal: one bad file must not end a benchmark run
            rows.append(_failure_row(video, audio, e))
    df = pd.DataFrame(rows, columns=DESYNC_COLUMNS)
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv_path, index=False)
    return df, summarize_desync(df)


# ---------------------------------------------------------------------------------------------------------------
# Command line (wired as ``synchlib desync``)


def add_desync_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``SOURCE [--csv OUT] [--checkpoint C] [--device D] [--precision P] [--batch-size N] [--no-progress]``."""
    parser.add_argument("source", metavar="SOURCE", type=Path,
                        help="folder of videos (sound inside), or a CSV with a 'video' and an optional 'audio' column")
    parser.add_argument("--csv", type=Path, default=Path(DEFAULT_CSV), help=f"per-clip table (default ./{DEFAULT_CSV})")
    parser.add_argument("--checkpoint", "-c", default=DEFAULT_CHECKPOINT,
                        help=f"released id, 'tiny-synthetic', or a .pt path (default {DEFAULT_CHECKPOINT}, "
                             "the model av-benchmark uses)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="segments per extractor call")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return parser


def run_desync(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run ``synchlib desync`` from parsed arguments: writes the CSV, prints the summary as JSON. Exit status 0
    when at least one pair was scored, 1 when none was."""
    from .checkpoints import load_model

    # fail fast on bad arguments and a bad source, before loading (or downloading) a model
    resolve_device(args.device)
    check_precision(args.precision)
    check_batch_size(args.batch_size)
    items = desync_items(args.source)
    model = load_model(args.checkpoint, device=args.device)
    _, summary = desync(model, items, csv_path=args.csv, precision=args.precision, batch_size=args.batch_size,
                        progress=getattr(args, "progress", True))
    echo(json.dumps({**summary, "csv": str(args.csv)}))
    return 0 if summary["n"] else 1
