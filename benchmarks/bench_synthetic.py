"""Speed of the synthetic clip writer: a default clip (10 s, 64x64, 25 fps, 16 kHz), and what x264's plain C code
(``asm=0``, which makes the bytes the same on every CPU) costs against its assembly, measured side by side.

    python benchmarks/bench_synthetic.py            # 7 rounds
    python benchmarks/bench_synthetic.py --rounds 15

Each round renders nothing new: it encodes the same rendered clip once with the shipped options and once with
x264's assembly back on (the order alternates), so both see the same machine load. Prints the median times.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from synchlib import synthetic as S

SEED = 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="encodes per variant (default 7)")
    args = ap.parse_args()
    with_asm = {k: v for k, v in S.VIDEO_OPTIONS.items() if k != "x264-params"}
    variants = {"asm=0 (shipped)": S.VIDEO_OPTIONS, "x264 assembly": with_asm}
    with tempfile.TemporaryDirectory(prefix="synchlib-bench-") as tmp:
        tmp = Path(tmp)
        frames, audio, info = S.render(SEED)
        S.make_clip(tmp / "warm.mp4", SEED)  # imports, first allocations
        times: dict[str, list[float]] = {name: [] for name in variants}
        make_clip_s, render_s = [], []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            S.render(SEED)
            render_s.append(time.perf_counter() - t0)
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for name in order:
                t0 = time.perf_counter()
                S.write_looped_mp4(tmp / "clip.mp4", frames, audio, info.duration, info.fps, info.sample_rate,
                                   video_options=variants[name])  # one loop: write_mp4's file
                times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            S.make_clip(tmp / "made.mp4", SEED)
            make_clip_s.append(time.perf_counter() - t0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    n = len(frames)
    print(f"default clip: {info.duration:g} s, {info.size}x{info.size}, {n} frames; medians of {args.rounds} rounds")
    print(f"  render                      {statistics.median(render_s):7.3f} s")
    print(f"  make_clip (render + encode) {statistics.median(make_clip_s):7.3f} s")
    for name, s in median.items():
        print(f"  encode, {name:20s}{s:7.3f} s  ({1000 * s / n:.2f} ms/frame)")
    ratio = median["asm=0 (shipped)"] / median["x264 assembly"]
    print(f"  asm=0 / assembly: {ratio:.2f}x (+{median['asm=0 (shipped)'] - median['x264 assembly']:.3f} s per clip)")


if __name__ == "__main__":
    main()
