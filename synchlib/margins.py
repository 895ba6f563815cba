"""Per-window results of an evaluation, and how far they may move on another machine.

The same model and input give slightly different logits on another kind of CPU (other BLAS kernels) or on CUDA. A
stored evaluation (the tiny model's training record, the notebook goldens) therefore keeps, per window, the target,
the top-1 class and the top-1 minus top-2 logit margin; a fresh evaluation agrees with it when every window whose
margin is clear of the possible drift keeps its class and every margin stays within that drift
(:func:`compare_windows`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import SynchlibError

LOGIT_DRIFT_REL = 1e-5
"""How far the logits of one window move, relative to its largest |logit|, when the same model and input run on
another kind of CPU (other BLAS kernels) or on CUDA: about this much, as observed between AMD (AVX2) and Intel
(AVX-512) machines and on CUDA for these models."""
MARGIN_SAFETY = 100  # a window's top-1 is trusted when its margin exceeds this many times the possible drift
MARGIN_DECIMALS = 4  # margins and the logit scale in the record (far below any tolerance)


class MarginsError(SynchlibError, ValueError):
    """A stored per-window record that cannot be read."""


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
        raise MarginsError(f"the per-window evaluation record is missing or malformed ({e!r}); re-measure it with "
                         "scripts/eval_tiny.py --write-record") from None
    if not len(out["target"]) == len(out["pred"]) == len(out["margin"]):
        raise MarginsError("the per-window evaluation record has fields of different lengths; re-measure it")
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
    problems = [f"window {i}: class {new['pred'][i]} instead of {rec['pred'][i]} (recorded margin "
                f"{rec['margin'][i]:.4f} > tolerance {tol:.4f})"
                for i in np.flatnonzero((rec["margin"] > tol) & (rec["pred"] != new["pred"]))]
    return problems + [f"window {i}: margin {new['margin'][i]:.4f} instead of {rec['margin'][i]:.4f} (tolerance "
                       f"{tol:.4f})" for i in np.flatnonzero(np.abs(new["margin"] - rec["margin"]) > tol)]
