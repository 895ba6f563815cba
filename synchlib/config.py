"""Model and data configuration, read from Synchformer-style YAML files.

A released checkpoint comes with a ``cfg-<id>.yaml`` written by the reference training code. synchlib reads the
same structure (see ``synchlib/configs/``), resolves its ``${dotted.path}`` references with OmegaConf, and turns the handful of
values that matter for inference into a frozen :class:`Config`. The model (``synchlib.model``) and the
preprocessing (``synchlib.preprocess``) read every size and rate from it, so the same code runs the released
ViT-B model and the tiny teaching model.

Sizes that the reference takes from other files (MotionFormer's ``divided_224_16x4.yaml``, ``ASTConfig``
defaults) are the defaults below; a config may override them under
``model.params.{vfeat,afeat}_extractor.params`` (the tiny model does).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

# The reference used a different module path for the synchronisation transformer in the released configs.
_TRANSFORMER_CLASSES = {
    "GlobalTransformer": "offset",
    "GlobalTransformerWithSyncabilityHead": "syncability",
}
_TRANSFORMER_MODULES = ("model.sync_model.", "model.modules.feature_selector.")


@dataclass(frozen=True)
class VisualConfig:
    """Divided space-time ViT ("MotionFormer") feature extractor + spatial aggregation."""

    img_size: int = 224
    patch_size: int = 16
    tubelet: int = 2  # frames per token (Conv3d temporal kernel = stride)
    num_frames: int = 16  # frames per segment
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    agg_heads: int = 12
    agg_ff: int = 3072

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.img_size // self.patch_size

    @property
    def t_tokens(self) -> int:
        """Temporal tokens per segment (8 for the released model)."""
        return self.num_frames // self.tubelet


@dataclass(frozen=True)
class AudioConfig:
    """AST feature extractor + frequency aggregation."""

    n_mels: int = 128
    max_spec_t: int = 66
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    dim: int = 768
    depth: int = 12
    heads: int = 12
    intermediate: int = 3072
    agg_heads: int = 12
    agg_ff: int = 3072

    @property
    def f_tokens(self) -> int:
        return (self.n_mels - self.patch_size) // self.fstride + 1

    @property
    def t_tokens(self) -> int:
        return (self.max_spec_t - self.patch_size) // self.tstride + 1


@dataclass(frozen=True)
class SyncConfig:
    """The synchronisation transformer (minGPT-style) and its head."""

    dim: int = 768
    depth: int = 3
    heads: int = 8
    pos_len: int = 198  # rows of the positional table = 1 + S*vt + 1 + S*at
    num_classes: int = 21
    head: str = "offset"  # "offset" (off_head, 21 classes) or "syncability" (sync_head, 2 classes)


@dataclass(frozen=True)
class DataConfig:
    """Rates, window layout, offset grid and test-time transform parameters."""

    vfps: int = 25
    afps: int = 16000
    n_segments: int = 14
    segment_size_vframes: int = 16
    step_size_seg: float = 0.5
    crop_len_sec: float = 5.0
    max_off_sec: float = 2.0
    num_off_cls: int = 21
    size_before_crop: int = 256
    input_size: int = 224
    clip_max_len_sec: float = 10.0
    rgb_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rgb_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 1024
    n_mels: int = 128
    ast_mean: float = -4.2677393
    ast_std: float = 4.5689974

    @property
    def grid(self) -> np.ndarray:
        """Offset grid in seconds, float32 (num_off_cls,), as the reference builds it."""
        return np.linspace(-self.max_off_sec, self.max_off_sec, self.num_off_cls).astype(np.float32)

    @property
    def step_vframes(self) -> int:
        return int(self.segment_size_vframes * self.step_size_seg)

    @property
    def segment_size_asamples(self) -> int:
        return int(self.segment_size_vframes / self.vfps * self.afps)

    @property
    def step_asamples(self) -> int:
        return int(self.segment_size_asamples * self.step_size_seg)

    @property
    def window_vframes(self) -> int:
        """Frames actually used by the segments (120 for the released layout)."""
        return self.segment_size_vframes + self.step_vframes * (self.n_segments - 1)

    @property
    def window_sec(self) -> float:
        """Length in seconds that the model sees (4.8 s for the released layout)."""
        return self.window_vframes / self.vfps


@dataclass(frozen=True)
class Config:
    """Everything synchlib needs to build a model and prepare its inputs."""

    name: str
    visual: VisualConfig = field(default_factory=VisualConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    data: DataConfig = field(default_factory=DataConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def grid(self) -> np.ndarray:
        return self.data.grid

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)

    def with_segments(self, n_segments: int) -> "Config":
        """The same model for a window of ``n_segments`` segments (positional table cut to fit)."""
        vt, at = self.visual.t_tokens, self.audio.t_tokens
        return dataclasses.replace(
            self,
            name=f"{self.name}@{n_segments}seg",
            data=dataclasses.replace(self.data, n_segments=n_segments),
            sync=dataclasses.replace(self.sync, pos_len=2 + n_segments * (vt + at)),
        )


# --------------------------------------------------------------------------------------------------------------
# YAML reading


# A resolver call, ``${name:...}`` (``${now:...}``, ``${oc.env:...}``), is a function call written in the file:
# never run on a file's data, kept as text. References to other keys, ``${a.b.c}``, are OmegaConf's to resolve.
_RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")


def _escape_resolver_calls(tree: Any) -> Any:
    """``tree`` with each string that calls a resolver escaped (``\\${``), so that OmegaConf keeps it as text."""
    if isinstance(tree, Mapping):
        return {k: _escape_resolver_calls(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_escape_resolver_calls(v) for v in tree]
    if isinstance(tree, str) and _RESOLVER_CALL.search(tree):
        return tree.replace("${", "\\${")
    return tree


def _resolved(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A parsed YAML tree as plain dicts and lists with its ``${dotted.path}`` references resolved by OmegaConf: a
    value that is exactly one reference takes the referenced value (with its type), references inside longer
    strings are substituted as text. Resolver calls stay text (see :data:`_RESOLVER_CALL`)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(_escape_resolver_calls(raw)), resolve=True)
    except OmegaConfBaseException as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"config {name!r} cannot be read: {detail}. Fix or remove that reference") from None


def _transform_params(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    for step in raw.get("transform_sequence_test") or []:
        if str(step.get("target", "")).rsplit(".", 1)[-1] == name:
            return dict(step.get("params") or {})
    return {}


def _pick(src: Mapping[str, Any], cls: type, renames: Mapping[str, str] = {}) -> dict[str, Any]:
    """Values of ``src`` for the fields of dataclass ``cls`` (keys renamed by ``renames`` first)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in src.items():
        key = renames.get(key, key)
        if key in names and value is not None:
            out[key] = tuple(value) if isinstance(value, list) else value
    return out


def config_from_dict(raw: Mapping[str, Any], name: str = "custom") -> Config:
    """Build a :class:`Config` from a parsed (reference-style) YAML tree."""
    raw = _resolved(raw, name)
    try:
        data_raw = raw.get("data") or {}
        params = (raw.get("model") or {}).get("params") or {}
        vparams = (params.get("vfeat_extractor") or {}).get("params") or {}
        aparams = (params.get("afeat_extractor") or {}).get("params") or {}
        tcfg = params.get("transformer") or {}
        tparams = tcfg.get("params") or {}
    except AttributeError as e:
        raise ConfigError(f"config {name!r} does not have the Synchformer layout (model.params..., data...): {e}")

    mel = _transform_params(raw, "AudioMelSpectrogram")
    ast_norm = _transform_params(raw, "AudioNormalizeAST")
    rgb_norm = _transform_params(raw, "RGBNormalize")
    equalify = _transform_params(raw, "EqualifyFromRight")
    data = DataConfig(
        **_pick(data_raw, DataConfig),
        **_pick(mel, DataConfig, {"sample_rate": "_unused"}),
        **_pick(ast_norm, DataConfig, {"mean": "ast_mean", "std": "ast_std"}),
        **_pick(rgb_norm, DataConfig, {"mean": "rgb_mean", "std": "rgb_std"}),
        **_pick(equalify, DataConfig),
    )
    if mel.get("sample_rate") not in (None, data.afps):
        raise ConfigError(f"mel sample_rate {mel['sample_rate']} differs from data.afps {data.afps}")

    visual = VisualConfig(
        img_size=data.input_size,
        num_frames=data.segment_size_vframes,
        **_pick(vparams, VisualConfig, {"embed_dim": "dim", "num_heads": "heads"}),
    )
    audio = AudioConfig(
        n_mels=data.n_mels,
        **_pick(aparams, AudioConfig, {"embed_dim": "dim", "num_heads": "heads", "hidden_size": "dim"}),
    )

    target = str(tcfg.get("target", "model.sync_model.GlobalTransformer"))
    module, _, cls_name = target.rpartition(".")
    if cls_name not in _TRANSFORMER_CLASSES or not any(target.startswith(m) for m in _TRANSFORMER_MODULES):
        raise ConfigError(
            f"unknown synchronisation transformer {target!r}; expected one of "
            f"{[m + c for m in _TRANSFORMER_MODULES for c in _TRANSFORMER_CLASSES]}"
        )
    head = _TRANSFORMER_CLASSES[cls_name]
    block_shape = ((tparams.get("pos_emb_cfg") or {}).get("params") or {}).get("block_shape")
    vt, at = visual.t_tokens, audio.t_tokens
    pos_len = int(block_shape[0]) if block_shape else 2 + data.n_segments * (vt + at)
    sync = SyncConfig(
        dim=int(tparams.get("n_embd", 768)),
        depth=int(tparams.get("n_layer", 3)),
        heads=int(tparams.get("n_head", 8)),
        pos_len=pos_len,
        num_classes=2 if head == "syncability" else data.num_off_cls,
        head=head,
    )
    needed = 2 + data.n_segments * (vt + at)
    if pos_len < needed:
        raise ConfigError(
            f"config {name!r}: positional table has {pos_len} rows but {data.n_segments} segments need {needed}"
        )
    return Config(name=name, visual=visual, audio=audio, sync=sync, data=data, raw=raw)


def released_config_path(name: str) -> Path | None:
    """Path of a config shipped with synchlib (released ids and ``tiny-synthetic``), or None."""
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(id_or_path: str | Path | Mapping[str, Any] | Config) -> Config:
    """Load a config by released id (offline), by shipped name, from a YAML path, or from a parsed dict.

    >>> cfg = load_config("24-01-04T16-39-21")
    >>> cfg.data.n_segments, cfg.sync.num_classes
    (14, 21)
    """
    if isinstance(id_or_path, Config):
        return id_or_path
    if isinstance(id_or_path, Mapping):
        return config_from_dict(id_or_path)
    shipped = released_config_path(str(id_or_path)) if isinstance(id_or_path, str) else None
    path = shipped or Path(id_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"no config {str(id_or_path)!r}: not a shipped config ({', '.join(available_configs())}) "
            "and not a path to a YAML file"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} does not hold a mapping at the top level")
    name = path.stem[4:] if path.stem.startswith("cfg-") else path.stem
    return config_from_dict(raw, name=name)
