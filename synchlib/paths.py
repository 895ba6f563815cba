"""Where synchlib keeps files, and what a file holds: the cache folder and file digests.

The bottom layer of file handling: downloads (:mod:`synchlib.checkpoints`) and normalised video copies
(:mod:`synchlib.io`) both live under :func:`cache_dir` and are checked with the digests below.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import SynchlibError

ENV_CACHE = "SYNCHLIB_CACHE"  # overrides the cache folder
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing
WHOLE_DIGEST_BYTES = 32 << 20  # files up to this size are hashed whole by source_digest (~30 ms) ...
DIGEST_SAMPLE_BYTES = 1 << 20  # ... larger ones by their size and three pieces of this size (start, middle, end)


def cache_dir() -> Path:
    """synchlib's cache folder: ``$SYNCHLIB_CACHE`` if set, else the user cache dir (e.g. ``~/.cache/synchlib``).

    The folder is created on demand.
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("synchlib"))
    return make_folder(path, "the synchlib cache folder")


def make_folder(path: Path, what: str) -> Path:
    """``path``, created with its parents if needed; a :class:`SynchlibError` saying what to do if it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SynchlibError(f"cannot create {what} {path}: {e}. Set {ENV_CACHE} to a writable folder.") from None
    return path


def temp_sibling(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.part`` in the folder of ``path``, for writing ``path`` atomically."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(name)


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: the block writes a temporary sibling (:func:`temp_sibling`), which replaces
    ``path`` once the block has finished without an error and the data is on disk; it is removed otherwise."""
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def hash_stream(f: BinaryIO, nbytes: int, h: Any) -> Any:
    """``h`` (a hashlib object) updated with at most ``nbytes`` bytes read from ``f``."""
    while nbytes > 0:
        chunk = f.read(min(HASH_CHUNK, nbytes))
        if not chunk:
            break
        h.update(chunk)
        nbytes -= len(chunk)
    return h


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest (``"md5"``, ``"sha256"``, ...) of a whole file, read in :data:`HASH_CHUNK` pieces."""
    path = Path(path)
    with path.open("rb") as f:
        return hash_stream(f, path.stat().st_size, hashlib.new(algorithm)).hexdigest()


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file."""
    return file_digest(path, "md5")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def source_digest(path: Path) -> str:
    """A digest of the content of ``path``, with work bounded by :data:`WHOLE_DIGEST_BYTES`.

    A file of up to :data:`WHOLE_DIGEST_BYTES` is hashed whole (``"sha256:<hex>"``): any edit changes it. A larger
    one is sampled (``"sampled-sha256:<hex>"`` of its size and its first, middle and last
    :data:`DIGEST_SAMPLE_BYTES`): an edit that keeps the size and lies outside those three pieces goes unseen.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= WHOLE_DIGEST_BYTES:
            return f"sha256:{hash_stream(f, size, hashlib.sha256()).hexdigest()}"
        h = hashlib.sha256(str(size).encode())
        for at in (0, (size - DIGEST_SAMPLE_BYTES) // 2, size - DIGEST_SAMPLE_BYTES):
            f.seek(at)
            hash_stream(f, DIGEST_SAMPLE_BYTES, h)
    return f"sampled-sha256:{h.hexdigest()}"
