"""Copy what the av-benchmark parity tests need from the shared goldens into tests/fixtures/desync_avbench/.

    python scripts/make_avbench_fixtures.py [--shared ../shared]

Source: ``<shared>/desync_avbench/`` (goldens made by av-benchmark's own code, its README says how) and
``<shared>/samples/``. Written, compactly:

* the media the pairs need that the package does not ship: ``ZYc_2997.mp4`` as it is, and both WAV files as FLAC
  (lossless; checked here: FFmpeg decodes each FLAC to exactly the WAV's samples). The 25 fps VGGSound video is
  ``synchlib/assets/samples/3qesirWAGt4_20000_30000.mp4`` (checked: same bytes as the shared one);
* ``goldens.json``: per pair the file names, the SHA-256 of each decoded 25 fps RGB frame, the frame size, the
  SHA-256 of the two transformed input frames (float32 (3, 224, 224) each, C order: they are reproduced exactly,
  so their hashes are the check), the predicted offsets and DeSync of ``summary.json``, and which segments the
  feature goldens keep;
* ``<pair>.npz`` (compressed, float32): the 16 kHz waveform, the log-mel, ``vfeats`` and ``afeats`` of
  :data:`KEPT_SEGMENTS` (the first, the last of the first window, the first of the last window and the last), the
  first and last logits and the offset grid.

Everything the tests compare is the goldens' own numbers; only whole segments of the per-segment arrays are left
out (the logits depend on all 24 and are kept whole).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synchlib.avbench import read_channels  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "desync_avbench"
PACKAGED_SAMPLES = REPO / "synchlib" / "assets" / "samples"
KEPT_SEGMENTS = (0, 13, 10, 23)  # first window: 0..13, last window: 10..23 (of 24)
PAIRS = {
    "vgg_3qes_16k": {"video": "3qesirWAGt4_20000_30000.mp4", "video_in": "package", "audio": "3qes_audio16k.wav"},
    "vgg_ZYc_2997_delay600_44k": {"video": "ZYc_2997.mp4", "video_in": "fixtures",
                                  "audio": "ZYc_audio_delay600_44k.wav"},
}
FLAC_FRAME = 4096  # samples per frame handed to the FLAC encoder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def wav_to_flac(wav: Path, flac: Path) -> None:
    """Re-encode a PCM WAV losslessly as FLAC (same sample format, layout and rate) and check that FFmpeg decodes
    both to the same samples."""
    with av.open(str(wav)) as src:
        stream = src.streams.audio[0]
        rate, layout, fmt = stream.sample_rate, stream.layout.name, stream.format.name
        frames = [f.to_ndarray() for f in src.decode(stream)]
    samples = np.concatenate(frames, axis=1)  # packed s16: (1, n * channels)
    channels = len(av.AudioLayout(layout).channels)
    with av.open(str(flac), "w") as dst:
        out = dst.add_stream("flac", rate=rate, layout=layout)
        out.format = fmt
        step = FLAC_FRAME * channels
        for i in range(0, samples.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + step]), format=fmt,
                                               layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, i // channels, Fraction(1, rate)
            for packet in out.encode(frame):
                dst.mux(packet)
        for packet in out.encode(None):
            dst.mux(packet)
    a, ra = read_channels(wav)
    b, rb = read_channels(flac)
    assert ra == rb and a.shape == b.shape and np.array_equal(a, b), f"{flac} does not decode to {wav}'s samples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="folder holding desync_avbench/")
    args = ap.parse_args()
    src = args.shared / "desync_avbench"
    summary = json.loads((src / "summary.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    goldens: dict = {"kept_segments": list(KEPT_SEGMENTS), "set_desync_sec": summary["_DeSync_mean_of_all_windows"],
                     "pairs": {}}
    for name, pair in PAIRS.items():
        if pair["video_in"] == "package":
            packaged = PACKAGED_SAMPLES / pair["video"]
            assert sha256(packaged) == sha256(args.shared / "samples" / pair["video"]), f"{packaged} differs"
        else:
            shutil.copyfile(src / pair["video"], OUT / pair["video"])
        flac = Path(pair["audio"]).with_suffix(".flac").name
        wav_to_flac(src / pair["audio"], OUT / flac)
        z = np.load(src / f"{name}.npz")
        frames = z["input_frames_0_100"]
        assert frames.dtype == np.float32 and frames.shape == (2, 3, 224, 224)
        kept = list(KEPT_SEGMENTS)
        np.savez_compressed(
            OUT / f"{name}.npz",
            wave16k=z["wave16k"],
            mel_log=z["mel_log"][kept],
            vfeats=z["vfeats"][kept],
            afeats=z["afeats"][kept],
            logits_first=z["logits_first"],
            logits_last=z["logits_last"],
            grid=z["grid"],
        )
        s = summary[name]
        goldens["pairs"][name] = {
            "video": pair["video"], "video_in": pair["video_in"], "audio": flac,
            "raw_frame_sha256": [str(h) for h in z["raw_frame_sha256"]],
            "raw_shape": [int(x) for x in z["raw_shape"]],
            "input_frame_sha256": {"0": array_sha256(frames[0]), "100": array_sha256(frames[1])},
            "n_segments": [s["n_segments_video"], s["n_segments_audio"]],
            "first_offset_sec": s["first_offset_sec"], "last_offset_sec": s["last_offset_sec"],
            "desync_sec": s["desync_pair"],
        }  # fmt: skip
    (OUT / "goldens.json").write_text(json.dumps(goldens, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size / 1e3:9.1f} kB  {p.name}")
    print(f"{total / 1e6:9.2f} MB  in {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
