"""Tests of the tiny-model training code and of the shipped ``tiny-synthetic`` checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synchlib import train as T
from synchlib.model import build_model
from synchlib.preprocess import load_clip, window_token_times

ASSETS = Path(T.__file__).parent / "assets"
CKPT = ASSETS / "tiny-synthetic.pt"
RECORD = ASSETS / "tiny-synthetic.json"
MAX_CKPT_BYTES = 10 * 1024 * 1024
N_TEST_CLIPS = 6
WINDOWS_PER_CLIP = 10
MIN_ACC1 = 0.95  # the teaching issue's target; measured 0.983 here (chance 0.048), 0.97 on 200 windows of 20 such clips
EVENT_RADIUS_SEC = 0.1  # a token "holds" an event when its centre is this close to the event
MIN_EVENT_ATTENTION = 0.5  # share of the OFF token's attention that must land on event tokens ...
MIN_EVENT_LIFT = 2.0  # ... and at least this many times their share of the tokens (uniform attention: 1)
RECORD_FIELDS = ("seed", "steps", "n_train_clips", "wall_time_sec", "machine", "metrics", "heldout_eval", "curve",
                 "command")
SMOKE = dict(steps=3, batch_size=2, n_train_clips=2, n_eval_clips=1, n_eval_windows=2, n_curve_windows=2,
             eval_every=100, warmup_steps=1, workers=1, clip_duration_sec=9.0, detect_steps=1)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped_model(cfg):
    from synchlib.checkpoints import read_checkpoint

    sd, meta = read_checkpoint(CKPT)
    model = build_model(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval(), meta


@pytest.fixture(scope="module")
def test_clips(cfg, record, tmp_path_factory):
    """Fresh clips whose seeds the shipped model never saw (neither in training nor in its held-out set)."""
    seeds = T.clip_seeds(record["seed"], N_TEST_CLIPS, T.TEST_INDEX0)
    train_lo, train_hi = record["train_clip_seeds"]
    eval_lo, eval_hi = record["heldout_clip_seeds"]
    assert not any(train_lo <= s <= train_hi or eval_lo <= s <= eval_hi for s in seeds)
    folder = tmp_path_factory.mktemp("tiny-test-clips")
    clips = T.synth_clips(seeds, cfg, out_dir=folder, progress=False)
    return clips, [folder / f"synth_{s:07d}.mp4" for s in seeds]


# ---------------------------------------------------------------------------------------------- shipped model


def test_checkpoint_size_and_layout(shipped_model):
    assert CKPT.stat().st_size <= MAX_CKPT_BYTES
    _, meta = shipped_model
    assert meta["model_type"] == "Synchformer"
    assert meta["args"]["data"]["input_size"] == 64
    assert meta["metrics"]["heldout_acc1"] == json.loads(RECORD.read_text())["metrics"]["heldout_acc1"]


def test_record_has_required_fields(record):
    for key in RECORD_FIELDS:
        assert key in record, key
    m = record["metrics"]
    assert m["heldout_windows"] >= 200 and m["heldout_acc1_pm1"] >= m["heldout_acc1"]
    assert record["wall_time_sec"] <= 600
    assert {"cpu", "cores", "torch"} <= set(record["machine"])
    assert record["command"].startswith("synchlib train-tiny ")
    assert any("acc1" in p for p in record["curve"][:-1])  # periodic held-out points


def test_record_accuracy_is_reproduced(shipped_model, record, cfg):
    """Re-evaluating the shipped model on the record's held-out clips and windows gives the recorded results,
    window by window, up to what another machine's rounding can change (T.compare_windows): the windows whose
    recorded top-1 margin is above the record's tolerance predict the recorded class, every margin is within
    the tolerance, and the accuracy counts differ at most by the number of windows below it."""
    model, _ = shipped_model
    ev = record["heldout_eval"]
    m = record["metrics"]
    assert (ev["n_windows"], ev["n_clips"], ev["seed"]) == (m["heldout_windows"], m["heldout_clips"], m["heldout_eval_seed"])
    seeds = T.clip_seeds(record["seed"], ev["n_clips"], T.EVAL_INDEX0)
    clips = T.synth_clips(seeds, cfg, progress=False)
    res = T.evaluate(model, clips, cfg, ev["n_windows"], ev["seed"])
    assert T.compare_windows(ev, res) == []
    recorded, fresh = T.parse_window_record(ev), T.parse_window_record(res)
    n_loose = int((recorded["margin"] <= ev["margin_tol"]).sum())
    right = [int((w["pred"] == w["target"]).sum()) for w in (recorded, fresh)]
    assert right[0] == round(ev["acc1"] * ev["n_windows"]) and abs(right[1] - right[0]) <= n_loose


def _fake_windows(margins, pred, target, tol=0.01) -> dict:
    return {"margin_tol": tol, "target": " ".join(map(str, target)), "pred": " ".join(map(str, pred)),
            "margin": " ".join(f"{m:.4f}" for m in margins)}


def test_compare_windows_allows_rounding_and_catches_real_changes():
    """A flip of a window whose margin is below the tolerance and margins moved within it pass; a confident
    window changing class (and with it the accuracy count), a margin moved beyond the tolerance, or other
    windows fail."""
    target = [3, 4, 5, 6]
    recorded = _fake_windows([0.5, 0.005, 0.3, 1.0], [3, 4, 9, 6], target)  # window 1 near a tie, window 2 wrong
    assert T.compare_windows(recorded, _fake_windows([0.505, 0.002, 0.295, 1.0], [3, 7, 9, 6], target)) == []
    confident_flip = T.compare_windows(recorded, _fake_windows([0.5, 0.005, 0.3, 1.0], [8, 4, 9, 6], target))
    assert any("window 0: class 8" in p for p in confident_flip)
    moved = T.compare_windows(recorded, _fake_windows([0.5, 0.005, 0.32, 1.0], [3, 4, 9, 6], target))
    assert moved == ["window 2: margin 0.3200 instead of 0.3000 (tolerance 0.0100)"]
    one_more_right = T.compare_windows(recorded, _fake_windows([0.5, 0.005, 0.3, 1.0], [3, 4, 5, 6], target))
    assert one_more_right == ["window 2: class 5 instead of 9 (recorded margin 0.3000 > tolerance 0.0100)"]
    assert T.compare_windows(recorded, _fake_windows([0.5] * 4, [3, 4, 9, 6], [3, 4, 5, 7]))[0].startswith(
        "the windows differ")


def test_shipped_model_is_accurate_on_unseen_clips(shipped_model, test_clips, cfg):
    """Clips from seeds never used in training or in the record, random grid offsets and start times."""
    model, _ = shipped_model
    clips, _ = test_clips
    n = N_TEST_CLIPS * WINDOWS_PER_CLIP
    res = T.evaluate(model, clips, cfg, n, seed=12345)
    assert res["n_windows"] == n
    assert res["acc1"] >= MIN_ACC1, res


def test_off_token_attends_to_the_events(shipped_model, test_clips, cfg):
    """Most of the OFF token's attention (last block, where the answer is read) lands on the few tokens that hold
    a paired event, far above their share of the tokens."""
    from synchlib.attention import explain
    from synchlib.synthetic import read_events

    model, _ = shipped_model
    _, paths = test_clips
    shares, lifts = [], []
    for i, path in enumerate(paths[:3]):
        offset = float(cfg.grid[[3, 10, 17][i]])
        clip = load_clip(path, offset, 2.5, cfg)
        ex = explain(model, clip)
        events = np.asarray(read_events(path).av_events)
        near_v = (np.abs(ex.visual_times[:, None] - events[None]) <= EVENT_RADIUS_SEC).any(1)
        near_a = (np.abs(ex.audio_times[:, None] - events[None]) <= EVENT_RADIUS_SEC).any(1)
        att = np.concatenate([ex.off_visual.ravel(), ex.off_audio.ravel()])
        near = np.concatenate([near_v, near_a])
        share = att[near].sum() / att.sum()
        shares.append(share)
        lifts.append(share / near.mean())
    assert min(shares) >= MIN_EVENT_ATTENTION, shares
    assert min(lifts) >= MIN_EVENT_LIFT, lifts


def test_inference_on_file_matches_training_batch(shipped_model, test_clips, cfg):
    """The window the trainer builds from decoded arrays equals what load_clip builds from the file."""
    model, _ = shipped_model
    clips, paths = test_clips
    specs = T.sample_windows(np.random.default_rng(3), clips, 3, cfg, clip_order=[0, 1, 2])
    batch = T.make_batch(clips, specs, cfg)
    vid, aud, target = batch.vid, batch.aud, batch.target
    with torch.no_grad():
        batch_logits = model(vid, aud)
    for i, spec in enumerate(specs):
        clip = load_clip(paths[spec.clip], float(cfg.grid[spec.target]), spec.start_sec, cfg)
        assert clip.target_class == int(target[i])
        assert torch.equal(clip.vid, vid[i]) and torch.equal(clip.aud, aud[i])
        with torch.no_grad():
            logits = model(clip.vid[None], clip.aud[None])[0]
        torch.testing.assert_close(logits, batch_logits[i], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- training code


def test_training_smoke_is_deterministic(tmp_path):
    """Two runs in one process give the same weights, bit for bit (each encodes and decodes its clips afresh)."""
    out = tmp_path / "smoke.pt"
    a = T.train_tiny(out, seed=5, progress=False, **SMOKE)
    b = T.train_tiny(None, seed=5, progress=False, **SMOKE)
    wa, wb = a["model"].state_dict(), b["model"].state_dict()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    curve = a["curve"]
    assert len(curve) == SMOKE["steps"] and all(np.isfinite(p["event_loss"]) for p in curve)
    assert ["loss" in p for p in curve] == [False, True, True]  # the first step trains the event scores only
    assert all(np.isfinite(p["loss"]) for p in curve[1:])
    assert [{k: v for k, v in p.items() if k != "time_sec"} for p in curve] == \
        [{k: v for k, v in p.items() if k != "time_sec"} for p in b["curve"]]
    assert out.is_file() and out.with_suffix(".json").is_file()
    rec = json.loads(out.with_suffix(".json").read_text())
    for key in RECORD_FIELDS:
        assert key in rec
    windows = T.parse_window_record(rec["heldout_eval"])
    assert len(windows["pred"]) == SMOKE["n_eval_windows"] and rec["heldout_eval"]["margin_tol"] > 0
    assert rec["metrics"]["heldout_acc1"] == np.mean(windows["pred"] == windows["target"])
    model = build_model(T.CONFIG_NAME)
    from synchlib.checkpoints import read_checkpoint

    sd, meta = read_checkpoint(out)
    model.load_state_dict(sd, strict=True)
    assert meta["epoch"] == SMOKE["steps"] and meta["args"]["data"]["size_before_crop"] == 64


IDEAL_SCORE = 4.0  # event score of a perfect detector (a confident logit)


def _ideal_inputs(cfg, events_sec: np.ndarray, start_sec: float, offset_sec: float) -> tuple[torch.Tensor, ...]:
    """Projected tokens as the lag bank's projections would give them for perfect event detectors: (v (1, Nv, D),
    a (1, Na, D)), a score of +-IDEAL_SCORE in the event dims, the projections' constant in the spare dim."""
    lay = T.lag_bank_layout(cfg)
    tv, ta = (t.reshape(-1) for t in window_token_times(cfg))
    e = events_sec - start_sec
    hit_v = (np.abs(tv[:, None] - e[None]) <= 0.04).any(1)  # the video token showing the flash
    hit_a = (np.abs(ta[:, None] - (e[None] - offset_sec)) <= 0.05).any(1)  # the audio token hearing the click
    D = cfg.sync.dim
    v, a = torch.zeros(1, len(tv), D), torch.zeros(1, len(ta), D)
    for x, hit, dim in ((v, hit_v, lay.event_v), (a, hit_a, lay.event_a)):
        x[0, :, D - 1] = 1.0
        x[0, :, dim] = torch.from_numpy(np.where(hit, IDEAL_SCORE, -IDEAL_SCORE)).float()
    return v, a


def _lag_bank_accuracy(cfg, n_windows: int = 126) -> tuple[float, float]:
    """(acc@1 over all windows, acc@1 on the two offsets at each end of the grid) of a freshly initialised lag
    bank on perfect event scores: random event timings (generator-like gaps), every grid offset in turn."""
    model = build_model(cfg).eval()
    T.init_lag_bank(model, cfg)
    rng = np.random.default_rng(0)
    grid, right, ends = cfg.data.grid, [], []
    for i in range(n_windows):
        events = np.round(np.cumsum(0.32 + rng.gamma(2.0, 0.25, 40)) * cfg.data.vfps) / cfg.data.vfps  # on frames
        c = i % len(grid)
        v, a = _ideal_inputs(cfg, events, round(float(rng.uniform(2.2, 4.0)), 2), float(grid[c]))
        with torch.no_grad():
            right.append(int(model.transformer(v, a).argmax()) == c)
        ends.append(c in (0, 1, len(grid) - 2, len(grid) - 1))
    right, ends = np.array(right), np.array(ends)
    return float(right.mean()), float(right[ends].mean())


def test_lag_bank_finds_the_offset_from_perfect_event_scores(cfg):
    """The hand-wired synchronisation module, before any training, on perfect event scores: right on >= 95 % of
    random windows, at the grid's ends too (measured: 0.98, ends 1.0)."""
    acc, acc_ends = _lag_bank_accuracy(cfg)
    assert acc >= 0.95 and acc_ends >= 0.95, (acc, acc_ends)


@pytest.mark.parametrize("constant, value, which", [("LAG_BANK_ELIGIBLE_PENALTY", 0.0, "ends"),
                                                    ("LAG_BANK_EVENT_BONUS", 0.0, "all")])
def test_lag_bank_needs_its_penalty_and_its_event_bonus(cfg, monkeypatch, constant, value, which):
    """Without the eligibility penalty (a plain count of coincidences) offsets at the grid's ends, where fewer
    sounds can be matched, lose to chance coincidences in the middle (measured 0.79 there); without the event bonus
    a look misses a flash one token away from the looked-at time (measured 0.64 overall)."""
    monkeypatch.setattr(T, constant, value)
    acc, acc_ends = _lag_bank_accuracy(cfg)
    assert (acc_ends if which == "ends" else acc) < 0.9, (acc, acc_ends)


def test_lr_schedule():
    lrs = [T.lr_at(i, 100, 1e-3, 10, 0.0) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))


def test_bad_settings_raise():
    with pytest.raises(T.TrainError):
        T.train_tiny(None, steps=0, progress=False)
    with pytest.raises(T.TrainError):
        T.train_tiny(None, not_a_setting=1, progress=False)
    with pytest.raises(T.TrainError, match="augmentation"):
        T.train_tiny(None, augment="hflip,blur", progress=False)
    with pytest.raises(T.TrainError, match="jitter_sec"):
        T.train_tiny(None, jitter_sec=0.1, progress=False)


def test_augmented_windows_keep_sound_and_events_and_move_only_pixels(cfg, test_clips):
    """Mirror, colour order and roll change where and in which colour things are seen, never when: the audio
    input and the event targets of every window are unchanged, every frame keeps its multiset of pixel values (up
    to channel order), and the mirror / roll / channel order differ between windows."""
    clips, _ = test_clips
    rng = np.random.default_rng(3)
    specs = T.sample_windows(rng, clips, 8, cfg)
    plain = T.make_batch(clips, specs, cfg, events=True)
    views, renumbered = T.augment_clips(clips, specs, ("hflip", "rgb", "shift"), rng)
    assert [s.clip for s in renumbered] == list(range(8))
    assert all(v.audio is clips[s.clip].audio for v, s in zip(views, specs))
    aug = T.make_batch(views, renumbered, cfg, events=True)
    assert torch.equal(plain.aud, aug.aud) and torch.equal(plain.target, aug.target)
    assert torch.equal(plain.event_v, aug.event_v) and torch.equal(plain.event_a, aug.event_a)
    a, b = plain.vid[:, 0, 0], aug.vid[:, 0, 0]  # (B, 3, H, W): first frame of each window
    assert torch.equal(a.flatten(1).sort(-1).values, b.flatten(1).sort(-1).values)
    assert not torch.equal(a, b)
    assert T.augmentation_names("none") == () and T.augmentation_names(" hflip, rgb ") == ("hflip", "rgb")


def test_jittered_windows_stay_in_their_class(cfg, test_clips):
    clips, _ = test_clips
    specs = T.sample_windows(np.random.default_rng(4), clips, 24, cfg, jitter_sec=0.08)
    jitters = np.array([s.jitter_sec for s in specs])
    assert np.all(np.abs(jitters) <= 0.08) and np.any(jitters != 0)
    batch = T.make_batch(clips, specs, cfg)  # raises if a jittered window left its class
    assert batch.target.tolist() == [s.target for s in specs]


def test_learning_curve_plots_both_losses_and_accuracy():
    from synchlib.plot import learning_curve

    curve = [{"step": 1, "event_loss": 0.7}, {"step": 2, "event_loss": 0.5, "acc1": 0.2},
             {"step": 3, "loss": 2.0, "event_loss": 0.4}, {"step": 4, "loss": 1.5, "event_loss": 0.3, "acc1": 0.6}]
    fig = learning_curve(curve)
    ax, ax2 = fig.axes
    assert [len(line.get_xdata()) for line in ax.lines] == [2, 4]  # offset loss from step 3 on, event loss always
    assert list(ax2.lines[0].get_ydata()) == [0.2, 0.6]
    assert len(ax.get_legend().get_texts()) == 3


def test_retime_map_is_a_frame_rate_round_trip():
    """29.97 fps and back, nearest camera frame: the pattern a re-encoded phone copy shows (every fifth frame
    dropped, the one before it repeated); any rate in range shows each frame's own source frame or the previous."""
    assert (T.retime_map(15, 29.97, 0.0, 25.0) - np.arange(15)).tolist() == [0, -1, -1, 0, 0] * 3
    for fps in np.linspace(*T.RETIME_FPS, 7):
        for phase in (0.0, 0.3, 0.99):
            shown = T.retime_map(250, fps, phase, 25.0)
            assert np.all(np.diff(shown) >= 0) and set(np.unique(shown - np.arange(250))) <= {-1, 0}


def test_retimed_windows_move_their_events_with_the_frames(cfg, test_clips):
    clips, _ = test_clips
    rng = np.random.default_rng(5)
    specs = T.sample_windows(rng, clips, 12, cfg)
    views, renumbered = T.augment_clips(clips, specs, ("retime",), rng)
    moved = 0
    for view, spec in zip(views, specs):
        before = np.round(np.asarray(clips[spec.clip].meta["av_events"]) * 25).astype(int)
        after = np.round(np.asarray(view.meta["av_events"]) * 25).astype(int)
        assert set(np.unique(after - before)) <= {0, 1}  # an event is shown on time or one frame later
        src = clips[spec.clip].frames
        for b, a in zip(before, after):  # the new event frame shows the flash itself, or its next frame if dropped
            assert np.array_equal(view.frames[a], src[b]) or np.array_equal(view.frames[a], src[b + 1])
        moved += int(np.any(after != before))
    assert moved > 0
    batch = T.make_batch(views, renumbered, cfg, events=True)
    assert batch.event_v.sum() > 0
