"""Visual branch: a divided space-time ViT ("MotionFormer", divided variant) plus spatial aggregation.

Input  vid   (B, S, T, C, H, W) float, normalised RGB, T frames per segment.
Output vfeats (B, S, t, D) with t = T / tubelet temporal tokens per segment (8 x 768 for the released model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VisualConfig
from .attention import ClsAggregation, attend

LN_EPS = 1e-6


class PatchEmbed2d(nn.Module):
    """2-D patch embedding. Present in the released state dict but unused by the forward pass."""

    def __init__(self, cfg: VisualConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)


class PatchEmbed3d(nn.Module):
    """Tubelet embedding: a Conv3d with kernel = stride = (tubelet, patch, patch), stored as one (``proj``).

    The tubelets do not overlap, so the convolution is computed as one matrix product of the flattened tubelets
    with the flattened kernel: the same sums, and on CPU several times faster than the convolution (its weight
    gradient above all) without the (N, C, T, H, W) copy of the input that the convolution needs.
    """

    def __init__(self, cfg: VisualConfig):
        super().__init__()
        self.kernel = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.dim, self.kernel, stride=self.kernel)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, T, C, H, W) -> tokens (N, t*h*w, D), flattened time-major (index t*h*w_ + h*w_ + w)."""
        N, T, C, H, W = x.shape
        kt, kh, kw = self.kernel
        t, h, w = T // kt, H // kh, W // kw
        tubelets = x[:, : t * kt, :, : h * kh, : w * kw].reshape(N, t, kt, C, h, kh, w, kw)
        tubelets = tubelets.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(N, t * h * w, C * kt * kh * kw)
        return F.linear(tubelets, self.proj.weight.flatten(1), self.proj.bias)  # kernel flattened as (C, kt, kh, kw)


class DividedAttention(nn.Module):
    """Self-attention restricted to groups of patch tokens, with a CLS token that sees everything.

    ``mode="time"`` groups patches by spatial position (t tokens per group); ``mode="space"`` groups them by
    temporal slot (h*w tokens per group). Every patch query attends to [CLS, its group]; the CLS query attends
    to all 1 + t*n tokens.
    """

    def __init__(self, dim: int, heads: int, mode: str):
        super().__init__()
        assert mode in ("time", "space")
        self.heads, self.mode = heads, mode
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.store: list | None = None

    def forward(self, x: Tensor, t: int, n: int) -> Tensor:
        """x (N, 1 + t*n, D) -> (N, 1 + t*n, D)."""
        N, L, D = x.shape
        H, E = self.heads, D // self.heads
        q, k, v = self.qkv(x).view(N, L, 3, H, E).permute(2, 0, 3, 1, 4)  # each (N, H, L, E)
        cls_out = attend(q[:, :, :1], k, v, self.scale, self.store)  # (N, H, 1, E)

        def grouped(z: Tensor) -> Tensor:  # (N, H, t*n, E) -> (N, H, G, g, E)
            z = z.reshape(N, H, t, n, E)
            return z.transpose(2, 3) if self.mode == "time" else z

        qg, kg, vg = grouped(q[:, :, 1:]), grouped(k[:, :, 1:]), grouped(v[:, :, 1:])
        G = qg.shape[2]
        kg = torch.cat([k[:, :, :1, None].expand(N, H, G, 1, E), kg], dim=3)  # (N, H, G, 1+g, E)
        vg = torch.cat([v[:, :, :1, None].expand(N, H, G, 1, E), vg], dim=3)
        out = attend(qg, kg, vg, self.scale, self.store)  # (N, H, G, g, E)
        if self.mode == "time":
            out = out.transpose(2, 3)
        out = torch.cat([cls_out, out.reshape(N, H, t * n, E)], dim=2)  # (N, H, L, E)
        return self.proj(out.transpose(1, 2).reshape(N, L, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedBlock(nn.Module):
    """Time attention, then space attention, then MLP; each pre-norm with a residual."""

    def __init__(self, cfg: VisualConfig):
        super().__init__()
        D = cfg.dim
        self.norm1 = nn.LayerNorm(D, eps=LN_EPS)
        self.attn = DividedAttention(D, cfg.heads, "space")
        self.timeattn = DividedAttention(D, cfg.heads, "time")
        self.norm2 = nn.LayerNorm(D, eps=LN_EPS)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio))
        self.norm3 = nn.LayerNorm(D, eps=LN_EPS)

    def forward(self, x: Tensor, t: int, n: int) -> Tensor:
        x = x + self.timeattn(self.norm3(x), t, n)
        x = x + self.attn(self.norm1(x), t, n)
        return x + self.mlp(self.norm2(x))


class MotionFormer(nn.Module):
    """Divided space-time ViT with spatial CLS aggregation. State dict keys match ``vfeat_extractor.*``."""

    def __init__(self, cfg: VisualConfig):
        super().__init__()
        self.cfg = cfg
        D, n = cfg.dim, cfg.grid**2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, D))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.t_tokens, D))
        self.patch_embed = PatchEmbed2d(cfg)
        self.patch_embed_3d = PatchEmbed3d(cfg)
        self.blocks = nn.ModuleList(DividedBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=LN_EPS)
        self.spatial_attn_agg = ClsAggregation(D, cfg.agg_heads, cfg.agg_ff)
        for p in (self.cls_token, self.pos_embed, self.temp_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def tokens(self, clips: Tensor) -> Tensor:
        """clips (N, T, C, H, W) -> normalised patch tokens (N, t, h*w, D) after the last block."""
        N = clips.shape[0]
        t, n = self.cfg.t_tokens, self.cfg.grid**2
        x = self.patch_embed_3d(clips)  # (N, t*n, D)
        pos = (self.pos_embed[:, None, 1:] + self.temp_embed[:, :, None]).flatten(1, 2)  # (1, t*n, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(N, -1, -1)
        x = torch.cat([cls, x + pos], dim=1)  # (N, 1 + t*n, D)
        for block in self.blocks:
            x = block(x, t, n)
        return self.norm(x[:, 1:]).view(N, t, n, -1)

    def forward(self, vid: Tensor) -> Tensor:
        """vid (B, S, T, C, H, W) -> vfeats (B, S, t, D)."""
        B, S = vid.shape[:2]
        x = self.tokens(vid.flatten(0, 1))  # (B*S, t, n, D)
        N, t, n, D = x.shape
        return self.spatial_attn_agg(x.reshape(N * t, n, D)).view(B, S, t, D)
