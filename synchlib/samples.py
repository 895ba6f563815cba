"""Sample clips that ship with synchlib, addressable by name (notebooks use the names as defaults)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "assets" / "samples"
SAMPLES = {
    # Two VGGSound clips (10 s, 25 fps, 256 px short side, 16 kHz AAC), as in the Synchformer seed notebook.
    "vggsound-3qesirWAGt4": "3qesirWAGt4_20000_30000.mp4",
    "vggsound-ZYc410CE4Rg": "ZYc410CE4Rg_0_10000.mp4",
    # A synthetic sparse-cue clip (synchlib.synthetic, seed 20241127) with its events in a JSON sidecar.
    "synthetic-demo": "synthetic_demo.mp4",
}


def sample_path(name: str) -> Path:
    """Path of a shipped sample clip by name (see :data:`SAMPLES`)."""
    try:
        return SAMPLE_DIR / SAMPLES[name]
    except KeyError:
        raise KeyError(f"no sample {name!r}; samples: {', '.join(SAMPLES)}") from None


def resolve_video(video: str | Path) -> Path:
    """A sample name (``"synthetic-demo"``, ...) or a path (``~`` expanded, relative to the working directory)."""
    if isinstance(video, str) and video in SAMPLES:
        return sample_path(video)
    return Path(video).expanduser().resolve()
