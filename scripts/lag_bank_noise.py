"""How well does an untrained lag bank find the offset when its event scores are imperfect?

    python scripts/lag_bank_noise.py                 # perfect scores, then the trained models' error rates
    python scripts/lag_bank_noise.py --windows 630 --miss-video 0.035

Feeds the freshly initialised synchronisation module of the tiny config (:mod:`synchlib.lagbank`) the tokens of
perfect event detectors (generator-like random event timings, every grid offset in turn, random start;
``lagbank.ideal_accuracy``), then spoils a share of them (missed events, false events) and prints acc@1 overall
and per grid offset. This separates what the lag bank can do from what the learned event detectors deliver.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from synchlib import lagbank


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=630)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--miss-video", type=float, default=0.07, help="share of flashes missed")
    p.add_argument("--false-video", type=float, default=0.01, help="share of empty video tokens scored as a flash")
    p.add_argument("--miss-audio", type=float, default=0.02, help="share of sounds missed")
    p.add_argument("--false-audio", type=float, default=0.015, help="share of empty audio tokens scored as a sound")
    args = p.parse_args()
    torch.set_num_threads(2)
    runs = [("perfect event scores", (0.0, 0.0), (0.0, 0.0)),
            (f"missed/false: video {args.miss_video:g}/{args.false_video:g}, audio {args.miss_audio:g}/"
             f"{args.false_audio:g}", (args.miss_video, args.miss_audio), (args.false_video, args.false_audio))]
    for name, miss, false in runs:
        per = lagbank.ideal_accuracy(n_windows=args.windows, seed=args.seed, miss=miss, false=false)
        print(f"{name}: acc@1 {per.mean():.3f}; per offset {np.round(per, 2).tolist()}", flush=True)


if __name__ == "__main__":
    main()
