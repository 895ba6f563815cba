"""How well does an untrained lag bank find the offset when its event scores are imperfect?

    python scripts/lag_bank_noise.py                 # perfect scores, then the trained models' error rates
    python scripts/lag_bank_noise.py --windows 630 --miss-video 0.035

Feeds the freshly initialised synchronisation module of the tiny config (``synchlib.train.init_lag_bank``) ideal
projected tokens: event score +SCORE on the tokens that hold a paired event (generator-like random event timings,
every grid offset in turn, random start), -SCORE elsewhere; then flips a share of them (missed events, false
events) and prints acc@1 overall and per grid offset. This separates what the lag bank can do from what the
learned event detectors deliver.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from synchlib import train as T
from synchlib.config import load_config
from synchlib.model import build_model

SCORE = 4.0  # a confident event logit
FRAME_TOL_SEC, AUDIO_TOL_SEC = 0.04, 0.05  # a token holds an event this close to its centre


def lag_bank_accuracy(n_windows: int, seed: int, miss_v: float, fp_v: float, miss_a: float, fp_a: float) -> np.ndarray:
    """(C,) acc@1 per grid offset over ``n_windows`` windows (offsets in turn)."""
    cfg = load_config(T.CONFIG_NAME)
    model = build_model(cfg).eval()
    T.init_lag_bank(model, cfg)
    lay = T.lag_bank_layout(cfg)
    tv, ta = (t.reshape(-1) for t in T.window_token_times(cfg))
    grid, D = cfg.data.grid, cfg.sync.dim
    rng = np.random.default_rng(seed)
    right, count = np.zeros(len(grid)), np.zeros(len(grid))
    for i in range(n_windows):
        gaps = 0.32 + rng.gamma(2.0, 0.25, 40)  # like synthetic.MIN_GAP_SEC + Gamma(2) extra gaps
        events = np.round(np.cumsum(gaps) * cfg.data.vfps) / cfg.data.vfps  # on frames
        c = i % len(grid)
        rel = events - round(float(rng.uniform(2.2, 4.0)), 2)
        hit_v = (np.abs(tv[:, None] - rel[None]) <= FRAME_TOL_SEC).any(1)
        hit_a = (np.abs(ta[:, None] - (rel[None] - grid[c])) <= AUDIO_TOL_SEC).any(1)
        hit_v = np.where(hit_v, rng.random(hit_v.size) >= miss_v, rng.random(hit_v.size) < fp_v)
        hit_a = np.where(hit_a, rng.random(hit_a.size) >= miss_a, rng.random(hit_a.size) < fp_a)
        v, a = torch.zeros(1, tv.size, D), torch.zeros(1, ta.size, D)
        for x, hit, dim in ((v, hit_v, lay.event_v), (a, hit_a, lay.event_a)):
            x[0, :, D - 1] = 1.0  # the projections' constant dim
            x[0, :, dim] = torch.from_numpy(np.where(hit, SCORE, -SCORE)).float()
        with torch.no_grad():
            right[c] += int(model.transformer(v, a).argmax()) == c
        count[c] += 1
    return right / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=630)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--miss-video", type=float, default=None, help="share of flashes missed (default: both runs)")
    p.add_argument("--false-video", type=float, default=0.01)
    p.add_argument("--miss-audio", type=float, default=0.02)
    p.add_argument("--false-audio", type=float, default=0.015)
    args = p.parse_args()
    torch.set_num_threads(2)
    runs = [("perfect event scores", (0.0, 0.0, 0.0, 0.0))]
    miss_v = 0.07 if args.miss_video is None else args.miss_video
    runs.append((f"missed/false: video {miss_v:g}/{args.false_video:g}, audio {args.miss_audio:g}/{args.false_audio:g}",
                 (miss_v, args.false_video, args.miss_audio, args.false_audio)))
    for name, rates in runs:
        per = lag_bank_accuracy(args.windows, args.seed, *rates)
        print(f"{name}: acc@1 {per.mean():.3f}; per offset {np.round(per, 2).tolist()}", flush=True)


if __name__ == "__main__":
    main()
