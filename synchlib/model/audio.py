"""Audio branch: AST (Audio Spectrogram Transformer, Hugging Face key layout) plus frequency aggregation.

Input  aud    (B, S, 1, F, T) log-mel spectrogram per segment (F = 128 mel bins, T = 66 frames).
Output afeats (B, S, t, D) with t time columns of patches per segment (6 x 768 for the released model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AudioConfig
from .attention import ClsAggregation, attend, merge_heads, split_heads

LN_EPS = 1e-12


class _Linear(nn.Module):
    """A module with a single Linear called ``dense`` (HF naming: ``...output.dense``)."""

    def __init__(self, i: int, o: int):
        super().__init__()
        self.dense = nn.Linear(i, o)


class SelfAttention(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)
        self.store: list | None = None

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(f(x), self.heads) for f in (self.query, self.key, self.value))
        return merge_heads(attend(q, k, v, q.shape[-1] ** -0.5, self.store))


class Attention(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.output = _Linear(cfg.dim, cfg.dim)


class Layer(nn.Module):
    """Pre-norm transformer layer with the HF ViT/AST layout."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = _Linear(cfg.dim, cfg.intermediate)
        self.output = _Linear(cfg.intermediate, cfg.dim)
        self.layernorm_before = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.layernorm_after = nn.LayerNorm(cfg.dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention.output.dense(self.attention.attention(self.layernorm_before(x)))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class _PatchEmbeddings(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.projection = nn.Conv2d(1, cfg.dim, cfg.patch_size, stride=(cfg.fstride, cfg.tstride))


class Embeddings(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        D = cfg.dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, D))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 2 + cfg.f_tokens * cfg.t_tokens, D))
        self.patch_embeddings = _PatchEmbeddings(cfg)
        for p in (self.cls_token, self.distillation_token, self.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, spec: Tensor) -> Tensor:
        """spec (N, 1, F, T) -> (N, 2 + f*t, D), patches flattened frequency-major (index f*t_ + t)."""
        x = self.patch_embeddings.projection(spec).flatten(2).transpose(1, 2)
        N = x.shape[0]
        aux = torch.cat([self.cls_token, self.distillation_token], dim=1).expand(N, -1, -1)
        return torch.cat([aux, x], dim=1) + self.position_embeddings


class _Encoder(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.depth))


class AST(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.dim, eps=LN_EPS)

    def forward(self, spec: Tensor) -> Tensor:
        """spec (N, 1, F, T) -> (N, 2 + f*t, D)."""
        x = self.embeddings(spec)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class ASTFeatures(nn.Module):
    """AST followed by per-time-column CLS aggregation over frequency. Keys match ``afeat_extractor.*``."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.ast = AST(cfg)
        self.freq_attn_agg = ClsAggregation(cfg.dim, cfg.agg_heads, cfg.agg_ff)

    def forward(self, aud: Tensor) -> Tensor:
        """aud (B, S, 1, F, T) -> afeats (B, S, t, D)."""
        B, S = aud.shape[:2]
        f, t = self.cfg.f_tokens, self.cfg.t_tokens
        x = self.ast(aud.flatten(0, 1))[:, 2:]  # (B*S, f*t, D)
        D = x.shape[-1]
        x = x.view(B * S, f, t, D).transpose(1, 2).reshape(B * S * t, f, D)
        return self.freq_attn_agg(x).view(B, S, t, D)
