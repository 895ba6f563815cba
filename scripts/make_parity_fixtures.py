"""Derive the compact parity fixtures in ``tests/fixtures/parity/`` from the reference run's full goldens.

The full goldens (about 18 MB: case A alone holds 14 MB of raw frames) were written by the official Synchformer
code (see ``tests/fixtures/parity/README.md``). This script keeps what the tests compare against, in a form a
repository can hold:

* frames as one SHA-256 per frame (of the uint8 HWC frame, or of the (3, 224, 224) float16 model-input frame for
  the synchronisability cases S1, S2) plus per-frame channel means, instead of raw pixels: the tests decode the
  shipped sample clips themselves and require the same hashes, bit for bit;
* model inputs and outputs as float32 arrays, unchanged (``aud``, ``audio_wave``, ``vfeats``, ``afeats``,
  ``logits``, ``grid``, the uint8-to-input table, frame and sample indices), one ``np.savez_compressed`` file per
  case, with the case's video, offset and start inside;
* the reference state-dict layouts (``keys_shapes*.json``) as ``[key, shape]`` lists in state-dict order;
* ``detweights.py`` and ``reference_env.txt`` copied unchanged.

Usage: ``python scripts/make_parity_fixtures.py [--source ../shared/parity] [--out tests/fixtures/parity]``.
Arrays are read with ``allow_pickle=False``; only ``--out`` is written to. The script checks what it derives
(A2 is the first two segments of A; sidecar JSON and arrays agree) and stops on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "parity"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "parity"

# (video, offset_sec, start_sec) of each case, as the reference README lists them
CASES = {
    "A": ("3qesirWAGt4_20000_30000.mp4", 1.6, 0.0),
    "A2": ("3qesirWAGt4_20000_30000.mp4", 1.6, 0.0),
    "B": ("ZYc410CE4Rg_0_10000.mp4", -2.0, 4.0),
    "S1": ("3qesirWAGt4_20000_30000.mp4", 0.0, 1.0),
    "S2": ("ZYc410CE4Rg_0_10000.mp4", 1.2, 2.0),
}
A2_SEGMENTS, FRAMES_PER_STEP = 2, 8  # A2 = the first 2 segments of A: frames [0, 8 * (2 - 1) + 16) = [0, 24)
A2_FRAMES = FRAMES_PER_STEP * (A2_SEGMENTS - 1) + 16
KEPT = (  # arrays of cases A, A2, B carried unchanged (those present in the case)
    "aud", "vfeats", "afeats", "logits", "grid", "target_offset_class", "u8_to_input_lut", "frame_src_indices",
    "audio_wave", "audio_start_sample", "audio_end_sample", "audio_seg_starts_in_wave",
)  # fmt: skip
LAYOUTS = {"sync": "keys_shapes.json", "syncability": "keys_shapes_syncability.json"}
COPIED = ("detweights.py", "reference_env.txt")


def frame_sha256(frames: np.ndarray) -> np.ndarray:
    """(N, ...) array -> (N,) hex SHA-256 of each frame's C-order bytes."""
    return np.array([hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames])


def frame_means(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3) float64 per-frame channel means."""
    return frames.reshape(len(frames), -1, 3).mean(1)


def load_case(source: Path, case: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(source / f"case_{case}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((source / f"case_{case}.json").read_text())


def require(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"make_parity_fixtures: {what}")


def compact_case(source: Path, case: str) -> dict[str, np.ndarray]:
    g, meta = load_case(source, case)
    video, offset_sec, start_sec = CASES[case]
    out = {"video": np.array(video), "offset_sec": np.float64(offset_sec), "start_sec": np.float64(start_sec)}
    if case.startswith("S"):  # synchronisability head: model-input frame hashes given, no features
        window = (meta["video"], meta["offset_sec"], meta["start_sec"])
        require(window == (video, offset_sec, start_sec), f"{case}: window {window} is not {CASES[case]}")
        require(np.array_equal(g["logits"], np.float32(meta["logits"])), f"{case}: logits in npz and json differ")
        return {**out, "aud": g["aud"], "logits": g["logits"], "vid_frame_sha256": g["vid_frame_sha256"]}
    require(Path(meta.get("video", video)).name == video, f"{case}: video")
    target = int(g["target_offset_class"])
    require(meta.get("target_offset_class", target) == target, f"{case}: target class in npz and json differ")
    out.update({k: g[k] for k in KEPT if k in g})
    if "frames_u8" in g:
        out["frame_sha256"], out["frame_means"] = frame_sha256(g["frames_u8"]), frame_means(g["frames_u8"])
    else:
        out["frame_sha256"], out["frame_means"] = np.array(meta["frame_sha256"]), g["frame_means"]
    require(len(out["frame_sha256"]) == len(out["frame_means"]), f"{case}: one hash and one mean per frame")
    return out


def check_a2_is_head_of_a(a: dict[str, np.ndarray], a2: dict[str, np.ndarray]) -> None:
    """Case A2 is the first 2 segments of case A: same first 24 frames, same first 2 audio segments and vfeats."""
    require(np.array_equal(a2["frame_sha256"], a["frame_sha256"][:A2_FRAMES]), "A2 frames are not A's first 24")
    require(np.array_equal(a2["aud"], a["aud"][:, :A2_SEGMENTS]), "A2 aud is not A's first 2 segments")
    require(np.array_equal(a2["vfeats"], a["vfeats"][:, :A2_SEGMENTS]), "A2 vfeats are not A's first 2 segments")


def compact_layouts(source: Path) -> dict:
    """``{variant: {"reference": what it is, "entries": [[key, shape], ...]}}`` in state-dict order."""
    out = {}
    for name, file in LAYOUTS.items():
        ref = json.loads((source / file).read_text())
        entries = [[e["key"], e["shape"]] for e in ref["entries"]]
        require(len(entries) == ref["num_entries"], f"{file}: entry count")
        require(sum(int(np.prod(s)) for _, s in entries) == ref["num_floating_elements"], f"{file}: element count")
        kinds = {(e["dtype"], e["kind"]) for e in ref["entries"]}
        require(kinds == {("float32", "parameter")}, f"{file}: not all entries are float32 parameters")
        out[name] = {"reference": ref["variant"], "entries": entries}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the reference goldens")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write the compact fixtures into")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = {case: compact_case(args.source, case) for case in CASES}
    check_a2_is_head_of_a(cases["A"], cases["A2"])
    for case, arrays in cases.items():
        path = args.out / f"case_{case}.npz"
        np.savez_compressed(path, **arrays)
        with np.load(path, allow_pickle=False) as z:  # written as read: no object arrays, values unchanged
            require(all(np.array_equal(z[k], v) for k, v in arrays.items()), f"{path}: does not read back")
    (args.out / "keys_shapes.json").write_text(json.dumps(compact_layouts(args.source), separators=(",", ":")) + "\n")
    for name in COPIED:
        shutil.copyfile(args.source / name, args.out / name)
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>10,}  {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
