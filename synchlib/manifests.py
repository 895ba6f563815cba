"""Inputs by name and by list: the sample clips that ship with synchlib, and manifest CSVs of videos.

A manifest is a CSV with a ``path`` (or ``video``) column, relative to the manifest or absolute, an optional
``name`` column and other columns that carry per-video values (notebook parameters for ``synchlib report``,
the replacement ``audio`` for ``synchlib desync``). :func:`read_manifest` reads it with bounded work and a reason
for every unusable row; :func:`safe_name` and :func:`unique_name` turn labels into folder names.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError, SynchlibError
from .nbparams import parse_value

SAMPLE_DIR = Path(__file__).parent / "assets" / "samples"
SAMPLES = {
    # Two VGGSound clips (10 s, 25 fps, 256 px short side, 16 kHz AAC), as in the Synchformer seed notebook.
    "vggsound-3qesirWAGt4": "3qesirWAGt4_20000_30000.mp4",
    "vggsound-ZYc410CE4Rg": "ZYc410CE4Rg_0_10000.mp4",
    # A synthetic sparse-cue clip (synchlib.synthetic, seed 20241127) with its events in a JSON sidecar.
    "synthetic-demo": "synthetic_demo.mp4",
}


def sample_path(name: str) -> Path:
    """Path of a shipped sample clip by name (see :data:`SAMPLES`)."""
    try:
        return SAMPLE_DIR / SAMPLES[name]
    except KeyError:
        raise InvalidArgumentError(f"no sample {name!r}; samples: {', '.join(SAMPLES)}") from None


def resolve_video(video: str | Path) -> Path:
    """A sample name (``"synthetic-demo"``, ...) or a path (``~`` expanded, relative to the working directory)."""
    if isinstance(video, str) and video in SAMPLES:
        return sample_path(video)
    return Path(video).expanduser().resolve()


# ---- manifests ---------------------------------------------------------------------------------------------------

PATH_COLUMNS = ("path", "video")  # the video column of a manifest (one of them)
NAME_COLUMN = "name"
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_MANIFEST_ROWS = 200_000
MAX_NAME_CHARS = 80
DEFAULT_NAME = "item"
SUMMARY_CSV = "summary.csv"  # the files a batch writes beside its items' folders
INDEX_HTML = "index.html"
WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)]
)  # fmt: skip
RESERVED_NAMES = frozenset(n.casefold() for n in (SUMMARY_CSV, INDEX_HTML))  # files of the batch itself


def safe_name(text: str) -> str:
    """A file or folder name made from ``text``: accents dropped, anything but ASCII letters, digits and ``._-``
    replaced by ``_``, no leading ``.``/``-``, no trailing ``.``, at most ``MAX_NAME_CHARS`` characters, not a
    Windows device name; ``"item"`` when nothing is left."""
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_).lstrip(".-")[:MAX_NAME_CHARS].rstrip(".")
    if not name:
        return DEFAULT_NAME
    return f"_{name}"[:MAX_NAME_CHARS] if name.split(".")[0].upper() in WINDOWS_DEVICES else name


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``, ... (within ``MAX_NAME_CHARS``): the first whose case-folded form is not
    in ``taken``; adds it there."""
    name, i = base, 1
    while name.casefold() in taken or name.casefold() in RESERVED_NAMES:
        i += 1
        suffix = f"_{i}"
        name = base[: MAX_NAME_CHARS - len(suffix)] + suffix
    taken.add(name.casefold())
    return name


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest CSV with a ``path`` (or ``video``) column, relative to the manifest or absolute.

    Returns one dict per non-blank row: ``name`` (the item's folder name, see :func:`safe_name`; from the ``name``
    column or the video's name), ``video`` (absolute path), ``cells`` (the row's other non-empty cells, as text),
    ``params`` (the same, values parsed by :func:`synchlib.parse_value`), ``line`` (its line in the file) and ``error`` (why the row cannot be used: bad encoding, no path,
    more cells than the header, ...; ``""`` for a good row). A manifest that is not a readable CSV with a path
    column, larger than ``MAX_MANIFEST_BYTES`` or with more than ``MAX_MANIFEST_ROWS`` rows raises
    :class:`SynchlibError`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SynchlibError(f"no manifest at {path}; give a CSV with a 'path' column")
    with path.open("rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SynchlibError(f"{path} is larger than {MAX_MANIFEST_BYTES // 2**20} MiB; split it into smaller manifests")
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="surrogateescape"), newline=""))
    header = _header(reader, path)
    key = next(c for c in PATH_COLUMNS if c in header)
    items: list[dict[str, Any]] = []
    taken: set[str] = set()
    while True:
        try:
            cells = next(reader)
            error = ""
        except StopIteration:
            break
        except csv.Error as e:
            cells, error = [], f"line {reader.line_num} of {path.name} is not valid CSV ({e})"
        if not error and not any(c.strip() for c in cells):
            continue  # blank line
        if len(items) == MAX_MANIFEST_ROWS:
            raise SynchlibError(f"{path} has more than {MAX_MANIFEST_ROWS} rows; split it into smaller manifests")
        items.append(_manifest_item(dict(zip(header, cells)), key, reader.line_num, path, taken,
                                    error or _row_error(cells, header, key, reader.line_num, path)))
    if not items:
        raise SynchlibError(f"{path} has no rows")
    return items


def _header(reader, path: Path) -> list[str]:
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, csv.Error) as e:
        raise SynchlibError(
            f"{path} has no readable header line ({e or 'empty file'}); give a CSV with a 'path' column"
        ) from None
    if any(_has_undecodable(h) for h in header):
        raise SynchlibError(f"the header of {path} is not UTF-8 text; save the manifest as UTF-8")
    dupes = sorted(h for h, n in Counter(header).items() if n > 1 and h)
    if dupes:
        raise SynchlibError(f"{path} has the column(s) {dupes} more than once; keep one of each")
    found = [c for c in PATH_COLUMNS if c in header]
    if len(found) != 1:
        which = "both 'path' and 'video' columns; keep one" if found else f"no 'path' (or 'video') column: {header}"
        raise SynchlibError(f"{path} has {which}")
    return header


def _has_undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)  # bytes that were not UTF-8 (surrogateescape)


def _row_error(cells: list[str], header: list[str], key: str, line: int, path: Path) -> str:
    where = f"line {line} of {path.name}"
    if len(cells) > len(header):
        return f"{where} has {len(cells)} cells but the header has {len(header)} columns"
    if any(_has_undecodable(c) for c in cells):
        return f"{where} is not UTF-8 text; save the manifest as UTF-8"
    if not dict(zip(header, cells)).get(key, "").strip():
        return f"{where} has no video ({key!r} cell is empty)"
    return ""


def _manifest_item(row: dict[str, str], key: str, line: int, manifest: Path, taken: set[str], error: str) -> dict:
    cell = row.get(key, "").strip()
    video = ""
    if not error:
        try:
            p = Path(cell).expanduser()
            video = str((p if p.is_absolute() else manifest.parent / p).resolve())
        except (OSError, ValueError, RuntimeError) as e:
            error = f"line {line} of {manifest.name}: unusable path {cell[:80]!r} ({e})"
    label = row.get(NAME_COLUMN, "").strip() or (Path(cell).stem if cell else "") or f"line_{line}"
    cells = {k: v.strip() for k, v in row.items() if k not in (key, NAME_COLUMN) and v and v.strip()}
    params = {k: parse_value(v) for k, v in cells.items()}
    name = unique_name(safe_name(label), taken)
    return {"name": name, "video": video, "params": params, "cells": cells, "line": line, "error": error}
