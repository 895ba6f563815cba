"""Pairs per second of DeSync in av-benchmark mode: the dataset pipeline against one pair at a time.

  one at a time: ``clip_desync(model, video, audio, protocol="av-benchmark")`` per pair (decode, then compute)
  pipeline:      ``desync(..., protocol="av-benchmark", workers=W, batch_size=B)``: W processes decode ahead
                 while the model computes the segments of several pairs per call

Same pairs (copies of the two parity pairs: a 25 fps 454x256 clip with 16 kHz audio, a 29.97 fps 640x480 muted
clip with 44.1 kHz stereo audio), same model and device in both; the rows are compared. The weights are random
(seeded): speed does not depend on their values.

    python benchmarks/bench_desync.py                          # tiny model, 16 pairs, CPU
    python benchmarks/bench_desync.py --model full --pairs 4   # the released model's size (minutes per pair on 2 cores)
    python benchmarks/bench_desync.py --model full --device cuda --pairs 64 --batch-size 96 --workers 8

Prints the two rates and writes benchmarks/results/desync_<model>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from synchlib import desync  # noqa: E402
from synchlib.model import build_model  # noqa: E402
from synchlib.model import resolve_device  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "desync_avbench"
SOURCES = [  # (video, audio) of the two parity pairs
    (REPO / "synchlib" / "assets" / "samples" / "3qesirWAGt4_20000_30000.mp4", FIXTURES / "3qes_audio16k.flac"),
    (FIXTURES / "ZYc_2997.mp4", FIXTURES / "ZYc_audio_delay600_44k.flac"),
]
MODELS = {"tiny": "tiny-synthetic", "full": "24-01-04T16-39-21"}


def machine(device: torch.device) -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}  # fmt: skip


def make_pairs(root: Path, n: int) -> tuple[Path, Path]:
    videos, audios = root / "videos", root / "audio"
    videos.mkdir(), audios.mkdir()
    for i in range(n):
        v, a = SOURCES[i % len(SOURCES)]
        shutil.copyfile(v, videos / f"pair{i:03d}{v.suffix}")
        shutil.copyfile(a, audios / f"pair{i:03d}{a.suffix}")
    return videos, audios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=1, help="decoding processes in the pipeline")
    ap.add_argument("--batch-size", type=int, default=48, help="segments per extractor call in the pipeline")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(MODELS[args.model]).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        videos, audios = make_pairs(Path(tmp), args.pairs)
        items = desync.desync_items(videos, audios)
        desync.clip_desync(model, *items[0], protocol="av-benchmark")  # warm-up (kernels, caches)
        t = time.perf_counter()
        one = [desync.clip_desync(model, v, a, protocol="av-benchmark") for v, a in items]
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        table, _ = desync.desync(model, items, protocol="av-benchmark", workers=args.workers,
                                 batch_size=args.batch_size, progress=False)
        t_pipe = time.perf_counter() - t
    same = [r["first_offset_sec"] == a and r["last_offset_sec"] == b
            for r, a, b in zip(one, table["first_offset_sec"], table["last_offset_sec"])]
    p_diff = float(np.max(np.abs(np.array([[r["first_p"], r["last_p"]] for r in one])
                                 - table[["first_p", "last_p"]].to_numpy())))
    result = {
        "machine": machine(device), "model": args.model, "device": str(device), "pairs": args.pairs,
        "one_at_a_time": {"seconds": t_one, "pairs_per_s": args.pairs / t_one},
        "pipeline": {"seconds": t_pipe, "pairs_per_s": args.pairs / t_pipe, "workers": args.workers,
                     "batch_size": args.batch_size},
        "speedup": t_one / t_pipe, "same_offsets": all(same), "max_abs_p_diff": p_diff,
    }  # fmt: skip
    print(f"{args.model} model on {device}, {args.pairs} pairs: one at a time {args.pairs / t_one:.3f} pairs/s, "
          f"pipeline ({args.workers} workers, {args.batch_size} segments per call) {args.pairs / t_pipe:.3f} "
          f"pairs/s -> x{t_one / t_pipe:.2f}; same offsets: {all(same)}, max |p diff| {p_diff:.1e}")
    out = HERE / "results" / f"desync_{args.model}_{device.type}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
