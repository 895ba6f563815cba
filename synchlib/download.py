"""Verified downloads into synchlib's cache: pooch moves the bytes into place, synchlib decides what may arrive.

pooch (``Pooch.fetch`` with a custom downloader) creates the temporary file beside the destination, deletes it when
a download fails and renames it into place when it succeeds. The downloader (:class:`_Downloader`) streams the body
over ``requests``, hashes it as it arrives and refuses, before the rename, a file that does not match the expected
hash or the full digest recorded for it before. What pooch cannot do without losing a property stays here: the HTTP
loop (pooch's ``HTTPDownloader`` blocks until a whole chunk has arrived, so a server trickling a byte at a time is
never given up on, and it follows redirects to any host), the retries (pooch would retry a 404 and a hash mismatch,
after pauses that ignore the deadline) and a lock (pooch has none).

Beside each verified file, ``<name>.verified`` notes its size, mtime, md5 and sha256: a file whose note still matches
is trusted without hashing it again (~1.1 GB). ``known_digests.json`` in the cache folder keeps the full digests of
every file verified so far (the published hashes are 7-digit md5 prefixes), so that a later, different file with
the same prefix is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from .checks import real
from .errors import CheckpointError
from .paths import HASH_CHUNK, make_folder, replacing

ENV_MIRROR = "SYNCHLIB_MIRROR"  # base URL of another server laid out like the authors' store
ENV_ALLOW_REDIRECTS = "SYNCHLIB_ALLOW_REDIRECTS"  # "1": follow redirects to other hosts too
KNOWN_DIGESTS = "known_digests.json"  # in the cache folder: full digests of the files verified so far

DEFAULT_TIMEOUT = 30.0  # s to connect, to get an answer, or to get the next bytes
DEFAULT_STALL_TIMEOUT = 60.0  # s in which an attempt must receive at least _STALL_MIN_BYTES
DEFAULT_DEADLINE = 3 * 3600.0  # s for a whole fetch (1.1 GB at 100 kB/s takes about 3 hours)

_STALL_MIN_BYTES = 64 * 1024  # an attempt receiving less than this per stall_timeout has stalled
_NOTICE_AFTER = 5.0  # s without data (or half the time limit, if shorter) before saying "waiting for <host>"
_WATCH_POLL = 0.1  # s between the looks of the thread that says so
_MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOCKS = ".locks"  # in the cache folder: one lock per folder of downloaded files, one for KNOWN_DIGESTS
_MIN_PREFIX = 7  # shortest hash prefix accepted (the published md5 prefixes have 7 hex digits)
_DIGEST_LENGTHS = {"md5": 32, "sha256": 64}  # both are computed for every file and recorded once it is verified
# Temporary files a killed download leaves: pooch's (tempfile's default "tmp" + 8 characters) and synchlib's own
# atomic writes (paths.temp_sibling). Only downloads write into a download folder, and only under its lock.
_LEFTOVER = re.compile(r"tmp[a-z0-9_]{8}|\..*\.part")


# --------------------------------------------------------------------------------------------------------------
# Hashes, notes and the record of verified files


def parse_hash(spec: str) -> tuple[str, str]:
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


def _file_digests(path: Path) -> dict[str, str]:
    """Hex md5 and sha256 of a file, in one pass."""
    hashers = {name: hashlib.new(name) for name in _DIGEST_LENGTHS}
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _note_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_note(path: Path, digests: Mapping[str, str | None]) -> None:
    st = path.stat()
    note = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **{name: digests.get(name) for name in _DIGEST_LENGTHS}}
    with replacing(_note_path(path)) as f:
        f.write(json.dumps(note).encode())


def _hash_problem(digests: Mapping[str, Any], expected: str, size: int) -> str | None:
    """Why a file with these digests does not match ``expected`` (None if it does)."""
    algorithm, prefix = parse_hash(expected)
    digest = digests.get(algorithm)
    if isinstance(digest, str) and digest.startswith(prefix):
        return None
    return (
        f"the {size}-byte file has {algorithm} {digest}, expected one starting with {prefix} "
        "(a truncated or different file)"
    )


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

    A different file sharing a 7-digit prefix can be found or crafted. Once a file has passed, its full digests are
    recorded, and later files must match them, unless ``expected`` is a full digest itself (it then names the file
    exactly and replaces the record).
    """
    algorithm, prefix = parse_hash(expected)
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


def _problem(root: Path, key: str, expected: str | None, digests: Mapping[str, Any], size: int) -> str | None:
    """Why a file with these digests cannot be the one expected under ``key`` (None when it can)."""
    if expected is None:  # nothing to check against
        return None
    return _hash_problem(digests, expected, size) or _known_problem(root, key, digests, expected)


def _record(root: Path, key: str, path: Path, digests: Mapping[str, str], expected: str | None) -> None:
    """Note the digests of the verified file ``path`` beside it and, if it was checked, in ``known_digests.json``."""
    import filelock

    _write_note(path, digests)
    if expected is None:
        return
    with filelock.FileLock(make_folder(root / _LOCKS, "the lock folder") / f"{KNOWN_DIGESTS}.lock"):
        known = _read_known(root)
        known[key] = {"file": path.name, "size": path.stat().st_size, **{n: digests[n] for n in _DIGEST_LENGTHS}}
        with replacing(root / KNOWN_DIGESTS) as f:
            f.write(json.dumps(known, indent=1, sort_keys=True).encode())


def _vouched(path: Path, expected: str | None, root: Path, key: str) -> bool:
    """True when the note beside ``path`` describes the file as it is now (size, mtime) and records digests that
    pass ``expected`` and the recorded full digests. Reads only; no hashing."""
    try:
        note = json.loads(_note_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(note, dict) or (note.get("size"), note.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return False
    return _problem(root, key, expected, note, st.st_size) is None


# --------------------------------------------------------------------------------------------------------------
# Time limits and what is said while waiting


class _HashMismatch(Exception):
    """The file arrived complete but is not the expected one: retrying would not help."""


class _Transient(Exception):
    """An attempt failed in a way worth retrying (a stall, a cut transfer); the message says how."""


class _OutOfTime(Exception):
    """The fetch's deadline passed; the message (possibly empty) says what it was waiting for."""


@dataclass(frozen=True)
class Limits:
    """How long one fetch may take, in seconds; ``ends`` is on the ``time.monotonic`` clock."""

    timeout: float
    stall_timeout: float
    deadline: float
    ends: float
    allow_redirects: bool

    @classmethod
    def start(cls, timeout: Any, stall_timeout: Any, deadline: Any, allow_redirects: bool | None) -> Limits:
        """Checked limits, starting now. ``allow_redirects=None``: as ``$SYNCHLIB_ALLOW_REDIRECTS`` says."""
        why = "a time limit of fetch, in seconds"
        seconds = {
            name: real(name, value, above=0.0, why=why)
            for name, value in (("timeout", timeout), ("stall_timeout", stall_timeout), ("deadline", deadline))
        }
        if allow_redirects is None:
            allow_redirects = os.environ.get(ENV_ALLOW_REDIRECTS, "").strip().lower() in ("1", "true", "yes", "on")
        return cls(**seconds, ends=time.monotonic() + seconds["deadline"], allow_redirects=bool(allow_redirects))

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


class _Watch(threading.Thread):
    """Says "waiting for <host>" on stderr when nothing has arrived for a while (once per quiet spell). The
    downloading thread is then blocked in a socket read, so this thread looks at the clock; it only prints: giving
    up is left to the socket timeout and the checks between reads."""

    def __init__(self, host: str, patience: float):
        super().__init__(name="synchlib-download-watch", daemon=True)
        self.host, self.patience, self.stop = host, patience, threading.Event()
        self.arrived()

    def __enter__(self) -> _Watch:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.join()

    def arrived(self) -> None:
        self.last, self.told = time.monotonic(), False  # when bytes last arrived; whether the quiet was reported

    def run(self) -> None:
        while not self.stop.wait(_WATCH_POLL):
            quiet = time.monotonic() - self.last
            if not self.told and quiet >= min(_NOTICE_AFTER, self.patience / 2):
                self.told = True
                _say(f"waiting for {self.host}: nothing received for {quiet:.0f} s "
                     f"(giving up after {self.patience:.3g} s without data)...")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# HTTP: one attempt


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, default ports filled in; what a redirect must keep."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a malformed port: never the same origin
        port = -1
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def without_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***`` (``https://***@host/...``)."""
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text, flags=re.I)


def _host(url: str) -> str:
    """``host[:port]`` of a URL, without any credentials."""
    return urlsplit(url).netloc.rpartition("@")[2]


def _open(session: Any, url: str, limits: Limits) -> Any:
    """GET ``url`` for streaming, following redirects (requests does) only to the same scheme, host and port unless
    ``limits.allow_redirects``: a hook sees each redirect before it is followed. Returns the final response (2xx)."""
    import requests

    def same_origin_only(response: Any, **kwargs: Any) -> None:
        target = urljoin(response.url, response.headers.get("location", ""))
        if response.is_redirect and not limits.allow_redirects and _origin(target) != _origin(url):
            response.close()
            raise CheckpointError(
                f"{url} redirects to another host, {_host(target)} ({target}); synchlib follows redirects only "
                f"within {_host(url)}. If you trust {_host(target)}, set {ENV_ALLOW_REDIRECTS}=1 (or pass "
                f"allow_redirects=True); or set {ENV_MIRROR} to a server that serves the files directly."
            )

    session.max_redirects = _MAX_REDIRECTS
    wait = limits.wait()
    try:
        response = session.get(url, stream=True, timeout=(wait, wait), headers={"Accept-Encoding": "identity"},
                               hooks={"response": same_origin_only})  # fmt: skip
    except requests.TooManyRedirects:
        raise CheckpointError(f"{url} redirects more than {_MAX_REDIRECTS} times; set {ENV_MIRROR} to another server")
    if not response.ok:
        response.close()
        response.raise_for_status()
    return response


def _stream(response: Any, out: Any, hashers: list[Any], watch: _Watch, bar: Any, limits: Limits) -> None:
    """Copy the body of ``response`` into ``out``, checking progress and the deadline between reads."""
    import urllib3

    host, wait = watch.host, watch.patience
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            chunk = response.raw.read1(HASH_CHUNK, decode_content=False)  # whatever has arrived, up to 1 MiB
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


@dataclass
class _Downloader:
    """A pooch downloader: streams ``url`` into pooch's temporary file and raises :class:`_HashMismatch` when what
    arrived is not acceptable (``check(digests, size)`` says why), so that pooch deletes it instead of renaming it
    into place. ``read1`` returns whatever has arrived, so progress and the deadline are checked between reads."""

    limits: Limits
    check: Callable[[Mapping[str, str], int], str | None]
    progress: bool
    name: str
    digests: dict[str, str] = field(default_factory=dict)  # of the last file that arrived

    def __call__(self, url: str, output_file: str, pooch: Any) -> None:
        import requests
        from tqdm.auto import tqdm

        hashers = {n: hashlib.new(n) for n in _DIGEST_LENGTHS}
        wait = self.limits.wait()
        with requests.Session() as session, _Watch(_host(url), wait) as watch:
            try:
                response = _open(session, url, self.limits)
            except requests.Timeout:
                detail = f"no answer from {_host(url)} within {wait:.3g} s"
                raise (_OutOfTime(detail) if self.limits.left() <= 0 else _Transient(detail)) from None
            size = response.headers.get("Content-Length")
            with response, open(output_file, "wb") as out, tqdm(
                total=int(size) if size and size.isdigit() else None, unit="B", unit_scale=True,
                unit_divisor=1024, desc=self.name, disable=not self.progress,
            ) as bar:  # fmt: skip
                _stream(response, out, list(hashers.values()), watch, bar, self.limits)
                out.flush()
                os.fsync(out.fileno())
        self.digests = {n: h.hexdigest() for n, h in hashers.items()}
        problem = self.check(self.digests, os.path.getsize(output_file))
        if problem is not None:
            raise _HashMismatch(problem)


# --------------------------------------------------------------------------------------------------------------
# Attempts, retries, the lock


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


def _out_of_time(url: str, limits: Limits, detail: str, last: BaseException | None, fix: str) -> str:
    waiting = f" ({detail})" if detail else f" (last problem: {_describe(last)})" if last is not None else ""
    return (
        f"gave up on {url}: the download did not finish within deadline={limits.deadline:g} s{waiting}. "
        f"{fix} Or allow more time: fetch(..., deadline=<seconds>)."
    )


def _download(url: str, dest: Path, downloader: _Downloader, *, fix: str, retries: int, backoff: float) -> None:
    """Attempts of ``Pooch.fetch`` until ``dest`` holds an accepted file. Network errors are retried after pauses
    of ``backoff`` seconds doubling each time, all within the deadline; a 4xx answer or a refused file is not."""
    import pooch

    store = pooch.Pooch(path=dest.parent, base_url="", registry={dest.name: None}, urls={dest.name: url})
    # pooch logs "Downloading file ... from <url>" at INFO: the URL may carry a mirror's credentials, and synchlib
    # says what it fetches itself (progress bar, waiting notices)
    pooch.get_logger().setLevel(logging.WARNING)
    limits = downloader.limits
    attempts = max(0, int(retries)) + 1
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            store.fetch(dest.name, downloader=downloader)
            return
        except _HashMismatch as e:  # the server holds a different file: retrying would not help
            raise CheckpointError(f"download of {url} failed verification: {e}. {fix}") from None
        except _OutOfTime as e:
            raise CheckpointError(_out_of_time(url, limits, str(e), last, fix)) from None
        except CheckpointError:
            raise
        except Exception as e:
            if not _is_transient(e):
                raise CheckpointError(f"could not download {url}: {_describe(e)}. {fix}") from e
            last = e
        if attempt + 1 < attempts:
            pause = backoff * 2**attempt
            if pause >= limits.left():
                raise CheckpointError(_out_of_time(url, limits, "", last, fix))
            time.sleep(pause)
    assert last is not None
    raise CheckpointError(
        f"could not download {url} after {attempts} attempt(s); last error: {_describe(last)}. {fix}"
    ) from last


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files in a download folder. With the folder's lock held, no live download is writing them: they
    are what a killed one left behind."""
    return [p for p in folder.iterdir() if _LEFTOVER.fullmatch(p.name)]


@contextmanager
def _folder_lock(root: Path, folder: Path, limits: Limits) -> Iterator[None]:
    """Hold the lock of one download folder, so that one process or thread downloads into it while the others wait
    and then use the verified files. The operating system releases it when its process ends, however it ends."""
    import filelock

    lock = filelock.FileLock(make_folder(root / _LOCKS, "the lock folder") / f"{folder.name}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        _say(f"waiting for another download into {folder} to finish...")
        try:
            lock.acquire(timeout=max(limits.left(), 0.0))
        except filelock.Timeout:
            raise CheckpointError(
                f"gave up waiting for another download into {folder} within deadline={limits.deadline:g} s "
                f"(lock {lock.lock_file}); let it finish, or raise fetch(..., deadline=)"
            ) from None
    try:
        yield
    finally:
        lock.release()


def fetch_file(
    url: str, dest: Path, expected: str | None, *, root: Path, key: str, fix: str, limits: Limits,
    progress: bool, retries: int, backoff: float,
) -> Path:  # fmt: skip
    """``dest`` (in a folder of its own under the cache folder ``root``), downloaded from ``url`` unless a verified
    copy is there already; ``expected`` is a hash spec (see :func:`parse_hash`) or None, ``key`` the file's entry in
    ``known_digests.json``, ``fix`` what an error message suggests doing.

    A cached file that its note no longer vouches for is hashed again; one that fails is deleted (with a warning)
    and downloaded again. Concurrent fetches (threads or processes) download once: the others wait for the lock,
    then find the verified file.
    """
    folder = dest.parent
    ready = dest.is_file() and _vouched(dest, expected, root, key)
    if ready and not _leftovers(folder):
        return dest
    with _folder_lock(root, folder, limits):
        for p in _leftovers(folder):
            p.unlink(missing_ok=True)
        if not ready and dest.is_file() and not _vouched(dest, expected, root, key):
            digests = _file_digests(dest)
            problem = _problem(root, key, expected, digests, dest.stat().st_size)
            if problem is None:
                _record(root, key, dest, digests, expected)
            else:
                warnings.warn(f"cached {dest} cannot be used ({problem}); downloading it again", stacklevel=3)
                for p in (dest, _note_path(dest)):
                    p.unlink(missing_ok=True)
        if not dest.is_file():
            downloader = _Downloader(
                limits, lambda d, size: _problem(root, key, expected, d, size), progress=progress, name=dest.name
            )
            try:
                _download(url, dest, downloader, fix=fix, retries=retries, backoff=backoff)
            except CheckpointError as e:  # messages name the URL (and the mirror): never show their credentials
                raise CheckpointError(without_credentials(str(e))) from e.__cause__
            _record(root, key, dest, downloader.digests, expected)
    return dest
