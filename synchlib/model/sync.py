"""Synchronisation module: a small minGPT-style transformer over [OFF, video tokens, MOD, audio tokens].

Input  v (B, S*tv, D), a (B, S*ta, D) projected features, flattened segment-major.
Output logits (B, num_classes), read from the OFF token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import SyncConfig
from ..errors import InvalidArgumentError
from .attention import attend, merge_heads, split_heads

LN_EPS = 1e-5


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.store: list | None = None

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(f(x), self.heads) for f in (self.query, self.key, self.value))
        return self.proj(merge_heads(attend(q, k, v, q.shape[-1] ** -0.5, self.store)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PositionalTable(nn.Module):
    """Learned positional table; held in a module so its key is ``pos_emb_cfg.pos_emb`` as in the release."""

    def __init__(self, length: int, dim: int):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, length, dim))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)


class GlobalTransformer(nn.Module):
    """Keys match ``transformer.*``: OFF/MOD tokens, input norms, positional table, blocks, head."""

    def __init__(self, cfg: SyncConfig):
        super().__init__()
        D = cfg.dim
        self.cfg = cfg
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, D))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, D))
        self.vis_in_lnorm = nn.LayerNorm(D, eps=LN_EPS)
        self.aud_in_lnorm = nn.LayerNorm(D, eps=LN_EPS)
        self.pos_emb_cfg = PositionalTable(cfg.pos_len, D)
        self.blocks = nn.ModuleList(Block(D, cfg.heads) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(D, eps=LN_EPS)
        head = nn.Linear(D, cfg.num_classes)
        if cfg.head == "syncability":
            self.sync_head = head
        else:
            self.off_head = head
        for p in (self.OFF_tok, self.MOD_tok):
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def head(self) -> nn.Linear:
        return self.sync_head if self.cfg.head == "syncability" else self.off_head

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        """v (B, Lv, D), a (B, La, D) -> logits (B, num_classes)."""
        B = v.shape[0]
        x = torch.cat(
            [
                self.OFF_tok.expand(B, -1, -1),
                self.vis_in_lnorm(v),
                self.MOD_tok.expand(B, -1, -1),
                self.aud_in_lnorm(a),
            ],
            dim=1,
        )
        pos = self.pos_emb_cfg.pos_emb
        if x.shape[1] != pos.shape[1]:
            raise InvalidArgumentError(
                f"the synchronisation transformer was built for {pos.shape[1]} tokens but got {x.shape[1]}; "
                "build the model from a config with the matching data.n_segments (loading a longer released "
                "table into it keeps its first rows)"
            )
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)[:, 0])
