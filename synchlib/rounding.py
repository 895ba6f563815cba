"""Numbers as printed and written (JSON, CSV, tables): rounded to what they mean, without float32 noise.

The model works in float32, so a grid value of 0.2 s is 0.20000000298023224 once widened to a Python float.
Offsets are rounded to the decimals of the offset grid (derived from the grid, not assumed), probabilities and
logits to a fixed number of decimals, times to a microsecond.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PROB_DECIMALS = 6  # probabilities: 1e-6 is below any difference that matters between classes
LOGIT_DECIMALS = 4  # logits and entropies (nats): float32 computations differ across CPUs in the 6th-7th digit
SUMMARY_DECIMALS = 6  # shares, accuracies, medians and slopes of a summary: float32 noise is in the 7th digit
TIME_DECIMALS = 6  # seconds: a microsecond is far below an audio sample (62.5 us at 16 kHz) or a video frame
MAX_GRID_DECIMALS = 6  # a grid finer than a microsecond is not an offset grid
GRID_TOLERANCE = 1e-4  # in units of the last decimal: float32 noise of a grid value (~6e-8 relative) is far below

TIME_COLUMNS = ("start_sec", "end_sec", "center_sec")
OFFSET_COLUMNS = ("predicted_offset_sec", "offset_2_sec", "offset_3_sec")
PROB_COLUMNS = ("p", "p_2", "p_3")
LOGIT_COLUMNS = ("entropy",)
DESYNC_OFFSET_COLUMNS = ("first_offset_sec", "last_offset_sec")  # grid values
DESYNC_MEAN_COLUMNS = ("desync_sec",)  # the mean of two |grid values|: one decimal more than the grid
DESYNC_PROB_COLUMNS = ("first_p", "last_p")
DESYNC_TIME_COLUMNS = ("duration_sec",)


def grid_decimals(grid: Iterable[float]) -> int:
    """The fewest decimals that write every value of ``grid`` (classes,) exactly, up to float32 noise:
    1 for a 0.2 s grid, 2 for a 0.05 s one, 0 for class indices."""
    values = np.asarray(list(grid), dtype=np.float64)
    for decimals in range(MAX_GRID_DECIMALS + 1):
        scaled = values * 10.0**decimals
        if np.all(np.abs(scaled - np.round(scaled)) <= GRID_TOLERANCE):
            return decimals
    return MAX_GRID_DECIMALS


def round_or_none(value: float | None, decimals: int) -> float | None:
    """``value`` rounded to ``decimals`` as a Python float; None stays None."""
    return None if value is None else round(float(value), decimals)


def round_table(table: "pd.DataFrame", grid: Iterable[float]) -> "pd.DataFrame":
    """A copy of a sweep or timeline table with its known columns rounded: offsets predicted on ``grid`` to the
    grid's decimals, probabilities, entropies and times as the constants above say; other columns as they are."""
    decimals = {c: grid_decimals(grid) for c in OFFSET_COLUMNS}
    decimals |= {c: PROB_DECIMALS for c in PROB_COLUMNS}
    decimals |= {c: LOGIT_DECIMALS for c in LOGIT_COLUMNS}
    decimals |= {c: TIME_DECIMALS for c in TIME_COLUMNS}
    return table.round({c: d for c, d in decimals.items() if c in table.columns})


def round_desync(table: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of a DeSync table (:data:`synchlib.desync.DESYNC_COLUMNS`) with its numbers rounded: the two
    offsets to the decimals of the grid they come from (:func:`grid_decimals` of the offsets themselves: they are
    grid values, so this writes each exactly), ``desync_sec`` to one decimal more (a mean of two of them),
    probabilities and durations as the constants above say; NaN (failed pairs) stays NaN."""
    offsets = table[list(DESYNC_OFFSET_COLUMNS)].to_numpy(dtype=np.float64).ravel()
    off = grid_decimals(offsets[np.isfinite(offsets)])
    decimals = {c: off for c in DESYNC_OFFSET_COLUMNS} | {c: off + 1 for c in DESYNC_MEAN_COLUMNS}
    decimals |= {c: PROB_DECIMALS for c in DESYNC_PROB_COLUMNS} | {c: TIME_DECIMALS for c in DESYNC_TIME_COLUMNS}
    return table.round(decimals)


def round_summary(summary: dict) -> dict:
    """A summary (:func:`synchlib.sweep.summarize`, :func:`synchlib.timeline.summarize_timeline`,
    :func:`synchlib.desync.summarize_desync`) with its numbers as plain Python numbers, floats rounded to
    :data:`SUMMARY_DECIMALS` (NaN stays NaN); other values (lists, text) as they are."""
    return {k: int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            else round(float(v), SUMMARY_DECIMALS) if isinstance(v, (float, np.floating)) else v
            for k, v in summary.items()}  # fmt: skip
