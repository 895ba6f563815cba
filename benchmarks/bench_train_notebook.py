"""The teaching notebook end to end, as a student runs it: time and the held-out acc@1 of the model it trains.

    python benchmarks/bench_train_notebook.py --seeds 11 12 13 14 15
    python benchmarks/bench_train_notebook.py --seeds 3 --json benchmarks/results/train_notebook.json

Runs notebooks/train_tiny.ipynb with papermill, its default parameters but ``seed``, once per seed, one after the
other (a fresh kernel each, as ``synchlib run train_tiny`` does). Prints per seed: wall time of the whole run
(kernel start included), the CPU time of the kernel and its clip workers (a busy machine shows up as wall time
far above CPU time / 2 on 2 cores), the load average before and after, the held-out acc@1 of the student's model
and of the shipped one on the same windows, and the acc@1 of the run without the lag bank; then the minimum and
the median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_tiny.ipynb"
SCORE = re.compile(r"(your model|shipped model):\s+held-out acc@1 (\d\.\d+)")


def run_once(seed: int, folder: Path) -> dict:
    """Execute the notebook with ``seed``; returns timings, load and scores."""
    import nbformat
    import papermill as pm

    out = folder / f"train_tiny_seed{seed}.ipynb"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"seed": seed}, cwd=str(NOTEBOOK.parent),
                        kernel_name="python3", progress_bar=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = "".join(o.get("text", "") for c in nbformat.read(str(out), as_version=4).cells
                   for o in c.get("outputs", []) if c.cell_type == "code")
    scores = {who.split()[0]: float(acc) for who, acc in SCORE.findall(text)}
    return {"seed": seed, "wall_sec": round(wall, 1),
            "cpu_sec": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "acc1": scores.get("your"), "shipped_acc1": scores.get("shipped")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="synchlib-bench-") as tmp:
        for seed in args.seeds:
            r = run_once(seed, Path(tmp))
            results.append(r)
            print(f"seed {seed}: {r['wall_sec']:.0f} s wall, {r['cpu_sec']:.0f} s CPU, load {r['load_before'][0]:.1f}"
                  f" -> {r['load_after'][0]:.1f}; acc@1 {r['acc1']} (shipped {r['shipped_acc1']})", flush=True)
    accs, walls = [r["acc1"] for r in results], [r["wall_sec"] for r in results]
    print(f"acc@1 min {min(accs):.2f} median {statistics.median(accs):.2f}; wall min {min(walls):.0f} s "
          f"median {statistics.median(walls):.0f} s max {max(walls):.0f} s ({len(results)} seeds, {os.cpu_count()} "
          "cores)")
    if args.json:
        args.json.write_text(json.dumps({"notebook": NOTEBOOK.name, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
