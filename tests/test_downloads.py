"""Downloads that misbehave: silent and trickling servers, deadlines, redirects, killed and concurrent downloads,
and files that share the published hash prefix with the one verified before.

No internet: servers run on 127.0.0.1, ``SYNCHLIB_MIRROR`` points at them and ``SYNCHLIB_CACHE`` at a temporary
folder. Time limits are passed explicitly and kept short; assertions are on behaviour (the error, the messages, the
requests the server saw, the files left behind). The only elapsed-time checks are generous upper bounds that turn a
download that would never give up into a failure instead of a hung test suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import filelock
import pytest
import torch

from synchlib import checkpoints as ck
from synchlib import download, paths
from synchlib.errors import CheckpointError, InvalidArgumentError

from .helpers import RouteServer

REPO = Path(__file__).resolve().parents[1]
TEST_ID = "99-01-01T00-00-00"
GUARD_S = 30.0  # upper bound for calls that must give up after a few seconds; only catches "never gives up"
WAIT_S = 120.0  # how long a test waits for a child process or a server event before failing


def checkpoint_bytes(tmp_path: Path, seed: int) -> bytes:
    path = tmp_path / f"src-{seed}.pt"
    g = torch.Generator().manual_seed(seed)
    ck.save_checkpoint(path, {"w": torch.randn(64, 64, generator=g)}, {"seed": seed})
    return path.read_bytes()


Server = RouteServer  # the behaviours these tests use: ok, status, redirect, trickle, gated


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def other_server() -> Iterator[Server]:
    """A second server: another port is another host as far as redirects go."""
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections (the kernel does, into the listen backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/models"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> Path:
    """Cache in tmp_path, mirror on the local server, no proxies, redirects not opted in; returns the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(paths.ENV_CACHE, str(cache))
    monkeypatch.setenv(ck.ENV_MIRROR, server.url)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "SYNCHLIB_ALLOW_REDIRECTS", ck.ENV_REGISTRY):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A small checkpoint registered under TEST_ID with its real md5 prefix."""
    data = checkpoint_bytes(tmp_path, 0)
    entry = ck.ReleasedCheckpoint(id=TEST_ID, kind="offset", md5_prefix=hashlib.md5(data).hexdigest()[:7],
                                  train_data="none", test_set="none", reported="n/a", num_classes=21)  # fmt: skip
    monkeypatch.setitem(ck.RELEASED, TEST_ID, entry)
    return data


def fetch_quick(ckpt_id: str = TEST_ID, **kw: Any) -> Path:
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 10.0)
    return ck.fetch(ckpt_id, **kw)


def timed(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run ``call``; return the exception it raised (None if none) and the seconds it took."""
    start = time.monotonic()
    try:
        call()
        error = None
    except Exception as e:
        error = e
    return error, time.monotonic() - start


def leftovers(cache: Path, ckpt_id: str = TEST_ID) -> list[str]:
    folder = cache / ckpt_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------------------------
# Servers that do not answer, or answer too slowly


def test_silent_server_is_given_up_on_with_a_message(env: Path, silent_url: str, fake: bytes,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # fmt: skip
    monkeypatch.setenv(ck.ENV_MIRROR, silent_url)
    error, elapsed = timed(lambda: fetch_quick(timeout=2.0, retries=1))
    assert elapsed < GUARD_S
    assert isinstance(error, CheckpointError)
    host = silent_url.split("/")[2]
    message = str(error)
    assert f"no answer from {host} within 2 s" in message and "after 2 attempt" in message
    assert "SYNCHLIB_MIRROR" in message and "pass its path" in message  # what to do
    assert "--checkpoint tiny-synthetic" in message  # and how to go on offline
    assert f"waiting for {host}" in capsys.readouterr().err  # said while it waited
    assert leftovers(env) == []


def test_deadline_bounds_the_whole_fetch(env: Path, silent_url: str, fake: bytes,
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Generous per-wait limits and many retries: the deadline still ends the fetch, with a message saying so."""
    monkeypatch.setenv(ck.ENV_MIRROR, silent_url)
    error, elapsed = timed(lambda: fetch_quick(timeout=60.0, stall_timeout=60.0, deadline=2.0, retries=20))
    assert elapsed < GUARD_S
    assert isinstance(error, CheckpointError)
    assert "deadline=2 s" in str(error) and "no answer from" in str(error) and "SYNCHLIB_MIRROR" in str(error)
    assert leftovers(env) == []


def test_retry_pauses_fit_in_the_deadline(env: Path, server: Server, fake: bytes) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("status", 503))
    error, elapsed = timed(lambda: fetch_quick(retries=30, backoff=1.0, deadline=4.0))
    assert elapsed < GUARD_S  # 30 retries with doubling pauses would take years
    assert isinstance(error, CheckpointError)
    assert "deadline=4 s" in str(error) and "HTTP 503" in str(error)
    assert 1 <= server.hits[route] <= 3  # pauses of 1, 2, 4 s: the third does not fit in 4 s


def test_trickling_server_is_given_up_on(env: Path, server: Server, fake: bytes) -> None:
    """A byte every 0.2 s resets any socket timeout for ever; the stall check gives up, and retries."""
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("trickle", fake))
    error, elapsed = timed(lambda: fetch_quick(stall_timeout=1.0, retries=1))
    assert elapsed < GUARD_S
    assert isinstance(error, CheckpointError)
    assert "stalled" in str(error) and "stall_timeout=1 s" in str(error) and "after 2 attempt" in str(error)
    assert server.hits[route] == 2
    assert leftovers(env) == []


def test_stall_in_the_middle_is_retried_with_a_message(env: Path, server: Server, fake: bytes, capsys) -> None:
    """Half of the file, then silence (the gate never opens): said on stderr, given up on, retried."""
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("gated", fake), ("ok", fake))
    path = fetch_quick(timeout=1.0)
    assert path.read_bytes() == fake and server.hits[route] == 2
    assert f"waiting for {server.host}" in capsys.readouterr().err
    assert leftovers(env) == [f"{TEST_ID}.pt", f"{TEST_ID}.pt.verified"]


def test_time_limits_must_be_positive(env: Path, fake: bytes) -> None:
    for kw in ({"timeout": 0}, {"stall_timeout": -1.0}, {"deadline": float("inf")}, {"deadline": float("nan")}):
        with pytest.raises(InvalidArgumentError, match=next(iter(kw))):
            fetch_quick(**kw)


# --------------------------------------------------------------------------------------------------------------
# Redirects


def test_redirects_stay_on_the_same_host(env: Path, server: Server, other_server: Server, fake: bytes) -> None:
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("redirect", "/models/moved/file.pt"))
    moved = server.serve("moved", "file.pt", ("ok", fake))
    assert fetch_quick().read_bytes() == fake and server.hits[moved] == 1  # same host: followed

    for name in (f"{TEST_ID}.pt", f"{TEST_ID}.pt.verified"):
        (env / TEST_ID / name).unlink()
    elsewhere = other_server.serve("x", "file.pt", ("ok", fake))
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("redirect", "/models/hop/file.pt"))  # same host, then another one
    server.serve("hop", "file.pt", ("redirect", f"{other_server.url}/x/file.pt"))
    with pytest.raises(CheckpointError, match=f"redirects to another host, {other_server.host}") as err:
        fetch_quick()
    assert "SYNCHLIB_ALLOW_REDIRECTS=1" in str(err.value)
    assert other_server.hits[elsewhere] == 0  # never contacted
    assert leftovers(env) == []


def test_other_hosts_when_opted_in(env: Path, server: Server, other_server: Server, fake: bytes,
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("redirect", f"{other_server.url}/x/file.pt"))
    elsewhere = other_server.serve("x", "file.pt", ("ok", fake))
    assert fetch_quick(allow_redirects=True).read_bytes() == fake
    (env / TEST_ID / f"{TEST_ID}.pt").unlink()
    monkeypatch.setenv("SYNCHLIB_ALLOW_REDIRECTS", "1")
    assert fetch_quick().read_bytes() == fake
    assert other_server.hits[elsewhere] == 2


# --------------------------------------------------------------------------------------------------------------
# Killed and concurrent downloads


def lock_path(cache: Path, ckpt_id: str) -> Path:
    return cache / ".locks" / f"{ckpt_id}.lock"


def test_partial_files_of_killed_downloads_are_removed(env: Path, server: Server, fake: bytes) -> None:
    """What killed downloads leave in the id's folder (pooch's temporary files, synchlib's own) is removed under
    the folder's lock; another folder's files are not this fetch's business."""
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    folder = env / TEST_ID
    folder.mkdir(parents=True)
    stale = [folder / "tmpk1ll3d_0", folder / f".{TEST_ID}.pt.verified.x7y8z9.part",
             folder / f".cfg-{TEST_ID}.yaml.abc123.part"]  # fmt: skip
    other = env / "another-id" / "tmpk1ll3d_0"
    other.parent.mkdir()
    for p in [*stale, other]:
        p.write_bytes(b"partial")
    path = fetch_quick()
    assert not any(p.exists() for p in stale) and other.exists()

    stale[0].write_bytes(b"partial")  # a later fetch of the cached file cleans up too
    assert fetch_quick() == path and not stale[0].exists()


def test_live_download_is_waited_for_and_its_file_kept(env: Path, server: Server, fake: bytes, capsys) -> None:
    """While another process holds the file's lock (it is downloading), its .part is not touched; a fetch waits
    for it, within its deadline."""
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    live = env / TEST_ID / "tmpl1v3_abc"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"being written")
    held = lock_path(env, TEST_ID)
    held.parent.mkdir(parents=True)
    with filelock.FileLock(held):
        error, elapsed = timed(lambda: fetch_quick(deadline=1.5))
    assert elapsed < GUARD_S
    assert isinstance(error, CheckpointError) and "gave up waiting for another download" in str(error)
    assert "waiting for another download" in capsys.readouterr().err
    assert live.read_bytes() == b"being written" and server.hits[route] == 0
    assert fetch_quick().read_bytes() == fake and not live.exists()  # lock free: the leftover is stale now


def test_two_threads_download_once(env: Path, server: Server, fake: bytes, capsys) -> None:
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("gated", fake))
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            results[name] = fetch_quick(timeout=WAIT_S, stall_timeout=WAIT_S)
        except Exception as e:  # reported by the assertions below
            results[name] = e

    said = ""

    def until(condition: Callable[[], bool]) -> None:
        nonlocal said
        ends = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < ends, "timed out waiting for the threads"
            time.sleep(0.05)
            said += capsys.readouterr().err

    first = threading.Thread(target=run, args=("first",), daemon=True)
    first.start()
    until(lambda: server.hits[route] == 1 or not first.is_alive())
    second = threading.Thread(target=run, args=("second",), daemon=True)
    second.start()
    until(lambda: "waiting for another download" in said or server.hits[route] > 1 or not second.is_alive())
    server.gate.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert results["first"] == results["second"] == env / TEST_ID / f"{TEST_ID}.pt"
    assert server.hits[route] == 1


FETCHER = """
import sys
from synchlib import checkpoints as ck
path = ck.fetch("mirror-only", known_hash=sys.argv[1], progress=False, timeout=120, stall_timeout=120)
print(path, flush=True)
"""


def test_two_processes_download_once(env: Path, server: Server, fake: bytes) -> None:
    """The first process downloads (the server holds back the second half); the second waits for it (it says so),
    then uses the verified file: the server sees one request."""
    route = server.serve("mirror-only", "mirror-only.pt", ("gated", fake))
    known = "sha256:" + hashlib.sha256(fake).hexdigest()
    child_env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", FETCHER, known], env=child_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def until(condition: Callable[[], bool]) -> None:
        ends = time.monotonic() + WAIT_S
        while not condition():
            assert time.monotonic() < ends, "timed out waiting for the child processes"
            time.sleep(0.05)

    first = start()
    try:
        until(lambda: server.hits[route] == 1 or first.poll() is not None)
        second = start()
        try:
            said: list[str] = []
            reader = threading.Thread(target=lambda: said.extend(second.stderr), daemon=True)  # type: ignore[arg-type]
            reader.start()
            until(lambda: any("waiting for another download" in line for line in said)
                  or server.hits[route] > 1 or second.poll() is not None)  # fmt: skip
            server.gate.set()
            out_second, _ = second.communicate(timeout=WAIT_S)
            reader.join(WAIT_S)
        finally:
            second.kill()
        out_first, err_first = first.communicate(timeout=WAIT_S)
    finally:
        first.kill()
    assert first.returncode == 0, err_first[-2000:]
    assert second.returncode == 0, "".join(said)[-2000:]
    assert out_first.strip() == out_second.strip() == str(env / "mirror-only" / "mirror-only.pt")
    assert server.hits[route] == 1
    assert Path(out_first.strip()).read_bytes() == fake


# --------------------------------------------------------------------------------------------------------------
# Full digests recorded after the first verified download


def test_known_digest_refuses_a_file_that_only_shares_the_prefix(env: Path, server: Server, fake: bytes,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:  # fmt: skip
    """The published hashes are 7-digit md5 prefixes. Once a file has passed, its full digests are recorded; a
    different file later served under the same name is refused even when it matches the prefix (a registry naming
    the new file's prefix stands in for a crafted collision, which would take 2**28 tries)."""
    route = server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    path = fetch_quick()
    md5, sha256 = hashlib.md5(fake).hexdigest(), hashlib.sha256(fake).hexdigest()
    note = json.loads((path.parent / f"{path.name}.verified").read_text())
    assert (note["md5"], note["sha256"]) == (md5, sha256)
    known = json.loads((env / "known_digests.json").read_text())
    assert known[TEST_ID] == {"file": path.name, "size": len(fake), "md5": md5, "sha256": sha256}

    other = checkpoint_bytes(tmp_path, 1)
    registry = tmp_path / "registry.csv"
    registry.write_text(f"id,md5_prefix\n{TEST_ID},{hashlib.md5(other).hexdigest()[:7]}\n")
    monkeypatch.setenv(ck.ENV_REGISTRY, str(registry))
    for p in (path, path.parent / f"{path.name}.verified"):
        p.unlink()  # the record outlives the file
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", other))
    with pytest.raises(CheckpointError, match=f"not the file verified for {TEST_ID} before") as err:
        fetch_quick()
    assert sha256 in str(err.value) and "known_digests.json" in str(err.value)
    assert leftovers(env) == []  # nothing under the final name, no partial file

    path.write_bytes(other)  # put into the cache by hand: hashed, refused, downloaded again, refused again
    with pytest.warns(UserWarning, match="cannot be used"), pytest.raises(CheckpointError, match="not the file"):
        fetch_quick()
    assert not path.exists() and server.hits[route] == 3

    # The full digest of the new file names it exactly: accepted, and it becomes the recorded one.
    assert fetch_quick(known_hash="sha256:" + hashlib.sha256(other).hexdigest()).read_bytes() == other
    assert json.loads((env / "known_digests.json").read_text())[TEST_ID]["sha256"] == hashlib.sha256(other).hexdigest()


def test_cached_file_is_checked_against_the_known_digest(env: Path, server: Server, fake: bytes, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A note that vouches for a file is not enough when the file is not the one recorded for its id."""
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    path = fetch_quick()
    other = checkpoint_bytes(tmp_path, 2)
    registry = tmp_path / "registry.csv"
    registry.write_text(f"id,md5_prefix\n{TEST_ID},{hashlib.md5(other).hexdigest()[:7]}\n")
    monkeypatch.setenv(ck.ENV_REGISTRY, str(registry))
    path.write_bytes(other)
    download._write_note(path, {"md5": hashlib.md5(other).hexdigest(), "sha256": hashlib.sha256(other).hexdigest()})
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", other))
    with pytest.warns(UserWarning, match="not the file verified"), pytest.raises(CheckpointError):
        fetch_quick()
    assert not path.exists()


def test_damaged_record_is_a_clear_error(env: Path, server: Server, fake: bytes) -> None:
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    env.mkdir(parents=True)
    (env / "known_digests.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="known_digests.json is damaged.*Delete it"):
        fetch_quick()


def test_a_download_prints_no_url_credentials(env: Path, server: Server, fake: bytes,
                                              monkeypatch: pytest.MonkeyPatch, capfd) -> None:  # fmt: skip
    """A mirror URL may carry a user and password; nothing printed while fetching may show them."""
    server.serve(TEST_ID, f"{TEST_ID}.pt", ("ok", fake))
    monkeypatch.setenv(ck.ENV_MIRROR, server.url.replace("http://", "http://reader:s3cret-token@"))
    assert fetch_quick().read_bytes() == fake
    out, err = capfd.readouterr()
    assert "s3cret-token" not in out + err
    monkeypatch.setitem(ck.RELEASED, "99-01-01T00-00-01", ck.RELEASED[TEST_ID])  # not on the server: 404
    with pytest.raises(CheckpointError) as failed:  # an error names the URL: without the password
        fetch_quick("99-01-01T00-00-01")
    assert "s3cret-token" not in str(failed.value) and "http://***@127.0.0.1" in str(failed.value)
