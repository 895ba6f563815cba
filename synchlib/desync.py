"""DeSync: how far out of sync (generated) audio is with its video, as the av-benchmark project measures it.

Definition, from av-benchmark (https://github.com/hkchengrex/av-benchmark; its README, "DeSync Score", and
``av_bench/evaluate.py`` with ``extract_video.py`` were read for this, no code was copied): Synchformer (the
``24-01-04T16-39-21`` AudioSet model) predicts the offset of the first 4.8 s and of the last 4.8 s of each
(video, audio) pair, the audio taken as it is; a pair scores the mean of the two absolute predicted offsets (grid
values, seconds); DeSync of a set is the mean over pairs (av-benchmark averages all 2N window scores, which is
the same number). Both streams are cut into segments from their very first frame and sample (16 frames and
10 240 samples, stride 8 frames / 5 120 samples); the first 14 and the last 14 of them are the two windows.

Two protocols prepare the pair:

* ``"av-benchmark"`` (:mod:`synchlib.avbench`): exactly what av-benchmark computes, the number published tables
  report: the first 8.0 s of both streams (a shorter pair is an error), frames at 25 fps by FFmpeg's ``fps``
  filter, resized (short side 224, bicubic, antialiased) and centre-cropped as torchvision does it, the audio file
  read as torchaudio reads it and resampled with torchaudio's windowed sinc. The separate audio file is what is
  scored: the video may be muted.
* ``"synchformer"`` (the default, as before): the Synchformer test pipeline that ``predict`` uses (25 fps by
  timestamps, short side 256 then the centred 224 crop, fp16 normalisation; sound resampled with FFmpeg's
  swresample and taken to start at the first frame), over the whole clip: the last window ends where the shorter
  stream ends, reading the file ``predict`` reads (:func:`synchlib.io.prepare`). With a separate audio file the
  video may be muted here too. Numbers are close to av-benchmark's, not equal; use it to score clips of any length
  with the model as its authors ran it.

:func:`desync` scores a folder of videos (sound inside, or with a folder of audio files matched by name) or a
manifest; in av-benchmark mode, worker processes decode while the model computes features of several pairs per
call. The CSV is written as pairs finish, and a rerun with the same CSV skips the pairs already scored.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import avbench, checks
from .config import DataConfig
from .errors import ClipTooShortError, InvalidArgumentError, SynchlibError
from .io import _check_readable, iter_audio, iter_video, read_audio
from .manifests import read_manifest
from .model import Synchformer, check_precision, load_model, resolve_device
from .normalised import prepare
from .predict import check_batch_size, logits_to_prediction
from .rounding import round_desync, round_summary
from .timeline import (
    DEFAULT_BATCH_SIZE,
    WindowPlan,
    audio_segment_features,
    check_offset_model,
    video_segment_features,
    windows_logits,
)  # fmt: skip

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg")  # audio folder: matched to videos by name, in this order
DESYNC_COLUMNS = [
    "video", "audio", "first_offset_sec", "last_offset_sec", "desync_sec", "first_p", "last_p", "duration_sec",
    "notes", "error", "protocol",
]  # fmt: skip
DEFAULT_CSV = "desync.csv"
DEFAULT_CHECKPOINT = "24-01-04T16-39-21"  # the model av-benchmark uses
PROTOCOLS = ("synchformer", "av-benchmark")
DEFAULT_PROTOCOL = "synchformer"
# Decoding processes the CLI starts by default on a GPU (one core left to feed it). On a CPU the model needs the cores
# itself: on 2 cores one decoding process made the pipeline slower (x0.62, benchmarks/bench_desync.py), so none.
GPU_WORKERS = min(4, max(0, (os.cpu_count() or 1) - 1))
MAX_WORKERS = 64  # decoding processes at most (each holds a pair's decoded inputs)

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
    window's, the window the audio's length allows last, and the last ``window + stride`` are kept. Both come from
    the file ``predict`` reads (:func:`synchlib.io.prepare`); with a separate ``audio`` file the video may be muted.
    """
    target, report = prepare(video, data, audio=audio is None)
    if notes is not None:
        notes += report["notes"]
    if audio is not None:
        track = read_audio(audio, data.afps)
    else:
        track = np.concatenate(list(iter_audio(target, data, notes=notes)))
    sv, L, S = data.step_vframes, data.segment_size_vframes, data.n_segments
    n_audio = segment_count(len(track), data.segment_size_asamples, data.step_asamples)
    by_audio = range(sv * (n_audio - S), sv * (n_audio - 1) + L) if n_audio >= S else range(0)
    kept, n_frames = _kept_frames(
        iter_video(target, data, notes=notes),
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


def check_protocol(protocol: str) -> str:
    """``protocol`` when it is one of :data:`PROTOCOLS`; else :class:`InvalidArgumentError`."""
    if protocol not in PROTOCOLS:
        raise InvalidArgumentError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))}, got {protocol!r}")
    return protocol


def check_workers(workers: int) -> int:
    """``workers`` (decoding processes, 0: decode in this process) when it is a whole number from 0 to
    :data:`MAX_WORKERS`; else :class:`InvalidArgumentError`."""
    return checks.integer("workers", workers, low=0, high=MAX_WORKERS)


def default_workers(device: str) -> int:
    """Decoding processes for ``device``: :data:`GPU_WORKERS` on a GPU, 0 on the CPU."""
    return GPU_WORKERS if resolve_device(device).type == "cuda" else 0


def _scored_row(
    video: str | Path, audio: str | Path | None, logits: torch.Tensor, data: DataConfig, *, duration_sec: float,
    notes: str, protocol: str, return_logits: bool,
) -> dict:
    """A row of :data:`DESYNC_COLUMNS` from the (2, classes) logits of the first and the last window (plus
    ``first_logits`` / ``last_logits``, (classes,) float32 arrays, with ``return_logits``)."""
    first, last = (logits_to_prediction(lg, data.grid, k=1) for lg in logits)
    row = {
        "video": str(video),
        "audio": "" if audio is None else str(audio),
        "first_offset_sec": first.offset_sec,
        "last_offset_sec": last.offset_sec,
        "desync_sec": (abs(first.offset_sec) + abs(last.offset_sec)) / 2,
        "first_p": first.p,
        "last_p": last.p,
        "duration_sec": duration_sec,
        "notes": notes,  # damage found while decoding: scored anyway, but worth a look
        "error": "",
        "protocol": protocol,
    }
    if return_logits:
        row["first_logits"], row["last_logits"] = (lg.numpy().astype(np.float32) for lg in logits)
    return row


def _avbench_logits(
    model: Synchformer, pairs: Sequence[avbench.PairInputs], batch_size: int, precision: str
) -> torch.Tensor:
    """(P, 2, classes) logits of the first and last window of each prepared pair, features computed together."""
    vfeats, afeats = avbench.pair_features(model, pairs, batch_size=batch_size, precision=precision)
    return avbench.window_logits(model, vfeats, afeats, batch_size=batch_size, precision=precision)


@torch.inference_mode()
def clip_desync(
    model: Synchformer,
    video: str | Path,
    audio: str | Path | None = None,
    *,
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    protocol: str = DEFAULT_PROTOCOL,
    return_logits: bool = False,
) -> dict:
    """DeSync of one (video, audio) pair: a row of :data:`DESYNC_COLUMNS` (``error`` empty, ``notes``: damage
    found while decoding), plus ``first_logits`` and ``last_logits`` ((classes,) arrays) with ``return_logits``.

    ``audio`` None: the video's own track. ``protocol``: ``"synchformer"`` (the whole clip, Synchformer's
    pipeline; segments shared by the two windows, in clips under 9.6 s, are computed once) or ``"av-benchmark"``
    (its first 8 s, prepared as av-benchmark prepares them; see the module docstring). Raises
    :class:`SynchlibError` subclasses on unusable input (see :func:`desync` for recording them), and
    :class:`InvalidArgumentError` for a precision or batch size out of range (1 to
    :data:`synchlib.predict.MAX_BATCH_SIZE`).
    """
    check_protocol(protocol)
    check_offset_model(model)
    precision, batch_size = check_precision(precision), check_batch_size(batch_size)
    data = model.cfg.data
    if protocol == "av-benchmark":
        logits = _avbench_logits(model, [avbench.read_pair(video, audio, data)], batch_size, precision)[0]
        return _scored_row(video, audio, logits, data, duration_sec=avbench.DURATION_SEC, notes="",
                           protocol=protocol, return_logits=return_logits)
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
    return _scored_row(video, audio, windows_logits(model, vfeats, afeats, precision), data,
                       duration_sec=min(n_frames / data.vfps, len(track) / data.afps), notes="; ".join(notes),
                       protocol=protocol, return_logits=return_logits)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _matching_audio(video: Path, audio_dir: Path) -> Path:
    """The file of ``audio_dir`` named like ``video`` (same stem) with the first of :data:`AUDIO_EXTENSIONS`
    that exists; when none does, the ``.wav`` path (its pair then fails with "no such file")."""
    for ext in AUDIO_EXTENSIONS:
        path = audio_dir / (video.stem + ext)
        if path.is_file():
            return path
    return audio_dir / (video.stem + AUDIO_EXTENSIONS[0])


def desync_items(source: str | Path, audio_dir: str | Path | None = None) -> list[tuple[Path, Path | None]]:
    """(video, audio or None) pairs of a folder of videos (sorted by name) or of a manifest CSV with a ``video``
    column (or ``path``) and an optional ``audio`` column (replaces the video's sound); relative paths are
    relative to the manifest.

    ``audio_dir`` (with a folder of videos: av-benchmark's layout): each video's audio is the file of that folder
    with the same name and an extension of :data:`AUDIO_EXTENSIONS` (``clip.mp4`` -> ``clip.wav``); a video
    without one gets a failed row. None: the videos' own sound.
    """
    source = Path(source).expanduser()
    if audio_dir is not None:
        audio_dir = Path(audio_dir).expanduser()
        if not source.is_dir() or not audio_dir.is_dir():
            raise SynchlibError(f"with an audio folder, give two folders (videos, then audio matched by name); "
                                f"{source if not source.is_dir() else audio_dir} is not a folder")
    if source.is_dir():
        videos = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not videos:
            raise SynchlibError(f"{source} holds no videos ({', '.join(VIDEO_EXTENSIONS)}); give a folder of "
                                "videos or a manifest CSV")
        return [(v, None if audio_dir is None else _matching_audio(v, audio_dir)) for v in videos]
    if not source.is_file():
        raise SynchlibError(f"{source}: no such folder or manifest; give a folder of videos or a CSV with a "
                            "'video' column")
    pairs = []
    for item in read_manifest(source):
        if item["error"]:
            raise SynchlibError(f"{source}: {item['error']}")
        audio = item["cells"].get("audio", "")
        pairs.append((Path(item["video"]), _resolve(source.parent, audio) if audio else None))
    return pairs


def _failure_row(video: Path, audio: Path | None, error: Exception | str, protocol: str = DEFAULT_PROTOCOL) -> dict:
    nan = math.nan
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"video": str(video), "audio": "" if audio is None else str(audio), "first_offset_sec": nan,
            "last_offset_sec": nan, "desync_sec": nan, "first_p": nan, "last_p": nan, "duration_sec": nan,
            "notes": "", "error": text, "protocol": protocol}  # fmt: skip


def summarize_desync(df: pd.DataFrame) -> dict:
    """``desync_mean_sec`` (DeSync of the set), ``desync_sem_sec`` (its standard error over pairs,
    ``std(ddof=1) / sqrt(n)``; NaN under two pairs), ``desync_median_sec``, ``n`` scored pairs, ``n_failed`` and
    the ``failures`` (video, error)."""
    ok = df[df["desync_sec"].notna()]
    bad = df[df["desync_sec"].isna()]
    n = len(ok)
    return {
        "desync_mean_sec": float(ok["desync_sec"].mean()) if n else math.nan,
        "desync_sem_sec": float(ok["desync_sec"].std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "desync_median_sec": float(ok["desync_sec"].median()) if n else math.nan,
        "n": int(n),
        "n_failed": int(len(bad)),
        "failures": [{"video": v, "error": e} for v, e in zip(bad["video"], bad["error"])],
    }


# ---------------------------------------------------------------------------------------------------------------
# Many pairs: av-benchmark inputs decoded in worker processes, features of several pairs per call


def _read_pair(video: Path, audio: Path | None, data: DataConfig) -> avbench.PairInputs | str:
    """:func:`synchlib.avbench.read_pair`, or the error as ``"Type: message"`` (picklable, for worker processes)."""
    try:
        return avbench.read_pair(video, audio, data)
    except Exception as e:  # recorded in the pair's row
        return f"{type(e).__name__}: {e}"


def _init_worker() -> None:
    torch.set_num_threads(1)  # a decoding process resizes one frame at a time; the cores are for the others


def _prepared_pairs(
    items: Sequence[tuple[Path, Path | None]], data: DataConfig, workers: int
) -> Iterator[tuple[Path, Path | None, avbench.PairInputs | str]]:
    """(video, audio, inputs or error) of each item, in order; ``workers`` > 0 processes read ahead (at most two
    pairs each), 0 reads here."""
    if workers <= 0:
        for video, audio in items:
            yield video, audio, _read_pair(video, audio, data)
        return
    todo = iter(items)
    pending: deque = deque()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        def submit() -> None:
            item = next(todo, None)
            if item is not None:
                pending.append((*item, pool.submit(_read_pair, *item, data)))

        for _ in range(2 * workers):
            submit()
        while pending:
            video, audio, future = pending.popleft()
            submit()
            try:
                got = future.result()
            except Exception as e:  # the process died (a crash in a decoder): this pair fails, the run goes on
                got = f"{type(e).__name__}: {e}"
            yield video, audio, got
    finally:
        pool.shutdown(cancel_futures=True)


def _avbench_rows(
    model: Synchformer, items: Sequence[tuple[Path, Path | None]], *, batch_size: int, precision: str, workers: int
) -> Iterator[dict]:
    """Rows of ``items`` in av-benchmark mode, as pairs finish: pairs are grouped so that their segments fill
    ``batch_size`` extractor inputs (one pair per group when ``batch_size`` <= 24 segments)."""
    data = model.cfg.data
    n_segments = (avbench.frame_count(data) - data.segment_size_vframes) // data.step_vframes + 1
    per_group = max(1, math.ceil(batch_size / n_segments))
    group: list[tuple[Path, Path | None, avbench.PairInputs]] = []

    def score() -> list[dict]:
        try:
            with torch.inference_mode():
                logits = _avbench_logits(model, [g[2] for g in group], batch_size, precision)
        except Exception as e:  # e.g. out of memory: the group's pairs fail, the run goes on
            rows = [_failure_row(v, a, e, "av-benchmark") for v, a, _ in group]
        else:
            rows = [_scored_row(v, a, lg, data, duration_sec=avbench.DURATION_SEC, notes="", protocol="av-benchmark",
                                return_logits=False) for (v, a, _), lg in zip(group, logits)]
        group.clear()
        return rows

    for video, audio, got in _prepared_pairs(items, data, workers):
        if isinstance(got, str):
            yield _failure_row(video, audio, got, "av-benchmark")
            continue
        group.append((video, audio, got))
        if len(group) >= per_group:
            yield from score()
    if group:
        yield from score()


def _one_by_one_rows(
    model: Synchformer, items: Sequence[tuple[Path, Path | None]], *, batch_size: int, precision: str, protocol: str
) -> Iterator[dict]:
    for video, audio in items:
        try:
            yield clip_desync(model, video, audio, precision=precision, batch_size=batch_size, protocol=protocol)
        except InvalidArgumentError:  # the arguments, not this pair, are wrong
            raise
        except Exception as e:  # recorded, not fatal: one bad file must not end a benchmark run
            yield _failure_row(video, audio, e, protocol)


# ---------------------------------------------------------------------------------------------------------------
# The CSV: written as pairs finish, reused by a rerun


def _pair_key(video: str | Path, audio: str | Path | None) -> tuple[str, str]:
    """A pair as the CSV writes it: (video, audio or "")."""
    return str(video), "" if audio is None else str(audio)


def _input_error_names() -> set[str]:
    """Names of the errors bad input raises (:class:`SynchlibError` and its subclasses): with the same files, a
    pair that failed with one of them fails again."""
    names, classes = set(), [SynchlibError]
    while classes:
        cls = classes.pop()
        names.add(cls.__name__)
        classes += cls.__subclasses__()
    return names


def _finished_rows(csv_path: Path, protocol: str) -> dict[tuple[str, str], dict]:
    """Rows of an earlier run's CSV in ``protocol`` mode, by (video, audio): scored pairs and pairs refused for
    their input; pairs that failed otherwise (out of memory, a crashed decoder) are not among them. A file that is
    not such a CSV is an error (it is not overwritten)."""
    if not csv_path.is_file():
        return {}
    try:
        df = pd.read_csv(csv_path, dtype={"video": str, "audio": str, "notes": str, "error": str, "protocol": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise SynchlibError(f"{csv_path} exists and is not a DeSync table ({e}); give another --csv path") from None
    missing = [c for c in DESYNC_COLUMNS if c not in df.columns and c != "protocol"]
    if missing:
        raise SynchlibError(f"{csv_path} exists and is not a DeSync table (no {', '.join(missing)} column); "
                            "give another --csv path or remove the file")
    df = df.reindex(columns=DESYNC_COLUMNS)
    df[["audio", "notes", "error"]] = df[["audio", "notes", "error"]].fillna("")
    df["protocol"] = df["protocol"].fillna(DEFAULT_PROTOCOL)  # tables written before protocols existed
    refused = df["error"].str.split(":").str[0].isin(_input_error_names())
    done = df[((df["desync_sec"].notna() & df["error"].eq("")) | refused) & df["protocol"].eq(protocol)]
    return {_pair_key(r["video"], r["audio"]): r for r in done.to_dict("records")}


def _write_rows(path: Path, rows: Iterable[dict], mode: str) -> None:
    """Append (``mode`` "a") or write ("w", with the header) ``rows`` to the CSV, numbers rounded
    (:func:`synchlib.rounding.round_desync`)."""
    table = round_desync(pd.DataFrame(list(rows), columns=DESYNC_COLUMNS))
    with path.open(mode, newline="", encoding="utf-8") as f:
        table.to_csv(f, index=False, header=mode == "w")
        f.flush()


def _items(source: str | Path | Iterable[tuple[str | Path, str | Path | None]],
           audio_dir: str | Path | None) -> list[tuple[Path, Path | None]]:
    if isinstance(source, (str, Path)):
        return desync_items(source, audio_dir)
    if audio_dir is not None:
        raise InvalidArgumentError("audio_dir goes with a folder of videos; (video, audio) pairs name their audio")
    return [(Path(v), None if a is None or a == "" else Path(a)) for v, a in source]


def reusable_rows(
    items: Sequence[tuple[Path, Path | None]], csv_path: str | Path | None, protocol: str
) -> dict[tuple[str, str], dict]:
    """Rows of ``items`` that an earlier run finished in ``csv_path`` with ``protocol`` (scored, or refused for
    its input), by (video, audio); a pair whose files changed (or went missing) after the table was written is
    not among them."""
    if csv_path is None or not Path(csv_path).is_file():
        return {}
    written = Path(csv_path).stat().st_mtime

    def unchanged(path: Path | None) -> bool:
        try:
            return path is None or path.stat().st_mtime <= written
        except OSError:
            return False

    wanted = {_pair_key(v, a): (v, a) for v, a in items}
    return {k: r for k, r in _finished_rows(Path(csv_path), protocol).items()
            if k in wanted and all(map(unchanged, wanted[k]))}


def _unreadable_row(video: Path, audio: Path | None, protocol: str) -> dict | None:
    """The failed row of a pair with a missing (or empty, or unreadable) file, found without a model; else None."""
    try:
        for path in (video, audio):
            if path is not None:
                _check_readable(path)
    except SynchlibError as e:
        return _failure_row(video, audio, e, protocol)
    return None


def pairs_to_compute(
    items: Sequence[tuple[Path, Path | None]], csv_path: str | Path | None, protocol: str
) -> list[tuple[Path, Path | None]]:
    """The pairs of ``items`` a run needs the model for: not finished in ``csv_path``, files readable."""
    reused = reusable_rows(items, csv_path, protocol)
    return [(v, a) for v, a in items if _pair_key(v, a) not in reused and _unreadable_row(v, a, protocol) is None]


def desync(
    model: Synchformer | None,
    source: str | Path | Iterable[tuple[str | Path, str | Path | None]],
    audio_dir: str | Path | None = None,
    *,
    csv_path: str | Path | None = None,
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    protocol: str = DEFAULT_PROTOCOL,
    workers: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """DeSync of every pair of ``source`` (a folder of videos, with ``audio_dir`` a folder of audio matched by
    name, a manifest CSV, see :func:`desync_items`, or (video, audio or None) pairs): (one row per pair,
    :data:`DESYNC_COLUMNS`; :func:`summarize_desync` plus ``n_reused``).

    A pair that cannot be scored (unreadable, no sound, too short) is a row with NaN scores and its ``error``,
    not an exception. ``csv_path``: the table is written there as pairs finish, and the pairs an earlier run
    finished there (same protocol, files unchanged since) are taken from it, not computed again (``n_reused``):
    scored pairs and pairs refused for their input; pairs that failed otherwise (out of memory, ...) are tried
    again. ``model`` may be None when no pair needs it (see :func:`pairs_to_compute`). ``protocol``: see
    :func:`clip_desync`. A precision or batch size out of range is an :class:`InvalidArgumentError` before any
    pair is read. In av-benchmark mode ``workers`` processes decode ahead (0: decoding here) and the
    segments of several pairs share an extractor call (``batch_size`` segments per call).
    """
    check_protocol(protocol)
    precision, batch_size = check_precision(precision), check_batch_size(batch_size)
    workers = check_workers(workers)
    items = _items(source, audio_dir)
    csv_path = None if csv_path is None else Path(csv_path)
    reused = reusable_rows(items, csv_path, protocol)
    todo = [(v, a) for v, a in items if _pair_key(v, a) not in reused]
    unreadable = [row for v, a in todo if (row := _unreadable_row(v, a, protocol)) is not None]
    failed = {_pair_key(r["video"], r["audio"]) for r in unreadable}
    todo = [(v, a) for v, a in todo if _pair_key(v, a) not in failed]
    if todo:
        if model is None:
            raise InvalidArgumentError(f"{len(todo)} pairs are still to be scored: pass a model")
        check_offset_model(model)
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        _write_rows(csv_path, reused.values(), "w")
    if not todo:
        rows: Iterable[dict] = ()
    elif protocol == "av-benchmark":
        rows = _avbench_rows(model, todo, batch_size=batch_size, precision=precision, workers=workers)
    else:
        rows = _one_by_one_rows(model, todo, batch_size=batch_size, precision=precision, protocol=protocol)
    done = dict(reused)
    with tqdm(total=len(items), initial=len(reused), desc="DeSync", unit="pair", disable=not progress) as bar:
        for row in chain(unreadable, rows):
            done[_pair_key(row["video"], row["audio"])] = row
            if csv_path is not None:
                _write_rows(csv_path, [row], "a")
            bar.update()
    df = pd.DataFrame([done[_pair_key(v, a)] for v, a in items], columns=DESYNC_COLUMNS)
    if csv_path is not None:  # the same rows, in the order of the source
        tmp = csv_path.with_name(csv_path.name + ".tmp")
        _write_rows(tmp, df.to_dict("records"), "w")
        os.replace(tmp, csv_path)
    return df, {**summarize_desync(df), "n_reused": len(reused)}


# ---------------------------------------------------------------------------------------------------------------
# Command line (wired as ``synchlib desync``)


def add_desync_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``SOURCE [AUDIO_DIR] [--protocol P] [--csv OUT] [--checkpoint C] [--device D] [--precision P]
    [--batch-size N] [--workers N] [--no-progress]``."""
    parser.add_argument("source", metavar="SOURCE", type=Path,
                        help="folder of videos, or a CSV with a 'video' and an optional 'audio' column")
    parser.add_argument("audio_dir", metavar="AUDIO_DIR", type=Path, nargs="?", default=None,
                        help="folder of audio files matched to the videos by name (clip.mp4 -> clip.wav or "
                             "clip.flac); without it, the videos' own sound")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
                        help="'av-benchmark': exactly av-benchmark's DeSync (first 8 s, its preprocessing), the "
                             "number papers report; 'synchformer': Synchformer's own pipeline over the whole clip "
                             f"(default {DEFAULT_PROTOCOL})")
    parser.add_argument("--csv", type=Path, default=Path(DEFAULT_CSV),
                        help=f"per-pair table (default ./{DEFAULT_CSV}); pairs already scored there are skipped")
    parser.add_argument("--checkpoint", "-c", default=DEFAULT_CHECKPOINT,
                        help=f"released id, 'tiny-synthetic', or a .pt/.pth path (default {DEFAULT_CHECKPOINT}, "
                             "the model av-benchmark uses; MMAudio's synchformer_state_dict.pth works as it is)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="segments per extractor call (in av-benchmark mode several pairs share a call: "
                             "try 96 on a GPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes decoding ahead in av-benchmark mode (0: none; default: {GPU_WORKERS} on a "
                             "GPU, 0 on the CPU, where the model needs the cores)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return parser


def run_desync(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    """Run ``synchlib desync`` from parsed arguments: writes the CSV, prints the summary as JSON. Exit status 0
    when at least one pair was scored, 1 when none was."""
    # fail fast on bad arguments and a bad source, before loading (or downloading) a model
    resolve_device(args.device)
    check_precision(args.precision)
    check_batch_size(args.batch_size)
    workers = getattr(args, "workers", None)
    workers = check_workers(default_workers(args.device) if workers is None else workers)
    protocol = getattr(args, "protocol", DEFAULT_PROTOCOL)
    items = desync_items(args.source, getattr(args, "audio_dir", None))  # fail fast, before loading a model
    todo = pairs_to_compute(items, args.csv, protocol)
    model = load_model(args.checkpoint, device=args.device) if todo else None  # a finished table needs none
    _, summary = desync(model, items, csv_path=args.csv, precision=args.precision, batch_size=args.batch_size,
                        progress=getattr(args, "progress", True), protocol=protocol,
                        workers=workers)
    echo(json.dumps({**round_summary(summary), "csv": str(args.csv)}))
    return 0 if summary["n"] else 1
