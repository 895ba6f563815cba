"""Accuracy of a tiny checkpoint on the held-out sets quoted in the README (synthetic clips never used in training).

    python scripts/eval_tiny.py                              # the shipped tiny-synthetic
    python scripts/eval_tiny.py /tmp/run/tiny.pt --sets record600 other400
    python scripts/eval_tiny.py --write-record synchlib/assets/tiny-synthetic.json   # re-measure its record

Sets (clip seeds from synchlib.train; windows at random grid offsets and start times, fixed evaluation seed):
  record300  the training record's set: held-out clips 0-29, 300 windows (the record's evaluation seed)
  record600  held-out clips 0-59, 600 windows (same seed)
  other400   held-out clips 100-139, 400 windows (seed 99)
  test200    test clips 0-19 (as the CI test draws them), 200 windows (seed 12345)

``--write-record RECORD.json`` evaluates the one checkpoint on the record's own held-out set and stores the result,
window by window, as the record's ``heldout_eval`` (what tests/test_train.py re-checks), marked as re-measured with
the current clip encoder; the training-time fields (``metrics``, ``curve``, ...) stay as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import synchlib
from synchlib import train as T
from synchlib.config import load_config

RECORD = T.TrainSettings()  # the record's held-out set follows the training defaults
REMEASURED = ("re-measured with the deterministic clip encoder (synchlib.synthetic.write_mp4: integer yuv420p, "
              "x264 asm=0) on the record's held-out clips and windows; the model and the training-time fields "
              "(metrics, curve) are those of the training run")

# name -> (first clip index, number of clips, windows, evaluation seed or None for the record's)
SETS = {
    f"record{RECORD.n_eval_windows}": (T.EVAL_INDEX0, RECORD.n_eval_clips, RECORD.n_eval_windows, None),
    f"record{2 * RECORD.n_eval_windows}": (T.EVAL_INDEX0, 2 * RECORD.n_eval_clips, 2 * RECORD.n_eval_windows, None),
    "other400": (T.EVAL_INDEX0 + 100, 40, 400, 99),
    "test200": (T.TEST_INDEX0, 20, 200, 12345),
}


def write_record(checkpoint: str, record_path: Path) -> None:
    """Re-measure ``checkpoint`` on the held-out set of its record at ``record_path`` and store ``heldout_eval``."""
    record = json.loads(record_path.read_text(encoding="utf-8"))
    m = record["metrics"]
    cfg = load_config(record["config"])
    model = synchlib.load_model(checkpoint, device="cpu").eval()
    seeds = T.clip_seeds(record["seed"], m["heldout_clips"], T.EVAL_INDEX0)
    clips = T.synth_clips(seeds, cfg, workers=2, progress=False)
    res = T.evaluate(model, clips, cfg, m["heldout_windows"], m["heldout_eval_seed"])
    record["heldout_eval"] = {"remeasured": REMEASURED, **res}
    record_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"{record_path}: acc@1 {res['acc1']:.4f} (training time {m['heldout_acc1']:.4f}), acc@1 +-1 "
          f"{res['acc1_pm1']:.4f} on {res['n_windows']} windows; margin tolerance {res['margin_tol']:.4f}, "
          f"{sum(float(x) <= res['margin_tol'] for x in res['margin'].split())} windows below it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", default=["tiny-synthetic"])
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--seed", type=int, default=0, help="the training seed the clip seeds derive from (default 0)")
    ap.add_argument("--write-record", type=Path, metavar="RECORD.json",
                    help="re-measure the (one) checkpoint on this record's held-out set and store it there")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.write_record is not None:
        if len(args.checkpoints) != 1:
            ap.error("--write-record takes exactly one checkpoint")
        write_record(args.checkpoints[0], args.write_record)
        return
    cfg = load_config("tiny-synthetic")
    models = {c: synchlib.load_model(c, device="cpu").eval() for c in args.checkpoints}
    for name in args.sets:
        first, n_clips, n_windows, eval_seed = SETS[name]
        clips = T.synth_clips(T.clip_seeds(args.seed, n_clips, first), cfg, workers=2, progress=False)
        for ckpt, model in models.items():
            res = T.evaluate(model, clips, cfg, n_windows, T.eval_seed(args.seed) if eval_seed is None else eval_seed)
            print(f"{name:10s} {ckpt}: acc@1 {res['acc1']:.4f}  acc@1 +-1 {res['acc1_pm1']:.4f}  ({n_windows} windows)",
                  flush=True)


if __name__ == "__main__":
    main()
