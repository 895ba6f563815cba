"""Synchformer: visual and audio feature extractors, projections and the synchronisation transformer.

Feature extraction is split from the synchronisation head so features can be cached: the visual features of a
window do not depend on the audio offset, which is what makes offset sweeps cheap (``synchlib.sweep``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..config import Config
from ..errors import CheckpointError
from .audio import ASTFeatures
from .sync import GlobalTransformer
from .visual import MotionFormer

POS_EMB_KEY = "transformer.pos_emb_cfg.pos_emb"


class Synchformer(nn.Module):
    """The full model. ``forward(vid, aud)`` -> logits; see the shapes in :meth:`forward`."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.vfeat_extractor = MotionFormer(cfg.visual)
        self.afeat_extractor = ASTFeatures(cfg.audio)
        self.vproj = nn.Linear(cfg.visual.dim, cfg.sync.dim)
        self.aproj = nn.Linear(cfg.audio.dim, cfg.sync.dim)
        self.transformer = GlobalTransformer(cfg.sync)
        self.segment_chunk = 2  # segments per visual forward; bounds peak memory, does not change results

    @property
    def device(self) -> torch.device:
        return self.vproj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vproj.weight.dtype

    def extract_vfeats(self, vid: Tensor) -> Tensor:
        """vid (B, S, T, 3, H, W) -> vfeats (B, S, t, D).

        Segments run ``segment_chunk`` at a time, gathered from ``vid`` per chunk, so ``vid`` may be a strided
        view of overlapping segments (as :func:`synchlib.preprocess.load_clip` makes it) and is never copied whole.
        """
        B, S = vid.shape[:2]
        step = max(1, self.segment_chunk)
        if step >= B * S:  # all at once (training): one copy of vid at most
            return self.vfeat_extractor(vid)
        pairs = [(b, s) for b in range(B) for s in range(S)]
        chunks = [
            self.vfeat_extractor(torch.stack([vid[b, s] for b, s in pairs[i : i + step]])[:, None])
            for i in range(0, len(pairs), step)
        ]
        return torch.cat(chunks, dim=0).view(B, S, *chunks[0].shape[2:])

    def extract_afeats(self, aud: Tensor) -> Tensor:
        """aud (B, S, 1, F, T) -> afeats (B, S, t, D)."""
        return self.afeat_extractor(aud)

    def sync_logits(self, vfeats: Tensor, afeats: Tensor) -> Tensor:
        """vfeats (B, S, tv, D), afeats (B, S, ta, D) -> logits (B, num_classes)."""
        v = self.vproj(vfeats).flatten(1, 2)
        a = self.aproj(afeats).flatten(1, 2)
        return self.transformer(v, a)

    def forward(self, vid: Tensor, aud: Tensor) -> Tensor:
        """vid (B, S, T, 3, H, W) float, aud (B, S, 1, F, T) float -> logits (B, num_classes)."""
        return self.sync_logits(self.extract_vfeats(vid), self.extract_afeats(aud))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As :meth:`nn.Module.load_state_dict`, but a longer stored positional table is cut to this model's
        length (how the reference runs a model with fewer segments). A shorter one is an error."""
        sd = dict(state_dict)
        pos = sd.get(POS_EMB_KEY)
        want = self.transformer.pos_emb_cfg.pos_emb.shape[1]
        if pos is not None and pos.ndim == 3 and pos.shape[1] != want:
            if pos.shape[1] < want:
                raise CheckpointError(
                    f"checkpoint positional table has {pos.shape[1]} rows, the model needs {want}: "
                    "use a config with fewer segments"
                )
            sd[POS_EMB_KEY] = pos[:, :want]
        return super().load_state_dict(sd, strict=strict, assign=assign)
