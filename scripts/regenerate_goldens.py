"""Re-execute the notebooks with the tiny model on shipped inputs and store them as nbval goldens.

    python scripts/regenerate_goldens.py            # all notebooks
    python scripts/regenerate_goldens.py demo       # one

The goldens live in tests/notebooks/ and are checked by `python -m pytest` (nbval, --nbval-lax: only cells
tagged `nbval-check-output` are compared, after tests/notebooks/sanitize.cfg). Run this after a deliberate
change of the tiny model or of what those cells print, and review the diff.

What nbval compares is coarse text that another machine's rounding cannot change: the top-1 offset and class
with a probability to one decimal, and accuracies of whole windows. The finer values behind it (every class
probability, each window's top-1 minus top-2 logit margin) are recomputed here, in this process, for the same
parameters, and stored in the golden's metadata (``synchlib_golden_values``); tests/test_nbval_sensitivity.py
recomputes them and compares them within tolerances derived from how far logits move between machines
(:func:`synchlib.margins.margin_tolerance`). A golden is refused (nothing is written) when its checked text could
flip under that drift: a top-1/top-2 margin below the tolerance, or a printed probability that close to a
rounding boundary.
"""

from __future__ import annotations

import ast
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "notebooks"
COMMON = {"checkpoint": "tiny-synthetic", "device": "auto"}
GOLDEN_PARAMETERS = {
    "demo": {**COMMON, "video": "synthetic-demo", "offset_sec": 1.2, "start_sec": 1.0},
    "offset_sweep": {**COMMON, "video": "synthetic-demo", "starts": [2.0, 3.0]},
    "attention": {**COMMON, "video": "synthetic-demo", "offset_sec": 0.6, "start_sec": 1.0},
    # the training notebook's golden runs a much smaller training than its defaults (CI time); what it checks is the
    # example clip and the shipped model's score on the held-out windows, not the student's run
    "train_tiny": {"device": "auto", "steps": 6, "detect_steps": 4, "n_train_clips": 3, "random_steps": 3},
}
METADATA_KEY = "synchlib_golden_values"
PRINTED_P_DECIMALS = 1  # the checked cells print the top-1 probability with this many decimals
PROB_DECIMALS = 6  # stored probabilities (their rounding is part of the probability tolerance)


class GoldenError(RuntimeError):
    """A golden would not be robust, or its stored values cannot be compared."""


# --------------------------------------------------------------------------------------------------------------
# Parameters and values


def notebook_parameters(name: str) -> dict[str, Any]:
    """The parameters a golden runs with: the notebook's defaults (the literal assignments of its cell tagged
    ``parameters``, read with :func:`ast.literal_eval`, not run) and the overrides of :data:`GOLDEN_PARAMETERS`."""
    import nbformat

    nb = nbformat.read(str(REPO / "notebooks" / f"{name}.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    defaults = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    return {**defaults, **GOLDEN_PARAMETERS[name]}


def prediction_values(pred) -> dict[str, Any]:
    """What a checked one-window prediction rests on: target and top-1 class, every class probability, the
    top-1 minus top-2 logit margin and its tolerance (from the largest |logit|)."""
    from synchlib import margins as M

    logits = np.asarray(pred.logits, dtype=np.float64)
    scale = round(float(np.abs(logits).max()), M.MARGIN_DECIMALS)
    return {"kind": "prediction", "target": pred.target_class, "class": int(pred.class_index),
            "probs": [round(float(p), PROB_DECIMALS) for p in pred.probs], "logit_scale": scale,
            "margin_tol": round(M.margin_tolerance(scale), 2 * M.MARGIN_DECIMALS),
            "margin": round(float(M.top_margins(logits[None])[0]), M.MARGIN_DECIMALS)}


def sweep_values(model, videos: list[Path], starts, offsets=None) -> dict[str, Any]:
    """Per-window results (:func:`synchlib.margins.window_record`) of the windows ``synchlib.sweep`` predicts for
    ``videos``: every offset of the grid (or ``offsets``) that fits, at each start, in the same order."""
    from synchlib import margins as M
    from synchlib.preprocess import offset_class
    from synchlib.sweep import Predictor

    data = model.cfg.data
    all_offsets = [float(o) for o in (data.grid if offsets is None else offsets)]
    logits, target = [], []
    for video in videos:
        pr = Predictor(model).set_video(video)
        for start in starts:
            fitting = [o for o in all_offsets if pr.fits(o, float(start))]
            if fitting:
                logits.append(pr.logits(fitting, float(start)).cpu().numpy())
                target += [offset_class(round(o, 2), data) for o in fitting]
    return {"kind": "windows", **M.window_record(np.concatenate(logits), np.array(target))}


def golden_values(name: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Recompute, in this process, the values behind the checked cells of notebook ``name`` run with ``params``
    (the same calls the notebook makes)."""
    import synchlib

    if name == "train_tiny":  # the shipped model on the held-out windows of the notebook's run
        from synchlib import train as T

        s = T.SHORT.updated(seed=params["seed"])
        cfg = synchlib.load_config(T.CONFIG_NAME)
        heldout = T.synth_clips(T.clip_seeds(s.seed, s.n_eval_clips, T.EVAL_INDEX0), cfg,
                                duration_sec=s.clip_duration_sec, workers=s.workers, progress=False)
        model = synchlib.load_model(params["checkpoint"], device=params["device"])
        res = T.evaluate(model, heldout, cfg, s.n_eval_windows, T.eval_seed(s.seed))
        return {"heldout": {"kind": "windows", **{k: res[k] for k in ("logit_scale", "margin_tol", "target", "pred",
                                                                       "margin")}}}
    model = synchlib.load_model(params["checkpoint"], device=params["device"])
    video = synchlib.resolve_video(params["video"])
    if name == "offset_sweep":
        if params["manifest"]:
            raise GoldenError("the offset_sweep golden runs on one video (manifest = '')")
        return {"sweep": sweep_values(model, [video], params["starts"], params["offsets"])}
    if name == "attention":
        from synchlib.attention import explain

        clip = synchlib.load_clip(video, params["offset_sec"], params["start_sec"], model.cfg)
        return {"explained": prediction_values(explain(model, clip).prediction)}
    if name == "demo":
        clip = synchlib.load_clip(video, params["offset_sec"], params["start_sec"], model.cfg,
                                  audio_priming=params["audio_priming"])
        out = {"shifted": prediction_values(synchlib.predict(model, clip, k=params["top_k"]))}
        if params["predict_as_is"]:
            as_is = synchlib.predict(model, video, offset_sec=0.0, start_sec=params["start_sec"], k=3)
            out["as_is"] = prediction_values(as_is)
        return out
    raise GoldenError(f"no golden values defined for notebook {name!r}")


# --------------------------------------------------------------------------------------------------------------
# Robustness of the checked text and comparison of the stored values


def prob_tolerance(p: float, margin_tol: float) -> float:
    """How far probability ``p`` may move on another machine: with every logit moving by at most
    ``margin_tol / 2``, a softmax output moves by at most ``p * margin_tol`` (first order); plus the rounding
    of the stored values."""
    return p * margin_tol + 10.0**-PROB_DECIMALS


def robustness_problems(values: dict[str, dict[str, Any]]) -> list[str]:
    """Why the checked text of a golden with these values could change on another machine; [] when it cannot."""
    problems = []
    for key, v in values.items():
        tol = v["margin_tol"]
        if v["kind"] == "prediction":
            if v["margin"] <= tol:
                problems.append(f"{key}: top-1 margin {v['margin']:.4f} <= tolerance {tol:.4f}: top-1 may swap")
            p = v["probs"][v["class"]]
            step = 10.0**-PRINTED_P_DECIMALS
            boundary = (np.floor(p / step) + 0.5) * step
            if abs(p - boundary) <= prob_tolerance(p, tol):
                problems.append(f"{key}: top-1 p={p:.6f} is within {prob_tolerance(p, tol):.6f} of the rounding "
                                f"boundary {boundary:.2f} of the printed value")
        else:
            from synchlib import margins as M

            margins = M.parse_window_record(v)["margin"]
            for i in np.flatnonzero(margins <= tol):
                problems.append(f"{key}: window {i} has top-1 margin {margins[i]:.4f} <= tolerance {tol:.4f}")
    return problems


def compare_values(stored: dict[str, dict[str, Any]], fresh: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between a golden's stored values and freshly computed ones beyond another machine's rounding;
    [] when they agree. Predictions: the top-1 class (when its stored margin is above the tolerance), every
    probability (:func:`prob_tolerance`) and the margin (the tolerance). Windows:
    :func:`synchlib.margins.compare_windows`."""
    from synchlib import margins as M

    if set(stored) != set(fresh):
        return [f"values for {sorted(fresh)} instead of {sorted(stored)}"]
    problems = []
    for key, old in stored.items():
        new, tol = fresh[key], old["margin_tol"]
        if old["kind"] == "windows":
            problems += [f"{key}: {p}" for p in M.compare_windows(old, new)]
            continue
        if old["margin"] > tol and new["class"] != old["class"]:
            problems.append(f"{key}: top-1 class {new['class']} instead of {old['class']}")
        if abs(new["margin"] - old["margin"]) > tol:
            problems.append(f"{key}: top-1 margin {new['margin']:.4f} instead of {old['margin']:.4f} (tol {tol:.4f})")
        for c, (p_old, p_new) in enumerate(zip(old["probs"], new["probs"])):
            if abs(p_new - p_old) > prob_tolerance(p_old, tol):
                problems.append(f"{key}: p[{c}] = {p_new:.6f} instead of {p_old:.6f} "
                                f"(tolerance {prob_tolerance(p_old, tol):.6f})")
    return problems


def stored_values(golden: Path) -> dict[str, dict[str, Any]]:
    """The values stored in a golden notebook's metadata."""
    import nbformat

    nb = nbformat.read(str(golden), as_version=4)
    if METADATA_KEY not in nb.metadata:
        raise GoldenError(f"{golden.name} has no stored values ({METADATA_KEY}); run scripts/regenerate_goldens.py")
    return dict(nb.metadata[METADATA_KEY])


# --------------------------------------------------------------------------------------------------------------
# Regeneration


def regenerate(name: str) -> Path:
    """Execute notebook ``name`` into its golden; refuses (raises :class:`GoldenError`, writes nothing) when the
    checked text would not be robust."""
    import nbformat
    import papermill as pm

    src = REPO / "notebooks" / f"{name}.ipynb"
    out = GOLDEN_DIR / f"{name}.ipynb"
    params = notebook_parameters(name)
    values = golden_values(name, params)
    problems = robustness_problems(values)
    if problems:
        raise GoldenError(f"{name}: not storing a golden whose checked text could flip on another machine:\n  "
                          + "\n  ".join(problems) + "\nchoose other golden parameters (GOLDEN_PARAMETERS)")
    with tempfile.TemporaryDirectory(prefix="synchlib-golden-") as tmp:
        executed = Path(tmp) / out.name
        pm.execute_notebook(str(src), str(executed), parameters=GOLDEN_PARAMETERS[name], cwd=str(GOLDEN_DIR),
                            kernel_name="python3")
        nb = nbformat.read(str(executed), as_version=4)
    nb.metadata.pop("papermill", None)  # run times and paths: not part of the golden
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nb.metadata[METADATA_KEY] = values
    nbformat.write(nb, str(out))
    return out


def main(names: list[str]) -> None:
    for name in names or list(GOLDEN_PARAMETERS):
        try:
            print(regenerate(name))
        except GoldenError as e:
            raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main(sys.argv[1:])
