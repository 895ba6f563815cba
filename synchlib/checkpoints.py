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
digest of the file when it was last verified. A later :func:`fetch` trusts a cached file whose size and mtime still
match its note (no re-hash of ~1.1 GB); a file without a matching note is hashed again, and one that fails its hash
is deleted and downloaded again. Downloads go to a temporary ``.part`` file in the same folder, are verified there
and only then renamed into place, so the cache never holds a partial or corrupt checkpoint under its final name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import re
import struct
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import torch

from .errors import CheckpointError

__all__ = [
    "DEFAULT_BASE_URL",
    "PACKAGED",
    "RELEASED",
    "ReleasedCheckpoint",
    "cache_dir",
    "checkpoint_url",
    "expected_hash",
    "fetch",
    "file_md5",
    "file_sha256",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

DEFAULT_BASE_URL = "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/sync/sync_models"
ENV_CACHE = "SYNCHLIB_CACHE"
ENV_MIRROR = "SYNCHLIB_MIRROR"
ENV_REGISTRY = "SYNCHLIB_REGISTRY"
ASSETS_DIR = Path(__file__).parent / "assets"

_CHUNK = 1 << 20  # bytes per read when hashing and per chunk when downloading
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


def cache_dir() -> Path:
    """synchlib's cache folder: ``$SYNCHLIB_CACHE`` if set, else the user cache dir (e.g. ``~/.cache/synchlib``).

    The folder is created on demand.
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        path = Path(env).expanduser()
    else:
        import pooch

        path = Path(pooch.os_cache("synchlib"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create the synchlib cache folder {path}: {e}. Set {ENV_CACHE} to a writable folder."
        ) from None
    return path


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


def _file_digest(path: str | Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    return _file_digest(path, "md5")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    return _file_digest(path, "sha256")


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
# The verified-file note next to each cached download


def _note_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_note(path: Path, algorithm: str | None, digest: str | None) -> None:
    st = path.stat()
    note = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "algorithm": algorithm, "digest": digest}
    _atomic_write_bytes(_note_path(path), json.dumps(note).encode())


def _read_note(path: Path) -> dict[str, Any] | None:
    try:
        note = json.loads(_note_path(path).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _note_vouches_for(path: Path, expected: str | None) -> bool:
    """True when the note says ``path`` was verified against ``expected`` and the file has not changed since."""
    note = _read_note(path)
    st = path.stat()
    if note is None or note.get("size") != st.st_size or note.get("mtime_ns") != st.st_mtime_ns:
        return False
    if expected is None:
        return True
    algorithm, prefix = _parse_hash(expected)
    return note.get("algorithm") == algorithm and str(note.get("digest", "")).startswith(prefix)


def _cached_file_ok(path: Path, expected: str | None) -> bool:
    """Check a cached file cheaply via its note, else by hashing it (and then record a fresh note)."""
    if _note_vouches_for(path, expected):
        return True
    if expected is None:  # nothing to check against; files only reach their final name complete
        _write_note(path, None, None)
        return True
    algorithm, prefix = _parse_hash(expected)
    digest = _file_digest(path, algorithm)
    if not digest.startswith(prefix):
        return False
    _write_note(path, algorithm, digest)
    return True


def _remove_cached(path: Path) -> None:
    for p in (path, _note_path(path)):
        p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Downloading


class _HashMismatch(Exception):
    pass


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


def _is_transient(error: BaseException) -> bool:
    """Network errors worth retrying: HTTP 5xx/408/429, connection problems, timeouts, truncated transfers."""
    import requests

    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else None
        return status is None or status >= 500 or status in (408, 429)
    return isinstance(
        error,
        (
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
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"the transfer was cut short ({error})"
    if isinstance(error, _HashMismatch):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _how_to_fix(ckpt_id: str) -> str:
    return (
        f"To download from another server, set {ENV_MIRROR} to a base URL that serves {{id}}/{{file}} "
        f"(now: {os.environ.get(ENV_MIRROR) or 'unset'}); or download {ckpt_id}.pt yourself and pass its path "
        f"instead of the id."
    )


def _transfer(url: str, dest: Path, *, progress: bool, timeout: float) -> None:
    """One HTTP download of ``url`` into ``dest`` (pooch + requests; tqdm progress bar)."""
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=_CHUNK, timeout=timeout)
    downloader(url, output_file=str(dest), pooch=None)


def _verify(path: Path, expected: str) -> str:
    algorithm, prefix = _parse_hash(expected)
    digest = _file_digest(path, algorithm)
    if not digest.startswith(prefix):
        size = path.stat().st_size
        raise _HashMismatch(
            f"the {size}-byte file has {algorithm} {digest}, expected one starting with {prefix} "
            "(a truncated or different file)"
        )
    return digest


def _download(
    url: str,
    dest: Path,
    expected: str | None,
    *,
    ckpt_id: str,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> None:
    """Download ``url`` to ``dest`` via a temporary sibling file, verify it, then rename it into place."""
    attempts = max(0, int(retries)) + 1
    last: BaseException | None = None
    for attempt in range(attempts):
        tmp = _temp_sibling(dest)
        try:
            _transfer(url, tmp, progress=progress, timeout=timeout)
            digest = _verify(tmp, expected) if expected else None
            os.replace(tmp, dest)
            algorithm = _parse_hash(expected)[0] if expected else None
            _write_note(dest, algorithm, digest)
            return
        except _HashMismatch as e:  # the server holds a different file: retrying would not help
            raise CheckpointError(f"download of {url} failed verification: {e}. {_how_to_fix(ckpt_id)}") from None
        except Exception as e:
            if not _is_transient(e):
                raise CheckpointError(f"could not download {url}: {_describe(e)}. {_how_to_fix(ckpt_id)}") from e
            last = e
        finally:
            tmp.unlink(missing_ok=True)
        if attempt + 1 < attempts and backoff > 0:
            time.sleep(backoff * 2**attempt)
    assert last is not None
    raise CheckpointError(
        f"could not download {url} after {attempts} attempt(s); last error: {_describe(last)}. {_how_to_fix(ckpt_id)}"
    ) from last


def fetch(
    ckpt_id: str,
    filename: str | None = None,
    *,
    known_hash: str | None = None,
    with_config: bool = False,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float = 60.0,
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
        retries: how often to retry after a network error (HTTP 5xx, reset connection, truncated transfer); a
            file that arrives complete but fails its hash is not retried.
        backoff: seconds to wait before the first retry; doubles after each.
        timeout: seconds to wait for the server to connect or send data.

    A cached file is trusted when its ``.verified`` note matches its size and mtime; otherwise it is hashed again,
    and deleted and downloaded again if it fails.
    """
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
    folder = cache_dir() / ckpt_id
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / filename

    if dest.is_file() and not _cached_file_ok(dest, expected):
        warnings.warn(f"cached {dest} does not match {expected}; downloading it again", stacklevel=2)
        _remove_cached(dest)
    if not dest.is_file():
        _download(
            url, dest, expected, ckpt_id=ckpt_id, progress=progress, retries=retries, backoff=backoff, timeout=timeout
        )

    if with_config and entry is not None:
        try:
            fetch(ckpt_id, entry.config_filename, progress=False, retries=retries, backoff=backoff, timeout=timeout)
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
        self.code = str(code)
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
    fmt = _NUMPY_STRUCT.get(getattr(dtype, "code", None) or "")
    if not isinstance(dtype, _NumpyDtype) or fmt is None or not isinstance(data, bytes):
        raise _Refused(f"numpy scalar of dtype {getattr(dtype, 'code', dtype)!r}")
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


def _to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn the stand-in tree (and any containers) into plain dicts, lists and scalars; tensors stay tensors."""
    if _depth > 200:
        raise CheckpointError("the checkpoint metadata nests too deeply (a cycle?); it is not a valid checkpoint")
    d = _depth + 1
    if isinstance(obj, (_DictConfig, _ListConfig)):
        content = obj.__dict__.get("_content")
        return _to_plain(content, d) if isinstance(content, (dict, list)) else content
    if isinstance(obj, _AnyNode):
        return _to_plain(obj.__dict__.get("_val"), d)
    if isinstance(obj, _TypeRef):
        return obj.name
    if isinstance(obj, (_Metadata, _NumpyDtype)):
        return None
    if isinstance(obj, Mapping):
        return {k: _to_plain(v, d) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v, d) for v in obj]
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(_to_plain(v, d) for v in obj)
    return obj


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


def _load(path: Path) -> Any:
    """``torch.load`` with weights_only and synchlib's stand-ins; memory-maps files in torch's zip format."""
    if _torch_version() < (2, 6):  # safe_globals with (object, "module.name") pairs arrived in torch 2.6
        raise CheckpointError(
            f"reading checkpoints safely needs torch >= 2.6, this is torch {torch.__version__}; "
            "upgrade it (pip install -U torch)"
        )
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
        sd, meta = obj["model"], {k: _to_plain(v) for k, v in obj.items() if k != "model"}
    elif _is_state_dict(obj):
        sd, meta = obj, {}
    else:
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise CheckpointError(
            f"{path} has neither a 'model' state dict nor only tensors (top-level keys: {keys}); "
            "save {'model': model.state_dict(), ...} or the bare state_dict()"
        )
    bad = next(((k, v) for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise CheckpointError(f"{path}: state dict entry {bad[0]!r} is a {type(bad[1]).__name__}, not a tensor")
    return _strip_module_prefix(sd, path), meta


_PLAIN_SCALARS = (str, int, float, bool, type(None), bytes, torch.Tensor)


def _check_plain(obj: Any, where: str, _depth: int = 0) -> None:
    """Raise unless ``obj`` is made of dicts/lists/tuples/scalars/tensors only (what read_checkpoint accepts)."""
    if _depth > 100:
        raise CheckpointError(f"{where} nests too deeply to be saved")
    if isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where} has a key of type {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]", _depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]", _depth + 1)
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__name__}; checkpoints hold only dicts, lists, numbers, strings and tensors "
        "(convert it first, e.g. OmegaConf.to_container(cfg) or float(x))"
    )


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
    plain_args = _to_plain(args)
    _check_plain(plain_args, "args")
    if "model" in extra:
        raise CheckpointError("pass the weights as state_dict, not as model=")
    for key, value in extra.items():
        _check_plain(value, key)
    payload: dict[str, Any] = {"model": sd, "args": plain_args, "epoch": 0, "model_type": "Synchformer", **extra}
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


# --------------------------------------------------------------------------------------------------------------
# Checkpoint -> ready model


def config_for_checkpoint(id_or_path: str | Path, meta: Mapping[str, Any] | None = None, config: Any = None):
    """The :class:`~synchlib.config.Config` of a checkpoint.

    Order: an explicit ``config`` (Config, name or YAML path); the shipped config of a released or packaged name;
    the ``args`` tree stored in the checkpoint; a ``cfg-*.yaml`` next to the file.
    """
    from .config import config_from_dict, load_config, released_config_path

    if config is not None:
        return load_config(config)
    name = str(id_or_path)
    if isinstance(id_or_path, str) and released_config_path(name) is not None:
        return load_config(name)
    path = Path(id_or_path).expanduser()
    if meta and isinstance(meta.get("args"), Mapping) and "model" in meta["args"]:
        return config_from_dict(meta["args"], name=path.stem)
    siblings = sorted(path.parent.glob("cfg-*.yaml")) + sorted(path.parent.glob(f"{path.stem}.yaml"))
    if siblings:
        return load_config(siblings[0])
    raise CheckpointError(
        f"{path} holds no config and none lies next to it; pass config= (a released id such as "
        f"'{next(iter(RELEASED))}' or the path of its cfg-<id>.yaml)"
    )


# Bare state-dict files published elsewhere for a released model (no config inside): full md5 -> released id.
KNOWN_STATE_DICTS: dict[str, str] = {
    "5b2f5594b0730f70e41e549b7c94390c": "24-01-04T16-39-21",  # MMAudio's synchformer_state_dict.pth (907 MB)
}
AV_BENCHMARK_ID = "24-01-04T16-39-21"  # the model av-benchmark and MMAudio use


def bare_state_dict_config(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The config name for a bare state dict that carries no config, such as MMAudio's
    ``synchformer_state_dict.pth``: the released or packaged model whose key names and shapes it has (the three
    released offset models share one layout and one test-time config; :data:`AV_BENCHMARK_ID` is named first),
    else the released id its md5 names in :data:`KNOWN_STATE_DICTS`; None when neither."""
    from .model import build_model

    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in sorted([*RELEASED, *PACKAGED], key=lambda n: n != AV_BENCHMARK_ID):
        if shapes == {k: tuple(v.shape) for k, v in build_model(name, device="meta").state_dict().items()}:
            return name
    return KNOWN_STATE_DICTS.get(file_md5(path))


def load_model(
    id_or_path: str | Path = "24-01-04T16-39-21",
    device: str | torch.device = "auto",
    *,
    config: Any = None,
    progress: bool = True,
):
    """A ready-to-use Synchformer in eval mode: released id (downloaded, verified, cached on first use),
    ``"tiny-synthetic"`` (ships with synchlib) or a checkpoint path. ``device="auto"`` picks CUDA when present.

    Weights are loaded without a second copy in memory (the model is built on the meta device and takes the
    loaded tensors). A longer stored positional table is cut to the config's length.
    """
    from .model import build_model
    from .predict import resolve_device

    dev = resolve_device(device)
    path = resolve_checkpoint(id_or_path, progress=progress)
    sd, meta = read_checkpoint(path)
    try:
        cfg = config_for_checkpoint(id_or_path, meta, config)
    except CheckpointError:  # no config anywhere: a known bare state dict (MMAudio's) needs none
        name = bare_state_dict_config(path, sd) if not meta else None
        if name is None:
            raise
        cfg = config_for_checkpoint(name)
    model = build_model(cfg, device="meta")
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path} does not fit the {cfg.name!r} architecture: {str(e).splitlines()[0]} "
            "(pass the matching config=)"
        ) from None
    model = model.to(dev).eval()
    model.checkpoint = str(id_or_path)
    return model
