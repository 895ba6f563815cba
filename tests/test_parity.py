"""Parity with the reference implementation: golden inputs and outputs in ``tests/fixtures/parity`` (see its README).

Evidence chain, per case: synchlib decodes the shipped sample clip itself; its frames equal the reference's bit for
bit (SHA-256 per frame); its model input equals the reference's fp16 mapping of those frames; its audio crop and
log-mel spectrogram equal the reference's within rounding (bounds derived below); and the deterministic-weights
model gives the reference's features and logits from the reference's inputs and from synchlib's own.

Tolerances, with their reasons:

* frames, frame indices, the uint8-to-input table, the state-dict layout: exact.
* audio waveform: :data:`WAVE_ATOL`.
* log-mel spectrogram: a per-bin bound from float32 FFT rounding and the measured waveform difference,
  :func:`log_mel_tolerance`.
* features and logits: :data:`conftest.REL_TOL` (1e-4 of the largest magnitude); reason at its definition.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from synchlib.config import DataConfig, load_config
from synchlib.errors import CheckpointError
from synchlib.model import build_model
from synchlib.preprocess import MEL_EPS, load_clip, log_mel, mel_filterbank, rgb_lut

from .conftest import (
    RELEASED_ID,
    SYNCABILITY_ID,
    assert_close_rel,
    assert_frames_are_golden,
    case_window,
    golden,
    parity_file,
)  # fmt: skip

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23; the unit roundoff u is EPS32 / 2

# AAC decoding is float arithmetic (inverse MDCT + windowed overlap-add), and FFmpeg builds and their SIMD paths
# round it differently. Rounding is relative to the signal's scale; these clips peak at 1.08 and 1.11, where one
# float32 ulp is 1.2e-7. Observed decoder-to-decoder differences: 2.4e-7 (A) and 1.5e-7 (B) between the
# reference's FFmpeg 5.1 and PyAV 18's bundled FFmpeg 8.1, and <= 3e-7 between FFmpeg 5.1 and 6.1 in the reference
# run. 1e-6 = 8 ulps at full scale. The spectrogram bound below uses the measured difference, not this number.
WAVE_ATOL = 1e-6

# Per-bin float32 FFT rounding, per implementation: |dX_k| <= FFT_ROUNDING * EPS32 * log2(n_fft) * ||x||_2 for
# a windowed frame x. Derivation: an FFT of length n runs log2(n) butterfly stages; each stage rounds every
# intermediate value once in a complex multiply-add, relative error <= (2*sqrt(2) + 1) * u = 1.9 * EPS32 (-> 2).
# The values of stage j hold the frame's energy times 2**j, and the remaining stages (a unitary map times
# sqrt(n / 2**j)) spread one stage's errors over the n bins like noise, as rounding errors do: about
# 2 * EPS32 * ||x||_2 per bin and stage, stages adding up in the worst case. This is an estimate, not a proof: a
# stage could in principle put all its error into one bin, which is sqrt(n) = 32 times more (Higham, Accuracy
# and Stability of Numerical Algorithms, 2nd ed., Thm 24.2) and would make the check blind. Measured against a
# float64 log-mel of the golden waveforms (cases A and B, 2 x 116,480 bins), the largest error of each of three
# float32 implementations is at most 0.16 of one implementation's share of the tolerance in
# :func:`log_mel_tolerance`: 0.13 (the golden run: torch 2.5.1 on an Intel Xeon), 0.15 (torch 2.13 with MKL on
# an AMD EPYC) and 0.16 (numpy 2.4's pocketfft).
FFT_ROUNDING = 2.0


def test_state_dict_layout_matches_reference():
    """Keys, order and shapes of the released offset model and of the synchronisability model equal the reference
    code's ``state_dict()`` (configs/sync.yaml and ft_synchability.yaml), so the released files load as they are."""
    reference = json.loads(parity_file("keys_shapes.json").read_text())
    for model_id, variant in ((RELEASED_ID, "sync"), (SYNCABILITY_ID, "syncability")):
        ours = [[k, list(v.shape)] for k, v in build_model(model_id, device="meta").state_dict().items()]
        assert ours == reference[variant]["entries"], f"{model_id}: state dict layout differs from the reference's"


def test_rgb_table_matches_reference_fp16_path():
    table = rgb_lut(load_config(RELEASED_ID).data)
    assert torch.equal(table[0], torch.from_numpy(golden("A")["u8_to_input_lut"]))
    assert torch.equal(table[0], table[1]) and torch.equal(table[1], table[2])


@pytest.mark.parametrize("case", ["A", "B"])
def test_frames_match_golden_exactly(clips, case):
    g, clip = golden(case), clips[case]
    assert np.array_equal(clip.frame_indices, g["frame_src_indices"])
    assert_frames_are_golden(clip.frames, g["frame_sha256"], f"case {case}")
    np.testing.assert_array_equal(clip.frames.reshape(len(clip.frames), -1, 3).mean(1), g["frame_means"])


@pytest.mark.parametrize("case", ["A", "B"])
def test_video_input_is_reference_rebuild(clips, case):
    """The model's video input is the reference's: its fp16 table applied to the (golden) frames, segment s being
    frames [8s, 8s + 16), laid out (S, T, C, H, W), as the reference README describes the rebuild."""
    clip = clips[case]
    lut = torch.from_numpy(golden(case)["u8_to_input_lut"])
    x = lut[torch.from_numpy(clip.frames).long()].permute(0, 3, 1, 2)  # (120, 3, 224, 224)
    assert torch.equal(clip.vid, torch.stack([x[8 * s : 8 * s + 16] for s in range(14)]))


@pytest.mark.parametrize("case", ["A", "B"])
def test_audio_crop_and_target_match_golden(clips, case):
    g, clip = golden(case), clips[case]
    assert clip.audio_start_sample == int(g["audio_start_sample"])
    assert clip.audio_start_sample + len(clip.wave) == int(g["audio_end_sample"])
    assert np.array_equal(clip.audio_seg_starts, g["audio_seg_starts_in_wave"])
    np.testing.assert_allclose(clip.wave, g["audio_wave"], atol=WAVE_ATOL, rtol=0)
    assert clip.target_class == int(g["target_offset_class"])
    np.testing.assert_array_equal(clip.grid, g["grid"])


def windowed_frames(segs: Tensor, d: DataConfig) -> Tensor:
    """(S, L) waveforms -> (S, T, n_fft) float64 frames as ``torch.stft`` windows them: reflect padding of n_fft/2,
    hop ``hop_length``, periodic Hann window of ``win_length`` centred in n_fft. T = 1 + L // hop_length."""
    n = d.n_fft
    x = torch.nn.functional.pad(segs.double()[:, None], (n // 2, n // 2), mode="reflect")[:, 0]
    window = torch.hann_window(d.win_length, periodic=True, dtype=torch.float64)
    left = (n - d.win_length) // 2
    return x.unfold(-1, n, d.hop_length) * torch.nn.functional.pad(window, (left, n - d.win_length - left))


def mel_magnitude(aud: Tensor, d: DataConfig) -> Tensor:
    """Normalised log-mel (..., n_mels, T) -> sqrt of the mel power, float64: the AST normalisation and the log
    undone, ``sqrt(exp(x * 2 std + mean) - 1e-6)`` (clamped at 0)."""
    power = torch.exp(aud.double() * (2 * d.ast_std) + d.ast_mean) - MEL_EPS
    return power.clamp(min=0).sqrt()


def log_mel_tolerance(gold: Tensor, gold_wave: Tensor, own_wave: Tensor, seg_starts, d: DataConfig) -> Tensor:
    """Per-bin tolerance (S, n_mels, T) float64, over the T = 65 real columns, for |ours - golden| of normalised
    log-mels computed by synchlib from ``own_wave`` and by the reference from ``gold_wave``.

    First a bound ``b`` on the difference of the mel *magnitudes* sqrt(M), M = sum_k fb[k, m] |X_k|^2. sqrt(M) is a
    weighted norm of the STFT frame X over the filter's bins, so (triangle inequality) it moves by at most the
    weighted norm of the change of X, ``||dX||_fb <= sqrt(sum_k fb[k, m]) * max_k |dX_k|``. The change of X has
    three parts:

    * FFT rounding: two implementations, each within FFT_ROUNDING * EPS32 * log2(n_fft) * ||frame||_2 per bin, so
      proportional to the frame's amplitude (sqrt of its energy);
    * the waveform difference (decoder): exactly ``||FFT(window * (own - gold))||_fb``, computed in float64 (the
      STFT is linear);
    * rounding of |X|^2 and of the mel matrix product, relative: (K + 3) * u in M per implementation for K
      nonzero filter weights, half of that in sqrt(M), twice for two implementations.

    Then ``b`` carried through ``log(M + 1e-6) / (2 std)`` (the largest change when sqrt(M) moves by ``b``) plus the
    rounding of the log, the normalisation and the float32 result (per implementation 2u(1 + 2|L| + 2|L - mean|)
    with L = log(M + 1e-6), in units of 2 std). The result is a few 1e-6 where the power is well above ``b**2``,
    and wide only in near-silent bins, where ``log(mel + 1e-6)`` magnifies absolute rounding noise.
    """
    n, u = d.n_fft, EPS32 / 2
    gold_segs = torch.stack([gold_wave[s : s + d.segment_size_asamples] for s in seg_starts])
    own_segs = torch.stack([own_wave[s : s + d.segment_size_asamples] for s in seg_starts])
    frames = windowed_frames(gold_segs, d)  # (S, T, n)
    fb = mel_filterbank(n // 2 + 1, d.n_mels, d.afps).double()  # (n // 2 + 1, n_mels)
    fft = 2 * FFT_ROUNDING * EPS32 * math.log2(n) * frames.norm(dim=-1)[:, None, :] * fb.sum(0).sqrt()[:, None]
    dx = torch.fft.rfft(windowed_frames(own_segs, d) - frames)  # (S, T, n // 2 + 1)
    wave = (dx.abs().square() @ fb).sqrt().transpose(-1, -2)  # (S, n_mels, T)
    mag = mel_magnitude(gold, d)[..., : frames.shape[1]]
    k = int((fb > 0).sum(0).max())
    b = fft + wave + (k + 3) * u * mag
    hi, lo = (mag + b).square(), (mag - b).clamp(min=0).square()
    log_m = torch.log(mag.square() + MEL_EPS)
    rounding = 2 * 2 * u * (1 + 2 * log_m.abs() + 2 * (log_m - d.ast_mean).abs()) / (2 * d.ast_std)
    return (torch.log(hi + MEL_EPS) - torch.log(lo + MEL_EPS)) / (2 * d.ast_std) + rounding


@pytest.mark.parametrize("case", ["A", "B"])
def test_spectrogram_matches_golden(clips, case):
    """synchlib's log-mel (from its own decoding) vs the reference's, bin by bin, within rounding.

    A fixed tolerance cannot be portable here: FFT and BLAS rounding differ between CPUs (MKL / oneDNN on AVX2
    and AVX-512) and library versions, and ``log(mel + 1e-6)`` magnifies absolute rounding noise in near-silent
    bins (a fixed 5e-5 failed on an Intel Xeon with 6.2e-5 in such a bin). The bound is derived in the mel power
    domain, proportional to each frame's amplitude, and carried into the log domain (:func:`log_mel_tolerance`):
    a few 1e-6 where the power is well above the rounding, wide only where it is not. The padding column must be
    exact. Measured on an AMD EPYC (torch 2.13 CPU build): the largest error is 0.13 (A) and 0.08 (B) of its bin's
    tolerance; a gain error of 1e-5 or 1e-6 of white noise added to the waveform exceeds it (1.9x and 43x).
    """
    d = load_config(RELEASED_ID).data
    g, clip = golden(case), clips[case]
    gold = torch.from_numpy(g["aud"][0])  # (14, 1, 128, 66)
    assert clip.aud.shape == gold.shape == (14, 1, 128, 66)
    t = 1 + d.segment_size_asamples // d.hop_length  # 65 real columns, then padding
    assert torch.equal(clip.aud[..., t:], gold[..., t:])
    tol = log_mel_tolerance(
        gold[:, 0], torch.from_numpy(g["audio_wave"]), torch.from_numpy(clip.wave), clip.audio_seg_starts, d
    )  # fmt: skip
    err = (clip.aud[:, 0, :, :t] - gold[:, 0, :, :t]).double().abs()
    worst = (err / tol).max().item()
    assert worst <= 1, f"log-mel: an error is {worst:.2f} times its bin's tolerance"


def test_log_mel_equals_torchaudio():
    torchaudio = pytest.importorskip("torchaudio", reason="torchaudio is the reference for the mel transform")
    d = load_config(RELEASED_ID).data
    w = torch.from_numpy(golden("A")["audio_wave"])
    segs = torch.stack([w[1280 + 5120 * s : 1280 + 5120 * s + 10240] for s in range(14)])
    ref = torchaudio.transforms.MelSpectrogram(
        sample_rate=d.afps, win_length=d.win_length, hop_length=d.hop_length, n_fft=d.n_fft, n_mels=d.n_mels
    )(segs)
    ref = torch.nn.functional.pad(torch.log(ref + 1e-6), (0, 1), value=0.0)
    ref = (ref - d.ast_mean) / (2 * d.ast_std)
    assert torch.equal(log_mel(segs, d, 66)[:, 0], ref)


def test_two_segment_model_matches_case_a2(clips, detweights_state_dict):
    """Case A2: a 30-token model whose positional table is cut from the 198-row released one on load. Video: the
    first 2 segments of synchlib's own decoding of case A (frames [0, 24), checked against A2's hashes)."""
    g, clip = golden("A2"), clips["A"]
    assert_frames_are_golden(clip.frames[:24], g["frame_sha256"], "case A2")
    model = build_model(load_config(RELEASED_ID).with_segments(2), device="meta")
    model.load_state_dict(detweights_state_dict, assign=True)
    vid, aud = clip.vid[None, :2], torch.from_numpy(g["aud"])
    with torch.inference_mode():
        vf, af = model.extract_vfeats(vid), model.extract_afeats(aud)
        logits = model.sync_logits(vf, af)
    assert_close_rel(vf, g["vfeats"], "vfeats")
    assert_close_rel(af, g["afeats"], "afeats")
    assert_close_rel(logits, g["logits"], "logits")
    assert logits.argmax().item() == int(np.argmax(g["logits"])) == 16


def test_shorter_checkpoint_table_is_refused(detweights_state_dict):
    model = build_model(RELEASED_ID, device="meta")
    sd = dict(detweights_state_dict)
    sd["transformer.pos_emb_cfg.pos_emb"] = sd["transformer.pos_emb_cfg.pos_emb"][:, :30]
    with pytest.raises(CheckpointError, match="needs 198"):
        model.load_state_dict(sd, assign=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["A", "B"])
def test_full_model_matches_golden(detweights_model, clips, case):
    """14 segments, fp32, CPU: features and logits from synchlib's decoded video (frames checked against the
    golden hashes) with the golden audio input, and logits from synchlib's own audio input too."""
    g, clip = golden(case), clips[case]
    assert_frames_are_golden(clip.frames, g["frame_sha256"], f"case {case}")
    with torch.inference_mode():
        vf = detweights_model.extract_vfeats(clip.vid[None])
        af = detweights_model.extract_afeats(torch.from_numpy(g["aud"]))
        logits = detweights_model.sync_logits(vf, af)
        own = detweights_model.sync_logits(vf, detweights_model.extract_afeats(clip.aud[None]))
    assert_close_rel(vf, g["vfeats"], "vfeats")
    assert_close_rel(af, g["afeats"], "afeats")
    assert_close_rel(logits, g["logits"], "logits")
    assert_close_rel(own, g["logits"], "logits from synchlib's own decoding")
    assert logits.argmax().item() == own.argmax().item() == int(np.argmax(g["logits"]))


@pytest.fixture(scope="module")
def syncability_model(detweights, detweights_state_dict):
    """The synchronisability model (13 segments, 184-row table, 2-class head) with the deterministic weights.
    Tensors whose key and shape it shares with the released model are taken from that state dict (``detweights``
    depends only on key and shape), the rest are generated."""
    model = build_model(SYNCABILITY_ID, device="meta")
    shared = detweights_state_dict
    sd = {
        k: shared[k] if k in shared and shared[k].shape == v.shape else detweights.tensor_for(k, v.shape)
        for k, v in model.state_dict().items()
    }  # fmt: skip
    model.load_state_dict(sd, assign=True)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["S1", "S2"])
def test_syncability_model_matches_golden(syncability_model, case):
    """Synchronisability head, 13 segments: the model-input frames (fp16, as the reference feeds them) equal the
    golden ones bit for bit; logits from the golden audio input and from synchlib's own."""
    g = golden(case)
    clip = load_clip(*case_window(case), syncability_model.cfg)
    assert_frames_are_golden(clip.vid.half().flatten(0, 1), g["vid_frame_sha256"], f"case {case}")
    with torch.inference_mode():
        vf = syncability_model.extract_vfeats(clip.vid[None])
        logits = syncability_model.sync_logits(vf, syncability_model.extract_afeats(torch.from_numpy(g["aud"])))
        own = syncability_model.sync_logits(vf, syncability_model.extract_afeats(clip.aud[None]))
    assert_close_rel(logits, g["logits"], "logits")
    assert_close_rel(own, g["logits"], "logits from synchlib's own decoding")
