"""synchlib: audio-visual synchronisation with Synchformer (Iashin et al., ICASSP 2024).

>>> import synchlib
>>> model = synchlib.load_model("tiny-synthetic")            # or a released id, or a .pt path
>>> pred = synchlib.predict(model, "clip.mp4", offset_sec=1.6)
>>> pred.offset_sec, pred.topk[:3]
"""

from .checkpoints import RELEASED, fetch, load_model, read_checkpoint, save_checkpoint
from .config import Config, load_config
from .errors import (
    CheckpointError,
    ClipTooShortError,
    ConfigError,
    InvalidArgumentError,
    MissingStreamError,
    OffsetOutsideGridWarning,
    SynchlibError,
    SynchlibWarning,
    UnreliableInputWarning,
    VideoDecodeError,
    VideoNotFoundError,
)
from .model import Synchformer, build_model
from .predict import Prediction, predict
from .preprocess import Clip, load_clip
from .samples import resolve_video, sample_path
from .sweep import Predictor, sweep

__version__ = "0.1.0"

__all__ = [
    "RELEASED", "CheckpointError", "Clip", "ClipTooShortError", "Config", "ConfigError", "InvalidArgumentError", "MissingStreamError",
    "OffsetOutsideGridWarning", "Prediction", "Predictor", "Synchformer", "SynchlibError", "SynchlibWarning",
    "UnreliableInputWarning", "VideoDecodeError", "VideoNotFoundError", "build_model", "fetch", "load_clip",
    "load_config", "load_model", "predict", "resolve_video", "sample_path", "read_checkpoint", "save_checkpoint", "sweep",
]  # fmt: skip
