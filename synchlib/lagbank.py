"""The lag bank: hand-set starting weights for the tiny model's synchronisation transformer.

**Why.** The model must say how far the sound is shifted against the picture. A single token cannot tell: a click
in the audio or a flash in the video looks the same at every offset. Only a *pair* can: a click at audio time t and
a flash at video time t + 0.4 s mean "offset +0.4 s". From random weights the transformer must discover by itself
that it should compare times, and which times; until attention already pairs tokens by their time difference, no
small weight change lowers the loss, so training sits at chance (loss ln 21) for a long time. On perfect event
features we saw no progress in 1,300 steps of batch 32.

**What.** So :func:`init_lag_bank` sets the weights to compute something known to work, a cross-correlation: for
each of the 21 offsets of the grid, how many clicks have a flash exactly that far away. Same architecture, same
forward code; only the starting values differ.

1. Positional table: every token carries a code of its own time (cos and sin of the time at a few periods,
   :func:`time_code`); each audio token also carries, per offset, whether looking that far lands inside the video.
2. Input norms: each projected token is read through one "event" number (is there a flash / a click here?).
   Training teaches the feature extractors to produce it.
3. Block 1 attention: head c belongs to offset c. Its query turns an audio token's time code by ``grid[c]``, so
   the key it matches best is the video token at time t + ``grid[c]``; the head copies that token's event number.
   A flash one token away beats an empty token at the exact time; past the video's edge the head looks at the
   OFF/MOD tokens, which hold no event. :func:`head_looks` shows where each head looks.
4. Block 1 MLP: unit c fires when the audio token has a click *and* head c found a flash: a coincidence.
5. Block 2 attention: the OFF token averages over the audio tokens that hold a click, per offset: the clicks that
   found their flash minus a share of those that could have (a likelihood ratio rather than a count, so offsets at
   the grid's ends, where fewer clicks are in view, are not outvoted by chance coincidences in the middle).
6. Head: logit c = gain x that score.

The event numbers start as linear probes of the random features (:func:`init_event_readouts`). Untrained, on
perfect event numbers, this finds the offset of about 98 % of random windows
(:func:`ideal_accuracy`). Training then mainly teaches the feature extractors what an event looks and sounds like.

>>> cfg = load_config("tiny-synthetic"); model = build_model(cfg)     # doctest: +SKIP
>>> layout = init_lag_bank(model, cfg)                                # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, load_config
from .errors import SynchlibError
from .model import Synchformer, build_model
from .preprocess import window_token_times

PERIODS = (0.63, 0.67, 1.2, 3.5)  # s; chosen so the kernel sum cos(2 pi d / p) is high only for |d| < 0.1 s
BETA = 5.0  # attention logit per unit of kernel
EVENT_BONUS = 5.0  # block-1 logit added for a video token with a full event score: a look finds a flash one token
#                    away from the looked-at time rather than the empty token at that time
CONTENT = 0.5  # event dims range over [0, CONTENT] (in units of the time-code amplitude)
HIT = 0.5  # L[c] for a full match
AND_GAIN = 8.0  # slope of the coincidence units
AND_THRESHOLD = 1.2  # EA/CONTENT + L/HIT must exceed this (2 at a full match)
COINCIDENCE = 0.3  # B[c] written per coincidence
SINK_LEVEL = 0.5  # audio tokens' constant (sink query), in units of amp
SINK_MARGIN = 1.0  # the sink scores like a video token whose kernel is this far below a perfect match
POOL_BETA = 5.0  # block-2 attention logit of the OFF token on an audio token with a full event score
POOLED = 0.3  # S[c] when every attended token is a coincidence at offset c
ELIGIBLE = 0.1  # E[c] of an audio token whose look at offset c lands inside the video window
ELIGIBLE_PENALTY = 0.3  # S[c] loses this much (x POOLED) per sound whose look at offset c could match
HEAD_GAIN = 3.0
EVENT_POS_WEIGHT = 4.0  # events are sparse (about 1 token in 8): the probes and the detection loss weigh positives up
PROBE_L2 = 1e-2  # ridge penalty of the event probes (on standardised features)
PROBE_STD_FLOOR = 0.3  # of the overall feature spread
PROBE_LOGIT_STD = 4.0  # the probes' scores are scaled down to at most this spread
PROBE_ITERS = 100
IDEAL_SCORE = 4.0  # event score of a perfect detector (a confident logit), for :func:`event_tokens`
VIDEO_HIT_SEC, AUDIO_HIT_SEC = 0.04, 0.05  # a token holds an event this close to its centre (:func:`ideal_accuracy`)


class LagBankError(SynchlibError, ValueError):
    """The config cannot hold a lag bank."""


@dataclass(frozen=True)
class LagBankLayout:
    """Which residual dims of the synchronisation transformer hold what after :func:`init_lag_bank` (C classes,
    F periods)."""

    time_v: np.ndarray  # (2F,) time code of video tokens
    time_a: np.ndarray  # (2F,) time code of audio tokens
    event_v: int  # video event number
    event_a: int  # audio event number
    const: int  # OFF/MOD tokens' constant
    sink: int  # audio tokens' constant: lets them attend to the OFF/MOD tokens when the video is out of view
    lag: np.ndarray  # (C,) L: video event seen at each offset
    hit: np.ndarray  # (C,) B: coincidences
    pooled: np.ndarray  # (C,) S: pooled coincidences (OFF token)
    eligible: np.ndarray  # (C,) E: the audio token's look at each offset lands inside the video window


def time_code(t: np.ndarray, periods: Sequence[float] = PERIODS, amp: float = 1.0) -> np.ndarray:
    """(n,) times (s) -> (n, 2F) codes ``amp * [cos(w_j t), sin(w_j t)]_j`` with w_j = 2 pi / periods[j]. The dot
    product of two codes is ``amp**2 * sum_j cos(w_j (t1 - t2))``: it depends only on the time difference."""
    ang = np.asarray(t, dtype=np.float64)[:, None] * (2 * np.pi / np.asarray(periods))[None]
    out = np.empty((len(ang), 2 * len(periods)))
    out[:, 0::2], out[:, 1::2] = np.cos(ang), np.sin(ang)
    return amp * out


def _rotation(theta: float) -> np.ndarray:
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def lag_bank_layout(cfg: Config) -> LagBankLayout:
    """The residual layout :func:`init_lag_bank` uses; raises :class:`LagBankError` when the config cannot hold
    it (one head per offset class, wide enough heads, two blocks, an offset head)."""
    sync, C = cfg.sync, cfg.sync.num_classes
    F = len(PERIODS)
    E = 2 * F + 2  # per head: time code + attention sink + event bonus
    first = 4 * F + 4
    if (sync.heads != C or sync.dim % sync.heads or sync.dim // sync.heads < E or sync.depth < 2
            or first + 4 * C > sync.dim or sync.head != "offset"):
        raise LagBankError(
            f"the lag bank needs one attention head per offset class (n_head = {C}), a head size of at least {E}, "
            f"n_embd >= {max(E * C, first + 4 * C)} (divisible by n_head), n_layer >= 2 and an offset head; the "
            f"config has n_head={sync.heads}, n_embd={sync.dim}, n_layer={sync.depth}, head {sync.head!r}")
    lag = np.arange(first, first + C)
    return LagBankLayout(np.arange(0, 2 * F), np.arange(2 * F, 4 * F), 4 * F, 4 * F + 1, 4 * F + 2, 4 * F + 3,
                         lag, lag + C, lag + 2 * C, lag + 3 * C)


@torch.no_grad()
def init_lag_bank(model: Synchformer, cfg: Config, amp: float = 1.0) -> LagBankLayout:
    """Set the projections and the synchronisation transformer of ``model`` to the cross-correlation over the
    offset grid described above (``amp``: amplitude of the time codes). Extra blocks (n_layer > 2) start as
    identities. The projections keep their (random) weights only in the event rows."""
    lay = lag_bank_layout(cfg)
    tr = model.transformer
    D, C = cfg.sync.dim, cfg.sync.num_classes
    E = D // cfg.sync.heads
    F = len(PERIODS)
    grid = cfg.data.grid.astype(np.float64)
    tv, ta = (t.reshape(-1) for t in window_token_times(cfg))
    norm = amp * math.sqrt(F)  # every token's residual has this norm (time code or constant)
    sig = norm / math.sqrt(D)  # ... so the pre-norms divide by about this
    content, hit, eligible = CONTENT * amp, HIT * amp, ELIGIBLE * amp

    def zero(*modules: nn.Module) -> None:
        for mod in modules:
            for p in mod.parameters():
                p.zero_()

    def f32(x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, dtype=torch.float32)

    # 1. positional table and special tokens: [OFF, video tokens, MOD, audio tokens]
    pos = torch.zeros(tr.pos_emb_cfg.pos_emb.shape[1:])
    nv, na = len(tv), len(ta)
    pos[0, lay.const] = norm  # OFF
    pos[1 : 1 + nv, lay.time_v] = f32(time_code(tv, PERIODS, amp))
    pos[1 + nv, lay.const] = norm  # MOD
    pos[2 + nv : 2 + nv + na, lay.time_a] = f32(time_code(ta, PERIODS, amp))
    pos[2 + nv : 2 + nv + na, lay.sink] = SINK_LEVEL * amp
    half_token = (tv[1] - tv[0]) / 2
    look = ta[:, None] + grid[None]  # (na, C) video time each audio token looks at, per offset
    in_view = (look >= tv.min() - half_token) & (look <= tv.max() + half_token)
    pos[2 + nv : 2 + nv + na, lay.eligible] = f32(in_view * eligible)
    tr.pos_emb_cfg.pos_emb.copy_(pos[None])
    tr.OFF_tok.zero_()
    tr.MOD_tok.zero_()

    # 2. features -> one event dim each: proj puts a learnable score in the event dim and a constant elsewhere, so
    # the input norm turns the score into a soft indicator; the norm's affine maps it to [0, content]
    spare = D - 1
    for proj, ln, dim in ((model.vproj, tr.vis_in_lnorm, lay.event_v), (model.aproj, tr.aud_in_lnorm, lay.event_a)):
        w = proj.weight[dim].clone()
        zero(proj, ln)
        proj.weight[dim] = w / (w.norm() + 1e-12)
        proj.bias[spare] = 1.0
        ln.weight[dim] = content / (2 * math.sqrt(D))
        ln.bias[dim] = content / 2

    b1, b2 = tr.blocks[0], tr.blocks[1]
    zero(b1.attn, b1.mlp, b2.attn, b2.mlp)
    for extra in tr.blocks[2:]:
        zero(extra.attn.proj, extra.mlp[2])
    # 3. block 1 attention: head c, audio time t -> video time t + grid[c]
    a = b1.attn
    kq = math.sqrt(BETA) * E**0.25 * sig / amp  # q.k / sqrt(E) = BETA * sum_j cos(...)
    sink_qk = BETA * (F - SINK_MARGIN) * math.sqrt(E) * sig**2 / (SINK_LEVEL * amp * norm)
    bonus_qk = EVENT_BONUS * math.sqrt(E) * sig**2 / (SINK_LEVEL * amp * content)
    w = 2 * np.pi / np.asarray(PERIODS)
    for c in range(C):
        rows = slice(c * E, c * E + 2 * F)
        rot = np.zeros((2 * F, 2 * F))
        for j in range(F):
            rot[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = _rotation(w[j] * grid[c])
        a.query.weight[rows, lay.time_a] = f32(rot * kq)
        a.key.weight[rows, lay.time_v] = torch.eye(2 * F) * kq
        # sink: OFF and MOD (constant dim) score BETA * (F - SINK_MARGIN) for every audio token, more than any
        # video token away from the looked-at time, so a look past the video's edge finds no event
        a.query.weight[c * E + 2 * F, lay.sink] = math.sqrt(sink_qk)
        a.key.weight[c * E + 2 * F, lay.const] = math.sqrt(sink_qk)
        # event bonus: the audio tokens' constant (query) times the video tokens' event dim (key)
        a.query.weight[c * E + 2 * F + 1, lay.sink] = math.sqrt(bonus_qk)
        a.key.weight[c * E + 2 * F + 1, lay.event_v] = math.sqrt(bonus_qk)
        a.value.weight[c * E, lay.event_v] = sig * hit / content
        a.proj.weight[lay.lag[c], c * E] = 1.0
    # 4. block 1 MLP: coincidence units
    up, down = b1.mlp[0], b1.mlp[2]
    for c in range(C):
        up.weight[c, lay.lag[c]] = AND_GAIN * sig / hit
        up.weight[c, lay.event_a] = AND_GAIN * sig / content
        up.bias[c] = -AND_GAIN * AND_THRESHOLD
        down.weight[lay.hit[c], c] = COINCIDENCE * amp / (AND_GAIN * (2 - AND_THRESHOLD))
    # 5. block 2 attention: the OFF token (query from its constant dim) attends to the audio tokens with a sound and
    # averages its coincidences, minus PENALTY for each sound that could have been matched at offset c
    qk = math.sqrt(POOL_BETA * math.sqrt(E)) * sig
    for c in range(C):
        b2.attn.query.weight[c * E, lay.const] = qk / norm
        b2.attn.key.weight[c * E, lay.event_a] = qk / content
        b2.attn.value.weight[c * E, lay.hit[c]] = POOLED * sig / COINCIDENCE
        b2.attn.value.weight[c * E, lay.eligible[c]] = -ELIGIBLE_PENALTY * POOLED * sig / eligible
        b2.attn.proj.weight[lay.pooled[c], c * E] = 1.0
    # 6. head
    zero(tr.off_head)
    for c in range(C):
        tr.off_head.weight[c, lay.pooled[c]] = HEAD_GAIN
    return lay


# --------------------------------------------------------------------------------------------------------------
# The event numbers start as linear probes of the random features


def fit_logistic(x: Tensor, y: Tensor, pos_weight: float = EVENT_POS_WEIGHT, l2: float = PROBE_L2,
                 max_iter: int = PROBE_ITERS) -> tuple[Tensor, float]:
    """Weighted logistic regression of y (n,) in {0, 1} on x (n, d) with L-BFGS; returns (w (d,), b) on the
    original scale of x. Features are standardised for the fit, with a floor on the scale (a feature that barely
    varies must not get a huge weight, or the first training steps would swing the score wildly)."""
    mean = x.mean(0)
    std = torch.maximum(x.std(0), PROBE_STD_FLOOR * x.std()) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    pw = torch.tensor(pos_weight)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y, pos_weight=pw) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_orig = (w / std).detach()
    return w_orig, float(b.detach() - (w_orig * mean).sum())


@torch.no_grad()
def init_event_readouts(model: Synchformer, vid: Tensor, aud: Tensor, event_v: Tensor, event_a: Tensor,
                        layout: LagBankLayout) -> None:
    """Set the lag bank's event numbers (rows ``event_v`` / ``event_a`` of the projections) to linear probes fitted
    on the model's features of a few windows: vid (B, S, T, 3, H, W), aud (B, S, 1, F, Tspec) and which tokens hold
    an event, event_v (B, S, tv) and event_a (B, S, ta) 0/1. Random features already tell events apart linearly;
    finding that readout by gradient steps alone takes many steps."""
    for feats, proj, dim, target in ((model.extract_vfeats(vid), model.vproj, layout.event_v, event_v),
                                     (model.extract_afeats(aud), model.aproj, layout.event_a, event_a)):
        x, y = feats.reshape(-1, feats.shape[-1]), target.reshape(-1)
        with torch.enable_grad():
            w, b = fit_logistic(x, y)
        shrink = min(1.0, PROBE_LOGIT_STD / float((x @ w + b).std()))  # a separable fit has huge weights: tame them
        proj.weight[dim] = w * shrink
        proj.bias[dim] = b * shrink


# --------------------------------------------------------------------------------------------------------------
# Looking inside: where the heads look, and what the bank does with perfect event scores


def event_tokens(cfg: Config, video_event: np.ndarray, audio_event: np.ndarray,
                 score: float = IDEAL_SCORE) -> tuple[Tensor, Tensor]:
    """Projected tokens as a lag bank's projections give them for event detectors that output ``+score`` on the
    tokens marked in ``video_event`` (Nv,) / ``audio_event`` (Na,) bool and ``-score`` elsewhere: (v (1, Nv, D),
    a (1, Na, D)) float32, with the projections' constant in the last dim. Input for ``model.transformer``."""
    lay, D = lag_bank_layout(cfg), cfg.sync.dim
    out = []
    for hit, dim in ((video_event, lay.event_v), (audio_event, lay.event_a)):
        x = torch.zeros(1, len(hit), D)
        x[0, :, D - 1] = 1.0
        x[0, :, dim] = torch.from_numpy(np.where(hit, score, -score)).float()
        out.append(x)
    return out[0], out[1]


@dataclass(frozen=True)
class HeadLooks:
    """Where each head of block 1 of a fresh lag bank looks, for a window without events.

    attention (C, Na, Nv): share of audio token i's attention (rows, in time order) that head c puts on the video
    tokens at each time (columns); tokens of overlapping segments that share a time are merged (rows averaged,
    columns summed), and the rest of a row went to the OFF/MOD sink. audio_times (Na,), video_times (Nv,): s from
    the window's start; grid (C,): the offset of each head (s).
    """

    attention: np.ndarray
    audio_times: np.ndarray
    video_times: np.ndarray
    grid: np.ndarray

    def lag_profile(self, bin_sec: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(bin centres (K,) s, profile (C, K)): per head, the attention on video tokens at each time difference
        (video time minus audio time), averaged over audio tokens. Head c peaks at ``grid[c]``."""
        diff = self.video_times[None, :] - self.audio_times[:, None]  # (Na, Nv)
        k = math.ceil(float(np.abs(self.grid).max()) / bin_sec) + 2
        edges = (np.arange(-k, k + 2) - 0.5) * bin_sec  # bins centred on multiples of bin_sec
        which = np.digitize(diff, edges) - 1
        ok = (which >= 0) & (which < len(edges) - 1)
        prof = np.zeros((len(self.grid), len(edges) - 1))
        for c in range(len(self.grid)):
            np.add.at(prof[c], which[ok], self.attention[c][ok])
        return (edges[:-1] + edges[1:]) / 2, prof / len(self.audio_times)


@torch.no_grad()
def head_looks(cfg: Config | str = "tiny-synthetic") -> HeadLooks:
    """Block-1 attention of a freshly initialised lag bank on a window without events (see :class:`HeadLooks`)."""
    cfg = load_config(cfg)
    model = build_model(cfg).eval()
    init_lag_bank(model, cfg)
    tv, ta = (t.reshape(-1) for t in window_token_times(cfg))
    v, a = event_tokens(cfg, np.zeros(len(tv), bool), np.zeros(len(ta), bool))
    attn = model.transformer.blocks[0].attn
    attn.store = []
    try:
        model.transformer(v, a)
        probs = attn.store[0][0].float().numpy()  # (C, L, L), L = 2 + Nv + Na
    finally:
        attn.store = None
    a2v = probs[:, 2 + len(tv) :, 1 : 1 + len(tv)]  # (C, Na, Nv): audio queries, video keys
    ut_v, iv = np.unique(np.round(tv, 6), return_inverse=True)
    ut_a, ia = np.unique(np.round(ta, 6), return_inverse=True)
    by_v = np.zeros(a2v.shape[:2] + (len(ut_v),))
    np.add.at(by_v, (slice(None), slice(None), iv), a2v)  # sum over video tokens sharing a time
    out = np.zeros((len(a2v), len(ut_a), len(ut_v)))
    np.add.at(out, (slice(None), ia), by_v)
    out /= np.bincount(ia)[None, :, None]  # mean over audio tokens sharing a time
    return HeadLooks(out, ut_a, ut_v, cfg.data.grid.astype(np.float64))


def ideal_accuracy(cfg: Config | str = "tiny-synthetic", n_windows: int = 126, seed: int = 0,
                   miss: tuple[float, float] = (0.0, 0.0), false: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Per grid offset (C,), the share of ``n_windows`` random windows (offsets in turn) whose offset a fresh lag
    bank finds from event scores of perfect detectors (:func:`event_tokens`), spoiled at the given rates:
    ``miss`` (video, audio) share of event tokens scored as empty, ``false`` (video, audio) share of empty tokens
    scored as events. Event times are generator-like (gaps of 0.32 s + Gamma(2, 0.25) s, on frames)."""
    cfg = load_config(cfg)
    model = build_model(cfg).eval()
    init_lag_bank(model, cfg)
    tv, ta = (t.reshape(-1) for t in window_token_times(cfg))
    grid = cfg.data.grid
    rng = np.random.default_rng(seed)
    right, count = np.zeros(len(grid)), np.zeros(len(grid))
    for i in range(n_windows):
        events = np.round(np.cumsum(0.32 + rng.gamma(2.0, 0.25, 40)) * cfg.data.vfps) / cfg.data.vfps
        c = i % len(grid)
        rel = events - round(float(rng.uniform(2.2, 4.0)), 2)  # event times from the window's start
        hits = [(np.abs(tv[:, None] - rel[None]) <= VIDEO_HIT_SEC).any(1),
                (np.abs(ta[:, None] - (rel[None] - grid[c])) <= AUDIO_HIT_SEC).any(1)]
        for k in range(2):
            if miss[k] or false[k]:
                hits[k] = np.where(hits[k], rng.random(hits[k].size) >= miss[k], rng.random(hits[k].size) < false[k])
        with torch.no_grad():
            right[c] += int(model.transformer(*event_tokens(cfg, *hits)).argmax()) == c
        count[c] += 1
    return right / np.maximum(count, 1)
