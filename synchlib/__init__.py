"""synchlib: audio-visual synchronisation with Synchformer (Iashin et al., ICASSP 2024).

>>> import synchlib
>>> model = synchlib.load_model("tiny-synthetic")            # or a released id, or a .pt path
>>> pred = synchlib.predict(model, "clip.mp4", offset_sec=1.6)
>>> pred.offset_sec, pred.topk[:3]

The public names below are imported on first use (PEP 562), so that ``import synchlib`` (and the ``synchlib``
command's ``--help``) does not load torch. ``synchlib.predict`` and ``synchlib.sweep`` are the functions, even
though ``synchlib/predict.py`` and ``synchlib/sweep.py`` are also submodules: the package never binds those two
submodules as its attributes (reach the modules with ``importlib.import_module("synchlib.predict")``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "RELEASED": "checkpoints", "fetch": "checkpoints", "load_model": "model",
    "read_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
    "Config": "config", "load_config": "config",
    "CheckpointError": "errors", "ClipTooShortError": "errors", "ConfigError": "errors",
    "InvalidArgumentError": "errors", "MissingStreamError": "errors", "OffsetOutsideGridWarning": "errors",
    "SynchlibError": "errors", "SynchlibWarning": "errors", "UnreliableInputWarning": "errors",
    "VideoDecodeError": "errors", "VideoNotFoundError": "errors",
    "Synchformer": "model", "build_model": "model",
    "Prediction": "predict", "predict": "predict",
    "Clip": "preprocess", "load_clip": "preprocess",
    "resolve_video": "manifests", "sample_path": "manifests",
    "Predictor": "sweep", "sweep": "sweep",
}  # fmt: skip
# functions that share their name with the submodule that defines them
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .checkpoints import RELEASED, fetch, read_checkpoint, save_checkpoint  # noqa: F401
    from .config import Config, load_config  # noqa: F401
    from .errors import (  # noqa: F401
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
    )  # fmt: skip
    from .manifests import resolve_video, sample_path  # noqa: F401
    from .model import Synchformer, build_model, load_model  # noqa: F401
    from .predict import Prediction, predict  # noqa: F401
    from .preprocess import Clip, load_clip  # noqa: F401
    from .sweep import Predictor, sweep  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use and keep the name (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The package's module type: the import system binds every imported submodule as an attribute of its
    package (``setattr(synchlib, "predict", <module>)``); for the names in :data:`_SHADOWED` that would replace
    the function, so those bindings are skipped (the submodule stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package  # documented: "Customizing module attribute access" (Python data model)
