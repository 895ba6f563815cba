"""Checkpoint -> ready model: which config a checkpoint needs, and :func:`load_model`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import PACKAGED, RELEASED, read_checkpoint, resolve_checkpoint
from ..config import config_from_dict, load_config, released_config_path
from ..errors import CheckpointError
from ..paths import file_md5
from .build import build_model
from .device import resolve_device
from .synchformer import Synchformer


def config_for_checkpoint(id_or_path: str | Path, meta: Mapping[str, Any] | None = None, config: Any = None):
    """The :class:`~synchlib.config.Config` of a checkpoint.

    Order: an explicit ``config`` (Config, name or YAML path); the shipped config of a released or packaged name;
    the ``args`` tree stored in the checkpoint; a ``cfg-*.yaml`` next to the file.
    """
    if config is not None:
        return load_config(config)
    name = str(id_or_path)
    if isinstance(id_or_path, str) and released_config_path(name) is not None:
        return load_config(name)
    path = Path(id_or_path).expanduser()
    if meta and isinstance(meta.get("args"), Mapping) and "model" in meta["args"]:
        return config_from_dict(meta["args"], name=path.stem)
    siblings = sorted(path.parent.glob("cfg-*.yaml")) + sorted(path.parent.glob(f"{path.stem}.yaml"))
    if siblings:
        return load_config(siblings[0])
    raise CheckpointError(
        f"{path} holds no config and none lies next to it; pass config= (a released id such as "
        f"'{next(iter(RELEASED))}' or the path of its cfg-<id>.yaml)"
    )


# Bare state-dict files published elsewhere for a released model (no config inside): full md5 -> released id.
KNOWN_STATE_DICTS: dict[str, str] = {
    "5b2f5594b0730f70e41e549b7c94390c": "24-01-04T16-39-21",  # MMAudio's synchformer_state_dict.pth (907 MB)
}
AV_BENCHMARK_ID = "24-01-04T16-39-21"  # the model av-benchmark and MMAudio use


def bare_state_dict_config(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The config name for a bare state dict that carries no config, such as MMAudio's
    ``synchformer_state_dict.pth``: the released or packaged model whose key names and shapes it has (the three
    released offset models share one layout and one test-time config; :data:`AV_BENCHMARK_ID` is named first),
    else the released id its md5 names in :data:`KNOWN_STATE_DICTS`; None when neither."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in sorted([*RELEASED, *PACKAGED], key=lambda n: n != AV_BENCHMARK_ID):
        if shapes == {k: tuple(v.shape) for k, v in build_model(name, device="meta").state_dict().items()}:
            return name
    return KNOWN_STATE_DICTS.get(file_md5(path))


def load_model(
    id_or_path: str | Path = "24-01-04T16-39-21",
    device: str | torch.device = "auto",
    *,
    config: Any = None,
    progress: bool = True,
) -> Synchformer:
    """A ready-to-use Synchformer in eval mode: released id (downloaded, verified, cached on first use),
    ``"tiny-synthetic"`` (ships with synchlib) or a checkpoint path. ``device="auto"`` picks CUDA when present.

    Weights are loaded without a second copy in memory (the model is built on the meta device and takes the
    loaded tensors). A longer stored positional table is cut to the config's length.
    """
    dev = resolve_device(device)
    path = resolve_checkpoint(id_or_path, progress=progress)
    sd, meta = read_checkpoint(path)
    try:
        cfg = config_for_checkpoint(id_or_path, meta, config)
    except CheckpointError:  # no config anywhere: a known bare state dict (MMAudio's) needs none
        name = bare_state_dict_config(path, sd) if not meta else None
        if name is None:
            raise
        cfg = config_for_checkpoint(name)
    model = build_model(cfg, device="meta")
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except (RuntimeError, CheckpointError) as e:
        raise CheckpointError(
            f"{path} does not fit the {cfg.name!r} architecture: {str(e).splitlines()[0]} "
            "(pass the matching config=)"
        ) from None
    model = model.to(dev).eval()
    model.checkpoint = str(id_or_path)
    return model
