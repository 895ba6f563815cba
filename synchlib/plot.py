"""Figures for notebooks and reports (matplotlib). Every function returns the Figure and draws nothing else."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .attention import Explanation
from .predict import Prediction
from .preprocess import Clip

TARGET_COLOUR = "tab:green"
PRED_COLOUR = "tab:red"
AV_EVENT_COLOUR = "tab:green"
VISUAL_ONLY_COLOUR = "tab:blue"
AUDIO_ONLY_COLOUR = "tab:orange"


def probabilities(pred: Prediction, ax=None):
    """Bar plot of the class probabilities over the offset grid; target and prediction highlighted."""
    fig, ax = _fig_ax(ax, (8, 2.8))
    x = np.arange(len(pred.probs))
    colours = ["0.6"] * len(x)
    colours[pred.class_index] = PRED_COLOUR
    if pred.target_class is not None:
        colours[pred.target_class] = TARGET_COLOUR if pred.target_class != pred.class_index else PRED_COLOUR
    ax.bar(x, pred.probs, color=colours)
    labels = [f"{g:+.1f}" for g in pred.grid] if pred.kind == "offset" else ["not sync.", "synchronisable"]
    ax.set_xticks(x, labels, rotation=90 if len(x) > 4 else 0)
    ax.set_ylim(0, 1)
    ax.set_xlabel("audio offset (s, + = audio early)" if pred.kind == "offset" else "class")
    ax.set_ylabel("probability")
    title = f"predicted {pred.offset_sec:+.2f} s (p={pred.p:.2f})" if pred.kind == "offset" else f"p={pred.p:.2f}"
    if pred.target_class is not None:
        title += f"; injected {pred.injected_offset_sec:+.2f} s"
    ax.set_title(title)
    fig.tight_layout()
    return fig


def frames_strip(clip: Clip, n: int = 12, events: Sequence[float] = (), ax=None):
    """``n`` evenly spaced frames of the window the model saw, with their times; event frames outlined."""
    idx = np.linspace(0, len(clip.frames) - 1, n).round().astype(int)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.7))
    fps = clip.decoded.fps if clip.decoded else 25.0
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
    """The log-mel input of all segments side by side (segments overlap by half; every other one shown)."""
    fig, ax = _fig_ax(ax, (10, 2.6))
    segs = clip.aud[::2, 0].numpy()  # (S/2, F, T) non-overlapping
    img = np.concatenate([s[:, :-1] for s in segs], axis=1)
    ax.imshow(img, origin="lower", aspect="auto", cmap="magma")
    ax.set_xlabel("spectrogram frame (10 ms), every other segment")
    ax.set_ylabel("mel bin")
    ax.set_title(f"audio the model heard (shifted by {clip.offset_sec:+.2f} s)")
    fig.tight_layout()
    return fig


def waveform(clip: Clip, events: dict[str, Sequence[float]] | None = None, ax=None):
    """The shifted audio crop against source time, with event markers if given."""
    fig, ax = _fig_ax(ax, (10, 2.2))
    sr = clip.decoded.sample_rate if clip.decoded else 16000
    t = (clip.audio_start_sample + np.arange(len(clip.wave))) / sr
    ax.plot(t, clip.wave, lw=0.5, color="k")
    _mark_events(ax, events)
    ax.set_xlabel("time in the source audio (s)")
    ax.set_title("audio crop (source time)")
    fig.tight_layout()
    return fig


def attention_timeline(ex: Explanation, events: dict[str, Sequence[float]] | None = None, ax=None):
    """OFF-token attention on each visual and audio token against source time; events marked."""
    fig, ax = _fig_ax(ax, (10, 3))
    vt, at = ex.visual_times, ex.audio_times
    ax.bar(vt, ex.off_visual.reshape(-1), width=0.07, color="tab:purple", alpha=0.7, label="visual tokens")
    ax.bar(at, ex.off_audio.reshape(-1), width=0.09, color="tab:orange", alpha=0.6, label="audio tokens (source time)")
    _mark_events(ax, events)
    ax.set_xlabel("time in the source (s)")
    ax.set_ylabel("OFF-token attention")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("where the offset token looks (mean over heads and blocks)")
    fig.tight_layout()
    return fig


def segment_importance(ex: Explanation, ax=None):
    """Share of the OFF token's attention per segment."""
    fig, ax = _fig_ax(ax, (7, 2.4))
    ax.bar(np.arange(len(ex.segment_importance)), ex.segment_importance, color="tab:purple")
    ax.set_xlabel("segment")
    ax.set_ylabel("attention share")
    fig.tight_layout()
    return fig


def spatial_overlay(ex: Explanation, n: int = 8):
    """Spatial attention of the visual aggregation over ``n`` frames (one per visual token, spread out)."""
    clip = ex.clip
    S, tv = ex.spatial.shape[:2]
    tokens = np.linspace(0, S * tv - 1, n).round().astype(int)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9))
    for a, k in zip(np.atleast_1d(axes), tokens):
        s, t = divmod(int(k), tv)
        img = clip.frames[ex.token_frames[s, t]]
        att = ex.spatial[s, t]
        a.imshow(img)
        a.imshow(att / att.max(), cmap="jet", alpha=0.45, extent=(0, img.shape[1], img.shape[0], 0),
                 interpolation="nearest")
        a.set_title(f"seg {s} t{t}", fontsize=8)
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle("spatial attention of the visual aggregation", fontsize=9)
    fig.tight_layout()
    return fig


def frequency_attention(ex: Explanation, ax=None):
    """Frequency attention of the audio aggregation: (frequency patch x audio token) heat map."""
    fig, ax = _fig_ax(ax, (10, 2.4))
    S, ta, f = ex.freq.shape
    ax.imshow(ex.freq.reshape(S * ta, f).T, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xlabel("audio token (segment-major)")
    ax.set_ylabel("frequency patch (low -> high)")
    ax.set_title("which mel bands feed each audio token")
    fig.tight_layout()
    return fig


def per_offset_accuracy(table: pd.DataFrame, ax=None):
    """acc@1 and acc@1 within one class per injected offset."""
    from .sweep import per_offset_accuracy as acc

    fig, ax = _fig_ax(ax, (8, 2.8))
    a = acc(table)
    ax.plot(a.index, a["acc1"], "o-", label="acc@1")
    ax.plot(a.index, a["acc1_within_one"], "s--", label="acc@1 ±1 class")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("injected offset (s)")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, grid: np.ndarray, ax=None):
    """Confusion matrix (rows: target offset, columns: predicted offset)."""
    fig, ax = _fig_ax(ax, (5.5, 5))
    ax.imshow(matrix, cmap="Blues")
    labels = [f"{g:+.1f}" for g in grid]
    ax.set_xticks(range(len(grid)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(grid)), labels, fontsize=7)
    ax.set_xlabel("predicted offset (s)")
    ax.set_ylabel("injected offset (s)")
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
    from .timeline import summarize_timeline

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
    if not events:
        return
    colours = {"av_events": AV_EVENT_COLOUR, "visual_only": VISUAL_ONLY_COLOUR, "audio_only": AUDIO_ONLY_COLOUR}
    for name, times in events.items():
        lo, hi = ax.get_xlim()
        for i, t in enumerate(times):
            if lo <= t <= hi:
                ax.axvline(t, color=colours.get(name, "0.5"), ls="--", lw=0.8, label=name if i == 0 else None)


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
