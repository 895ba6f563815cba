"""Tests for synchlib.checkpoints: registry, cache, verified downloads from a local HTTP server, safe loading.

No internet: files are served from a stdlib HTTP server on 127.0.0.1, ``SYNCHLIB_MIRROR`` points at it and
``SYNCHLIB_CACHE`` at a temporary folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from synchlib import checkpoints as ck
from synchlib import paths
from synchlib.config import load_config
from synchlib.errors import CheckpointError

from .helpers import RouteServer

TEST_ID = "99-01-01T00-00-00"


# --------------------------------------------------------------------------------------------------------------
# Fixtures: fake checkpoints and a local file server


def tiny_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "vfeat_extractor.cls_token": torch.randn(1, 1, 8, generator=g),
        "vproj.weight": torch.randn(4, 8, generator=g),
        "vproj.bias": torch.zeros(4),
        "transformer.off_head.weight": torch.randn(21, 4, generator=g),
    }


TINY_ARGS: dict[str, Any] = {
    "action": "train_avsync_model",
    "data": {"vfps": 25, "afps": 16000, "rgb_mean": [0.5, 0.5, 0.5], "flag": True, "none": None},
    "model": {"target": "model.sync_model.Synchformer", "params": {"n_embd": 4}},
}


def write_fake(path: Path, **extra: Any) -> bytes:
    ck.save_checkpoint(path, tiny_state_dict(), TINY_ARGS, epoch=3, **extra)
    return path.read_bytes()


FileServer = RouteServer  # the behaviours these tests use: ok, status, cut


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer) -> Path:
    """Cache in tmp_path, mirror on the local server, no proxies; returns the cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(paths.ENV_CACHE, str(cache))
    monkeypatch.setenv(ck.ENV_MIRROR, server.url)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A small checkpoint in the released layout, registered under TEST_ID with its real md5 prefix."""
    data = write_fake(tmp_path / "src" / "fake.pt")
    entry = ck.ReleasedCheckpoint(
        id=TEST_ID,
        kind="offset",
        md5_prefix=hashlib.md5(data).hexdigest()[:7],
        train_data="none",
        test_set="none",
        reported="n/a",
        num_classes=21,
    )
    monkeypatch.setitem(ck.RELEASED, TEST_ID, entry)
    return data


def fetch_quick(ckpt_id: str = TEST_ID, **kw: Any) -> Path:
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 10.0)
    return ck.fetch(ckpt_id, **kw)


def assert_clean(cache: Path, ckpt_id: str = TEST_ID) -> None:
    """No final file, no note and no temporary file left after a failed fetch."""
    folder = cache / ckpt_id
    leftovers = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert leftovers == [], f"cache not clean after failure: {leftovers}"


# --------------------------------------------------------------------------------------------------------------
# Registry, cache folder, URLs


def test_registry_matches_published_facts() -> None:
    assert list(ck.RELEASED) == ["23-12-23T18-33-57", "24-01-02T10-00-53", "24-01-04T16-39-21", "24-01-22T20-34-52"]
    prefixes = {k: v.md5_prefix for k, v in ck.RELEASED.items()}
    assert prefixes == {
        "23-12-23T18-33-57": "4415276",
        "24-01-02T10-00-53": "19592ed",
        "24-01-04T16-39-21": "54037d2",
        "24-01-22T20-34-52": "b1cb346",
    }
    for entry in ck.RELEASED.values():
        cfg = load_config(entry.id)  # the offline config agrees with the registry
        assert cfg.sync.head == entry.kind
        assert cfg.sync.num_classes == entry.num_classes
        assert entry.filename == f"{entry.id}.pt" and entry.config_filename == f"cfg-{entry.id}.yaml"


def test_cache_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.ENV_CACHE, str(tmp_path / "a" / "b"))
    assert paths.cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv(paths.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "synchlib" and paths.cache_dir().is_dir()


def test_checkpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ck.ENV_MIRROR, raising=False)
    assert ck.checkpoint_url("24-01-04T16-39-21", "24-01-04T16-39-21.pt") == (
        "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/sync/sync_models/"
        "24-01-04T16-39-21/24-01-04T16-39-21.pt"
    )
    monkeypatch.setenv(ck.ENV_MIRROR, "http://example.org/m/")
    assert ck.checkpoint_url("x", "cfg-x.yaml") == "http://example.org/m/x/cfg-x.yaml"
    with pytest.raises(CheckpointError, match="plain file name"):
        ck.checkpoint_url("../etc", "x.pt")


# --------------------------------------------------------------------------------------------------------------
# fetch


def test_fetch_downloads_once_then_uses_cache(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    path = fetch_quick(progress=True)
    assert path == env / TEST_ID / f"{TEST_ID}.pt"
    assert path.read_bytes() == fake
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{TEST_ID}.pt", f"{TEST_ID}.pt.verified"]
    assert fetch_quick() == path
    assert server.hits[route] == 1  # the second call made no request
    sd, meta = ck.read_checkpoint(path)
    assert torch.equal(sd["vproj.weight"], tiny_state_dict()["vproj.weight"])
    assert meta["epoch"] == 3 and meta["args"] == TINY_ARGS


def test_fetch_rehashes_changed_cache_and_redownloads(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    path = fetch_quick()
    path.write_bytes(fake[:-10] + b"0123456789")  # corrupted in place: note no longer matches, hash fails
    with pytest.warns(UserWarning, match="downloading it again"):
        assert fetch_quick() == path
    assert path.read_bytes() == fake and server.hits[route] == 2


def test_fetch_accepts_a_good_file_placed_in_cache(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    (env / TEST_ID).mkdir(parents=True)
    (env / TEST_ID / f"{TEST_ID}.pt").write_bytes(fake)  # no note: verified by hashing, no download
    assert fetch_quick().read_bytes() == fake
    assert server.hits[route] == 0 and (env / TEST_ID / f"{TEST_ID}.pt.verified").is_file()


def test_fetch_cut_transfer_is_retried_then_fails_clean(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("cut", fake))
    with pytest.raises(CheckpointError, match="after 3 attempt") as err:
        fetch_quick(retries=2)
    assert server.hits[route] == 3
    assert server.url in str(err.value) and "SYNCHLIB_MIRROR" in str(err.value)
    assert_clean(env)


def test_fetch_interrupted_then_succeeds(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("cut", fake), ("ok", fake))
    path = fetch_quick()
    assert path.read_bytes() == fake and server.hits[route] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{TEST_ID}.pt", f"{TEST_ID}.pt.verified"]


def test_fetch_truncated_file_fails_hash_without_retry(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake[: len(fake) // 2]))
    with pytest.raises(CheckpointError, match="failed verification.*md5"):
        fetch_quick()
    assert server.hits[route] == 1
    assert_clean(env)


def test_fetch_wrong_hash(env: Path, server: FileServer, fake: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    wrong = "0000000" if not hashlib.md5(fake).hexdigest().startswith("0000000") else "1111111"
    monkeypatch.setitem(ck.RELEASED, TEST_ID, dataclasses.replace(ck.RELEASED[TEST_ID], md5_prefix=wrong))
    with pytest.raises(CheckpointError, match=f"starting with {wrong}"):
        fetch_quick()
    assert_clean(env)
    with pytest.raises(CheckpointError, match="failed verification"):
        fetch_quick(known_hash="sha256:" + "0" * 64)
    assert_clean(env)


def test_fetch_http_500_retried_then_fails_clean(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("status", 500))
    with pytest.raises(CheckpointError, match="HTTP 500") as err:
        fetch_quick(retries=3)
    assert server.hits[route] == 4
    assert f"{server.url}/{TEST_ID}/{TEST_ID}.pt" in str(err.value)
    assert_clean(env)


def test_fetch_http_503_then_success(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("status", 503), ("status", 502), ("ok", fake))
    assert fetch_quick().read_bytes() == fake and server.hits[route] == 3


def test_fetch_404_is_not_retried(env: Path, server: FileServer, fake: bytes) -> None:
    with pytest.raises(CheckpointError, match="HTTP 404"):
        fetch_quick()
    assert server.hits[f"/models/{TEST_ID}/{TEST_ID}.pt"] == 1
    assert_clean(env)


def test_fetch_unreachable_server(env: Path, fake: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(ck.ENV_MIRROR, f"http://127.0.0.1:{port}")
    with pytest.raises(CheckpointError, match="after 2 attempt"):
        fetch_quick(retries=1)
    assert_clean(env)


def test_fetch_rejects_non_http_mirror(env: Path, fake: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ck.ENV_MIRROR, "ftp://example.org/models")
    with pytest.raises(CheckpointError, match="http\\(s\\) base URL"):
        fetch_quick()


def test_fetch_unknown_id_makes_no_request(env: Path, server: FileServer) -> None:
    with pytest.raises(CheckpointError, match="24-01-04T16-39-21"):
        fetch_quick("not-an-id")
    assert sum(server.hits.values()) == 0


def test_fetch_other_id_with_known_sha256(env: Path, server: FileServer, fake: bytes) -> None:
    route = server.serve("mirror-only", "mirror-only.pt", ("ok", fake))
    path = fetch_quick("mirror-only", known_hash="sha256:" + hashlib.sha256(fake).hexdigest())
    assert path.read_bytes() == fake and server.hits[route] == 1
    with pytest.raises(CheckpointError, match="invalid hash"):
        fetch_quick("mirror-only", known_hash="sha1:abcdef0")


def test_registry_env_replaces_the_published_hash(env: Path, server: FileServer, fake: bytes, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """$SYNCHLIB_REGISTRY (a CSV like data_manifests/checkpoints.csv) names the hash a mirror's file is checked
    against; read from the environment, so notebook kernels and other child processes see it too."""
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    md5 = hashlib.md5(fake).hexdigest()
    wrong = "0000000" if not md5.startswith("0000000") else "1111111"
    registry = tmp_path / "registry.csv"
    monkeypatch.setenv(ck.ENV_REGISTRY, str(registry))
    registry.write_text(f"id,md5_prefix\n{TEST_ID},{wrong}\n")  # wins over the (matching) published prefix
    with pytest.raises(CheckpointError, match=f"starting with {wrong}"):
        fetch_quick()
    assert_clean(env)
    monkeypatch.setitem(ck.RELEASED, TEST_ID, dataclasses.replace(ck.RELEASED[TEST_ID], md5_prefix=wrong))
    registry.write_text(f"id,md5_prefix,url\n{TEST_ID},{md5},ignored\n")  # other columns are ignored
    assert ck.expected_hash(TEST_ID) == f"md5:{md5}"
    assert fetch_quick().read_bytes() == fake and server.hits[route] == 2
    for text, message in [
        ("id,md5\nx,y\n", "columns 'id' and 'md5_prefix'"),
        (f"id,md5_prefix\nnot-an-id,{md5}\n", "not a released id"),
        (f"id,md5_prefix\n{TEST_ID},abc\n", "invalid hash"),
    ]:
        registry.write_text(text)
        with pytest.raises(CheckpointError, match=message):
            fetch_quick()
    monkeypatch.setenv(ck.ENV_REGISTRY, str(tmp_path / "missing.csv"))
    with pytest.raises(CheckpointError, match="cannot read"):
        ck.expected_hash(TEST_ID)
    monkeypatch.delenv(ck.ENV_REGISTRY)
    assert ck.expected_hash(TEST_ID) == f"md5:{wrong}"


def test_fetch_with_config(env: Path, server: FileServer, fake: bytes) -> None:
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    server.serve(TEST_ID, f"cfg-{TEST_ID}.yaml", ("ok", b"action: train_avsync_model\n"))
    path = fetch_quick(with_config=True)
    assert (path.parent / f"cfg-{TEST_ID}.yaml").read_text() == "action: train_avsync_model\n"


def test_fetch_with_missing_config_only_warns(env: Path, server: FileServer, fake: bytes) -> None:
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    with pytest.warns(UserWarning, match="config was not"):
        path = fetch_quick(with_config=True)
    assert path.read_bytes() == fake and not (path.parent / f"cfg-{TEST_ID}.yaml").exists()


# --------------------------------------------------------------------------------------------------------------
# resolve_checkpoint


def test_resolve_checkpoint(env: Path, server: FileServer, fake: bytes, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    local = tmp_path / "src" / "fake.pt"
    assert ck.resolve_checkpoint(local) == local and ck.resolve_checkpoint(str(local)) == local
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    assert ck.resolve_checkpoint(TEST_ID, progress=False) == env / TEST_ID / f"{TEST_ID}.pt"
    with pytest.raises(CheckpointError, match="24-01-22T20-34-52") as err:
        ck.resolve_checkpoint("nope")
    assert "no file at" in str(err.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        ck.resolve_checkpoint(tmp_path)
    monkeypatch.setattr(ck, "ASSETS_DIR", tmp_path / "src")
    monkeypatch.setitem(ck.PACKAGED, "tiny-synthetic", "fake.pt")
    assert ck.resolve_checkpoint("tiny-synthetic") == local


# --------------------------------------------------------------------------------------------------------------
# read_checkpoint: the released layout


def released_like(tmp_path: Path) -> tuple[Path, Any]:
    """A checkpoint pickled exactly like the reference training code does (OmegaConf args, numpy metrics, ...)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "action": "train_avsync_model",
        "start_time": "24-01-04T16-39-21",
        "model": {"target": "model.sync_model.Synchformer",
                  "params": {"afeat_extractor": {"is_trainable": False, "params": {"ckpt_path": None}},
                             "transformer": {"params": {"n_embd": 768, "dropout": 0.0, "block_shape": [198, 768]}}}},
        "data": {"vfps": 25, "afps": 16000, "crop_len_sec": 5.0, "num_off_cls": 21, "rgb_mean": [0.5, 0.5, 0.5],
                 "nested": [[1, 2], {"a": -3}], "big": 2**40, "empty": {}, "el": [], "flag": True},
        "training": {"num_classes": "${data.num_off_cls}", "text": "fps ${data.vfps}", "missing": "???",
                     "home": "${oc.env:SYNCHLIB_TEST_SECRET}",
                     "optimizer": {"betas": [0.9, 0.999]}},
    })  # fmt: skip
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), 1e-4, cfg.training.optimizer.betas)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt_state = opt.state_dict()
    opt_state["param_groups"][0]["betas"] = cfg.training.optimizer.betas  # torch 2.0 kept the ListConfig as given
    sched = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=5),
        torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)], milestones=[5])  # fmt: skip
    sd = OrderedDict((f"module.{k}", v) for k, v in tiny_state_dict().items())
    ckpt = {
        "args": cfg,
        "loss": 1.25,
        "metrics": {"accuracy_1": np.float64(0.466), "accuracy_5_median": np.float32(0.5), "n": np.int64(7),
                    "ok": np.bool_(True), "accuracy_1_tol1": 0.67},
        "epoch": 12,
        "optimizer": opt_state,
        "model": sd,
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "lr_scheduler": sched.state_dict(),
        "model_type": "Synchformer",
    }  # fmt: skip
    path = tmp_path / "released.pt"
    torch.save(ckpt, path)
    return path, cfg


def test_read_released_layout_with_omegaconf_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, cfg = released_like(tmp_path)
    from omegaconf import OmegaConf

    expected_args = OmegaConf.to_container(cfg, resolve=False)
    monkeypatch.setenv("SYNCHLIB_TEST_SECRET", "s3cr3t")  # a resolver in the file must not read it

    sd, meta = ck.read_checkpoint(path)

    assert list(sd) == list(tiny_state_dict())  # 'module.' stripped, order kept
    assert all(torch.equal(sd[k], v) for k, v in tiny_state_dict().items())
    assert meta["args"] == expected_args
    assert type(meta["args"]) is dict and type(meta["args"]["data"]["rgb_mean"]) is list
    assert meta["args"]["training"]["num_classes"] == "${data.num_off_cls}"  # references kept as text
    assert meta["args"]["training"]["missing"] == "???"
    assert meta["args"]["training"]["home"] == "${oc.env:SYNCHLIB_TEST_SECRET}"  # never resolved
    assert meta["epoch"] == 12 and meta["model_type"] == "Synchformer" and meta["loss"] == 1.25
    m = meta["metrics"]
    assert m == {"accuracy_1": 0.466, "accuracy_5_median": 0.5, "n": 7, "ok": True, "accuracy_1_tol1": 0.67}
    assert type(m["accuracy_1"]) is float and type(m["n"]) is int and type(m["ok"]) is bool
    assert meta["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert set(meta) == {"args", "loss", "metrics", "epoch", "optimizer", "scaler", "lr_scheduler", "model_type"}


def test_allow_list_is_what_the_released_layout_needs(tmp_path: Path) -> None:
    """Every global beyond torch's defaults in a released-layout file is on synchlib's allow-list, as the real
    OmegaConf classes (no stand-ins)."""
    from omegaconf import DictConfig

    path, _ = released_like(tmp_path)
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode", "numpy.dtype"} <= needed
    with torch.serialization.safe_globals(ck._safe_globals()):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert DictConfig in ck._safe_globals()


def test_released_args_build_a_config(tmp_path: Path) -> None:
    """The plain args from a checkpoint go straight into synchlib's config reader."""
    from synchlib.config import config_from_dict, released_config_path

    import yaml

    raw = yaml.safe_load(released_config_path("24-01-04T16-39-21").read_text())
    path = tmp_path / "ck.pt"
    ck.save_checkpoint(path, tiny_state_dict(), raw)
    _, meta = ck.read_checkpoint(path)
    assert config_from_dict(meta["args"]) == load_config("24-01-04T16-39-21").replace(name="custom")


# --------------------------------------------------------------------------------------------------------------
# read_checkpoint: other layouts and bad files


def test_bare_state_dict_and_module_prefix(tmp_path: Path) -> None:
    torch.save(tiny_state_dict(), tmp_path / "bare.pt")
    sd, meta = ck.read_checkpoint(tmp_path / "bare.pt")
    assert list(sd) == list(tiny_state_dict()) and meta == {}
    torch.save({f"module.{k}": v for k, v in tiny_state_dict().items()}, tmp_path / "ddp.pt")
    sd, _ = ck.read_checkpoint(tmp_path / "ddp.pt")
    assert list(sd) == list(tiny_state_dict())
    torch.save({"module.a": torch.ones(1), "a": torch.zeros(1)}, tmp_path / "clash.pt")
    with pytest.raises(CheckpointError, match="clashes"):
        ck.read_checkpoint(tmp_path / "clash.pt")


def test_legacy_non_zip_format_loads_without_mmap(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"model": tiny_state_dict(), "epoch": 1}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    sd, meta = ck.read_checkpoint(path)
    assert torch.equal(sd["vproj.weight"], tiny_state_dict()["vproj.weight"]) and meta == {"epoch": 1}


CALLS: list[str] = []


def _record(what: str) -> None:
    CALLS.append(what)


class Sneaky:
    """An object whose unpickling would call a function."""

    def __init__(self, reducer: Any, arg: Any):
        self.reducer, self.arg = reducer, arg

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.reducer, (self.arg,)


class Custom:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("payload", ["function", "os.system", "custom_object"])
def test_forbidden_globals_are_refused_and_never_run(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    bad = {
        "function": Sneaky(_record, "called"),
        "os.system": Sneaky(os.system, f"touch {marker}"),
        "custom_object": Custom(),
    }[payload]
    path = tmp_path / "bad.pt"
    torch.save({"model": tiny_state_dict(), "args": {"x": bad}, "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="does not load for safety") as err:
        ck.read_checkpoint(path)
    assert "weights_only=False" in str(err.value)
    assert CALLS == [] and not marker.exists()


@pytest.mark.parametrize("value", [np.str_("a"), np.datetime64("2024-01-01"), np.complex128(1j), np.zeros(2)])
def test_numpy_values_other_than_numbers_are_refused(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "np.pt"
    torch.save({"model": tiny_state_dict(), "metrics": {"x": value}}, path)
    with pytest.raises(CheckpointError, match="does not load for safety"):
        ck.read_checkpoint(path)


@pytest.mark.parametrize("kind", ["random", "truncated_zip", "empty", "text", "not_a_dict", "no_model"])
def test_bad_files_raise_checkpoint_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.pt"
    good = write_fake(tmp_path / "good.pt")
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated_zip":
        path.write_bytes(good[: len(good) * 2 // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("action: train\n")
    elif kind == "not_a_dict":
        torch.save([torch.ones(2)], path)
    else:
        torch.save({"epoch": 1, "weights": [torch.ones(2)]}, path)
    with pytest.raises(CheckpointError) as err:
        ck.read_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        ck.read_checkpoint(tmp_path / "nope.pt")


# --------------------------------------------------------------------------------------------------------------
# save_checkpoint and hashes


def test_save_checkpoint_roundtrip_and_hashes(tmp_path: Path) -> None:
    path = ck.save_checkpoint(tmp_path / "out" / "mine.pt", tiny_state_dict(), TINY_ARGS,
                              epoch=5, metrics={"accuracy_1": 0.5}, model_type="Tiny")  # fmt: skip
    assert sorted(p.name for p in path.parent.iterdir()) == ["mine.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "args", "epoch", "model_type", "metrics"}
    sd, meta = ck.read_checkpoint(path)
    assert meta == {"args": TINY_ARGS, "epoch": 5, "model_type": "Tiny", "metrics": {"accuracy_1": 0.5}}
    data = path.read_bytes()
    assert paths.file_md5(path) == hashlib.md5(data).hexdigest()
    assert paths.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_save_checkpoint_rejects_non_plain_data(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="args\\['x'\\] is a Custom"):
        ck.save_checkpoint(tmp_path / "a.pt", tiny_state_dict(), {"x": Custom()})
    with pytest.raises(CheckpointError, match="not_tensor"):
        ck.save_checkpoint(tmp_path / "b.pt", {"not_tensor": 1.0}, {})  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="extra"):
        ck.save_checkpoint(tmp_path / "c.pt", tiny_state_dict(), {}, extra=io.BytesIO())
    with pytest.raises(CheckpointError, match="model="):
        ck.save_checkpoint(tmp_path / "d.pt", tiny_state_dict(), {}, model={})
    assert list(tmp_path.iterdir()) == []


def test_pickle_module_not_used_for_safe_load(tmp_path: Path) -> None:
    """A pickle written with plain pickle (not torch.save) is still read through the weights-only unpickler."""
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"x": Sneaky(_record, "called")}, protocol=2))
    with pytest.raises(CheckpointError):
        ck.read_checkpoint(path)
    assert CALLS == []


# --------------------------------------------------------------------------------------------------------------
# Metadata that would take unbounded work: each must be read (or refused) in time linear in the file's size

REPO = Path(__file__).resolve().parents[1]
LEVELS = 40  # t = (t, t) forty times: 2**40 values when written out, a few kB on disk
DEEP = 200_000  # nesting levels of the deep key: hashing it recursed past the C stack (a crash)
PLACEHOLDER = "KEY-PLACEHOLDER"
# A regression hangs (2**40 steps) or crashes; a correct reader needs well under a second per file. The guard only
# turns a hang into a failure and is far above any honest run, slow machine included.
GUARD_S = 120


def config_node(content: Any) -> Any:
    """A real OmegaConf DictConfig holding ``content`` as it is (shared or cyclic), as a crafted file can."""
    from omegaconf import DictConfig

    node = DictConfig({})
    node.__dict__["_content"] = content
    return node


class CallsConfig:
    """Pickles as a call of DictConfig on ``content`` (GLOBAL + REDUCE), which copies it node by node."""

    def __init__(self, content: Any):
        self.content = content

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from omegaconf import DictConfig

        return DictConfig, (self.content,)


def with_key_ops(path: Path, ops: bytes) -> None:
    """Save a checkpoint whose args dict has one key, built by the raw pickle opcodes ``ops`` (keys that Python
    itself could never build without hashing them first)."""
    torch.save({"model": tiny_state_dict(), "args": {PLACEHOLDER: 1}}, path)
    mark = b"X" + struct.pack("<I", len(PLACEHOLDER)) + PLACEHOLDER.encode()  # BINUNICODE of the placeholder
    with zipfile.ZipFile(path) as src:
        members = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in members:
            if name.endswith("/data.pkl"):
                assert data.count(mark) == 1
                data = data.replace(mark, ops)
            out.writestr(name, data)


def tuple_dag_ops(levels: int) -> bytes:
    """Opcodes that leave t on the stack, with t = () and then t = (t, t) ``levels`` times (memo PUT/GET)."""
    ops = b")"  # EMPTY_TUPLE
    for i in range(levels):  # LONG_BINPUT i, LONG_BINGET i, TUPLE2
        ops += b"r" + struct.pack("<I", 100_000 + i) + b"j" + struct.pack("<I", 100_000 + i) + b"\x86"
    return ops


def node_key_ops(levels: int) -> bytes:
    """Opcodes for an OmegaConf AnyNode (created and filled in, as the released files do) whose value is the shared
    tuple of :func:`tuple_dag_ops`: hashing the node hashes its value."""
    val = b"\x8c\x04_val"  # SHORT_BINUNICODE "_val"
    return b"comegaconf.nodes\nAnyNode\n)\x81}" + val + tuple_dag_ops(levels) + b"sb"  # NEWOBJ, {_val: t}, BUILD


def write_bomb(shape: str, path: Path) -> None:
    from omegaconf.nodes import AnyNode

    if shape == "tuple_key_dag":
        return with_key_ops(path, tuple_dag_ops(LEVELS))
    if shape == "deep_tuple_key":
        return with_key_ops(path, b")" + b"\x85" * DEEP)  # EMPTY_TUPLE, then TUPLE1 again and again
    if shape == "node_key_dag":
        return with_key_ops(path, node_key_ops(LEVELS))
    if shape in ("list_cycle", "dict_cycle", "config_cycle"):
        if shape == "list_cycle":
            value: Any = []
            value += [value, value]
        elif shape == "dict_cycle":
            value = {}
            value.update(a=value, b=value)
        else:
            value = config_node({})
            value._content.update(a=value, b=value)
    else:
        value = AnyNode(1) if shape == "config_dag" else 1
        for _ in range(LEVELS):
            value = {
                "list_dag": lambda v: [v, v],
                "dict_dag": lambda v: {"a": v, "b": v},
                "tuple_dag": lambda v: (v, v),
                "config_dag": lambda v: config_node({"a": v, "b": v}),
                "config_call_dag": lambda v: {"a": v, "b": v},
            }[shape](value)
        if shape == "config_call_dag":
            value = CallsConfig(value)
    torch.save({"model": tiny_state_dict(), "args": {"x": value}, "epoch": 1}, path)


BOMBS = {  # shape -> what the refusal says
    "list_dag": "holds more than 1,000,000 values",
    "dict_dag": "holds more than 1,000,000 values",
    "tuple_dag": "holds more than 1,000,000 values",
    "config_dag": "holds more than 1,000,000 values",
    "list_cycle": "contains itself",
    "dict_cycle": "contains itself",
    "config_cycle": "contains itself",
    "tuple_key_dag": "dict key built from more than",
    "deep_tuple_key": "dict key built from more than",
    "node_key_dag": "a dict key that is an object",
    "config_call_dag": "a call of omegaconf.dictconfig.DictConfig",
}

READER = """
import json, sys
from synchlib import checkpoints as ck
for path in sys.argv[1:]:
    try:
        ck.read_checkpoint(path)
        result = "loaded"
    except Exception as e:
        result = f"{type(e).__name__}: {e}"
    print(json.dumps([path, result]), flush=True)
"""


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Read every bomb in a child process (a regression hangs or crashes there, not here); shape -> outcome."""
    folder = tmp_path_factory.mktemp("bombs")
    paths = {shape: folder / f"{shape}.pt" for shape in BOMBS}
    for shape, path in paths.items():
        write_bomb(shape, path)
        assert path.stat().st_size < 2_000_000  # the work must not be explained by the size of the file
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        run = subprocess.run([sys.executable, "-c", READER, *map(str, paths.values())], env=env,
                             capture_output=True, text=True, timeout=GUARD_S)  # fmt: skip
        out, note = run.stdout, f"exit status {run.returncode}: {run.stderr[-2000:]}"
    except subprocess.TimeoutExpired as e:
        out, note = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "hung"
    done = dict(json.loads(line) for line in out.splitlines() if line.startswith("["))
    return {shape: done.get(str(path), f"no answer ({note})") for shape, path in paths.items()}


@pytest.mark.parametrize("shape", list(BOMBS))
def test_metadata_bombs_are_refused(bomb_results: dict[str, str], shape: str) -> None:
    """Shared references (L = [L, L], also dicts, tuples, config nodes), cycles and huge or deep dict keys make a
    few kB that a naive reader walks for ever (or hashes past the C stack); each is refused at once instead."""
    assert bomb_results[shape].startswith("CheckpointError: ")
    assert BOMBS[shape] in bomb_results[shape]


def test_shared_metadata_comes_back_shared(tmp_path: Path) -> None:
    shared = {"betas": [0.9, 0.999], "eps": 1e-8}
    path = ck.save_checkpoint(tmp_path / "s.pt", tiny_state_dict(), {"a": shared, "b": shared, "t": (shared,)})
    _, meta = ck.read_checkpoint(path)
    assert meta["args"] == {"a": shared, "b": shared, "t": (shared,)}
    assert meta["args"]["a"] is meta["args"]["b"] is meta["args"]["t"][0]  # converted once, not once per path


SAVER = """
import sys, torch
from synchlib import checkpoints as ck
for kind in ("list", "dict"):
    value = 1
    for _ in range(int(sys.argv[2])):
        value = [value, value] if kind == "list" else {"a": value, "b": value}
    try:
        ck.save_checkpoint(sys.argv[1], {"w": torch.ones(1)}, {"x": value})
        print(kind, "saved", flush=True)
    except Exception as e:
        print(kind, f"{type(e).__name__}: {e}", flush=True)
"""


def test_save_checkpoint_refuses_shared_bombs(tmp_path: Path) -> None:
    """save_checkpoint checks that the config is plain data: once per object, not once per path through it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", SAVER, str(tmp_path / "out.pt"), str(LEVELS)], env=env,
                         capture_output=True, text=True, timeout=GUARD_S)  # fmt: skip
    lines = run.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["list", "dict"], run.stdout + run.stderr[-2000:]
    for line in lines:
        assert line.split(" ", 1)[1].startswith("CheckpointError: args['x']")
        assert "holds more than 1,000,000 values" in line
    assert not (tmp_path / "out.pt").exists()
