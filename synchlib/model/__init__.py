"""The Synchformer network (``synchformer.py`` and its parts), how to build it, load it and where it runs."""

from .build import build_model
from .device import PRECISIONS, autocast, check_precision, resolve_device
from .load import load_model
from .synchformer import Synchformer

__all__ = ["PRECISIONS", "Synchformer", "autocast", "build_model", "check_precision", "load_model", "resolve_device"]
