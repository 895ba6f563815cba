"""Offset over time on long videos: synchlib's streaming timeline with per-segment caching vs the naive way.

Both variants predict the same windows (starts 0, hop, 2*hop, ...; offset 0) with the same weights, each in a fresh
process, so that its peak RSS is its own:

  timeline  ``synchlib.timeline.offset_over_time``: frames and samples streamed from the file (cropped at once),
            features computed once per segment and dropped when no later window needs them.
  naive     ``predict``-style: ``read_video`` decodes the whole (normalised) video into memory, then every window
            runs the full model on its 14 segments (``clip_from_decoded`` + ``model(vid, aud)``; the 10 s clip
            limit lifted), nothing shared between windows.

Reported per variant: wall time, throughput (seconds of video covered per second of compute), peak RSS; then the
ratios, and the largest |logit difference| between the two on the same windows (rounding: ~1e-6).

    python benchmarks/bench_long_video.py                           # tiny model, generated 2-min 64x64 video
    python benchmarks/bench_long_video.py --minutes 10 --skip-naive # the timeline alone on 10 minutes
    python benchmarks/bench_long_video.py --model full --make-1080p 1 --max-windows 3   # decode-heavy smoke
    python benchmarks/bench_long_video.py --model full --video talk.mp4 --hop 2.56

``--model full`` is the released architecture (24-01-04T16-39-21) with random weights (speed does not depend on
the values; about 3 s per segment on a 2-core CPU, so limit the windows). ``--make-1080p MINUTES`` writes a
1920x1080 synthetic video once into ``--workdir`` (reused on later runs). The naive variant is skipped when the
decoded video would not fit in ``--naive-max-gib``. Writes benchmarks/results/long_video.json.
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

HERE = Path(__file__).resolve().parent
RELEASED_ID = "24-01-04T16-39-21"
GENERATED_SIZE = 64  # px, the generated small videos
FULL_HD = (1920, 1080)
FULL_HD_X264 = {"crf": "23", "preset": "veryfast"}  # threads: x264's default (all cores), this is written once
LOOP_SEC = 10.0  # the generated videos loop a rendered clip of this length
SEED = 11

CHILD = r"""
import json, math, resource, sys, time, dataclasses, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from synchlib.config import load_config
from synchlib.model import build_model
torch.manual_seed(0)
model = build_model(load_config(args["config"])).eval()
t0 = time.perf_counter()
if args["variant"] == "timeline":
    from synchlib.timeline import iter_window_logits
    extra = {}
    pairs = list(iter_window_logits(model, args["video"], hop_sec=args["hop"], end_sec=args["end_sec"],
                                    batch_size=args["batch"], progress=False, stats=extra))
    starts, logits = [t for t, _ in pairs], [lg.tolist() for _, lg in pairs]
    decode_s = None
else:
    from synchlib.normalised import read_video
    from synchlib.preprocess import clip_from_decoded
    from synchlib.timeline import window_starts
    cfg = model.cfg.replace(data=dataclasses.replace(model.cfg.data, clip_max_len_sec=math.inf))
    decoded = read_video(args["video"], cfg)
    decode_s = time.perf_counter() - t0
    length = min(len(decoded.frames) / cfg.data.vfps, len(decoded.audio) / cfg.data.afps)
    end = length if args["end_sec"] is None else min(length, args["end_sec"])
    starts, logits = [], []
    with torch.inference_mode():
        for t in window_starts(0.0, args["hop"], cfg.data, end):
            try:
                clip = clip_from_decoded(decoded, cfg, 0.0, t)
            except Exception:
                break
            starts.append(t)
            logits.append(model(clip.vid[None], clip.aud[None])[0].tolist())
    extra = {"windows": len(starts), "video_segments": len(starts) * cfg.data.n_segments,
             "audio_segments": len(starts) * cfg.data.n_segments}
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "decode_s": decode_s, "starts": starts, "logits": logits, "stats": extra,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def machine() -> dict:
    import torch

    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def generated_video(workdir: Path, minutes: float, frame_size: tuple[int, int] | None) -> Path:
    """A synthetic video of ``minutes`` (a rendered clip in a loop), written once into ``workdir``."""
    from synchlib.synthetic import render, write_looped_mp4

    name = f"synthetic_{minutes:g}min_{'x'.join(map(str, frame_size)) if frame_size else GENERATED_SIZE}.mp4"
    path = workdir / name
    if not path.exists():
        print(f"writing {path} ({minutes:g} min) once ...", flush=True)
        frames, audio, _ = render(SEED, LOOP_SEC, GENERATED_SIZE)
        partial = path.with_suffix(".partial.mp4")
        write_looped_mp4(partial, frames, audio, minutes * 60.0, frame_size=frame_size,
                         video_options=FULL_HD_X264 if frame_size else None, progress=True)
        partial.replace(path)
    return path


def decoded_gib(video: Path, size_before_crop: int, end_sec: float | None) -> float:
    """What read_video would hold for ``video`` (uint8 frames at the normalised size, float32 mono at 16 kHz)."""
    from synchlib.io import probe, target_size

    info = probe(video)
    w, h = target_size(*info.display_size, size_before_crop)
    seconds = min(info.duration_sec, end_sec) if end_sec is not None else info.duration_sec
    return seconds * (25 * w * h * 3 + 16000 * 4) / 2**30


def run_child(
    variant: str, video: Path, args: argparse.Namespace, config: str, end_sec: float | None, cache: Path
) -> dict:
    """Run one variant in a fresh process (its own peak RSS); the naive one normalises into ``cache``."""
    payload = {"variant": variant, "video": str(video), "hop": args.hop, "end_sec": end_sec, "batch": args.batch_size,
               "threads": args.threads, "config": config}  # fmt: skip
    env = {**os.environ, "SYNCHLIB_CACHE": str(cache)}  # the naive variant normalises into a fresh cache each run
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, help="an existing video (default: a generated one)")
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the generated 64x64 video (default 2)")
    ap.add_argument("--make-1080p", type=float, metavar="MINUTES", help="generate (once) and use a 1920x1080 video")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "synchlib-bench",
                    help="where generated videos are kept between runs")
    ap.add_argument("--model", choices=("tiny", "full"), default="tiny",
                    help="tiny-synthetic, or the released architecture with random weights")
    ap.add_argument("--hop", type=float, default=1.28, help="seconds between window starts (default 1.28)")
    ap.add_argument("--max-windows", type=int, help="only the first N windows (for the full model: ~3 s a segment)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-max-gib", type=float, default=2.0, help="skip naive when its decoded video is larger")
    args = ap.parse_args()

    from synchlib.config import load_config

    config = "tiny-synthetic" if args.model == "tiny" else RELEASED_ID
    data = load_config(config).data
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.video:
        video = args.video
    elif args.make_1080p:
        video = generated_video(args.workdir, args.make_1080p, FULL_HD)
    else:
        video = generated_video(args.workdir, args.minutes, None)
    end_sec = None if args.max_windows is None else (args.max_windows - 1) * args.hop + data.crop_len_sec
    print(f"video {video}, model {config}, hop {args.hop:g} s, windows {args.max_windows or 'all'}", flush=True)

    results: dict = {"machine": machine(), "video": str(video), "model": config, "hop_sec": args.hop,
                     "end_sec": end_sec, "threads": args.threads}  # fmt: skip
    variants = ["timeline"]
    need = decoded_gib(video, data.size_before_crop, end_sec)
    if args.skip_naive:
        print("naive: skipped (--skip-naive)")
    elif need > args.naive_max_gib:
        print(f"naive: skipped, read_video would hold {need:.1f} GiB (> --naive-max-gib {args.naive_max_gib:g})")
    else:
        variants.append("naive")
    for variant in variants:
        with tempfile.TemporaryDirectory(dir=args.workdir) as cache:
            t = time.perf_counter()
            r = run_child(variant, video, args, config, end_sec, Path(cache))
        covered = (r["starts"][-1] + data.crop_len_sec - r["starts"][0]) if r["starts"] else 0.0
        r.update(covered_sec=covered, throughput=covered / r["seconds"] if r["seconds"] else float("nan"),
                 process_s=time.perf_counter() - t)
        results[variant] = r
        print(f"{variant:>8}: {r['stats']['windows']} windows, {covered:.1f} s of video in {r['seconds']:.1f} s "
              f"-> {r['throughput']:.2f} s/s; peak RSS {r['peak_rss_mib']:.0f} MiB; "
              f"segments computed {r['stats']['video_segments']} video + {r['stats']['audio_segments']} audio"
              + (f"; decode {r['decode_s']:.1f} s" if r.get("decode_s") else ""), flush=True)
    if "naive" in results:
        tl, nv = results["timeline"], results["naive"]
        n = min(len(tl["starts"]), len(nv["starts"]))
        a, b = np.asarray(tl["logits"][:n]), np.asarray(nv["logits"][:n])
        results["ratios"] = {
            "speedup_timeline_over_naive": nv["seconds"] / tl["seconds"],
            "peak_rss_naive_over_timeline": nv["peak_rss_mib"] / tl["peak_rss_mib"],
            "same_windows": tl["starts"] == nv["starts"],
            "max_abs_logit_diff": float(np.abs(a - b).max()) if n else float("nan"),
        }
        ra = results["ratios"]
        print(f"timeline vs naive: x{ra['speedup_timeline_over_naive']:.2f} faster, naive peak RSS "
              f"x{ra['peak_rss_naive_over_timeline']:.2f}; same windows {ra['same_windows']}, max |logit "
              f"difference| {ra['max_abs_logit_diff']:.1e}")
    out = HERE / "results" / "long_video.json"
    out.parent.mkdir(exist_ok=True)
    for r in (results.get("timeline"), results.get("naive")):
        if r:
            r.pop("logits"), r.pop("starts")
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
