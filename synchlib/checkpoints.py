"""Released Synchformer checkpoints: what they are, where they live, how to fetch them and how to read them safely.

* :data:`RELEASED` is the single place that records the four checkpoints the authors published (id, head, hash,
  training data, reported accuracy).
* :func:`fetch` downloads ``<id>.pt`` into :func:`~synchlib.paths.cache_dir` once, verifies it against its published
  md5 prefix and returns the cached path afterwards (the mechanics are :mod:`synchlib.download`'s). Set
  ``$SYNCHLIB_MIRROR`` to download from another server and ``$SYNCHLIB_CACHE`` to keep the files somewhere else. A
  mirror that serves different files under the released ids (re-exports, test checkpoints) names their hashes in a
  CSV given by ``$SYNCHLIB_REGISTRY`` (see :func:`expected_hash`); they are verified against those instead.
* :func:`read_checkpoint` loads a ``.pt`` with ``torch.load(weights_only=True)``: nothing in the file can run code.
  The released files pickle their training config as an OmegaConf ``DictConfig``; the few OmegaConf and numpy names
  they use are on the allow-list, and the config comes back as plain dicts and lists, its ``${...}`` left as text.
* :func:`save_checkpoint` writes synchlib's own checkpoints in the released layout, readable by the same function.

Cache layout: ``cache_dir()/<id>/<id>.pt`` plus ``<id>.pt.verified`` (size, mtime, md5 and sha256 of the file when
it was verified); ``cache_dir()/known_digests.json`` (full digests of every file verified so far);
``cache_dir()/.locks/`` (one lock per id folder).
"""

from __future__ import annotations

import csv
import os
import pickle
import pickletools
import typing
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import torch

from .download import (
    DEFAULT_DEADLINE,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_TIMEOUT,
    ENV_MIRROR,
    Limits,
    fetch_file,
    parse_hash,
)
from .errors import CheckpointError
from .paths import cache_dir, make_folder, replacing

DEFAULT_BASE_URL = "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/sync/sync_models"
ENV_REGISTRY = "SYNCHLIB_REGISTRY"
ASSETS_DIR = Path(__file__).parent / "assets"
_MIN_CONFIG_TIME = 10.0  # s left for cfg-<id>.yaml even when the checkpoint used up the deadline (a few kB)


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
            parse_hash(spec)
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



def _known_key(ckpt_id: str, filename: str) -> str:
    """The entry of a file in ``known_digests.json``: its id, or ``<id>/<file>`` for a file other than ``<id>.pt``."""
    return ckpt_id if filename == f"{ckpt_id}.pt" else f"{ckpt_id}/{filename}"


def _how_to_fix(ckpt_id: str) -> str:
    return (
        f"To download from another server, set {ENV_MIRROR} to a base URL that serves {{id}}/{{file}} "
        f"(now: {os.environ.get(ENV_MIRROR) or 'unset'}); or download {ckpt_id}.pt yourself and pass its path "
        f"instead of the id. To try synchlib without it, use the small model that ships with it: "
        f"--checkpoint tiny-synthetic (load_model('tiny-synthetic'))."
    )


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
    """Return the local path of a checkpoint file, downloading it into the cache folder on first use.

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

    A line on stderr says when the server has sent nothing for a few seconds. How cached files are trusted, how
    full digests are recorded and how concurrent fetches download once: :func:`synchlib.fetch_file`.
    """
    limits = Limits.start(timeout, stall_timeout, deadline, allow_redirects)
    entry = RELEASED.get(ckpt_id)
    if entry is None and known_hash is None:
        raise CheckpointError(
            f"unknown checkpoint id {ckpt_id!r}; released ids: {', '.join(RELEASED)}. "
            "Pass known_hash= to fetch another id from a mirror, or pass a path to a local file."
        )
    filename = filename or f"{_check_component(ckpt_id, 'id')}.pt"
    expected = known_hash or (expected_hash(ckpt_id) if entry and filename == entry.filename else None)
    if expected is not None:
        parse_hash(expected)  # fail early on a malformed hash
    url = checkpoint_url(ckpt_id, filename)
    if urlsplit(url).scheme not in ("http", "https"):
        raise CheckpointError(
            f"cannot download {url}: {ENV_MIRROR} must be an http(s) base URL. To use a file on disk, pass its "
            "path instead of the id."
        )
    root = cache_dir()
    dest = make_folder(root / ckpt_id, "the checkpoint folder") / filename
    fetch_file(url, dest, expected, root=root, key=_known_key(ckpt_id, filename), fix=_how_to_fix(ckpt_id),
                        limits=limits, progress=progress, retries=retries, backoff=backoff)  # fmt: skip
    if with_config and entry is not None:
        try:
            fetch(ckpt_id, entry.config_filename, progress=False, retries=retries, backoff=backoff, timeout=timeout,
                  stall_timeout=stall_timeout, deadline=max(limits.left(), _MIN_CONFIG_TIME),
                  allow_redirects=allow_redirects)  # fmt: skip
        except CheckpointError as e:
            warnings.warn(f"checkpoint fetched, but its config was not: {e}", stacklevel=2)
    return dest


# --------------------------------------------------------------------------------------------------------------
# Safe loading: the allow-list, and the work a file may cause


def _numpy_number(dtype: Any, data: Any = b"") -> bool | int | float:
    """numpy's scalar reconstructor (``numpy.core.multiarray.scalar``) for booleans, integers and floats only,
    returning the Python number: the reference stored metrics computed by sklearn/numpy (``numpy.float64``)."""
    import numpy as np

    if not (isinstance(dtype, np.dtype) and dtype.kind in _NUMPY_KINDS and isinstance(data, bytes)):
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {getattr(dtype, 'str', type(dtype).__name__)}")
    if len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a numpy scalar of {len(data)} bytes for dtype {dtype.str}")
    return np.frombuffer(data, dtype)[0].item()


_NUMPY_KINDS = "biuf"  # bool, int, unsigned, float


def _safe_globals() -> list[Any]:
    """What synchlib allows beyond torch's own weights-only defaults (tensors, storages, OrderedDict, ...): the names
    a checkpoint in the released layout pickles (OmegaConf 2.x config, AdamW + scheduler + GradScaler states, numpy
    metrics), found with ``torch.serialization.get_unsafe_globals_in_checkpoint``. The OmegaConf classes are the real
    ones: the file can create them and fill in their fields, never call them (see :func:`_scan_pickle`)."""
    import numpy as np
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    number_dtypes = {type(np.dtype(c)) for c in "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]}
    return [
        DictConfig, ListConfig, AnyNode, Metadata, ContainerMetadata,  # the config
        (typing.Any, "typing.Any"), dict, list, int, defaultdict,  # in its metadata (int pickles as "long")
        np.dtype, *number_dtypes,  # numpy numbers: their dtype, then _numpy_number
        (_numpy_number, "numpy.core.multiarray.scalar"),  # numpy < 2
        (_numpy_number, "numpy._core.multiarray.scalar"),  # numpy >= 2
    ]  # fmt: skip


class _Unsafe(Exception):
    """The pickle would make ``torch.load`` itself run away; the message says how."""


_KEY_MAX_VALUES = 256  # values in one dict key written out; the keys of a real checkpoint are strings and ints
_LEGACY_PICKLES = 5  # a legacy (pre-zip) torch file starts with magic number, version, sys info, data, storage keys
_OBJECT = -1  # on _scan_pickle's stack: something built or created (a container, an instance), not a plain value
_PLAIN_OPS = frozenset(
    "INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT NONE NEWTRUE NEWFALSE EMPTY_TUPLE STRING BINSTRING "
    "SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8".split()
)  # opcodes that push a str, bytes, number, bool or None


def _scan_pickle(stream: Any) -> None:
    """Refuse, before torch unpickles it, a pickle that would make loading itself run away.

    * Storing a dict key hashes it, and hashing a tuple walks every path through it: a key built from shared tuples
      (``t = (t, t)`` forty times) costs 2**40 steps, and a very deeply nested one overflows the C stack. A key that
      is an object can hide the same (an OmegaConf node hashes its value).
    * Calling an OmegaConf class copies its content node by node, every path through shared content again. The
      released files create OmegaConf objects and fill in their fields (NEWOBJ, BUILD), never call them.

    Walks the opcodes once (no object is built), tracking for each stack item how many values it holds written out
    (tuples sum their items), or that it is an object, or the global it names. Raises :class:`_Unsafe`. Opcodes it
    cannot parse end the scan: ``torch.load`` then reports the damage itself.
    """
    stack: list[int | str] = []
    marks: list[int] = []
    memo: dict[Any, int | str] = {}

    def check_key(item: int | str) -> None:
        if item == _OBJECT or isinstance(item, str):
            raise _Unsafe("a dict key that is an object, not a plain value (text, a number, or a tuple of those)")
        if item > _KEY_MAX_VALUES:
            raise _Unsafe(f"a dict key built from more than {_KEY_MAX_VALUES} values")

    try:
        for op, arg, _ in pickletools.genops(stream):
            name, before = op.name, op.stack_before
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else _OBJECT
                continue
            if name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo.get(arg, _OBJECT))
                continue
            if name == "GLOBAL":
                stack.append(str(arg).replace(" ", "."))
                continue
            if name == "REDUCE" and len(stack) >= 2 and str(stack[-2]).startswith("omegaconf."):
                raise _Unsafe(f"a call of {stack[-2]} (a released checkpoint never calls an OmegaConf class)")
            if pickletools.markobject in before:
                start = marks.pop() if marks else 0
                items, stack[start:] = stack[start:], []
                n_before = before.index(pickletools.markobject)
            else:
                n_before = len(before)
                items, stack[len(stack) - n_before :] = stack[len(stack) - n_before :], []
            if name == "SETITEM":
                check_key(items[-2] if len(items) >= 2 else _OBJECT)
            elif name in ("SETITEMS", "DICT"):
                for key in items[0::2]:
                    check_key(key)
            if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
                plain = all(isinstance(i, int) and i != _OBJECT for i in items)
                stack.append(min(1 + sum(items), _KEY_MAX_VALUES + 1) if plain else _OBJECT)  # type: ignore[arg-type]
                continue
            if pickletools.markobject in before:
                del stack[len(stack) - n_before :]
            stack.extend([1 if name in _PLAIN_OPS else _OBJECT] * len(op.stack_after))
            if name == "STOP":
                return
    except (ValueError, EOFError, IndexError, UnicodeDecodeError):
        return


def _scan_checkpoint(path: Path) -> None:
    """:func:`_scan_pickle` over the pickles ``torch.load`` will read from ``path``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            member = f"{names[0].split('/')[0]}/data.pkl" if names else ""
            if member in names:
                with zf.open(member) as f:
                    _scan_pickle(f)
        return
    with open(path, "rb") as f:
        for _ in range(_LEGACY_PICKLES):
            _scan_pickle(f)


_META_MAX_DEPTH = 200  # nesting levels (config nodes included); a released config nests about 20 deep
_META_MAX_VALUES = 1_000_000  # values in the metadata written out as a tree; a released checkpoint has ~10^4
_PLAIN_SCALARS = (str, int, float, bool, type(None), bytes, torch.Tensor)
_TRAIL_SHOWN = 6  # keys of the path to a refused value that a message shows
_READ_ADVICE = (
    "a checkpoint's metadata is a small tree of plain values, so this file is damaged or was made to exhaust "
    "memory. If you trust its weights, save them alone: torch.save(torch.load(path, weights_only=True)['model'], "
    "'weights.pt'), and pass that file"
)
_SAVE_ADVICE = "save a small tree of plain values (e.g. OmegaConf.to_container(cfg) for a config)"


def _short_repr(key: Any) -> str:
    """A dict key for a message: strings and numbers as written, anything else by type only (its repr could be
    as large as the file allows)."""
    return repr(key)[:60] if isinstance(key, (str, int, float)) else f"<{type(key).__name__}>"


def _measure(obj: Any, where: str, advice: str, plain_only: bool) -> None:
    """Refuse ``obj`` with a :class:`CheckpointError` naming ``where`` and ending with ``advice`` when it nests
    deeper than ``_META_MAX_DEPTH``, contains itself, or, written out (shared parts counted each time they appear,
    as a JSON or YAML dump or OmegaConf's own conversion would see it), holds more than ``_META_MAX_VALUES`` values:
    e.g. ``L = [L, L]`` forty times over, 2**40 values in a few kB. Each object is visited once (memo by ``id``),
    so the work is linear in the number of objects, i.e. in the size of the file they came from. OmegaConf nodes
    count with what they hold. ``plain_only``: leaves must be str/int/float/bool/None/bytes/tensors and dict keys
    str or int."""
    from omegaconf import Container, Node

    sizes: dict[int, int] = {}  # id -> values when written out
    on_path: set[int] = set()  # ids of the containers being measured (a cycle leads back to one of them)
    trail: list[Any] = []  # keys and indices leading to the current value, for messages

    def here() -> str:
        shown = "".join(f"[{_short_repr(k)}]" for k in trail[:_TRAIL_SHOWN])
        return where + shown + ("[...]" if len(trail) > _TRAIL_SHOWN else "")

    def size(node: Any, depth: int) -> int:
        if depth > _META_MAX_DEPTH:
            raise CheckpointError(f"{here()} nests more than {_META_MAX_DEPTH} levels deep; {advice}")
        is_tuple = isinstance(node, tuple) and not isinstance(node, torch.Size)
        if not (is_tuple or isinstance(node, (Node, Mapping, list))):
            if plain_only and not isinstance(node, _PLAIN_SCALARS):
                raise CheckpointError(
                    f"{here()} is a {type(node).__name__}; checkpoints hold only dicts, lists, numbers, strings "
                    "and tensors (convert it first, e.g. OmegaConf.to_container(cfg) or float(x))"
                )
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise CheckpointError(f"{here()} contains itself (a reference cycle); {advice}")
        on_path.add(key)
        if isinstance(node, Node):  # what a config node holds: its content, or a leaf's value
            total = 1 + size(vars(node).get("_content" if isinstance(node, Container) else "_val"), depth + 1)
        else:
            total = 1
            for k, v in node.items() if isinstance(node, Mapping) else enumerate(node):
                if plain_only and isinstance(node, Mapping) and not isinstance(k, (str, int)):
                    raise CheckpointError(f"{here()} has a key of type {type(k).__name__}; use str or int keys")
                trail.append(k)
                total += size(v, depth + 1)
                trail.pop()
        on_path.discard(key)
        if total > _META_MAX_VALUES:
            raise CheckpointError(
                f"{here()} holds more than {_META_MAX_VALUES:,} values when written out (parts that appear in "
                f"several places count each time); {advice}"
            )
        sizes[key] = total
        return total

    size(obj, 0)


def _to_plain(
    obj: Any, where: str = "the checkpoint metadata", advice: str = _READ_ADVICE, *, plain_only: bool = False
) -> Any:
    """``obj`` as plain dicts, lists, tuples and scalars (tensors stay tensors), once :func:`_measure` has found it
    small enough. An OmegaConf config becomes ``OmegaConf.to_container(cfg, resolve=False)``: its ``${...}`` stay
    text, since resolving them would run resolvers named in the file (``${oc.env:...}`` reads the environment).
    Each container is converted once: an object that appears in several places comes back as one shared object."""
    from omegaconf import Container, Node, OmegaConf

    _measure(obj, where, advice, plain_only)
    done: dict[int, tuple[Any, Any]] = {}  # id -> (the object, kept alive so that its id stays its own; converted)

    def convert(node: Any) -> Any:
        original = node
        if id(original) in done:
            return done[id(original)][1]
        if isinstance(node, Container):
            try:
                node = OmegaConf.to_container(node, resolve=False)
            except Exception as e:  # a node whose fields the file filled in with something else
                raise CheckpointError(f"{where} holds an OmegaConf config that cannot be read ({e!r:.200}); {advice}")
        elif isinstance(node, Node):
            node = node._value()
        is_tuple = isinstance(node, tuple) and not isinstance(node, torch.Size)
        if isinstance(node, Mapping):
            result: Any = {k: convert(v) for k, v in node.items()}
        elif is_tuple or isinstance(node, list):
            values = [convert(v) for v in node]
            result = tuple(values) if is_tuple else values
        else:
            return node
        done[id(original)] = (original, result)
        return result

    return convert(obj)


# --------------------------------------------------------------------------------------------------------------
# Reading and writing checkpoints


def _refusal_message(path: Path, detail: str) -> str:
    return (
        f"{path} contains objects synchlib does not load for safety ({detail}): a released Synchformer checkpoint "
        "holds only tensors, plain values and its OmegaConf config. If you trust the file, re-save just its "
        "weights, e.g. torch.save(torch.load(path, weights_only=False)['model'], 'weights.pt'), and pass that file."
    )


def _detail(error: BaseException) -> str:
    """One line on what went wrong: torch re-raises weights-only failures with generic advice, from the original
    exception (kept as ``__context__``)."""
    cause = error.__context__ or error
    return " ".join(f"{type(cause).__name__}: {cause}".split())[:300]


def _load(path: Path) -> Any:
    """``torch.load`` with weights_only and synchlib's allow-list; memory-maps files in torch's zip format."""
    is_zip = zipfile.is_zipfile(path)
    try:
        _scan_checkpoint(path)
        with torch.serialization.safe_globals(_safe_globals()):
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) if is_zip else []
            if unsafe:
                raise CheckpointError(_refusal_message(path, ", ".join(unsafe)[:300]))
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except _Unsafe as e:
        raise CheckpointError(
            f"{path} is not a checkpoint synchlib can read: it holds {e}, which can take longer to load than any "
            "computer can run, so the file is damaged or was made to stall whoever loads it. Use another copy of "
            "the checkpoint."
        ) from None
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:  # an allowed name used for something else, or not a pickle at all
        raise CheckpointError(_refusal_message(path, f"or it is damaged: {_detail(e)}")) from None
    except Exception as e:  # truncated zip, random bytes, wrong magic number, ...
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({_detail(e)}). It may be truncated or not a checkpoint "
            "at all: delete it and download it again (a released id re-downloads by itself)."
        ) from None


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
    plain_args = _to_plain(args, "args", _SAVE_ADVICE, plain_only=True)
    plain_extra = {key: _to_plain(value, key, _SAVE_ADVICE, plain_only=True) for key, value in extra.items()}
    payload: dict[str, Any] = {"model": sd, "args": plain_args, "epoch": 0, "model_type": "Synchformer", **plain_extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as f:
        torch.save(payload, f)
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
