"""Released Synchformer checkpoints: what they are, where they live, how to fetch them and how to read them safely.

* :data:`RELEASED` is the single place that records the four checkpoints the authors published (id, head, hash,
  training data, reported accuracy).
* :func:`fetch` downloads ``<id>.pt`` into :func:`cache_dir` once, verifies it against its published md5 prefix and
  returns the cached path afterwards. Set ``$SYNCHLIB_MIRROR`` to download from another server and
  ``$SYNCHLIB_CACHE`` to keep the files somewhere else. A mirror that serves different files under the released
  ids (re-exports, test checkpoints) names their hashes in a CSV given by ``$SYNCHLIB_REGISTRY`` (see
  :func:`expected_hash`); they are verified against those instead of the published ones.
* :func:`read_checkpoint` loads a ``.pt`` with ``torch.load(weights_only=True)``: nothing in the file can run code.
  The released files pickle their training config as an OmegaConf ``DictConfig``; synchlib reads it with inert
  stand-in classes (omegaconf is not needed) and returns it as plain dicts and lists.
* :func:`save_checkpoint` writes synchlib's own checkpoints in the released layout, readable by the same function.

Cache layout: ``cache_dir()/<id>/<id>.pt`` plus ``<id>.pt.verified``, a small JSON note with the size, mtime and
full md5 and sha256 of the file when it was last verified. A later :func:`fetch` trusts a cached file whose size and
mtime still match its note (no re-hash of ~1.1 GB); a file without a matching note is hashed again, and one that
fails its hash is deleted and downloaded again. Downloads go to a temporary ``.part`` file in the same folder, are
verified there and only then renamed into place, so the cache never holds a partial or corrupt checkpoint under its
final name. ``cache_dir()/known_digests.json`` records the full digests of every file verified so far (the
published hashes are 7-digit prefixes), so that a later, different file with the same prefix is refused;
``cache_dir()/.locks/`` holds one lock per file, so that concurrent fetches download it once, and a ``.part`` left by
a killed download is removed by the next fetch of that file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import pickletools
import re
import struct
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

import torch

from . import checks
from .errors import CheckpointError
from .paths import cache_dir, make_folder

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_DEADLINE",
    "DEFAULT_STALL_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "PACKAGED",
    "RELEASED",
    "ReleasedCheckpoint",
    "checkpoint_url",
    "expected_hash",
    "fetch",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

DEFAULT_BASE_URL = "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/sync/sync_models"
ENV_MIRROR = "SYNCHLIB_MIRROR"
ENV_REGISTRY = "SYNCHLIB_REGISTRY"
ENV_ALLOW_REDIRECTS = "SYNCHLIB_ALLOW_REDIRECTS"
ASSETS_DIR = Path(__file__).parent / "assets"
KNOWN_DIGESTS = "known_digests.json"  # in cache_dir(): full digests of the files verified so far

DEFAULT_TIMEOUT = 30.0  # s to connect, to get an answer, or to get the next bytes
DEFAULT_STALL_TIMEOUT = 60.0  # s in which an attempt must receive at least _STALL_MIN_BYTES
DEFAULT_DEADLINE = 3 * 3600.0  # s for a whole fetch (1.1 GB at 100 kB/s takes about 3 hours)

_CHUNK = 1 << 20  # bytes per read when hashing and at most per read when downloading
_STALL_MIN_BYTES = 64 * 1024  # an attempt receiving less than this per stall_timeout has stalled
_NOTICE_AFTER = 5.0  # s without data (or half the time limit, if shorter) before saying "waiting for <host>"
_WATCH_POLL = 0.1  # s between the looks of the thread that says so
_MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MIN_CONFIG_TIME = 10.0  # s left for cfg-<id>.yaml even when the checkpoint used up the deadline (a few kB)
_LOCKS = ".locks"  # in cache_dir(): one lock file per cached file
_MIN_PREFIX = 7  # shortest hash prefix accepted (the published md5 prefixes have 7 hex digits)
_DIGEST_LENGTHS = {"md5": 32, "sha256": 64}


# --------------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One checkpoint published by the Synchformer authors."""

    id: str
    kind: Literal["offset", "syncability"]  # which head: 21 offset classes or 2 synchronisability classes
    md5_prefix: str  # first hex digits of the md5 of ``<id>.pt``, as published
    train_data: str
    test_set: str
    reported: str  # accuracy as reported by the authors on ``test_set``
    num_classes: int
    approx_size: str = "1.1 GB"

    @property
    def filename(self) -> str:
        return f"{self.id}.pt"

    @property
    def config_filename(self) -> str:
        return f"cfg-{self.id}.yaml"

    @property
    def expected_hash(self) -> str:
        """The hash spec :func:`fetch` verifies the download against."""
        return f"md5:{self.md5_prefix}"


RELEASED: dict[str, ReleasedCheckpoint] = {
    c.id: c
    for c in (
        ReleasedCheckpoint(
            id="23-12-23T18-33-57",
            kind="offset",
            md5_prefix="4415276",
            train_data="LRS3",
            test_set="LRS3",
            reported="acc@1 86.6, acc@1±1 99.6",
            num_classes=21,
        ),
        ReleasedCheckpoint(
            id="24-01-02T10-00-53",
            kind="offset",
            md5_prefix="19592ed",
            train_data="VGGSound",
            test_set="VGGSound-Sparse",
            reported="acc@1 43.8, acc@1±1 60.2",
            num_classes=21,
        ),
        ReleasedCheckpoint(
            id="24-01-04T16-39-21",
            kind="offset",
            md5_prefix="54037d2",
            train_data="AudioSet",
            test_set="VGGSound-Sparse",
            reported="acc@1 47.2, acc@1±1 67.4",
            num_classes=21,
        ),
        ReleasedCheckpoint(
            id="24-01-22T20-34-52",
            kind="syncability",
            md5_prefix="b1cb346",
            train_data="AudioSet",
            test_set="VGGSound-Sparse",
            reported="accuracy 73.5, AUROC 0.83",
            num_classes=2,
        ),
    )
}

# Checkpoints shipped inside the package: name -> file name under ``synchlib/assets/``. A name is listed only when
# its file is installed. To ship one, put the file in ``synchlib/assets/`` and add it to ``_PACKAGED_FILES``.
_PACKAGED_FILES: dict[str, str] = {"tiny-synthetic": "tiny-synthetic.pt"}
PACKAGED: dict[str, str] = {
    name: fname for name, fname in _PACKAGED_FILES.items() if (ASSETS_DIR / fname).is_file()
}


def _valid_names() -> str:
    return ", ".join([*RELEASED, *PACKAGED])


def _registry_overrides() -> dict[str, str]:
    """``{id: "md5:<hex>"}`` from the CSV named by ``$SYNCHLIB_REGISTRY``; empty when the variable is unset."""
    env = os.environ.get(ENV_REGISTRY, "").strip()
    if not env:
        return {}
    path = Path(env).expanduser()
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CheckpointError(f"cannot read {ENV_REGISTRY}={env}: {e}") from None
    if not rows or not {"id", "md5_prefix"} <= set(rows[0]):
        raise CheckpointError(
            f"{ENV_REGISTRY}={env} must be a CSV with columns 'id' and 'md5_prefix' and at least one row "
            "(laid out like data_manifests/checkpoints.csv)"
        )
    out: dict[str, str] = {}
    for row in rows:
        ckpt_id, spec = (row.get("id") or "").strip(), f"md5:{(row.get('md5_prefix') or '').strip()}"
        if ckpt_id not in RELEASED:
            raise CheckpointError(f"{ENV_REGISTRY}={env} lists {ckpt_id!r}, not a released id ({', '.join(RELEASED)})")
        try:
            _parse_hash(spec)
        except CheckpointError as e:
            raise CheckpointError(f"{ENV_REGISTRY}={env}, row {ckpt_id}: {e}") from None
        out[ckpt_id] = spec
    return out


def expected_hash(ckpt_id: str) -> str:
    """The hash :func:`fetch` verifies ``<id>.pt`` of a released id against: ``"md5:<published prefix>"``, or the
    ``md5_prefix`` that the CSV named by ``$SYNCHLIB_REGISTRY`` lists for that id.

    ``$SYNCHLIB_REGISTRY`` goes with ``$SYNCHLIB_MIRROR`` when the mirror serves other files under the released ids
    (re-exported weights, test checkpoints); it is read on every call, so child processes (notebook kernels,
    workers) that inherit the environment verify against the same hashes.
    """
    if ckpt_id not in RELEASED:
        raise CheckpointError(f"unknown checkpoint id {ckpt_id!r}; released ids: {', '.join(RELEASED)}")
    try:
        override = _registry_overrides().get(ckpt_id)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; unset {ENV_REGISTRY} to verify against the published hashes") from None
    return override or RELEASED[ckpt_id].expected_hash


# --------------------------------------------------------------------------------------------------------------
# Where files live


def _check_component(name: str, what: str) -> str:
    """Reject names that could escape the cache folder or break a URL."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        raise CheckpointError(f"invalid checkpoint {what} {name!r}: it must be a plain file name, not a path")
    return name


def checkpoint_url(ckpt_id: str, filename: str) -> str:
    """URL of ``filename`` for checkpoint ``ckpt_id``: ``{base}/{id}/{filename}``.

    ``base`` is ``$SYNCHLIB_MIRROR`` when set (a base URL laid out like the authors' store), else
    :data:`DEFAULT_BASE_URL`.
    """
    base = os.environ.get(ENV_MIRROR, "").strip() or DEFAULT_BASE_URL
    ckpt_id = _check_component(ckpt_id, "id")
    filename = _check_component(filename, "file name")
    return f"{base.rstrip('/')}/{quote(ckpt_id)}/{quote(filename)}"


# --------------------------------------------------------------------------------------------------------------
# Hashes


def _parse_hash(spec: str) -> tuple[str, str]:
    """``"md5:4415276"`` or ``"sha256:<64 hex>"`` -> (algorithm, lower-case hex prefix)."""
    algorithm, sep, digest = spec.strip().partition(":")
    algorithm, digest = algorithm.lower(), digest.lower()
    if (
        not sep
        or algorithm not in _DIGEST_LENGTHS
        or not re.fullmatch(r"[0-9a-f]+", digest)
        or not _MIN_PREFIX <= len(digest) <= _DIGEST_LENGTHS[algorithm]
    ):
        raise CheckpointError(
            f"invalid hash {spec!r}: write 'md5:<hex>' or 'sha256:<hex>' with at least {_MIN_PREFIX} hex digits"
        )
    return algorithm, digest


# --------------------------------------------------------------------------------------------------------------
# What synchlib knows about each cached file: the note beside it and the full digests recorded per cache

_FULL_DIGESTS = ("md5", "sha256")  # computed for every download and recorded once it has been verified


def _file_digests(path: Path) -> dict[str, str]:
    """Hex md5 and sha256 of a file, in one pass."""
    hashers = {name: hashlib.new(name) for name in _FULL_DIGESTS}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _note_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_note(path: Path, digests: Mapping[str, str | None]) -> None:
    st = path.stat()
    note = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **{name: digests.get(name) for name in _FULL_DIGESTS}}
    _atomic_write_bytes(_note_path(path), json.dumps(note).encode())


def _noted_digests(path: Path) -> dict[str, Any] | None:
    """The digests the note beside ``path`` records, if the note describes the file as it is now (size, mtime)."""
    try:
        note = json.loads(_note_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("size") != st.st_size or note.get("mtime_ns") != st.st_mtime_ns:
        return None
    return {name: note.get(name) for name in _FULL_DIGESTS}


def _hash_problem(digests: Mapping[str, Any], expected: str, size: int) -> str | None:
    """Why a file with these digests does not match ``expected`` (None if it does)."""
    algorithm, prefix = _parse_hash(expected)
    digest = digests.get(algorithm)
    if isinstance(digest, str) and digest.startswith(prefix):
        return None
    return (
        f"the {size}-byte file has {algorithm} {digest}, expected one starting with {prefix} "
        "(a truncated or different file)"
    )


def _known_key(ckpt_id: str, filename: str) -> str:
    """The entry of a file in ``known_digests.json``: its id, or ``<id>/<file>`` for a file other than ``<id>.pt``."""
    return ckpt_id if filename == f"{ckpt_id}.pt" else f"{ckpt_id}/{filename}"


def _read_known(root: Path) -> dict[str, dict[str, Any]]:
    """``known_digests.json`` of the cache folder ``root``: entry -> {file, size, md5, sha256}."""
    path = root / KNOWN_DIGESTS
    fix = "Delete it: synchlib then records the full digests of the next verified downloads again."
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged ({e}). {fix}") from None
    if not isinstance(known, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in known.values()
    ):
        raise CheckpointError(f"{path} is damaged (not the record synchlib writes). {fix}")
    return known


def _known_problem(root: Path, key: str, digests: Mapping[str, Any], expected: str) -> str | None:
    """Why a file that matches ``expected`` is still not the one verified under ``key`` before (None if it is).

    The published hashes are 7-digit md5 prefixes: a different file sharing one can be found or crafted. Once a
    file has passed, its full digests are recorded, and later files must match them, unless ``expected`` is a full
    digest itself (it then names the file exactly and replaces the record).
    """
    algorithm, prefix = _parse_hash(expected)
    if len(prefix) == _DIGEST_LENGTHS[algorithm]:
        return None
    record = _read_known(root).get(key)
    if record is None or record["sha256"] == digests.get("sha256"):
        return None
    return (
        f"it matches the expected {algorithm} prefix {prefix} but is not the file verified for {key} before: its "
        f"sha256 is {digests.get('sha256')}, the one recorded in {root / KNOWN_DIGESTS} is {record['sha256']}. "
        f"A different file now goes by this name. If that is intended (e.g. a mirror with re-exported weights), "
        f"remove the {key!r} entry from that file, or pass known_hash='sha256:<the new file's full digest>'"
    )


def _record_known(root: Path, key: str, path: Path, digests: Mapping[str, str]) -> None:
    """Record the full digests of the verified file ``path`` under ``key`` in ``known_digests.json``."""
    import filelock

    with filelock.FileLock(_lock_dir(root) / f"{KNOWN_DIGESTS}.lock"):
        known = _read_known(root)
        known[key] = {"file": path.name, "size": path.stat().st_size, **{n: digests[n] for n in _FULL_DIGESTS}}
        _atomic_write_bytes(root / KNOWN_DIGESTS, json.dumps(known, indent=1, sort_keys=True).encode())


def _vouched(path: Path, expected: str | None, root: Path, key: str) -> bool:
    """True when the note beside ``path`` shows that it passed ``expected`` (and the recorded full digests) and the
    file has not changed since. Reads only; no hashing."""
    noted = _noted_digests(path)
    if noted is None:
        return False
    if expected is None:
        return True
    size = path.stat().st_size
    return _hash_problem(noted, expected, size) is None and _known_problem(root, key, noted, expected) is None


def _cached_problem(path: Path, expected: str | None, root: Path, key: str) -> str | None:
    """Why the cached ``path`` cannot be used (None when it can). A file its note does not vouch for is hashed and,
    if it passes, noted and recorded. Called with the file's lock held."""
    if _vouched(path, expected, root, key):
        return None
    if expected is None:  # nothing to check against; files only reach their final name complete
        _write_note(path, {})
        return None
    digests = _file_digests(path)
    size = path.stat().st_size
    problem = _hash_problem(digests, expected, size) or _known_problem(root, key, digests, expected)
    if problem is None:
        _write_note(path, digests)
        _record_known(root, key, path, digests)
    return problem


def _remove_cached(path: Path) -> None:
    for p in (path, _note_path(path)):
        p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Downloading


class _HashMismatch(Exception):
    """The file arrived complete but is not the expected one: retrying would not help."""


class _Transient(Exception):
    """An attempt failed in a way worth retrying (a stall, a cut transfer); the message says how."""


class _OutOfTime(Exception):
    """The fetch's deadline passed; the message (possibly empty) says what it was waiting for."""


@dataclass(frozen=True)
class _Limits:
    """How long one :func:`fetch` may take, in seconds; ``ends`` is on the ``time.monotonic`` clock."""

    timeout: float
    stall_timeout: float
    deadline: float
    ends: float
    allow_redirects: bool

    def left(self) -> float:
        return self.ends - time.monotonic()

    def wait(self) -> float:
        """The longest one wait for the server may take now (connecting, an answer, the next bytes)."""
        left = self.left()
        if left <= 0:
            raise _OutOfTime("")
        return min(self.timeout, self.stall_timeout, left)


def _say(message: str) -> None:
    """One line on stderr that does not break a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"synchlib: {message}", file=sys.stderr)


class _Watch:
    """Says "waiting for <host>" on stderr when nothing has arrived for a while.

    The downloading thread is then blocked in a socket read, so a helper thread looks at the clock. It only prints
    and never touches the connection: giving up is left to the socket timeout and the checks between reads.
    """

    def __init__(self, host: str, patience: float):
        self.host, self.patience = host, patience
        self.last = time.monotonic()  # when bytes last arrived (or the attempt began)
        self.told = False  # whether the current quiet spell was reported
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="synchlib-download-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def arrived(self) -> None:
        self.last, self.told = time.monotonic(), False

    def _run(self) -> None:
        while not self._stop.wait(_WATCH_POLL):
            quiet = time.monotonic() - self.last
            if not self.told and quiet >= min(_NOTICE_AFTER, self.patience / 2):
                self.told = True
                _say(
                    f"waiting for {self.host}: nothing received for {quiet:.0f} s "
                    f"(giving up after {self.patience:.3g} s without data)..."
                )


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, default ports filled in; what a redirect must keep."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a malformed port: never the same origin
        port = -1
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def _host(url: str) -> str:
    """``host[:port]`` of a URL, without any credentials."""
    return urlsplit(url).netloc.rpartition("@")[2]


def _redirects_allowed(allow_redirects: bool | None) -> bool:
    if allow_redirects is not None:
        return bool(allow_redirects)
    return os.environ.get(ENV_ALLOW_REDIRECTS, "").strip().lower() in ("1", "true", "yes", "on")


def _open(session: Any, url: str, limits: _Limits) -> Any:
    """GET ``url`` for streaming; follow redirects one hop at a time, only to the same scheme, host and port unless
    ``limits.allow_redirects``. Returns the ``requests.Response`` of the final hop (status 2xx)."""
    origin = _origin(url)
    hop = url
    for _ in range(_MAX_REDIRECTS + 1):
        wait = limits.wait()
        response = session.get(
            hop, stream=True, allow_redirects=False, timeout=(wait, wait), headers={"Accept-Encoding": "identity"}
        )
        if not response.is_redirect:
            try:
                response.raise_for_status()
            except BaseException:
                response.close()
                raise
            return response
        target = urljoin(hop, response.headers["location"])
        response.close()
        if not limits.allow_redirects and _origin(target) != origin:
            raise CheckpointError(
                f"{url} redirects to another host, {_host(target)} ({target}); synchlib follows redirects only "
                f"within {_host(url)}. If you trust {_host(target)}, set {ENV_ALLOW_REDIRECTS}=1 (or pass "
                f"allow_redirects=True); or set {ENV_MIRROR} to a server that serves the files directly."
            )
        hop = target
    raise CheckpointError(f"{url} redirects more than {_MAX_REDIRECTS} times; set {ENV_MIRROR} to another server")


def _stream(response: Any, out: Any, hashers: list[Any], watch: _Watch, bar: Any, limits: _Limits) -> None:
    """Copy the body of ``response`` into ``out``, checking progress and the deadline between reads."""
    import urllib3

    host, wait = watch.host, watch.patience
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            chunk = response.raw.read1(_CHUNK, decode_content=False)  # whatever has arrived, up to _CHUNK
        except urllib3.exceptions.ReadTimeoutError:
            quiet = f"nothing arrived from {host} for {wait:.3g} s"
            if limits.left() <= 0:
                raise _OutOfTime(quiet) from None
            raise _Transient(
                f"the download stalled: {quiet} (timeout={limits.timeout:g} s, "
                f"stall_timeout={limits.stall_timeout:g} s)"
            ) from None
        except urllib3.exceptions.HTTPError as e:  # connection reset, body shorter than announced, ...
            raise _Transient(f"the transfer was cut short ({e})") from None
        if not chunk:
            return
        out.write(chunk)
        for h in hashers:
            h.update(chunk)
        watch.arrived()
        bar.update(len(chunk))
        now = time.monotonic()
        if now >= limits.ends:
            raise _OutOfTime("")
        window_bytes += len(chunk)
        if now - window_start >= limits.stall_timeout:
            if window_bytes < _STALL_MIN_BYTES:
                raise _Transient(
                    f"the download stalled: {window_bytes} bytes arrived from {host} in {now - window_start:.0f} s "
                    f"(stall_timeout={limits.stall_timeout:g} s asks for at least {_STALL_MIN_BYTES // 1024} KiB "
                    "in that time)"
                )
            window_start, window_bytes = now, 0


def _transfer(url: str, dest: Path, limits: _Limits, *, progress: bool, name: str) -> dict[str, str]:
    """One HTTP download of ``url`` into ``dest``; returns the md5 and sha256 of what arrived.

    A small loop over ``requests`` rather than ``pooch.HTTPDownloader``: pooch reads the body with
    ``iter_content(chunk_size)``, which blocks until a whole chunk has arrived, so a server that trickles a byte every
    few seconds is never given up on (each byte resets the socket timeout), and it follows redirects to any host.
    ``read1`` returns whatever has arrived, so progress and the deadline are checked between reads, and each
    redirect is checked before it is followed.
    """
    import requests
    from tqdm.auto import tqdm

    hashers = {n: hashlib.new(n) for n in _FULL_DIGESTS}
    wait = limits.wait()
    with requests.Session() as session, _Watch(_host(url), wait) as watch:
        try:
            response = _open(session, url, limits)
        except requests.Timeout:
            detail = f"no answer from {_host(url)} within {wait:.3g} s"
            raise (_OutOfTime(detail) if limits.left() <= 0 else _Transient(detail)) from None
        size = response.headers.get("Content-Length")
        with response, open(dest, "wb") as out, tqdm(
            total=int(size) if size and size.isdigit() else None, unit="B", unit_scale=True, unit_divisor=1024,
            desc=name, disable=not progress,
        ) as bar:  # fmt: skip
            _stream(response, out, list(hashers.values()), watch, bar, limits)
            out.flush()
            os.fsync(out.fileno())
    return {n: h.hexdigest() for n, h in hashers.items()}


def _temp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(name)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _partial_files(dest: Path) -> list[Path]:
    """The temporary ``.part`` files of downloads of ``dest`` (and of its note). With the file's lock held, no live
    download is writing them: they are what a killed one left behind."""
    return [p for p in dest.parent.iterdir() if p.name.endswith(".part") and dest.name in p.name]


def _lock_dir(root: Path, *sub: str) -> Path:
    return make_folder(root.joinpath(_LOCKS, *sub), "the lock folder")


@contextmanager
def _download_lock(root: Path, ckpt_id: str, filename: str, limits: _Limits) -> Iterator[None]:
    """Hold the lock of one cached file, so that one process or thread downloads it while the others wait and then
    use the verified file. The operating system releases it when its process ends, however it ends."""
    import filelock

    lock = filelock.FileLock(_lock_dir(root, ckpt_id) / f"{filename}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        _say(f"waiting for another download of {ckpt_id}/{filename} to finish...")
        try:
            lock.acquire(timeout=max(limits.left(), 0.0))
        except filelock.Timeout:
            raise CheckpointError(
                f"gave up waiting for another download of {ckpt_id}/{filename} within deadline={limits.deadline:g} "
                f"s (lock {lock.lock_file}); let it finish, or raise fetch(..., deadline=)"
            ) from None
    try:
        yield
    finally:
        lock.release()


def _is_transient(error: BaseException) -> bool:
    """Network errors worth retrying: HTTP 5xx/408/429, connection problems, stalls, truncated transfers."""
    import requests

    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else None
        return status is None or status >= 500 or status in (408, 429)
    return isinstance(
        error,
        (
            _Transient,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            ConnectionError,  # builtin: reset, aborted, refused
            TimeoutError,
        ),
    )


def _describe(error: BaseException) -> str:
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason or ''}".strip()
    if isinstance(error, (_HashMismatch, _Transient)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _how_to_fix(ckpt_id: str) -> str:
    return (
        f"To download from another server, set {ENV_MIRROR} to a base URL that serves {{id}}/{{file}} "
        f"(now: {os.environ.get(ENV_MIRROR) or 'unset'}); or download {ckpt_id}.pt yourself and pass its path "
        f"instead of the id. To try synchlib without it, use the small model that ships with it: "
        f"--checkpoint tiny-synthetic (load_model('tiny-synthetic'))."
    )


def _out_of_time(url: str, limits: _Limits, detail: str, last: BaseException | None, ckpt_id: str) -> str:
    waiting = f" ({detail})" if detail else f" (last problem: {_describe(last)})" if last is not None else ""
    return (
        f"gave up on {url}: the download did not finish within deadline={limits.deadline:g} s{waiting}. "
        f"{_how_to_fix(ckpt_id)} Or allow more time: fetch(..., deadline=<seconds>)."
    )


def _download(
    url: str,
    dest: Path,
    expected: str | None,
    *,
    root: Path,
    ckpt_id: str,
    key: str,
    progress: bool,
    retries: int,
    backoff: float,
    limits: _Limits,
) -> None:
    """Download ``url`` to ``dest`` via a temporary sibling file, verify it, then rename it into place. The caller
    holds the file's lock. Retries and their pauses all fit in ``limits.deadline``. ``root`` is the cache folder
    (for the recorded digests), ``key`` the file's entry there."""
    attempts = max(0, int(retries)) + 1
    last: BaseException | None = None
    for attempt in range(attempts):
        tmp = _temp_sibling(dest)
        try:
            digests = _transfer(url, tmp, limits, progress=progress, name=dest.name)
            if expected is not None:
                size = tmp.stat().st_size
                problem = _hash_problem(digests, expected, size) or _known_problem(root, key, digests, expected)
                if problem is not None:
                    raise _HashMismatch(problem)
            os.replace(tmp, dest)
            _write_note(dest, digests)
            if expected is not None:
                _record_known(root, key, dest, digests)
            return
        except _HashMismatch as e:  # the server holds a different file: retrying would not help
            raise CheckpointError(f"download of {url} failed verification: {e}. {_how_to_fix(ckpt_id)}") from None
        except _OutOfTime as e:
            raise CheckpointError(_out_of_time(url, limits, str(e), last, ckpt_id)) from None
        except CheckpointError:
            raise
        except Exception as e:
            if not _is_transient(e):
                raise CheckpointError(f"could not download {url}: {_describe(e)}. {_how_to_fix(ckpt_id)}") from e
            last = e
        finally:
            tmp.unlink(missing_ok=True)
        if attempt + 1 < attempts:
            pause = backoff * 2**attempt
            if pause >= limits.left():
                raise CheckpointError(_out_of_time(url, limits, "", last, ckpt_id))
            time.sleep(pause)
    assert last is not None
    raise CheckpointError(
        f"could not download {url} after {attempts} attempt(s); last error: {_describe(last)}. {_how_to_fix(ckpt_id)}"
    ) from last


def _positive_seconds(name: str, value: Any) -> float:
    return checks.real(name, value, above=0.0, why="a time limit of fetch, in seconds")


def fetch(
    ckpt_id: str,
    filename: str | None = None,
    *,
    known_hash: str | None = None,
    with_config: bool = False,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float = DEFAULT_TIMEOUT,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    allow_redirects: bool | None = None,
) -> Path:
    """Return the local path of a checkpoint file, downloading it into :func:`cache_dir` on first use.

    Args:
        ckpt_id: a released id (see :data:`RELEASED`), or any id served by ``$SYNCHLIB_MIRROR`` together with
            ``known_hash``.
        filename: file to fetch; ``<id>.pt`` by default (``cfg-<id>.yaml`` also works, without verification).
        known_hash: ``"md5:<hex>"`` or ``"sha256:<hex>"`` (full digest or a prefix of >= 7 digits) to verify against
            instead of the published md5 prefix (or the one ``$SYNCHLIB_REGISTRY`` lists, see
            :func:`expected_hash`), e.g. from a mirror's manifest.
        with_config: also fetch ``cfg-<id>.yaml`` next to the checkpoint; a failure there only warns, since
            synchlib ships the configs of the released ids.
        progress: show a tqdm progress bar while downloading.
        retries: how often to retry after a network error (HTTP 5xx, reset connection, truncated transfer, stall);
            a file that arrives complete but fails its hash is not retried.
        backoff: seconds to wait before the first retry; doubles after each.
        timeout: seconds to wait for the server to connect, to answer, or to send the next bytes (default 30).
        stall_timeout: give up on an attempt when less than 64 KiB arrived in this many seconds (default 60):
            a server that trickles bytes is retried, then given up on. Also caps the wait for any bytes at all
            when shorter than ``timeout``.
        deadline: seconds for the whole fetch, waiting for another process's download, all attempts and the
            pauses between them included (default 3 hours).
        allow_redirects: follow redirects to other hosts; by default (``None``) only when
            ``$SYNCHLIB_ALLOW_REDIRECTS`` is ``1``. Redirects within the same scheme, host and port are always
            followed.

    A line on stderr says when the server has sent nothing for a few seconds. A cached file is trusted when its
    ``.verified`` note matches its size and mtime; otherwise it is hashed again, and deleted and downloaded again
    if it fails. After the first verified download of a file, its full md5 and sha256 are recorded in
    ``cache_dir()/known_digests.json`` (kept when the file is deleted); from then on a file that matches only the
    short published prefix is refused. Concurrent fetches of one file (threads or processes) download it once: the
    others wait for it, then use the verified file.
    """
    limits = _Limits(
        timeout=_positive_seconds("timeout", timeout),
        stall_timeout=_positive_seconds("stall_timeout", stall_timeout),
        deadline=_positive_seconds("deadline", deadline),
        ends=time.monotonic() + deadline,
        allow_redirects=_redirects_allowed(allow_redirects),
    )
    entry = RELEASED.get(ckpt_id)
    if entry is None and known_hash is None:
        raise CheckpointError(
            f"unknown checkpoint id {ckpt_id!r}; released ids: {', '.join(RELEASED)}. "
            "Pass known_hash= to fetch another id from a mirror, or pass a path to a local file."
        )
    filename = filename or f"{_check_component(ckpt_id, 'id')}.pt"
    expected = known_hash or (expected_hash(ckpt_id) if entry and filename == entry.filename else None)
    if expected is not None:
        _parse_hash(expected)  # fail early on a malformed hash
    url = checkpoint_url(ckpt_id, filename)
    if urlsplit(url).scheme not in ("http", "https"):
        raise CheckpointError(
            f"cannot download {url}: {ENV_MIRROR} must be an http(s) base URL. To use a file on disk, pass its "
            "path instead of the id."
        )
    root = cache_dir()
    folder = root / ckpt_id
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / filename
    key = _known_key(ckpt_id, filename)

    ready = dest.is_file() and _vouched(dest, expected, root, key)
    if not ready or _partial_files(dest):
        with _download_lock(root, ckpt_id, filename, limits):
            for p in _partial_files(dest):
                p.unlink(missing_ok=True)
            problem = None if ready or not dest.is_file() else _cached_problem(dest, expected, root, key)
            if problem is not None:
                warnings.warn(f"cached {dest} cannot be used ({problem}); downloading it again", stacklevel=2)
                _remove_cached(dest)
            if not dest.is_file():
                _download(url, dest, expected, root=root, ckpt_id=ckpt_id, key=key, progress=progress,
                          retries=retries, backoff=backoff, limits=limits)  # fmt: skip

    if with_config and entry is not None:
        try:
            fetch(ckpt_id, entry.config_filename, progress=False, retries=retries, backoff=backoff, timeout=timeout,
                  stall_timeout=stall_timeout, deadline=max(limits.left(), _MIN_CONFIG_TIME),
                  allow_redirects=allow_redirects)  # fmt: skip
        except CheckpointError as e:
            warnings.warn(f"checkpoint fetched, but its config was not: {e}", stacklevel=2)
    return dest


# --------------------------------------------------------------------------------------------------------------
# Safe loading: stand-ins for the few non-torch globals a released checkpoint pickles


class _Refused(Exception):
    """Raised from inside unpickling when an allow-listed name is used for something a checkpoint never holds."""


class _Stub:
    """Inert stand-in for an omegaconf object. Unpickling only creates it and fills its ``__dict__``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {sorted(self.__dict__)}>"


class _DictConfig(_Stub):
    """omegaconf.dictconfig.DictConfig: ``_content`` is a dict of nodes, None, or a '???'/'${...}' string."""


class _ListConfig(_Stub):
    """omegaconf.listconfig.ListConfig: ``_content`` is a list of nodes, None, or a string."""


class _AnyNode(_Stub):
    """omegaconf.nodes.AnyNode: the value is in ``_val``."""


class _Metadata(_Stub):
    """omegaconf.base.Metadata / ContainerMetadata: type information that synchlib does not need."""


@dataclass(frozen=True)
class _TypeRef:
    """Stands for a type named in omegaconf metadata (``typing.Any``, ``dict``, ``list``, ``int``); never called."""

    name: str


def _plain_dict(default_factory: Any = None, *args: Any) -> dict:
    """Replaces ``collections.defaultdict`` (omegaconf's resolver cache): a plain dict, the factory is dropped."""
    if args:
        raise _Refused("collections.defaultdict called with extra arguments")
    return {}


class _NumpyDtype:
    """Stands for ``numpy.dtype`` while reading a numpy scalar; keeps only the type code and byte order."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        if not isinstance(code, str):  # never str() an object from the file: a shared-list bomb prints forever
            raise _Refused(f"numpy dtype code of type {type(code).__name__}")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]


_NUMPY_STRUCT = {
    "b1": "?", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "i8": "q", "u8": "Q",
    "f2": "e", "f4": "f", "f8": "d",
}  # fmt: skip


def _numpy_scalar(dtype: Any, data: Any = b"") -> bool | int | float:
    """Replaces ``numpy.core.multiarray.scalar``: decodes a bool/int/float numpy scalar into a Python one.

    The reference training code stored metrics computed by sklearn/numpy (``numpy.float64``) in the checkpoint.
    """
    fmt = _NUMPY_STRUCT.get(dtype.code) if isinstance(dtype, _NumpyDtype) else None
    if fmt is None or not isinstance(data, bytes):
        what = repr(dtype.code) if isinstance(dtype, _NumpyDtype) else type(dtype).__name__
        raise _Refused(f"numpy scalar of dtype {what}")
    order = {"<": "<", ">": ">", "|": "<", "=": "="}[dtype.byteorder]
    try:
        (value,) = struct.unpack(order + fmt, data)
    except struct.error as e:
        raise _Refused(f"malformed numpy scalar: {e}") from None
    return value


# Everything synchlib allows beyond torch's own weights-only defaults (tensors, storages, OrderedDict, ...), found
# by pickling a checkpoint in the released layout (OmegaConf 2.3 config, AdamW + scheduler + GradScaler states,
# numpy metrics) and listing its GLOBAL opcodes. Each name maps to an inert stand-in, never to the real object.
_SAFE_GLOBALS: list[tuple[Any, str]] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_ListConfig, "omegaconf.listconfig.ListConfig"),
    (_AnyNode, "omegaconf.nodes.AnyNode"),
    (_Metadata, "omegaconf.base.Metadata"),
    (_Metadata, "omegaconf.base.ContainerMetadata"),
    (_TypeRef("typing.Any"), "typing.Any"),
    (_TypeRef("dict"), "builtins.dict"),
    (_TypeRef("list"), "builtins.list"),
    (_TypeRef("int"), "builtins.int"),  # pickled as __builtin__.long
    (_plain_dict, "collections.defaultdict"),
    (_NumpyDtype, "numpy.dtype"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),  # numpy < 2
    (_numpy_scalar, "numpy._core.multiarray.scalar"),  # numpy >= 2
]


_META_MAX_DEPTH = 200  # nesting levels (stand-ins included); a released config nests about 20 deep
_META_MAX_VALUES = 1_000_000  # values in the metadata written out as a tree; a released checkpoint has ~10^4
_PLAIN_SCALARS = (str, int, float, bool, type(None), bytes, torch.Tensor)
_TRAIL_SHOWN = 6  # keys of the path to a refused value that a message shows


def _short_repr(key: Any) -> str:
    """A dict key for a message: strings and numbers as written, anything else by type only (its repr could be
    as large as the file allows)."""
    return repr(key)[:60] if isinstance(key, (str, int, float)) else f"<{type(key).__name__}>"


_READ_ADVICE = (
    "a checkpoint's metadata is a small tree of plain values, so this file is damaged or was made to exhaust "
    "memory. If you trust its weights, save them alone: torch.save(torch.load(path, weights_only=True)['model'], "
    "'weights.pt'), and pass that file"
)
_SAVE_ADVICE = "save a small tree of plain values (e.g. OmegaConf.to_container(cfg) for a config)"


def _to_plain(
    obj: Any, where: str = "the checkpoint metadata", advice: str = _READ_ADVICE, *, plain_only: bool = False
) -> Any:
    """Turn the stand-in tree (and any containers) into plain dicts, lists, tuples and scalars; tensors stay tensors.

    Each container is converted once (memo by ``id``): an object that appears in several places comes back as one
    shared object, so the work is linear in the number of objects, i.e. in the size of the file they came from.
    Refused with a :class:`CheckpointError` naming ``where`` and ending with ``advice``: nesting deeper than
    ``_META_MAX_DEPTH``, a container that contains itself, and a tree that, written out (shared parts counted each
    time they appear, as a JSON or YAML dump or any plain recursive walk would see it), holds more than
    ``_META_MAX_VALUES`` values -- e.g. ``L = [L, L]`` forty times over, 2**40 values in a few kB.

    ``plain_only`` (for :func:`save_checkpoint`): leaves must be str/int/float/bool/None/bytes/tensors and dict
    keys str or int.
    """
    memo: dict[int, tuple[Any, int]] = {}  # id -> (converted, values when written out)
    on_path: set[int] = set()  # ids of the containers being converted (a cycle leads back to one of them)
    trail: list[Any] = []  # keys and indices leading to the current value, for messages

    def here() -> str:
        shown = "".join(f"[{_short_repr(k)}]" for k in trail[:_TRAIL_SHOWN])
        return where + shown + ("[...]" if len(trail) > _TRAIL_SHOWN else "")

    def walk(node: Any, depth: int) -> tuple[Any, int]:
        if depth > _META_MAX_DEPTH:
            raise CheckpointError(f"{here()} nests more than {_META_MAX_DEPTH} levels deep; {advice}")
        if isinstance(node, _TypeRef):
            return node.name, 1
        if isinstance(node, (_Metadata, _NumpyDtype)):
            return None, 1
        is_tuple = isinstance(node, tuple) and not isinstance(node, torch.Size)
        if not (is_tuple or isinstance(node, (_DictConfig, _ListConfig, _AnyNode, Mapping, list))):
            if plain_only and not isinstance(node, _PLAIN_SCALARS):
                raise CheckpointError(
                    f"{here()} is a {type(node).__name__}; checkpoints hold only dicts, lists, numbers, strings "
                    "and tensors (convert it first, e.g. OmegaConf.to_container(cfg) or float(x))"
                )
            return node, 1
        key = id(node)
        if key in memo:
            return memo[key]
        if key in on_path:
            raise CheckpointError(f"{here()} contains itself (a reference cycle); {advice}")
        on_path.add(key)
        if isinstance(node, (_DictConfig, _ListConfig)):
            result, size = walk(node.__dict__.get("_content"), depth + 1)
        elif isinstance(node, _AnyNode):
            result, size = walk(node.__dict__.get("_val"), depth + 1)
        else:
            items = node.items() if isinstance(node, Mapping) else enumerate(node)
            converted, size = [], 1
            for k, v in items:
                if plain_only and isinstance(node, Mapping) and not isinstance(k, (str, int)):
                    raise CheckpointError(f"{here()} has a key of type {type(k).__name__}; use str or int keys")
                trail.append(k)
                value, n = walk(v, depth + 1)
                trail.pop()
                converted.append((k, value))
                size += n
            if isinstance(node, Mapping):
                result = dict(converted)
            else:
                values = [value for _, value in converted]
                result = tuple(values) if is_tuple else values
        on_path.discard(key)
        if size > _META_MAX_VALUES:
            raise CheckpointError(
                f"{here()} holds more than {_META_MAX_VALUES:,} values when written out (parts that appear in "
                f"several places count each time); {advice}"
            )
        memo[key] = (result, size)
        return result, size

    return walk(obj, 0)[0]


# --------------------------------------------------------------------------------------------------------------
# Reading and writing checkpoints

_REFUSAL = re.compile(r"GLOBAL|is blocked|unrecognized function|Can only (?:create|build)")


def _error_detail(error: BaseException) -> str:
    """The informative part of a torch.load error, on one line (torch wraps it in generic advice)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    elif text.startswith("Weights only load failed"):
        boilerplate = ("Weights only load failed", "Check the documentation")
        parts = [p for p in re.split(r"\n\s*\n", text) if p.strip() and not p.strip().startswith(boilerplate)]
        text = parts[0] if parts else text
    return " ".join(text.split())[:300] or type(error).__name__


def _refusal_message(path: Path, detail: str) -> str:
    name = re.search(r"GLOBAL ([\w.]+)", detail)
    return (
        f"{path} contains objects synchlib does not load for safety ({name.group(1) if name else detail}): a "
        "released Synchformer checkpoint holds only tensors, plain values and its OmegaConf config. If you trust "
        "the file, re-save just its weights, e.g. torch.save(torch.load(path, weights_only=False)['model'], "
        "'weights.pt'), and pass that file."
    )


def _unreadable(path: Path, error: BaseException) -> str:
    return (
        f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {_error_detail(error)}). It may be "
        "truncated or not a checkpoint at all: delete it and download it again (a released id re-downloads by "
        "itself)."
    )


def _torch_version() -> tuple[int, int]:
    major, minor = (re.findall(r"\d+", torch.__version__) + ["0", "0"])[:2]
    return int(major), int(minor)


class _HugeKey(Exception):
    """A dict key in the pickle is a tuple too large to hash in reasonable time."""


_KEY_MAX_VALUES = 256  # values in one dict key written out; the keys of a real checkpoint are strings and ints
_LEGACY_PICKLES = 5  # a legacy (pre-zip) torch file starts with magic number, version, sys info, data, storage keys


def _scan_pickle_keys(stream: Any) -> None:
    """Refuse a pickle whose dict keys are huge tuples, before torch unpickles it.

    Storing a key hashes it, and hashing a tuple walks every path through it: a key built from shared tuples
    (``t = (t, t)`` forty times) costs 2**40 steps inside ``torch.load``, and a very deeply nested one overflows the
    C stack. This walks the opcodes once (no object is built), tracking for each stack item how many values it holds
    written out, and raises :class:`_HugeKey` for a key of more than ``_KEY_MAX_VALUES``. Opcodes it cannot parse
    end the scan: ``torch.load`` then reports the damage itself.
    """
    stack: list[int] = []  # per stack item: values when written out (tuples sum their items, the rest count 1)
    marks: list[int] = []
    memo: dict[Any, int] = {}

    def check_key(size: int) -> None:
        if size > _KEY_MAX_VALUES:
            raise _HugeKey(f"a dict key built from more than {_KEY_MAX_VALUES} values")

    try:
        for op, arg, _ in pickletools.genops(stream):
            before, after = op.stack_before, op.stack_after
            if op.name == "MARK":
                marks.append(len(stack))
                continue
            if op.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1] if stack else 1
                continue
            if op.name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo.get(arg, 1))
                continue
            if pickletools.markobject in before:
                start = marks.pop() if marks else 0
                items, stack[start:] = stack[start:], []
                n_before = before.index(pickletools.markobject)
            else:
                n_before = len(before)
                items, stack[len(stack) - n_before :] = stack[len(stack) - n_before :], []
            if op.name == "SETITEM":
                check_key(items[-2] if len(items) >= 2 else 1)
            elif op.name in ("SETITEMS", "DICT"):
                for size in items[0::2]:
                    check_key(size)
            if op.name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(min(1 + sum(items), _KEY_MAX_VALUES + 1))
                continue
            if pickletools.markobject in before:
                del stack[len(stack) - n_before :]
            stack.extend([1] * len(after))
            if op.name == "STOP":
                return
    except (ValueError, EOFError, IndexError, UnicodeDecodeError):
        return


def _scan_checkpoint_keys(path: Path) -> None:
    """:func:`_scan_pickle_keys` over the pickles ``torch.load`` will read from ``path``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            member = f"{names[0].split('/')[0]}/data.pkl" if names else ""
            if member in names:
                with zf.open(member) as f:
                    _scan_pickle_keys(f)
        return
    with open(path, "rb") as f:
        for _ in range(_LEGACY_PICKLES):
            _scan_pickle_keys(f)


def _load(path: Path) -> Any:
    """``torch.load`` with weights_only and synchlib's stand-ins; memory-maps files in torch's zip format."""
    if _torch_version() < (2, 6):  # safe_globals with (object, "module.name") pairs arrived in torch 2.6
        raise CheckpointError(
            f"reading checkpoints safely needs torch >= 2.6, this is torch {torch.__version__}; "
            "upgrade it (pip install -U torch)"
        )
    mmap = zipfile.is_zipfile(path)
    try:
        _scan_checkpoint_keys(path)
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except _HugeKey as e:
        raise CheckpointError(
            f"{path} is not a checkpoint synchlib can read: it holds {e} (the keys of a checkpoint are names; a key "
            "built from shared tuples can take longer to store than any computer can run), so the file is damaged "
            "or was made to stall whoever loads it. Use another copy of the checkpoint."
        ) from None
    except _Refused as e:
        raise CheckpointError(_refusal_message(path, str(e))) from None
    except pickle.UnpicklingError as e:
        detail = _error_detail(e)
        if _REFUSAL.search(detail):
            raise CheckpointError(_refusal_message(path, detail)) from None
        raise CheckpointError(_unreadable(path, e)) from None
    except Exception as e:  # truncated zip, random bytes, wrong magic number, ...
        raise CheckpointError(_unreadable(path, e)) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_module_prefix(sd: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in out:
            raise CheckpointError(f"{path}: key {key!r} clashes with {name!r} once its 'module.' prefix is removed")
        out[name] = value
    return out


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint safely; return ``(state_dict, meta)``.

    Accepts the released layout (``{'model': state_dict, 'args': config, 'epoch': ..., ...}``) and a bare state
    dict (all values tensors). A leading ``module.`` (from DistributedDataParallel) is stripped from the keys.
    ``meta`` holds everything else in the file as plain Python: ``meta['args']`` is the training config as nested
    dicts/lists (``${...}`` references kept as text), plus ``epoch``, ``model_type``, ``metrics``, ... if present.
    Loading never runs code from the file: only tensors, plain values and the OmegaConf config are accepted.

    >>> sd, meta = read_checkpoint(fetch("24-01-04T16-39-21"))  # doctest: +SKIP
    >>> meta["args"]["data"]["vfps"]  # doctest: +SKIP
    25
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}; pass an existing .pt file or a released id")
    obj = _load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a training checkpoint dict; "
            "save the model's state_dict() instead"
        )
    if "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        meta = _to_plain({k: v for k, v in obj.items() if k != "model"}, f"{path}: metadata")
    elif _is_state_dict(obj):
        sd, meta = obj, {}
    else:
        keys = ", ".join(_short_repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"{path} has neither a 'model' state dict nor only tensors (top-level keys: {keys}); "
            "save {'model': model.state_dict(), ...} or the bare state_dict()"
        )
    bad = next(((k, v) for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise CheckpointError(
            f"{path}: state dict entry {_short_repr(bad[0])} is a {type(bad[1]).__name__}, not a tensor"
        )
    return _strip_module_prefix(sd, path), meta


def _check_plain(obj: Any, where: str) -> Any:
    """``obj`` as plain data for :func:`save_checkpoint` (what :func:`read_checkpoint` accepts: dicts with str or
    int keys, lists, tuples, numbers, strings, bytes, tensors), or a CheckpointError naming ``where``. Linear in
    the number of objects, like :func:`_to_plain`."""
    return _to_plain(obj, where, _SAVE_ADVICE, plain_only=True)


def save_checkpoint(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], args: Mapping[str, Any], **extra: Any
) -> Path:
    """Write a checkpoint in the released layout, atomically (temporary file + rename); return its path.

    The file holds ``{'model': state_dict, 'args': args, 'epoch': 0, 'model_type': 'Synchformer', **extra}``;
    ``extra`` may override ``epoch`` and ``model_type`` and add e.g. ``metrics``. ``args`` (the config tree) and
    ``extra`` must be plain data so that :func:`read_checkpoint` can read the file back.
    """
    path = Path(path).expanduser()
    if not isinstance(args, Mapping):
        raise CheckpointError(f"args must be a dict (the config tree), got {type(args).__name__}")
    sd: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is a {type(value).__name__}; expected str -> tensor")
        sd[key] = value.detach().cpu()
    if "model" in extra:
        raise CheckpointError("pass the weights as state_dict, not as model=")
    plain_args = _check_plain(args, "args")
    plain_extra = {key: _check_plain(value, key) for key, value in extra.items()}
    payload: dict[str, Any] = {"model": sd, "args": plain_args, "epoch": 0, "model_type": "Synchformer", **plain_extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------------------
# One entry point for "a checkpoint the user named"


def resolve_checkpoint(id_or_path: str | Path, *, progress: bool = True) -> Path:
    """Path of a checkpoint given a released id (downloaded on first use), a packaged name, or a file path."""
    name = str(id_or_path)
    if isinstance(id_or_path, str) and name in PACKAGED:
        path = ASSETS_DIR / PACKAGED[name]
        if not path.is_file():
            raise CheckpointError(f"packaged checkpoint {name!r} is missing at {path}; reinstall synchlib")
        return path
    if isinstance(id_or_path, str) and name in RELEASED:
        return fetch(name, progress=progress)
    path = Path(id_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it (e.g. {path}/<id>.pt)")
    raise CheckpointError(
        f"no checkpoint {name!r}: not a released id or packaged name ({_valid_names()}) and no file at {path}"
    )
