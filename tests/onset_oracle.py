"""A stand-in for a trained model on synthetic clips: it finds the offset by correlating brightness onsets with
sound onsets, through the same interface (``extract_vfeats``, ``extract_afeats``, ``sync_logits``) and the same
inputs as Synchformer. Tests of the plumbing around the model (window placement, segment reassembly, the sign
of the offset, audio replacement) can then assert answers that a random model cannot give."""

from __future__ import annotations

import torch
from torch import Tensor

from synchlib.config import Config

LOGIT_SCALE = 10.0


def _onsets(x: Tensor) -> Tensor:
    """(B, T) -> (B, T-1): rises only, standardised per row."""
    x = torch.relu(torch.diff(x, dim=1))
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)


class OnsetOracle:
    """Visual features: mean brightness per frame (B, S, T, 1); audio features: mean normalised log-mel per
    spectrogram frame (B, S, Tspec, 1); logits: correlation of the onsets for each grid offset."""

    def __init__(self, cfg: Config):
        self.cfg, self.device = cfg, torch.device("cpu")

    def extract_vfeats(self, vid: Tensor) -> Tensor:
        return vid.mean(dim=(3, 4, 5))[..., None]

    def extract_afeats(self, aud: Tensor) -> Tensor:
        return aud[:, :, 0].mean(dim=2)[..., None]

    def sync_logits(self, vfeats: Tensor, afeats: Tensor) -> Tensor:
        """Reassemble the window from its half-overlapping segments, then score every grid offset."""
        d = self.cfg.data
        half_v, half_a = d.step_vframes, d.step_asamples // d.hop_length
        per = d.afps // d.hop_length // d.vfps  # spectrogram frames per video frame
        v = torch.cat([vfeats[:, :-1, :half_v, 0].flatten(1), vfeats[:, -1, :, 0]], 1)  # (B, window frames)
        rest = v.shape[1] * per - half_a * (afeats.shape[1] - 1)
        a = torch.cat([afeats[:, :-1, :half_a, 0].flatten(1), afeats[:, -1, :rest, 0]], 1)
        v, a = _onsets(v), _onsets(a.view(a.shape[0], -1, per).amax(-1))
        scores = []
        for offset in d.grid:  # positive: the sound comes that much before the picture
            s = int(round(float(offset) * d.vfps))
            scores.append((v[:, s:] * a[:, : a.shape[1] - s]).mean(1) if s >= 0 else (v[:, :s] * a[:, -s:]).mean(1))
        return LOGIT_SCALE * torch.stack(scores, 1)
