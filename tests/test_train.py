"""Tests of the tiny-model training code and of the shipped ``tiny-synthetic`` checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synchlib import lagbank
from synchlib import margins as M
from synchlib import train as T
from synchlib.model import build_model
from synchlib.preprocess import load_clip

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
ENDS = [0, 1, -2, -1]  # the two offset classes at each end of the grid
RECORD_FIELDS = ("seed", "steps", "n_train_clips", "wall_time_sec", "machine", "metrics", "heldout_eval", "curve",
                 "command")
SMOKE = T.TrainSettings(steps=3, batch_size=2, n_train_clips=2, n_eval_clips=1, n_eval_windows=2, n_curve_windows=2,
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
    window by window, up to what another machine's rounding can change (M.compare_windows): the windows whose
    recorded top-1 margin is above the record's tolerance predict the recorded class, every margin is within
    the tolerance, and the accuracy counts differ at most by the number of windows below it."""
    model, _ = shipped_model
    ev = record["heldout_eval"]
    m = record["metrics"]
    assert (ev["n_windows"], ev["n_clips"], ev["seed"]) == (m["heldout_windows"], m["heldout_clips"], m["heldout_eval_seed"])
    seeds = T.clip_seeds(record["seed"], ev["n_clips"], T.EVAL_INDEX0)
    clips = T.synth_clips(seeds, cfg, progress=False)
    res = T.evaluate(model, clips, cfg, ev["n_windows"], ev["seed"])
    assert M.compare_windows(ev, res) == []
    recorded, fresh = M.parse_window_record(ev), M.parse_window_record(res)
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
    assert M.compare_windows(recorded, _fake_windows([0.505, 0.002, 0.295, 1.0], [3, 7, 9, 6], target)) == []
    confident_flip = M.compare_windows(recorded, _fake_windows([0.5, 0.005, 0.3, 1.0], [8, 4, 9, 6], target))
    assert any("window 0: class 8" in p for p in confident_flip)
    moved = M.compare_windows(recorded, _fake_windows([0.5, 0.005, 0.32, 1.0], [3, 4, 9, 6], target))
    assert moved == ["window 2: margin 0.3200 instead of 0.3000 (tolerance 0.0100)"]
    one_more_right = M.compare_windows(recorded, _fake_windows([0.5, 0.005, 0.3, 1.0], [3, 4, 5, 6], target))
    assert one_more_right == ["window 2: class 5 instead of 9 (recorded margin 0.3000 > tolerance 0.0100)"]
    assert M.compare_windows(recorded, _fake_windows([0.5] * 4, [3, 4, 9, 6], [3, 4, 5, 7]))[0].startswith(
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
    a = T.train_tiny(out, SMOKE.updated(seed=5), progress=False)
    b = T.train_tiny(None, SMOKE.updated(seed=5), progress=False)
    wa, wb = a["model"].state_dict(), b["model"].state_dict()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    curve = a["curve"]
    assert len(curve) == SMOKE.steps and all(np.isfinite(p["event_loss"]) for p in curve)
    assert ["loss" in p for p in curve] == [False, True, True]  # the first step trains the event scores only
    assert all(np.isfinite(p["loss"]) for p in curve[1:])
    assert [{k: v for k, v in p.items() if k != "time_sec"} for p in curve] == \
        [{k: v for k, v in p.items() if k != "time_sec"} for p in b["curve"]]
    assert out.is_file() and out.with_suffix(".json").is_file()
    rec = json.loads(out.with_suffix(".json").read_text())
    for key in RECORD_FIELDS:
        assert key in rec
    windows = M.parse_window_record(rec["heldout_eval"])
    assert len(windows["pred"]) == SMOKE.n_eval_windows and rec["heldout_eval"]["margin_tol"] > 0
    assert rec["metrics"]["heldout_acc1"] == np.mean(windows["pred"] == windows["target"])
    model = build_model(T.CONFIG_NAME)
    from synchlib.checkpoints import read_checkpoint

    sd, meta = read_checkpoint(out)
    model.load_state_dict(sd, strict=True)
    assert meta["epoch"] == SMOKE.steps and meta["args"]["data"]["size_before_crop"] == 64


def test_random_init_trains_the_offset_loss_from_the_first_step_on_given_clips():
    """init="random": no lag bank, so no event loss and no detection-only steps; decoded clips passed in are used
    as they are (the notebook decodes them once for both of its runs)."""
    s = SMOKE.updated(init="random", detect_steps=0, seed=5)
    clips = T.make_clips(s, progress=False)
    rec = T.train_tiny(None, s, clips=clips, progress=False)
    assert all("loss" in p and "event_loss" not in p for p in rec["curve"])
    assert rec["settings"]["init"] == "random"
    with pytest.raises(T.TrainError, match="detect_steps"):
        SMOKE.updated(init="random")


def test_short_run_is_one_recipe_for_the_notebook_and_the_command_line():
    """`synchlib train-tiny OUT --short` runs the notebook's settings (train.SHORT, the same data workers);
    options given with it change it; the help says how long it takes."""
    import argparse
    from synchlib.cli import build_parser

    args = build_parser(["train-tiny", "x.pt", "--short", "--seed", "3"]).parse_args(["train-tiny", "x.pt", "--short",
                                                                                      "--seed", "3"])
    assert T.settings_from_args(args) == T.SHORT.updated(seed=3)
    args = build_parser(["train-tiny"]).parse_args(["train-tiny", "x.pt", "--no-augment", "--lr", "0.004"])
    assert T.settings_from_args(args) == T.TrainSettings(augment=False, lr=0.004)
    parser = T.add_train_arguments(argparse.ArgumentParser())
    text = parser.format_help()
    assert "about 1.5 minutes on 2 idle CPU cores" in " ".join(text.split())
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "train_tiny.ipynb").read_text())
    assert "train.SHORT" in "".join("".join(c["source"]) for c in notebook["cells"])


def test_defaults_are_the_shipped_recipe(record):
    """The shipped record's settings are the defaults; the options removed since were off in it or are now the
    recipe's constants; its command line still parses to those settings."""
    from synchlib.cli import build_parser

    settings = dict(record["settings"])
    removed = {"config": T.CONFIG_NAME, "min_lr_frac": T.MIN_LR_FRAC, "weight_decay": T.WEIGHT_DECAY,
               "grad_clip": T.GRAD_CLIP, "pretrain_steps": 0, "pretrain_lr": settings.get("pretrain_lr"),
               "temperature": settings.get("temperature"), "event_weight": T.EVENT_WEIGHT,
               "probe_windows": T.PROBE_WINDOWS, "sync_lr_scale": T.SYNC_LR_SCALE, "jitter_sec": 0.0}
    assert {k: settings.pop(k) for k in removed} == removed
    assert settings.pop("augment") == "hflip,rgb,retime"
    assert T.TrainSettings(**settings, augment=True) == T.TrainSettings()
    argv = record["command"].split()[1:]
    assert T.settings_from_args(build_parser(argv).parse_args(argv)) == T.TrainSettings(seed=record["seed"])


def test_lag_bank_finds_the_offset_from_perfect_event_scores(cfg):
    """The hand-wired synchronisation module, before any training, on perfect event scores: right on >= 95 % of
    random windows, at the grid's ends too (measured: 0.98, ends 1.0)."""
    per_offset = lagbank.ideal_accuracy(cfg)
    assert per_offset.mean() >= 0.95 and per_offset[ENDS].mean() >= 0.95, per_offset


@pytest.mark.parametrize("constant, value, which", [("ELIGIBLE_PENALTY", 0.0, "ends"), ("EVENT_BONUS", 0.0, "all")])
def test_lag_bank_needs_its_penalty_and_its_event_bonus(cfg, monkeypatch, constant, value, which):
    """Without the eligibility penalty (a plain count of coincidences) offsets at the grid's ends, where fewer
    sounds can be matched, lose to chance coincidences in the middle (measured 0.79 there); without the event bonus
    a look misses a flash one token away from the looked-at time (measured 0.64 overall)."""
    monkeypatch.setattr(lagbank, constant, value)
    per_offset = lagbank.ideal_accuracy(cfg)
    assert (per_offset[ENDS] if which == "ends" else per_offset).mean() < 0.9, per_offset


def test_each_lag_bank_head_looks_one_grid_offset_ahead(cfg):
    """Head c of a fresh lag bank puts most of its attention on the video tokens grid[c] away from each audio token
    (the figure of the teaching notebook): its lag profile peaks at grid[c], and a look past the video's edge goes
    to the OFF/MOD sink instead."""
    looks = lagbank.head_looks(cfg)
    assert looks.attention.shape == (len(cfg.grid), len(looks.audio_times), len(looks.video_times))
    centres, profile = looks.lag_profile()
    np.testing.assert_allclose(centres[profile.argmax(1)], cfg.grid, atol=1e-6)
    c = int(np.argmax(cfg.grid))  # +2 s: the last audio tokens look past the end of the video
    past_end = looks.audio_times + cfg.grid[c] - looks.video_times.max()  # s
    on_video = looks.attention[c].sum(1)
    # beyond the time kernel's width (0.1 s, lagbank.PERIODS) a look finds no video token (measured: 0.05 at most)
    assert on_video[past_end <= 0].min() > 0.9 and on_video[past_end > 0.1].max() < 0.1


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    """LambdaLR with warmup_cosine: linear warm-up over 10 steps to the peak, then monotone cosine decay to
    MIN_LR_FRAC of it at the last step; every parameter group keeps its own scale."""
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 1e-3}, {"params": [q], "lr": 1e-4}], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.warmup_cosine(100, 10))
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    np.testing.assert_allclose(lrs[:, 1], lrs[:, 0] / 10)
    assert lrs[0, 0] == pytest.approx(1e-4) and lrs[9, 0] == pytest.approx(1e-3) and lrs.max() == pytest.approx(1e-3)
    assert lrs[-1, 0] == pytest.approx(1e-3 * T.MIN_LR_FRAC) and np.all(np.diff(lrs[9:, 0]) <= 0)


def test_bad_settings_raise():
    with pytest.raises(T.TrainError, match="steps"):
        T.TrainSettings(steps=0)
    with pytest.raises(T.TrainError, match="not_a_setting"):
        T.TrainSettings().updated(not_a_setting=1)
    with pytest.raises(T.TrainError, match="augment"):
        T.TrainSettings(augment="hflip,blur")
    with pytest.raises(T.TrainError, match="threads"):
        T.TrainSettings(threads=True)
    with pytest.raises(T.TrainError, match="init"):
        T.TrainSettings(init="zeros")
    with pytest.raises(T.TrainError, match="detect_steps"):
        T.TrainSettings(steps=10, detect_steps=10)


def test_augmented_windows_keep_sound_and_offsets_and_move_pixels(cfg, test_clips):
    """Mirror, colour order and re-timing change where, in which colour and (by up to a frame) when things are seen:
    the audio input and the offsets of every window are unchanged; a window that was not re-timed keeps its event
    targets and every frame its multiset of pixel values (up to channel order); the views differ between
    windows."""
    clips, _ = test_clips
    rng = np.random.default_rng(3)
    specs = T.sample_windows(rng, clips, 8, cfg)
    plain = T.make_batch(clips, specs, cfg, events=True)
    views, renumbered = T.augment_clips(clips, specs, rng)
    assert [s.clip for s in renumbered] == list(range(8))
    assert all(v.audio is clips[s.clip].audio for v, s in zip(views, specs))
    aug = T.make_batch(views, renumbered, cfg, events=True)
    assert torch.equal(plain.aud, aug.aud) and torch.equal(plain.target, aug.target)
    kept = [i for i, (v, s) in enumerate(zip(views, specs)) if v.meta is clips[s.clip].meta]  # not re-timed
    assert 0 < len(kept) < 8
    assert torch.equal(plain.event_v[kept], aug.event_v[kept]) and torch.equal(plain.event_a[kept], aug.event_a[kept])
    a, b = plain.vid[kept, 0, 0], aug.vid[kept, 0, 0]  # (B, 3, H, W): first frame of each window
    assert torch.equal(a.flatten(1).sort(-1).values, b.flatten(1).sort(-1).values)
    assert not torch.equal(a, b)


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
    views, renumbered = T.augment_clips(clips, specs, rng)
    moved = 0
    for view, spec in zip(views, specs):
        before = np.round(np.asarray(clips[spec.clip].meta["av_events"]) * 25).astype(int)
        after = np.round(np.asarray(view.meta["av_events"]) * 25).astype(int)
        assert set(np.unique(after - before)) <= {0, 1}  # an event is shown on time or one frame later
        src = clips[spec.clip].frames
        values = lambda frame: np.sort(frame.reshape(-1))  # noqa: E731  (mirror and colour order keep these)
        for b, a in zip(before, after):  # the new event frame shows the flash itself, or its next frame if dropped
            assert np.array_equal(values(view.frames[a]), values(src[b])) or \
                np.array_equal(values(view.frames[a]), values(src[b + 1]))
        moved += int(np.any(after != before))
    assert moved > 0
    batch = T.make_batch(views, renumbered, cfg, events=True)
    assert batch.event_v.sum() > 0
