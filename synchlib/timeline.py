"""Offset over time: sliding windows over a video of any length, decoded as a stream, each segment computed once.

``offset_over_time(model, "talk.mp4")`` -> one row per window: where it lies, the predicted offset, its
probability and the entropy of the prediction. The window at ``start_sec = t`` is exactly the one
``predict(model, video, offset_sec=0, start_sec=t)`` sees (frames from ``int(t * vfps) + v0``, audio from
``int(t * afps) + a0``, see :func:`synchlib.preprocess.segment_layout`), without the reference's 10 s clip limit.

Why it is cheap. The feature extractors see one segment (16 frames, 0.64 s of sound) at a time, independently of
the others; only the small synchronisation transformer sees a whole window. Windows whose starts differ by a
multiple of the segment stride (8 frames = 0.32 s) share segments, so features are cached per segment, keyed by
the segment's first frame (video) and first sample (audio), and every segment is computed once for the whole
video. With the default hop (4 strides, 1.28 s) a window costs 4 new segments instead of 14. Other hops work
too, with fewer shared segments (same answers, more compute).

Why memory does not grow with the length. Frames and samples come from :func:`synchlib.io.iter_video` and
:func:`synchlib.io.iter_audio` (streaming decoders, frames cropped to the model's input at once), reading the file
``predict`` reads (:func:`synchlib.io.prepare`: the file itself, or its normalised copy); a frame or
sample is kept only until the segments that use it are queued for the extractors; a segment's features are
dropped as soon as the last window using it has been predicted. What is held at any time: one window's span of
segments and features (plus one batch), independent of the video's length; the result table grows by one row
per window.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .checks import one_of, real
from .config import DataConfig
from .errors import ClipTooShortError, ConfigError, InvalidArgumentError
from .io import AUDIO_PRIMING_OPTIONS, AudioPriming, ending_notes, iter_audio, iter_video, probe
from .manifests import resolve_video
from .model import Synchformer, autocast, check_precision
from .normalised import prepare
from .predict import check_batch_size, logits_to_prediction
from .preprocess import equalify, frames_to_input, log_mel, segment_layout, temporal_crop

DEFAULT_HOP_STRIDES = 4  # default hop in segment strides: 1.28 s with the released layout
DEFAULT_BATCH_SIZE = 8  # segments per feature-extractor call, and windows per synchronisation-transformer call
TOP_K = 3  # best offsets reported per window
NUDGE_ULPS = 64  # a start time is nudged up by at most this many ulps to land on its frame and sample
ON_GRID_TOL = 1e-6  # a time this close to a frame (or sample) is meant to be on it
FAR = 10**15  # frames / samples of a stream whose end is not known yet
HEADER_SLACK_SEC = 0.1  # windows ending more than this after the header's duration are not even started
TIMELINE_COLUMNS = [
    "start_sec", "end_sec", "center_sec", "predicted_offset_sec", "predicted_class", "p", "entropy",
    "offset_2_sec", "p_2", "offset_3_sec", "p_3",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Where windows and segments lie


def unlimited(data: DataConfig) -> DataConfig:
    """``data`` without the reference's clip length limit (``clip_max_len_sec``)."""
    return dataclasses.replace(data, clip_max_len_sec=math.inf)


def segment_stride_sec(data: DataConfig) -> float:
    """Seconds between consecutive segments (0.32 s with the released layout): hops that are multiples of it
    share segments between windows."""
    return data.step_vframes / data.vfps


def default_hop_sec(data: DataConfig) -> float:
    """The default hop: :data:`DEFAULT_HOP_STRIDES` segment strides (1.28 s with the released layout)."""
    return round(DEFAULT_HOP_STRIDES * segment_stride_sec(data), 9)


def _nudge_onto(t: float, rate: int) -> float:
    """``t`` nudged up (a few ulps at most) so that ``int(t * rate)`` gives the tick it is meant to be on
    (``t * rate`` within :data:`ON_GRID_TOL` of an integer); other times unchanged."""
    tick = round(t * rate)
    if abs(t * rate - tick) > ON_GRID_TOL:
        return t
    for _ in range(NUDGE_ULPS):
        if int(t * rate) >= tick:
            return t
        t = math.nextafter(t, math.inf)
    return t


def snap_start_sec(start_sec: float, data: DataConfig) -> float:
    """``start_sec`` as the float whose truncations ``int(t * vfps)`` and ``int(t * afps)`` (the reference's, in
    :func:`synchlib.preprocess.temporal_crop`) give the frame and sample it stands for.

    ``int(1.16 * 25)`` is 28, not 29 (1.16 * 25 = 28.999999999999996 in binary floating point), so about 6 % of
    the starts on a 1.28 s grid would otherwise land one frame early, and miss the shared segments. The snapped
    value prints the same (``1.1600000000000001``) and ``predict(..., start_sec=snapped)`` sees the same window.
    """
    t = float(start_sec)
    return _nudge_onto(_nudge_onto(t, data.vfps), data.afps)


def window_starts(start_sec: float, hop_sec: float, data: DataConfig, end_sec: float | None = None) -> Iterator[float]:
    """Window starts ``start_sec + i * hop_sec`` (snapped, :func:`snap_start_sec`) whose ``crop_len_sec`` crop ends
    by ``end_sec`` (no end: endless)."""
    for i in range(FAR):
        t = snap_start_sec(round(start_sec + i * hop_sec, 9), data)
        if end_sec is not None and t + data.crop_len_sec > end_sec + 1e-9:
            return
        yield t


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """One window: its start (as ``predict``'s ``start_sec``) and the first frame / first sample of each of its
    segments (the cache keys)."""

    start_sec: float
    frame_keys: tuple[int, ...]  # (S,)
    sample_keys: tuple[int, ...]  # (S,)


def plan_window(start_sec: float, data: DataConfig) -> WindowPlan:
    """The segments of the window at ``start_sec`` with the audio as it is (offset 0), as :func:`predict` cuts
    them: crop starts ``int(t * vfps)`` / ``int(t * afps)`` (:func:`temporal_crop`), segments at
    :func:`segment_layout`'s offsets inside the crop."""
    vstarts, astarts, _, _ = segment_layout(data)
    v_start, a_start = int(start_sec * data.vfps), int(start_sec * data.afps)
    return WindowPlan(start_sec, tuple(int(v_start + s) for s in vstarts), tuple(int(a_start + s) for s in astarts))


def window_fits(start_sec: float, n_frames: int, n_samples: int, data: DataConfig) -> bool:
    """Whether ``predict`` would accept the window at ``start_sec`` (offset 0) on a clip of ``n_frames`` frames and
    ``n_samples`` samples, without the clip length limit (:func:`equalify`, then :func:`temporal_crop`)."""
    data = unlimited(data)
    frames, samples = equalify(n_frames, n_samples, data)
    try:
        temporal_crop(frames, samples, 0.0, start_sec, data)
    except ClipTooShortError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Features of segments


def video_segment_features(model: Synchformer, segments: np.ndarray, precision: str = "fp32") -> torch.Tensor:
    """uint8 segments (n, T, h, w, 3) -> visual features (n, tv, D), float32 on the model's device."""
    vid = frames_to_input(segments, model.cfg.data)  # (n, T, 3, h, w)
    with autocast(model.device, precision):
        return model.extract_vfeats(vid[None].to(model.device))[0].float()


def audio_segment_features(model: Synchformer, waves: np.ndarray, precision: str = "fp32") -> torch.Tensor:
    """float32 segment waves (n, L) at ``afps`` -> audio features (n, ta, D), float32 on the model's device."""
    aud = log_mel(torch.from_numpy(np.ascontiguousarray(waves)), model.cfg.data, model.cfg.audio.max_spec_t)
    with autocast(model.device, precision):
        return model.extract_afeats(aud[None].to(model.device))[0].float()


def windows_logits(
    model: Synchformer, vfeats: torch.Tensor, afeats: torch.Tensor, precision: str = "fp32"
) -> torch.Tensor:
    """vfeats (B, S, tv, D), afeats (B, S, ta, D) -> logits (B, classes), float32 on the CPU."""
    with autocast(model.device, precision):
        return model.sync_logits(vfeats, afeats).float().cpu()


class SegmentFeatures:
    """Features of the segments of one modality that the open windows need, each computed once.

    Keys are a segment's first frame (video) or first sample (audio); ``length`` its frames or samples. A key is
    *needed* while a window that uses it is open (counted per window), *queued* once its data is complete (the raw
    segment is copied into a batch), *computed* once its batch ran, and forgotten with its last window.
    """

    def __init__(self, length: int, compute: Callable[[np.ndarray], torch.Tensor], batch_size: int):
        self.length, self.compute, self.batch_size = length, compute, batch_size
        self.users: dict[int, int] = {}  # key -> open windows using it
        self.keys: list[int] = []  # sorted needed keys
        self.waiting: list[int] = []  # heap of needed keys whose data is not complete yet
        self.queue: list[tuple[int, np.ndarray]] = []  # (key, raw segment) waiting for a batch
        self.features: dict[int, torch.Tensor] = {}
        self.computed = 0  # segments computed so far (each once)

    def need(self, key: int) -> None:
        if key not in self.users:
            self.users[key] = 0
            bisect.insort(self.keys, key)
            heapq.heappush(self.waiting, key)
        self.users[key] += 1

    def release(self, key: int) -> None:
        self.users[key] -= 1
        if not self.users[key]:
            del self.users[key]
            self.features.pop(key, None)
            del self.keys[bisect.bisect_left(self.keys, key)]

    def covers(self, index: int) -> bool:
        """Whether frame / sample ``index`` lies in a needed segment."""
        i = bisect.bisect_right(self.keys, index) - 1
        return i >= 0 and index < self.keys[i] + self.length

    def first_waiting(self) -> int:
        """The first frame / sample a waiting segment still needs (:data:`FAR` when none waits)."""
        return self.waiting[0] if self.waiting else FAR

    def collect(self, available: int, raw: Callable[[int], np.ndarray]) -> None:
        """Queue every waiting segment whose data is complete (``available`` frames / samples seen)."""
        queued = {k for k, _ in self.queue}
        while self.waiting and self.waiting[0] + self.length <= available:
            key = heapq.heappop(self.waiting)
            if key in self.users and key not in self.features and key not in queued:
                self.queue.append((key, raw(key)))
                queued.add(key)

    def run(self, force: bool = False) -> None:
        """Compute the queued segments in batches of ``batch_size`` (a partial batch with ``force``)."""
        while self.queue and (force or len(self.queue) >= self.batch_size):
            batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
            feats = self.compute(np.stack([x for _, x in batch]))
            self.features.update({key: f for (key, _), f in zip(batch, feats)})
            self.computed += len(batch)

    def ready(self, keys: Sequence[int]) -> bool:
        return all(k in self.features for k in keys)

    def stack(self, keys: Sequence[int]) -> torch.Tensor:
        """(S, t, D) features of ``keys``."""
        return torch.stack([self.features[k] for k in keys])


class FrameBuffer:
    """Frames by index, kept until dropped."""

    def __init__(self):
        self.frames: dict[int, np.ndarray] = {}

    def add(self, index: int, frame: np.ndarray) -> None:
        self.frames[index] = frame

    def segment(self, first: int, length: int) -> np.ndarray:
        """(length, h, w, 3) frames ``first ..``."""
        return np.stack([self.frames[i] for i in range(first, first + length)])

    def drop_before(self, index: int) -> None:
        for i in [i for i in self.frames if i < index]:
            del self.frames[i]


class SampleBuffer:
    """A stretch of a mono track: samples ``start ..`` kept until dropped."""

    def __init__(self):
        self.start = 0
        self.samples = np.zeros(0, np.float32)
        self._chunks: list[np.ndarray] = []

    @property
    def end(self) -> int:
        """Samples seen so far."""
        return self.start + len(self.samples) + sum(len(c) for c in self._chunks)

    def add(self, chunk: np.ndarray) -> None:
        self._chunks.append(chunk)

    def _join(self) -> None:
        if self._chunks:
            self.samples = np.concatenate([self.samples, *self._chunks])
            self._chunks = []

    def segment(self, first: int, length: int) -> np.ndarray:
        """(length,) samples ``first ..`` (a copy)."""
        self._join()
        return self.samples[first - self.start : first - self.start + length].copy()

    def drop_before(self, index: int) -> None:
        self._join()
        n = min(max(0, index - self.start), len(self.samples))
        if n:
            self.samples, self.start = self.samples[n:].copy(), self.start + n


# ---------------------------------------------------------------------------------------------------------------
# The scheduler: data in, window logits out


class WindowStream:
    """Turns frames and samples, fed in order, into the logits of the windows at ``starts``, each segment computed
    once and nothing kept longer than needed.

    Feed with :meth:`add_frame` / :meth:`add_samples` (:meth:`next_stream` says which stream is behind), end each
    stream with :meth:`end_video` / :meth:`end_audio`, collect ``(start_sec, logits (classes,))`` with
    :meth:`results` in window order. Windows are opened when their first frame or sample arrives, closed (logits
    computed) once all their features are there and ``predict`` would accept them on the data seen so far
    (:func:`window_fits`); windows that no longer can fit when a stream ends are dropped.
    """

    def __init__(self, model: Synchformer, starts: Iterator[float], *, batch_size: int = DEFAULT_BATCH_SIZE,
                 precision: str = "fp32"):
        self.model, self.data, self.precision, self.batch_size = model, model.cfg.data, precision, batch_size
        self.starts = starts
        self.upcoming: WindowPlan | None = None
        self._next_plan()
        self.open: deque[WindowPlan] = deque()
        self.closing: list[WindowPlan] = []  # ready windows waiting for a batch of the synchronisation transformer
        self.video = SegmentFeatures(self.data.segment_size_vframes,
                                     lambda x: video_segment_features(model, x, precision), batch_size)
        self.audio = SegmentFeatures(self.data.segment_size_asamples,
                                     lambda x: audio_segment_features(model, x, precision), batch_size)
        self.frames, self.samples = FrameBuffer(), SampleBuffer()
        self.n_frames = 0  # frames seen
        self.video_done = self.audio_done = False
        self._results: list[tuple[float, torch.Tensor]] = []
        self.windows_done = 0

    # -- input

    def next_stream(self) -> str | None:
        """``"video"`` or ``"audio"``: the stream to read next (the one behind in time); None: nothing more needed."""
        if self.finished:
            return None
        video_sec, audio_sec = self.n_frames / self.data.vfps, self.samples.end / self.data.afps
        if not self.video_done and (self.audio_done or video_sec <= audio_sec):
            return "video"
        return None if self.audio_done else "audio"

    def wants_frame(self, index: int) -> bool:
        """Whether frame ``index`` lies in a segment of an open window (others need not be converted)."""
        self._open_windows()
        return self.video.covers(index)

    def add_frame(self, index: int, frame: np.ndarray | None) -> None:
        """Frame ``index`` (the next one; None when it is not wanted, see :meth:`wants_frame`)."""
        if frame is not None:
            self.frames.add(index, frame)
        self.n_frames = index + 1
        self._step()

    def add_samples(self, chunk: np.ndarray) -> None:
        self.samples.add(chunk)
        self._step()

    def end_video(self) -> None:
        self.video_done = True
        self._step()

    def end_audio(self) -> None:
        self.audio_done = True
        self._step()

    # -- output

    @property
    def finished(self) -> bool:
        """No window is left to open or close."""
        return self.upcoming is None and not self.open and not self.closing

    def results(self) -> list[tuple[float, torch.Tensor]]:
        """``(start_sec, logits)`` of the windows closed since the last call, in order."""
        out, self._results = self._results, []
        return out

    # -- inside

    def _next_plan(self) -> None:
        start = next(self.starts, None)
        self.upcoming = None if start is None else plan_window(start, self.data)

    def _caps(self) -> tuple[int, int]:
        """The most frames and samples the streams can still reach (seen so far once ended)."""
        return (self.n_frames if self.video_done else FAR), (self.samples.end if self.audio_done else FAR)

    def _open_windows(self) -> None:
        while self.upcoming is not None:
            plan = self.upcoming
            if (self.video_done or self.audio_done) and not window_fits(plan.start_sec, *self._caps(), self.data):
                self.upcoming = None  # a stream ended before it: neither it nor any later window can fit
                return
            if plan.frame_keys[0] > self.n_frames and plan.sample_keys[0] > self.samples.end:
                return
            for k in plan.frame_keys:
                self.video.need(k)
            for k in plan.sample_keys:
                self.audio.need(k)
            self.open.append(plan)
            self._next_plan()

    def _release(self, plan: WindowPlan) -> None:
        for k in plan.frame_keys:
            self.video.release(k)
        for k in plan.sample_keys:
            self.audio.release(k)

    def _close_windows(self) -> None:
        while self.open:
            plan = self.open[0]
            if (self.video_done or self.audio_done) and not window_fits(plan.start_sec, *self._caps(), self.data):
                self._release(self.open.popleft())  # can never fit: a stream ended
                continue
            if not (self.video.ready(plan.frame_keys) and self.audio.ready(plan.sample_keys)
                    and window_fits(plan.start_sec, self.n_frames, self.samples.end, self.data)):
                return
            self.closing.append(self.open.popleft())

    def _run_windows(self, force: bool) -> None:
        while self.closing and (force or len(self.closing) >= self.batch_size):
            batch, self.closing = self.closing[: self.batch_size], self.closing[self.batch_size :]
            vf = torch.stack([self.video.stack(p.frame_keys) for p in batch])
            af = torch.stack([self.audio.stack(p.sample_keys) for p in batch])
            logits = windows_logits(self.model, vf, af, self.precision)
            self._results += [(p.start_sec, lg) for p, lg in zip(batch, logits)]
            for p in batch:
                self._release(p)
            self.windows_done += len(batch)

    def _step(self) -> None:
        self._open_windows()
        self.video.collect(self.n_frames, lambda k: self.frames.segment(k, self.video.length))
        self.audio.collect(self.samples.end, lambda k: self.samples.segment(k, self.audio.length))
        ended = self.video_done and self.audio_done
        # A partial batch runs when nothing else can join it soon: no open window waits for data of this stream.
        self.video.run(force=ended or not self.video.waiting)
        self.audio.run(force=ended or not self.audio.waiting)
        self._close_windows()
        self._run_windows(force=ended or self.upcoming is None or not (self.video.waiting or self.audio.waiting))
        self._close_windows()
        upcoming = self.upcoming
        self.frames.drop_before(min(self.video.first_waiting(), upcoming.frame_keys[0] if upcoming else FAR))
        self.samples.drop_before(min(self.audio.first_waiting(), upcoming.sample_keys[0] if upcoming else FAR))


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def check_offset_model(model: Synchformer) -> None:
    """Raise :class:`ConfigError` unless ``model`` predicts offsets (not synchronisability)."""
    if model.cfg.sync.head != "offset":
        raise ConfigError(
            f"{model.cfg.name} is a synchronisability model (head {model.cfg.sync.head!r}); the offset timeline "
            "needs an offset model: use a released offset checkpoint such as 24-01-04T16-39-21"
        )


def min_hop_sec(data: DataConfig) -> float:
    """The shortest hop: one video frame (0.04 s). Windows closer than that start on the same frame, and a hop
    that tends to 0 would make the number of windows (the work) grow without bound."""
    return 1.0 / data.vfps


def check_timeline(
    hop_sec: float | None, start_sec: float, end_sec: float | None, data: DataConfig | None
) -> tuple[float | None, float, float | None]:
    """``(hop_sec, start_sec, end_sec)`` as floats (None stays None) when the hop is at least :func:`min_hop_sec`,
    the start >= 0 and the end after the start, all finite; else :class:`InvalidArgumentError`. ``data`` None
    (the model's config not known yet) checks a hop only for > 0. An end that leaves no room for a window is a
    :class:`ClipTooShortError`."""
    if hop_sec is not None:
        if data is None:
            hop_sec = real("hop_sec", hop_sec, above=0.0)
        else:
            hop_sec = real("hop_sec", hop_sec, low=min_hop_sec(data),
                           why=f"the shortest hop is one video frame, the default {default_hop_sec(data):g} s")
    start_sec = real("start_sec", start_sec, low=0.0)
    if end_sec is not None:
        end_sec = real("end_sec", end_sec, above=start_sec, why="the end of the last window, after start_sec")
        if data is not None and end_sec < start_sec + data.crop_len_sec:
            raise ClipTooShortError(
                f"end_sec={end_sec:g} leaves no room for a window: a window needs {data.crop_len_sec:g} s from its "
                f"start, so use end_sec >= start_sec + {data.crop_len_sec:g} = {start_sec + data.crop_len_sec:g}"
            )
    return hop_sec, start_sec, end_sec


def iter_window_logits(
    model: Synchformer,
    video: str | Path,
    *,
    hop_sec: float | None = None,
    start_sec: float = 0.0,
    end_sec: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "fp32",
    audio_priming: AudioPriming = "drop",
    progress: bool = True,
    notes: list[str] | None = None,
    stats: dict | None = None,
) -> Iterator[tuple[float, torch.Tensor]]:
    """Stream ``(start_sec, logits (classes,))`` of the windows at ``start_sec, start_sec + hop_sec, ...`` (crops
    ending by ``end_sec``; None: the end of the file), each equal to ``predict(model, video, 0.0, start)``'s
    logits (fp32, within rounding). See the module docstring for the caching and the memory bound.

    ``notes`` collects why the answer may be unreliable (damage found while decoding), ``stats`` gets the counts
    of computed segments and windows (filled at the end). Arguments out of range (:func:`check_timeline`,
    batch_size 1 to :data:`synchlib.predict.MAX_BATCH_SIZE`, precision, audio_priming) raise
    :class:`InvalidArgumentError` before the video is opened.
    """
    check_offset_model(model)
    data = model.cfg.data
    hop_sec, start_sec, end_sec = check_timeline(hop_sec, start_sec, end_sec, data)
    hop_sec = default_hop_sec(data) if hop_sec is None else hop_sec
    batch_size, precision = check_batch_size(batch_size), check_precision(precision)
    one_of("audio_priming", audio_priming, AUDIO_PRIMING_OPTIONS)
    if not isinstance(video, (str, Path)):
        raise InvalidArgumentError(f"the video must be a path (str or Path), got {type(video).__name__}")
    path = resolve_video(video)
    target, report = prepare(path, data)  # the file predict reads: the same frames and samples
    info = probe(target)
    notes = [] if notes is None else notes
    notes += report["notes"]
    # Without an end_sec, the header's duration (when there is one) spares the segments of windows that would
    # only turn out not to fit at the end of the file; a header that is too short costs no window (the slack).
    last = end_sec if end_sec is not None else (info.duration_sec + HEADER_SLACK_SEC if info.duration_sec else None)
    engine = WindowStream(model, window_starts(start_sec, hop_sec, data, last), batch_size=batch_size,
                          precision=precision)
    frames = iter_video(target, data, wanted=engine.wants_frame, notes=notes)
    audio = iter_audio(target, data, audio_priming=audio_priming, notes=notes)
    known = info.duration_sec if end_sec is None else min(info.duration_sec or end_sec, end_sec)
    # whole seconds of video read (a float count would show as 3.0000000000000013/30.0)
    bar = tqdm(total=math.floor(known) if known else None, unit="s", desc="offset timeline", disable=not progress)
    with torch.inference_mode(), bar:
        try:
            while (side := engine.next_stream()) is not None:
                if side == "video":
                    item = next(frames, None)
                    engine.end_video() if item is None else engine.add_frame(*item)
                    bar.update(math.floor(engine.n_frames / data.vfps) - bar.n)
                else:
                    chunk = next(audio, None)
                    engine.end_audio() if chunk is None else engine.add_samples(chunk)
                yield from engine.results()
        finally:
            frames.close(), audio.close()
        bar.update(max(0, (bar.total or 0) - bar.n))  # done: the rest of the video holds no further window
    if engine.video_done and engine.audio_done and end_sec is None and target == path:  # both read to their ends
        notes += ending_notes(info.duration_sec, max(engine.n_frames / data.vfps, engine.samples.end / data.afps))
    if stats is not None:
        stats.update(windows=engine.windows_done, video_segments=engine.video.computed,
                     audio_segments=engine.audio.computed, frames_read=engine.n_frames, samples_read=engine.samples.end)
    if not engine.windows_done:
        have = min(engine.n_frames / data.vfps, engine.samples.end / data.afps)
        raise ClipTooShortError(
            f"{path}: no window fits: the video has {have:.2f} s of usable audio and video from {start_sec:g} s"
            f"{f' to {end_sec:g} s' if end_sec is not None else ''}, a window needs {data.crop_len_sec:g} s; "
            "use an earlier start_sec or a longer video"
        )


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy (nats) of a probability vector: 0 when certain, ln(classes) (3.04 for 21) when uniform."""
    p = np.asarray(probs, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def window_row(start_sec: float, logits: torch.Tensor, data: DataConfig) -> dict:
    """One timeline row (:data:`TIMELINE_COLUMNS`) from a window's start and logits (classes,)."""
    pred = logits_to_prediction(logits, data.grid, k=TOP_K, start_sec=start_sec)
    top = pred.topk + [(math.nan, -1, math.nan)] * (TOP_K - len(pred.topk))
    return {
        "start_sec": start_sec,
        "end_sec": start_sec + data.crop_len_sec,
        "center_sec": start_sec + data.crop_len_sec / 2,
        "predicted_offset_sec": pred.offset_sec,
        "predicted_class": pred.class_index,
        "p": pred.p,
        "entropy": entropy(pred.probs),
        "offset_2_sec": top[1][0],
        "p_2": top[1][2],
        "offset_3_sec": top[2][0],
        "p_3": top[2][2],
    }


def offset_over_time(
    model: Synchformer,
    video: str | Path,
    *,
    hop_sec: float | None = None,
    start_sec: float = 0.0,
    end_sec: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "fp32",
    audio_priming: AudioPriming = "drop",
    progress: bool = True,
) -> pd.DataFrame:
    """The predicted audio-visual offset of every window of ``video``, streaming (memory independent of length).

    Windows start at ``start_sec, start_sec + hop_sec, ...`` (``hop_sec`` default: 4 segment strides, 1.28 s;
    multiples of the 0.32 s stride share segments and are cheapest) and end by ``end_sec`` (None: the end of the
    file). Each is the window ``predict(model, video, offset_sec=0.0, start_sec=start)`` sees, without the 10 s
    clip limit, with the same logits.

    Returns one row per window: ``start_sec, end_sec`` (the 5 s crop), ``center_sec``, ``predicted_offset_sec``
    (positive: audio early), ``predicted_class``, ``p`` (its probability), ``entropy`` (nats, see
    :func:`entropy`), and the runners-up ``offset_2_sec, p_2, offset_3_sec, p_3``. ``df.attrs`` holds
    ``video``, ``model``, ``hop_sec``, ``notes`` (why answers may be unreliable) and ``stats`` (segments computed).
    """
    data = model.cfg.data
    notes: list[str] = []
    stats: dict = {}
    rows = [
        window_row(t, logits, data)
        for t, logits in iter_window_logits(
            model, video, hop_sec=hop_sec, start_sec=start_sec, end_sec=end_sec, batch_size=batch_size,
            precision=precision, audio_priming=audio_priming, progress=progress, notes=notes, stats=stats,
        )
    ]
    df = pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
    df.attrs.update(video=str(resolve_video(video)), model=model.cfg.name, notes=notes, stats=stats,
                    hop_sec=default_hop_sec(data) if hop_sec is None else float(hop_sec))
    return df


def summarize_timeline(df: pd.DataFrame, confident_p: float = 0.5) -> dict[str, float]:
    """Key numbers of a timeline (:func:`offset_over_time`).

    ``median_offset_sec``: median predicted offset over the confident windows (``p >= confident_p``; over all
    windows when none is); ``drift_sec_per_min``: slope of a least-squares line through the confident windows'
    offsets against their centre times, in seconds of offset per minute of video (NaN with fewer than two
    confident windows at different times); ``confident_share``: share of confident windows; ``n_windows``,
    ``n_confident``; ``span_sec``: from the first window's start to the last one's end.
    """
    if df.empty:
        nan = float("nan")
        return {"n_windows": 0, "n_confident": 0, "confident_share": nan, "median_offset_sec": nan,
                "drift_sec_per_min": nan, "span_sec": 0.0}  # fmt: skip
    sure = df[df["p"] >= confident_p]
    use = sure if len(sure) else df
    drift = float("nan")
    if len(sure) >= 2 and sure["center_sec"].nunique() >= 2:
        t, offset = sure["center_sec"].to_numpy(float), sure["predicted_offset_sec"].to_numpy(float)
        drift = float(np.polyfit(t, offset, 1)[0] * 60.0)  # s per s -> s per minute
    return {
        "n_windows": int(len(df)),
        "n_confident": int(len(sure)),
        "confident_share": float(len(sure) / len(df)),
        "median_offset_sec": float(use["predicted_offset_sec"].median()),
        "drift_sec_per_min": drift,
        "span_sec": float(df["end_sec"].max() - df["start_sec"].min()),
    }
