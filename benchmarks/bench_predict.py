"""Side-by-side speed and memory of synchlib's two-phase predictor vs the plain one-window path.

Everything is measured in this one run, on this machine, with the same full-size weights (random, seeded: speed
does not depend on the values):

  (a) one window: ``Predictor.set_video`` + one offset  vs  ``predict`` (decode + preprocess + full forward)
  (b) a sweep of N offsets at one start: ``Predictor.sweep``  vs  N ``predict`` calls (predictions compared)
  (c) peak RSS of a fresh process that loads a released-format checkpoint and predicts one window:
      ``load_model`` (meta-device build + memory-mapped weights)  vs  a naive load (build, torch.load, copy)

    python benchmarks/bench_predict.py                # all, N = 21 (about 20 min on 2 CPU cores)
    python benchmarks/bench_predict.py --offsets 5    # quicker
    python benchmarks/bench_predict.py --only memory

Prints a table with ratios and writes benchmarks/results/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import synchlib
from synchlib.checkpoints import save_checkpoint
from synchlib.model import build_model
from synchlib.sweep import Predictor

RELEASED_ID = "24-01-04T16-39-21"
HERE = Path(__file__).resolve().parent

CHILD = r"""
import resource, sys, time, torch
import synchlib
mode, ckpt, video = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
t = time.perf_counter()
if mode == "synchlib":
    model = synchlib.load_model(ckpt, device="cpu", config="24-01-04T16-39-21")
else:  # naive: random init, full torch.load, copy into the parameters
    model = synchlib.build_model("24-01-04T16-39-21")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])
pred = synchlib.predict(model, video, offset_sec=0.0, start_sec=2.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - t, pred.class_index)
"""


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node()}  # fmt: skip


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_speed(model, video: str, start: float, n_offsets: int) -> dict:
    grid = model.cfg.grid
    offsets = [float(o) for o in (grid if n_offsets >= len(grid) else grid[np.linspace(0, len(grid) - 1, n_offsets).round().astype(int)])]
    res = {}
    # (a) one window
    plain, t_plain = timed(lambda: synchlib.predict(model, video, 0.0, start))
    two, t_two = timed(lambda: Predictor(model).set_video(video).logits([0.0], start))
    res["one_window"] = {"plain_s": t_plain, "two_phase_s": t_two, "speedup": t_plain / t_two,
                         "max_abs_logit_diff": float((two[0] - torch.from_numpy(plain.logits)).abs().max())}  # fmt: skip
    print(f"(a) one window: plain {t_plain:.1f} s, two-phase {t_two:.1f} s -> x{t_plain / t_two:.2f}", flush=True)
    # (b) sweep
    table, t_sweep = timed(lambda: Predictor(model).set_video(video).sweep(offsets, [start], progress=False))
    print(f"(b) sweep of {len(offsets)} offsets: {t_sweep:.1f} s; now {len(offsets)} plain predictions ...", flush=True)
    plain_classes, plain_p, t_each = [], [], []
    for off in offsets:
        p, t = timed(lambda: synchlib.predict(model, video, off, start))
        plain_classes.append(p.class_index)
        plain_p.append(p.p)
        t_each.append(t)
        print(f"    plain offset {off:+.1f}: {t:.1f} s", flush=True)
    t_plain_sweep = float(sum(t_each))
    same = plain_classes == table["predicted_class"].astype(int).tolist()
    p_diff = float(np.abs(np.asarray(plain_p) - table["p"].to_numpy(dtype=float)).max())
    res["sweep"] = {"n_offsets": len(offsets), "start_sec": start, "plain_s": t_plain_sweep, "two_phase_s": t_sweep,
                    "speedup": t_plain_sweep / t_sweep, "identical_predictions": same,
                    "max_abs_p_diff": p_diff}  # fmt: skip
    print(f"(b) {len(offsets)} offsets: plain {t_plain_sweep:.1f} s, two-phase {t_sweep:.1f} s -> "
          f"x{t_plain_sweep / t_sweep:.1f}; identical predictions: {same}; max |p diff| {p_diff:.1e}", flush=True)
    return res


def bench_memory(model, video: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / f"{RELEASED_ID}.pt"
        save_checkpoint(ckpt, model.state_dict(), dict(model.cfg.raw))
        out = {}
        for mode in ("synchlib", "naive"):
            r = subprocess.run([sys.executable, "-c", CHILD, mode, str(ckpt), video, str(threads)],
                               capture_output=True, text=True, check=True)  # fmt: skip
            rss, secs, cls = r.stdout.split()
            out[mode] = {"peak_rss_gib": int(rss) / 2**30, "seconds": float(secs), "class": int(cls)}
            print(f"(c) {mode}: peak RSS {int(rss) / 2**30:.2f} GiB, {float(secs):.1f} s", flush=True)
        out["rss_ratio_naive_over_synchlib"] = out["naive"]["peak_rss_gib"] / out["synchlib"]["peak_rss_gib"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default=str(synchlib.sample_path("vggsound-3qesirWAGt4")))
    ap.add_argument("--start", type=float, default=2.0)
    ap.add_argument("--offsets", type=int, default=21)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", choices=("speed", "memory"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(RELEASED_ID)
    results = {"machine": machine(), "video": Path(args.video).name}
    if args.only != "memory":
        results.update(bench_speed(model, args.video, args.start, args.offsets))
    if args.only != "speed":
        results["memory"] = bench_memory(model, args.video, args.threads)
    print(json.dumps(results, indent=1))
    out = HERE / "results" / "predict.json"
    out.parent.mkdir(exist_ok=True)
    if args.only and out.is_file():  # keep the other part's last measurement, with the machine it came from
        previous = json.loads(out.read_text())
        marker = "kept_from_previous_run"
        kept = {k: v for k, v in previous.items() if k not in results and k != marker}
        if kept:
            results = {**results, **kept, marker: {"parts": sorted(kept), "machine": previous["machine"]}}
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
