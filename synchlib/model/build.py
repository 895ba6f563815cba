"""A randomly initialised Synchformer for a config."""

from __future__ import annotations

import torch

from ..config import Config, load_config
from .synchformer import Synchformer


def build_model(cfg: Config | str, device: str | torch.device = "cpu") -> Synchformer:
    """A randomly initialised Synchformer for ``cfg`` (a :class:`Config`, shipped name or YAML path), in eval mode.

    ``device="meta"`` builds it without allocating weights (then load a state dict with ``assign=True``).
    """
    cfg = load_config(cfg)
    with torch.device(device):
        model = Synchformer(cfg)
    return model.eval()
