"""Where the model looks and listens: capture attention probabilities and turn them into readable maps.

:func:`capture_attention` switches the model's attention modules to an explicit-softmax path that records the
probabilities (the default path uses fused attention and records nothing). :func:`explain` runs one window and
returns an :class:`Explanation` with

- the OFF token's attention over the visual and audio tokens in the last block of the synchronisation transformer
  (a timeline),
- per-frame-pair spatial attention of the visual aggregation (which image regions feed each visual token),
- per-time-column frequency attention of the audio aggregation (which mel bands feed each audio token).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .model import Synchformer
from .predict import Prediction, clip_prediction
from .preprocess import Clip, token_first_frames, token_times


@dataclass
class AttentionRecord:
    """Probabilities captured during one forward pass, by part of the model (CPU float32 tensors)."""

    sync: list[torch.Tensor] = field(default_factory=list)  # per block: (B, H, L, L)
    spatial: list[torch.Tensor] = field(default_factory=list)  # (B*S*t, H, 1, 1 + h*w) per call
    freq: list[torch.Tensor] = field(default_factory=list)  # (B*S*t, H, 1, 1 + f) per call


@contextmanager
def capture_attention(model: Synchformer) -> Iterator[AttentionRecord]:
    """Record attention probabilities of the sync transformer and of both aggregation layers while inside."""
    rec = AttentionRecord()
    targets = [(b.attn, rec.sync) for b in model.transformer.blocks]
    targets += [(model.vfeat_extractor.spatial_attn_agg, rec.spatial), (model.afeat_extractor.freq_attn_agg, rec.freq)]
    try:
        for module, store in targets:
            module.store = store
        yield rec
    finally:
        for module, _ in targets:
            module.store = None


@dataclass
class Explanation:
    """Attention maps for one window.

    off_visual (S, tv) and off_audio (S, ta): OFF-token attention on each visual / audio token in the last
    block (the one whose OFF output the head reads), averaged over heads (with the attention on the OFF and MOD
    tokens themselves they sum to 1). spatial (S, tv, h, w): visual aggregation CLS
    attention over patches, averaged over heads. freq (S, ta, f): audio aggregation CLS attention over
    frequency patches (low to high), averaged over heads. Token centre times in seconds of the source video:
    visual_times (S*tv,), audio_times (S*ta,) (audio tokens sit where their sound came from).
    """

    prediction: Prediction
    off_visual: np.ndarray
    off_audio: np.ndarray
    spatial: np.ndarray
    freq: np.ndarray
    visual_times: np.ndarray
    audio_times: np.ndarray
    token_frames: np.ndarray  # (S, tv) index into clip.frames of the first frame of each visual token
    clip: Clip = field(repr=False)

    @property
    def segment_importance(self) -> np.ndarray:
        """(S,) share of the OFF token's attention on each segment, visual and audio tokens together."""
        s = self.off_visual.sum(1) + self.off_audio.sum(1)
        return s / s.sum()


@torch.inference_mode()
def explain(model: Synchformer, clip: Clip, k: int = 5) -> Explanation:
    """Run ``clip`` through ``model`` with attention capture; return the prediction and the maps."""
    cfg = model.cfg
    S, tv, ta = cfg.data.n_segments, cfg.visual.t_tokens, cfg.audio.t_tokens
    with capture_attention(model) as rec:
        logits = model(clip.vid[None].to(model.device), clip.aud[None].to(model.device))[0]
    pred = clip_prediction(logits, clip, cfg.sync.head, k=k)
    off = rec.sync[-1][0, :, 0].mean(0).numpy()  # (L,) OFF query row of the last block, mean over heads
    off_visual = off[1 : 1 + S * tv].reshape(S, tv)
    off_audio = off[2 + S * tv :].reshape(S, ta)
    g = cfg.visual.grid
    spatial = torch.cat(rec.spatial)[:, :, 0, 1:].mean(1).numpy().reshape(S, tv, g, g)
    freq = torch.cat(rec.freq)[:, :, 0, 1:].mean(1).numpy().reshape(S, ta, cfg.audio.f_tokens)
    vt, at = (t.reshape(-1).astype(np.float32) for t in token_times(clip, cfg))
    return Explanation(pred, off_visual, off_audio, spatial, freq, vt, at, token_first_frames(cfg), clip)
