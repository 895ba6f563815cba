"""Attention primitives shared by every part of the model, with optional capture of attention probabilities.

The default path calls :func:`torch.nn.functional.scaled_dot_product_attention`. When a module's ``store``
attribute is a list (set by :func:`synchlib.attention.capture_attention`), the same result is computed
explicitly and the probabilities are appended to that list, so visualisation never slows the default path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float, store: list | None = None) -> Tensor:
    """softmax(q k^T * scale) v over the last two dims.

    q: (..., Lq, E), k, v: (..., Lk, E) -> (..., Lq, E). With ``store``, also appends the probabilities
    (..., Lq, Lk) (detached, on the CPU) to it.
    """
    if store is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    probs = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    store.append(probs.detach().float().cpu())
    return probs @ v


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, H*E) -> (B, H, L, E)."""
    B, L, D = x.shape
    return x.view(B, L, heads, D // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, L, E) -> (B, L, H*E)."""
    B, H, L, E = x.shape
    return x.transpose(1, 2).reshape(B, L, H * E)


class _PackedProjections(nn.Module):
    """Parameter holder with the names of ``nn.MultiheadAttention`` (``in_proj_*``, ``out_proj``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)


class ClsAggregation(nn.Module):
    """Pools a set of tokens into one vector with a learned CLS token and one pre-norm encoder layer.

    Numerically this is ``torch.nn.TransformerEncoderLayer(d_model, heads, ff, activation="gelu",
    batch_first=True, norm_first=True, layer_norm_eps=1e-6)`` applied to ``[cls, tokens]`` and read at the CLS
    position, and its state dict keys are the same. Because only the CLS output is kept, only the CLS query,
    its attention output and its MLP are computed (keys and values still use every token).

    Used for the spatial aggregation of the visual branch (196 patches per frame pair) and the frequency
    aggregation of the audio branch (12 frequency tokens per time column).
    """

    def __init__(self, dim: int, heads: int, ff: int, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = _PackedProjections(dim)
        self.linear1 = nn.Linear(dim, ff)
        self.linear2 = nn.Linear(ff, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.store: list | None = None
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (N, L, D) -> pooled (N, D). Captured probabilities: (N, heads, 1, 1 + L)."""
        N, L, D = tokens.shape
        x = torch.cat([self.cls_token.expand(N, -1, -1), tokens], dim=1)  # (N, 1+L, D)
        h = self.norm1(x)
        w, b = self.self_attn.in_proj_weight, self.self_attn.in_proj_bias
        q = F.linear(h[:, :1], w[:D], b[:D])
        k = F.linear(h, w[D : 2 * D], b[D : 2 * D])
        v = F.linear(h, w[2 * D :], b[2 * D :])
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        a = merge_heads(attend(q, k, v, (D // self.heads) ** -0.5, self.store))  # (N, 1, D)
        cls = x[:, :1] + self.self_attn.out_proj(a)
        cls = cls + self.linear2(F.gelu(self.linear1(self.norm2(cls))))
        return cls[:, 0]
