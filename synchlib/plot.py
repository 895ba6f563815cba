"""Figures for notebooks and reports (matplotlib). Every function returns the Figure and draws nothing else."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch, Rectangle

from .attention import Explanation
from .errors import InvalidArgumentError
from .predict import Prediction, offset_words
from .preprocess import Clip
from .rounding import grid_decimals
from .sweep import per_offset_accuracy as accuracy_by_offset  # this module draws its own per_offset_accuracy
from .timeline import summarize_timeline

TARGET_COLOUR = "tab:green"
PRED_COLOUR = "tab:red"
AV_EVENT_COLOUR = "tab:green"
VISUAL_ONLY_COLOUR = "tab:blue"
AUDIO_ONLY_COLOUR = "tab:orange"
VISUAL_COLOUR = "tab:purple"  # attention on the picture
AUDIO_COLOUR = "tab:orange"  # attention on the sound
EVENT_COLOURS = {"av_events": AV_EVENT_COLOUR, "visual_only": VISUAL_ONLY_COLOUR, "audio_only": AUDIO_ONLY_COLOUR}
EVENT_LABELS = {"av_events": "seen and heard", "visual_only": "seen, silent", "audio_only": "heard, not seen"}
DEFAULT_FPS, DEFAULT_SAMPLE_RATE = 25.0, 16000  # a clip without its decoded file: the model's rates


def probabilities(pred: Prediction, ax=None):
    """Bar plot of the probabilities of every offset class; the model's answer and the injected shift (the right
    answer, when there is one) coloured and named in a legend."""
    fig, ax = _fig_ax(ax, (8, 2.8))
    x = np.arange(len(pred.probs))
    colours = ["0.6"] * len(x)
    if pred.target_class is not None:
        colours[pred.target_class] = TARGET_COLOUR
    colours[pred.class_index] = TARGET_COLOUR if pred.correct else PRED_COLOUR
    ax.bar(x, pred.probs, color=colours)
    if pred.kind == "offset":
        ax.set_xticks(x, [f"{g:+.{grid_decimals(pred.grid)}f}" for g in pred.grid], rotation=90)
        ax.set_xlabel("offset class (s; + = audio early, - = audio late)")
        answer = offset_words(pred.offset_sec, grid_decimals(pred.grid))
    else:
        ax.set_xticks(x, ["not synchronisable", "synchronisable"])
        answer = pred.answer(pred.class_index)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    title = f"model's answer: {answer} (p={pred.p:.2f})"
    if pred.target_class is not None:
        title += f"; injected: {offset_words(pred.injected_offset_sec)}"
    ax.set_title(title)
    legend = {"model's answer (right)": TARGET_COLOUR} if pred.correct else {"model's answer": PRED_COLOUR}
    if pred.target_class is not None and not pred.correct:
        legend["injected shift (the right answer)"] = TARGET_COLOUR
    ax.legend(handles=[Patch(color=c, label=k) for k, c in legend.items()], loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def shift_probabilities(preds: Sequence[Prediction], ax=None):
    """Probabilities of every offset class (columns) with the audio shifted by each amount (rows), one
    :class:`Prediction` per row (:func:`synchlib.media.shift_predictions`): the static view of the offset
    slider. The model's answer is ringed red, the injected shift (the right answer) boxed green. No predictions:
    an :class:`InvalidArgumentError`."""
    if not preds:
        raise InvalidArgumentError("no predictions to show: no shift fits the clip at this start")
    probs = np.stack([p.probs for p in preds])  # (shifts, classes)
    grid = preds[0].grid
    fig, ax = _fig_ax(ax, (8, 1.8 + 0.3 * len(preds)))
    image = ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=max(float(probs.max()), 1e-6), aspect="auto")
    for row, p in enumerate(preds):
        if p.target_class is not None:
            ax.add_patch(Rectangle((p.target_class - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=TARGET_COLOUR, lw=2))
        ax.scatter([p.class_index], [row], s=60, facecolors="none", edgecolors=PRED_COLOUR, linewidths=1.5)
    decimals = grid_decimals(grid)
    ax.set_xticks(range(len(grid)), [f"{g:+.{decimals}f}" for g in grid], rotation=90, fontsize=8)
    ax.set_yticks(range(len(preds)), [offset_words(p.injected_offset_sec, decimals) for p in preds], fontsize=8)
    ax.set_xlabel("offset class (s; + = audio early, - = audio late)")
    ax.set_ylabel("audio shifted by")
    ax.set_title("probability of every offset class, for several shifts\n"
                 "red ring: the model's answer; green box: the injected shift (the right answer)", fontsize=9)
    fig.colorbar(image, ax=ax, label="probability", pad=0.01)
    fig.tight_layout()
    return fig


def frames_strip(clip: Clip, n: int = 12, events: Sequence[float] = (), ax=None):
    """``n`` evenly spaced frames of the window the model saw, with their times; event frames outlined."""
    idx = np.linspace(0, len(clip.frames) - 1, n).round().astype(int)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.7))
    fps = clip.decoded.fps if clip.decoded else DEFAULT_FPS
    for a, i in zip(np.atleast_1d(axes), idx):
        t = clip.frame_indices[i] / fps
        a.imshow(clip.frames[i])
        a.set_title(f"{t:.2f}s", fontsize=8)
        a.set_xticks([]), a.set_yticks([])
        if any(abs(e - t) < 0.5 / fps for e in events):
            for s in a.spines.values():
                s.set_edgecolor(AV_EVENT_COLOUR), s.set_linewidth(3)
    fig.tight_layout()
    return fig


def spectrogram(clip: Clip, ax=None):
    """The log-mel spectrogram the model heard, against time in the window. The model's audio segments overlap
    by half; every other one is shown, so the picture covers the window once (the last half segment is left out)."""
    fig, ax = _fig_ax(ax, (10, 2.6))
    sr = clip.decoded.sample_rate if clip.decoded else DEFAULT_SAMPLE_RATE
    segs = clip.aud[::2, 0].numpy()  # (ceil(S/2), F, T): every other segment, end to end
    img = np.concatenate([s[:, :-1] for s in segs], axis=1)
    stride = int(clip.audio_seg_starts[1] - clip.audio_seg_starts[0]) if len(clip.audio_seg_starts) > 1 else 0
    seconds = len(segs) * 2 * stride / sr if stride else len(clip.wave) / sr
    ax.imshow(img, origin="lower", aspect="auto", cmap="magma", extent=(0.0, seconds, 0, img.shape[0]))
    ax.set_xlabel("time in the window (s)")
    ax.set_ylabel("pitch (mel band, low to high)")
    ax.set_title(f"sound the model heard ({offset_words(clip.offset_sec)} on purpose)"
                 if clip.offset_sec else "sound the model heard (as it is in the file)")
    fig.tight_layout()
    return fig


def waveform(clip: Clip, events: dict[str, Sequence[float]] | None = None, ax=None):
    """The shifted audio crop against source time, with event markers if given."""
    fig, ax = _fig_ax(ax, (10, 2.2))
    sr = clip.decoded.sample_rate if clip.decoded else DEFAULT_SAMPLE_RATE
    t = (clip.audio_start_sample + np.arange(len(clip.wave))) / sr
    ax.plot(t, clip.wave, lw=0.5, color="k")
    _mark_events(ax, events)
    ax.set_xlabel("time in the source audio (s)")
    ax.set_title("the sound of the window")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def attention_timeline(ex: Explanation, events: dict[str, Sequence[float]] | None = None):
    """The OFF token's attention on each visual token (top) and audio token (bottom) against time in the
    source, each panel on its own scale and labelled with its share of the attention; events marked, named in a
    legend below the panels (only the kinds that fall in view)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, layout="constrained")
    total = float(ex.off_visual.sum() + ex.off_audio.sum())
    for ax, times, att, colour, what in (
        (top, ex.visual_times, ex.off_visual, VISUAL_COLOUR, "picture"),
        (bottom, ex.audio_times, ex.off_audio, AUDIO_COLOUR, "sound"),
    ):
        ax.bar(times, att.reshape(-1), width=0.07, color=colour, alpha=0.8)
        ax.set_ylabel(f"{what}\n({att.sum() / total:.0%} of all)" if total > 0 else what)
    lo = float(min(ex.visual_times.min(), ex.audio_times.min())) - 0.1
    hi = float(max(ex.visual_times.max(), ex.audio_times.max())) + 0.1
    top.set_xlim(lo, hi)
    _mark_events(top, events)
    _mark_events(bottom, events)
    bottom.set_xlabel("time in the source video (s); sound at the time it was taken from")
    top.set_title("where the offset token looks: attention on the picture and on the sound")
    handles, labels = bottom.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def segment_importance(ex: Explanation, ax=None):
    """Share of the OFF token's attention per segment (picture and sound together), by the segment's start in
    the window."""
    fig, ax = _fig_ax(ax, (7, 2.4))
    sr = ex.clip.decoded.sample_rate if ex.clip.decoded else DEFAULT_SAMPLE_RATE
    starts = ex.clip.audio_seg_starts / sr
    ax.bar(np.arange(len(ex.segment_importance)), ex.segment_importance, color=VISUAL_COLOUR)
    ax.set_xticks(np.arange(len(starts)), [f"{t:.2f}" for t in starts], rotation=90, fontsize=8)
    ax.set_xlabel("segment (its start in the window, s)")
    ax.set_ylabel("share of attention")
    fig.tight_layout()
    return fig


def spatial_overlay(ex: Explanation, n: int = 8):
    """Spatial attention of the visual aggregation over ``n`` frames (one per visual token, spread out), each
    titled with its time in the source."""
    clip = ex.clip
    S, tv = ex.spatial.shape[:2]
    tokens = np.linspace(0, S * tv - 1, n).round().astype(int)
    fps = clip.decoded.fps if clip.decoded else DEFAULT_FPS
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9))
    for a, k in zip(np.atleast_1d(axes), tokens):
        s, t = divmod(int(k), tv)
        frame = ex.token_frames[s, t]
        img = clip.frames[frame]
        att = ex.spatial[s, t]
        a.imshow(img)
        a.imshow(att / att.max(), cmap="jet", alpha=0.45, extent=(0, img.shape[1], img.shape[0], 0),
                 interpolation="nearest")
        a.set_title(f"{clip.frame_indices[frame] / fps:.2f} s", fontsize=8)
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle("where in the picture the model looks (red: most)", fontsize=9)
    fig.tight_layout()
    return fig


def frequency_attention(ex: Explanation, ax=None):
    """Frequency attention of the audio aggregation: (frequency band x audio token) heat map."""
    fig, ax = _fig_ax(ax, (10, 2.4))
    S, ta, f = ex.freq.shape
    ax.imshow(ex.freq.reshape(S * ta, f).T, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xlabel("audio token (segment by segment, in time order)")
    ax.set_ylabel("pitch band\n(low to high)")
    ax.set_title("which pitch bands feed each audio token (bright: most)")
    fig.tight_layout()
    return fig


def per_offset_accuracy(table: pd.DataFrame, ax=None):
    """acc@1 and acc@1 within one class per injected offset; legend below the axes."""
    fig, ax = _fig_ax(ax, (8, 3.2))
    a = accuracy_by_offset(table)
    ax.plot(a.index, a["acc1"], "o-", label="acc@1 (the right offset class)")
    ax.plot(a.index, a["acc1_within_one"], "s--", label="acc@1 ±1 class (right or a neighbour)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("injected offset (s; + = audio early, - = audio late)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, grid: np.ndarray, ax=None):
    """Confusion matrix (rows: injected offset, columns: predicted offset; + = audio early)."""
    fig, ax = _fig_ax(ax, (5.5, 5))
    ax.imshow(matrix, cmap="Blues")
    labels = [f"{g:+.{grid_decimals(grid)}f}" for g in grid]
    ax.set_xticks(range(len(grid)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(grid)), labels, fontsize=7)
    ax.set_xlabel("predicted offset (s; + = audio early)")
    ax.set_ylabel("injected offset (s; + = audio early)")
    fig.tight_layout()
    return fig


def learning_curve(curve: Sequence[dict], ax=None):
    """Training losses and held-out accuracy against step (``curve``: dicts with step and any of loss (offset
    cross-entropy), event_loss (event detection) and acc1)."""
    fig, ax = _fig_ax(ax, (7, 3))
    for key, style, label in (("loss", "-", "offset loss (train)"), ("event_loss", "--", "event loss (train)")):
        points = [(c["step"], c[key]) for c in curve if c.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, color="tab:blue", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    acc = [(c["step"], c["acc1"]) for c in curve if c.get("acc1") is not None]
    if acc:
        ax2 = ax.twinx()
        ax2.plot(*zip(*acc), "o-", color="tab:green", label="held-out acc@1")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("acc@1")
        more_handles, more_labels = ax2.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        ax.legend(handles, labels, loc="center right", fontsize="small")
    fig.tight_layout()
    return fig


def offset_timeline(df: pd.DataFrame, confident_p: float = 0.5, grid: np.ndarray | None = None):
    """Offset and confidence over time for a :func:`synchlib.timeline.offset_over_time` table.

    Top: the predicted offset of each window at its centre time, confident windows (``p >= confident_p``) filled,
    the others hollow, with the median of the confident ones dashed. Bottom: ``p`` of each window and the
    ``confident_p`` line. ``grid`` (the offset classes) sets the y-limits (default: +-2 s).
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    t, off, p = df["center_sec"].to_numpy(float), df["predicted_offset_sec"].to_numpy(float), df["p"].to_numpy(float)
    sure = p >= confident_p
    top.plot(t, off, color="0.75", lw=0.8, zorder=1)
    top.scatter(t[sure], off[sure], color=PRED_COLOUR, s=16, zorder=2, label=f"p >= {confident_p:g}")
    top.scatter(t[~sure], off[~sure], facecolors="none", edgecolors=PRED_COLOUR, s=16, zorder=2, label=f"p < {confident_p:g}")
    summary = summarize_timeline(df, confident_p)
    if summary["n_confident"]:
        top.axhline(summary["median_offset_sec"], color=TARGET_COLOUR, ls="--", lw=1,
                    label=f"median {summary['median_offset_sec']:+.2f} s")
    lim = float(np.max(np.abs(grid))) if grid is not None and len(grid) else 2.0
    top.axhline(0.0, color="0.3", lw=0.6)
    top.set_ylim(-lim - 0.2, lim + 0.2)
    top.set_ylabel("offset (s, + = audio early)")
    drift = summary["drift_sec_per_min"]
    top.set_title(f"{summary['n_windows']} windows, {summary['confident_share']:.0%} confident"
                  + (f", drift {drift:+.3f} s/min" if np.isfinite(drift) else ""))
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(t, p, "o-", color="tab:blue", ms=3, lw=0.8)
    bottom.axhline(confident_p, color="0.5", ls=":", lw=1)
    bottom.set_ylim(0, 1.02)
    bottom.set_ylabel("p (top-1)")
    bottom.set_xlabel("time (s, window centre)")
    fig.tight_layout()
    return fig


def _fig_ax(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def _mark_events(ax, events: dict[str, Sequence[float]] | None) -> None:
    """Dashed lines at the events of ``events`` (kind -> times) that fall in the axes' x range; each kind that
    does is labelled once, in words (:data:`EVENT_LABELS`)."""
    lo, hi = ax.get_xlim()
    for kind, times in (events or {}).items():
        shown = [t for t in times if lo <= t <= hi]
        for i, t in enumerate(shown):
            ax.axvline(t, color=EVENT_COLOURS.get(kind, "0.5"), ls="--", lw=0.8,
                       label=EVENT_LABELS.get(kind, kind.replace("_", " ")) if i == 0 else None)


def lag_bank(looks, head_offset_sec: float = 1.0):
    """Where the heads of a fresh lag bank look (``looks``: :class:`synchlib.lagbank.HeadLooks`). Left: the head
    of offset ``head_offset_sec``, attention of each audio token (row) on the video tokens (columns); the dashed
    line is video time = audio time + that offset. Right: every head's attention by time difference (video time
    minus audio time), one row per head: each looks one grid offset away."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    c = int(np.argmin(np.abs(looks.grid - head_offset_sec)))
    ta, tv = looks.audio_times, looks.video_times
    left.pcolormesh(tv, ta, looks.attention[c], cmap="magma", shading="nearest")
    left.plot(ta + looks.grid[c], ta, "--", color="w", lw=0.8)
    left.set_xlim(tv.min(), tv.max())
    left.set_xlabel("video token time (s)")
    left.set_ylabel("audio token time (s)")
    left.set_title(f"head for offset {looks.grid[c]:+.1f} s")
    centres, profile = looks.lag_profile()
    step = centres[1] - centres[0]
    right.imshow(profile, aspect="auto", cmap="magma", origin="lower",
                 extent=(centres[0] - step / 2, centres[-1] + step / 2, -0.5, len(looks.grid) - 0.5))
    right.set_yticks(range(len(looks.grid))[::4], [f"{g:+.1f}" for g in looks.grid[::4]])
    right.set_xlabel("video time - audio time (s)")
    right.set_ylabel("head (its offset, s)")
    right.set_title("all 21 heads")
    fig.tight_layout()
    return fig


def learning_curves(runs: dict[str, Sequence[dict]], n_classes: int):
    """Held-out acc@1 (left) and offset loss on the training batches (right) against step, one line per run
    (``runs``: label -> learning curve as :func:`synchlib.train.train_tiny` records it), with chance marked
    (acc@1 1 / ``n_classes``, loss ln ``n_classes``)."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3))
    for label, curve in runs.items():
        points = [(p["step"], p["acc1"]) for p in curve if p.get("acc1") is not None]
        line, = acc.plot(*zip(*points), "o-", ms=3, label=label)
        losses = [(p["step"], p["loss"]) for p in curve if p.get("loss") is not None]
        if losses:
            loss.plot(*zip(*losses), color=line.get_color(), lw=0.8, label=label)
    acc.axhline(1 / n_classes, color="0.5", ls=":", label="chance")
    acc.set_ylim(0, 1)
    acc.set_xlabel("step")
    acc.set_ylabel("held-out acc@1")
    acc.legend(fontsize="small")
    loss.axhline(np.log(n_classes), color="0.5", ls=":", label=f"chance (ln {n_classes})")
    loss.set_xlabel("step")
    loss.set_ylabel("offset loss (train)")
    loss.legend(fontsize="small")
    fig.tight_layout()
    return fig
