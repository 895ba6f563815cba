"""Headless notebook runs and batch reports.

``run_notebook`` executes a notebook with papermill (parameters injected after the cell tagged ``parameters``,
checked by :mod:`synchlib.nbparams` first) and writes an HTML report next to the executed ``.ipynb``.
``batch_report`` does that for every video of a manifest and writes a summary (CSV + HTML index):

* Items run in separate worker processes (``spawn``); the notebook kernel of an item starts in the item's folder.
  Each kernel is told which item it runs (environment variable ``SYNCHLIB_REPORT_ITEM``); :func:`save_result`
  writes that identity into ``result.json``, and a result whose identity is not its item's is refused.
* An item's video is probed (:func:`synchlib.io.probe`) before a kernel starts, so missing or unusable files
  fail in milliseconds. One bad row or video fails that item only; the batch goes on.
* Item folders are named from the manifest's ``name`` (or the video's name): ASCII letters, digits, ``._-``, no
  leading dot, at most ``MAX_NAME_CHARS`` characters, unique even when case is ignored. Every path written is
  checked to lie inside the output folder.
* A rerun skips an item only if its ``status.json`` says it succeeded for the same notebook, video and
  parameters (the item's key); anything else is run again.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import importlib.resources
import json
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from . import checks, nbparams
from .errors import InvalidArgumentError, SynchlibError
from .io import probe
from .manifests import INDEX_HTML, MAX_NAME_CHARS, SUMMARY_CSV, read_manifest, safe_name
from .media import write_thumbnail
from .quiet import KERNEL_ARGUMENTS, quiet_notebook_stack
from .report_html import notebook_html
from .synthetic import MANIFEST_COLUMNS

NOTEBOOK_PACKAGE = "synchlib.notebooks"  # the repository's notebooks/ folder, installed as this package
STATUS_FILE = "status.json"
RESULT_FILE = "result.json"  # notebooks may write their key numbers here (``synchlib.reports.save_result``)
THUMBNAIL_FILE = "thumbnail.png"

ITEM_ENV = "SYNCHLIB_REPORT_ITEM"  # JSON identity of the batch item a kernel runs, set by the batch
IDENTITY_KEY = "synchlib_item"  # where save_result keeps that identity in result.json

METADATA_COLUMNS = frozenset(MANIFEST_COLUMNS) - {"path"}  # what ``synchlib synth`` records about each clip
MAX_ERROR_CHARS = 500  # an item's error as stored in status.json / summary.csv
MAX_JSON_BYTES = 2**20  # status.json / result.json larger than this are not read
MAX_LISTED_FAILURES = 20  # failures the CLI prints; the rest are in summary.csv
EXIT_ITEMS_FAILED = 1  # ``synchlib report``: the batch ran, some items failed (usage errors exit 2)


# ---- paths -------------------------------------------------------------------------------------------------------


def inside(path: Path, root: Path) -> Path:
    """``path`` resolved (links followed), if it lies inside ``root`` (resolved); else a :class:`SynchlibError`."""
    resolved, top = Path(path).resolve(), Path(root).resolve()
    if resolved != top and top not in resolved.parents:
        raise SynchlibError(f"refusing to write {path}: it resolves to {resolved}, outside the output folder {top}")
    return resolved


def _file_name(name: str) -> str:
    if safe_name(name) != name:
        raise InvalidArgumentError(
            f"name {name!r} is not a plain file name; use ASCII letters, digits, '.', '_', '-' (not starting with '.' "
            f"or '-', at most {MAX_NAME_CHARS} characters), e.g. {safe_name(name)!r}"
        )
    return name


def _unformattable(path: Path) -> str:
    """``path`` as a str that papermill's ``str.format(**parameters)`` of input/output paths leaves unchanged."""
    return str(path).replace("{", "{{").replace("}", "}}")


# ---- one notebook ------------------------------------------------------------------------------------------------


def notebook_dir() -> Path:
    """The folder of synchlib's notebooks: the installed package ``synchlib.notebooks`` (a wheel or an editable
    install), else the ``notebooks/`` folder next to the ``synchlib`` folder (a source checkout on ``sys.path``)."""
    try:
        return Path(str(importlib.resources.files(NOTEBOOK_PACKAGE)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "notebooks"


def find_notebook(name: str | Path) -> Path:
    """A notebook path, or the name of one of synchlib's notebooks (``demo``, ``offset_sweep``, ...)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve()
    folder = notebook_dir()
    q = folder / (p.name if p.suffix == ".ipynb" else f"{p.name}.ipynb")
    if q.is_file():
        return q
    known = ", ".join(sorted(x.stem for x in folder.glob("*.ipynb"))) or "none found"
    raise SynchlibError(f"no notebook {str(name)!r}: not a file, and not one of synchlib's notebooks ({known})")


def to_html(ipynb: Path) -> Path:
    """Write ``<name>.html`` next to an executed notebook: the report a person reads
    (:func:`synchlib.report_html.notebook_html`: parameters once, plumbing hidden, images embedded)."""
    import nbformat

    out = ipynb.with_suffix(".html")
    out.write_text(notebook_html(nbformat.read(str(ipynb), as_version=4)), encoding="utf-8")
    return out


def run_notebook(
    notebook: str | Path,
    out_dir: str | Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel: str = "python3",
    name: str | None = None,
    progress: bool = True,
    timeout: int | None = None,
) -> tuple[Path, Path]:
    """Execute ``notebook`` with ``parameters`` into ``out_dir``; return (executed .ipynb, .html).

    Parameters must be declared by the notebook's ``parameters`` cell and be plain data (see
    :mod:`synchlib.nbparams`); anything else raises :class:`InvalidArgumentError` before a kernel starts.
    ``name`` (default: the notebook's name) names the output files; it must be a plain file name.
    The kernel runs with ``out_dir`` as its working directory (this process's directory is left alone), so files
    the notebook writes land next to the report. A failing cell raises :class:`SynchlibError` naming the cell's
    error; the partly executed notebook and its HTML are still written.
    """
    import papermill as pm

    src = find_notebook(notebook)
    nb = nbparams.load_notebook(src)
    params = nbparams.check_parameters(dict(parameters or {}), nb, src.name, kernel)
    stem = safe_name(src.stem) if name is None else _file_name(name)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = inside(out_dir / f"{stem}.ipynb", out_dir)
    with quiet_notebook_stack():
        try:
            pm.execute_notebook(
                _unformattable(src), _unformattable(out), parameters=params, kernel_name=kernel,
                progress_bar=progress, execution_timeout=timeout, resources={"metadata": {"path": str(out_dir)}},
                extra_arguments=list(KERNEL_ARGUMENTS),
            )  # fmt: skip
        except pm.PapermillExecutionError as e:
            to_html(out)
            raise SynchlibError(f"{src.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (see {out})") from None
        return out, to_html(out)


def save_result(values: Mapping[str, Any], path: str | Path = RESULT_FILE) -> Path:
    """From inside a notebook: record its key numbers (JSON) for the batch summary.

    In a batch, the item's identity (set by the batch in ``SYNCHLIB_REPORT_ITEM``) is stored with them under
    ``"synchlib_item"``, so the summary can tell whose numbers they are."""
    data = dict(values)
    identity = os.environ.get(ITEM_ENV)
    if identity:
        data[IDENTITY_KEY] = json.loads(identity)
    path = Path(path)
    path.write_text(json.dumps(data, default=float, indent=1))
    return path


def parse_parameters(pairs: list[list[str]] | None) -> dict[str, Any]:
    """``-p KEY VALUE`` pairs as a dict, values parsed by :func:`synchlib.nbparams.parse_value`."""
    return {k: nbparams.parse_value(v) for k, v in (pairs or [])}


# ---- manifests ---------------------------------------------------------------------------------------------------


def item_parameters(item: Mapping[str, Any], declared: tuple[str, ...], label: str) -> tuple[dict[str, Any], list[str]]:
    """(parameters a manifest row passes to a notebook that declares ``declared``, ignored metadata columns).

    A cell in a column the notebook declares is passed; a cell in one of the columns ``synchlib synth`` writes
    about each clip (seed, duration_sec, ...) is metadata and ignored; any other non-empty cell fails the item
    (:class:`InvalidArgumentError` naming the columns): most likely a misspelt parameter."""
    passed = {k: v for k, v in item["params"].items() if k in declared}
    ignored = sorted(k for k in item["params"] if k not in declared and k in METADATA_COLUMNS)
    unknown = [k for k in item["params"] if k not in declared and k not in METADATA_COLUMNS]
    if unknown:
        listed = ", ".join(declared) or "none"
        raise InvalidArgumentError(
            f"manifest column(s) {', '.join(map(repr, unknown))} are not parameters of {label} (it declares: "
            f"{listed}); fix or remove them"
        )
    return passed, ignored


def item_key(notebook: Path, name: str, video: str, parameters: Mapping[str, Any]) -> str:
    """What identifies a finished item across reruns: notebook, folder name, video and every parameter."""
    text = json.dumps([str(notebook), name, video, dict(parameters)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ---- batches -----------------------------------------------------------------------------------------------------


def batch_report(
    manifest: str | Path,
    out_dir: str | Path,
    notebook: str | Path = "offset_sweep",
    parameters: Mapping[str, Any] | None = None,
    *,
    workers: int = 2,
    kernel: str = "python3",
    progress: bool = True,
) -> list[dict]:
    """Run ``notebook`` for every item of ``manifest``; items that finished before (same key) are skipped.

    ``parameters`` go to every item; a row's cells in columns the notebook declares override them, and its
    video is passed as ``video``. Bad options (undeclared common parameters, a notebook without a ``video``
    parameter, ``workers`` < 1) raise before anything runs; a bad row or video fails that item only.
    Writes ``out_dir/<item>/`` (executed notebook, HTML, status.json, thumbnail) and ``out_dir/summary.csv`` +
    ``out_dir/index.html``. Returns the status of every item, in manifest order.
    """
    workers = checks.integer("workers", workers, low=1)
    nb_path = find_notebook(notebook)
    nb = nbparams.load_notebook(nb_path)
    declared = nbparams.declared_parameters(nb, nb_path.name)
    if "video" not in declared:
        raise SynchlibError(f"{nb_path.name} declares no 'video' parameter, so it cannot take a manifest's videos")
    common = nbparams.check_parameters(dict(parameters or {}), nb, nb_path.name, kernel)
    if "video" in common:
        raise InvalidArgumentError("'video' comes from each manifest row; do not pass it as a parameter")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = read_manifest(manifest)

    results: dict[str, dict] = {}
    tasks: list[dict] = []
    ignored: set[str] = set()
    for item in items:
        status = {"name": item["name"], "video": item["video"], "key": "", "ok": False, "report": "", "error": ""}
        try:
            if item["error"]:
                raise SynchlibError(item["error"])
            row, skipped = item_parameters(item, declared, nb_path.name)
            ignored.update(skipped)
            params = nbparams.check_parameters({**common, **row, "video": item["video"]}, nb, nb_path.name, kernel)
        except SynchlibError as e:
            results[item["name"]] = _write_status(out_dir, {**status, "error": _one_line(e)})
            continue
        key = item_key(nb_path, item["name"], item["video"], params)
        previous = _finished(out_dir, item["name"], key)
        if previous is not None:
            results[item["name"]] = previous
        else:
            tasks.append({**status, "key": key, "params": params, "notebook": str(nb_path), "out_dir": str(out_dir),
                          "kernel": kernel, "run": uuid.uuid4().hex})
    if ignored:
        print(f"note: manifest columns not declared by {nb_path.name} are ignored: {', '.join(sorted(ignored))}",
              file=sys.stderr)
    for status in _run_all(tasks, workers, f"{nb_path.stem} reports", progress):
        results[status["name"]] = status
    ordered = [results[it["name"]] for it in items]
    write_summary(ordered, out_dir)
    return ordered


def _run_all(tasks: list[dict], workers: int, desc: str, progress: bool):
    """Statuses of ``tasks`` run by ``_run_item`` in ``workers`` spawned processes, as they finish."""
    if not tasks:
        return
    ctx = multiprocessing.get_context("spawn")  # fresh processes: no state (cwd, environment) shared with others
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = {pool.submit(_run_item, task): task for task in tasks}
        for f in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
            try:
                yield f.result()
            except Exception as e:  # the worker process died (killed, out of memory, ...)
                task = futures[f]
                status = {k: task[k] for k in ("name", "video", "key", "ok", "report")}
                status["error"] = f"worker process failed: {_one_line(e)}"
                yield _write_status(Path(task["out_dir"]), status)


def _run_item(task: dict) -> dict:
    """One item, in a worker process: probe the video, run the notebook with the item's identity in the
    kernel's environment, keep its result only if that identity comes back. Never raises."""
    t0 = time.perf_counter()
    out_dir = Path(task["out_dir"])
    status = {k: task[k] for k in ("name", "video", "key", "ok", "report", "error")}
    identity = {"item": task["name"], "video": task["video"], "run": task["run"]}
    try:
        item_dir = _item_dir(out_dir, task["name"])
        for stale in (STATUS_FILE, RESULT_FILE):
            (item_dir / stale).unlink(missing_ok=True)
        probe(task["video"])  # missing or unusable media fails here, before a kernel starts
        os.environ[ITEM_ENV] = json.dumps(identity)
        try:
            _, page = run_notebook(task["notebook"], item_dir, task["params"], kernel=task["kernel"], progress=False)
        finally:
            del os.environ[ITEM_ENV]
        result = _own_result(item_dir / RESULT_FILE, identity)
        status.update(ok=True, report=page.relative_to(out_dir).as_posix(), **({"result": result} if result else {}))
        write_thumbnail(task["video"], inside(item_dir / THUMBNAIL_FILE, out_dir))
    except Exception as e:  # one bad video must not stop the batch
        status.update(ok=False, error=_one_line(e))
    status["seconds"] = round(time.perf_counter() - t0, 2)
    return _write_status(out_dir, status)


def _item_dir(out_dir: Path, name: str) -> Path:
    """``out_dir/name``, created; a :class:`SynchlibError` unless it is a folder directly inside ``out_dir``."""
    item_dir = out_dir / name
    if inside(item_dir, out_dir).parent != out_dir.resolve():
        raise SynchlibError(f"refusing to use {item_dir}: it is a link out of the output folder")
    item_dir.mkdir(exist_ok=True)
    if inside(item_dir, out_dir).parent != out_dir.resolve():
        raise SynchlibError(f"refusing to use {item_dir}: it is a link out of the output folder")
    return item_dir


def _own_result(path: Path, identity: Mapping[str, str]) -> dict | None:
    """The numbers in ``result.json`` if the notebook wrote one for this very run (identity equal); None if it
    wrote none; a :class:`SynchlibError` for a result of another item or run, or without identity."""
    data = _read_json(path)
    if data is None:
        return None
    found = data.pop(IDENTITY_KEY, None)
    if found != dict(identity):
        raise SynchlibError(
            f"{path} was not written for this item (identity {found!r}, expected {dict(identity)!r}); write results "
            "with synchlib.reports.save_result from the notebook's own kernel"
        )
    return data


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None if there is no file; a :class:`SynchlibError` if too large or no object."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_JSON_BYTES:
        raise SynchlibError(f"{path} is larger than {MAX_JSON_BYTES // 2**10} KiB; record fewer numbers")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SynchlibError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SynchlibError(f"{path} does not hold a JSON object")
    return data


def _finished(out_dir: Path, name: str, key: str) -> dict | None:
    """The status of an earlier successful run of this very item (same key), else None."""
    try:
        status = _read_json(inside(out_dir / name / STATUS_FILE, out_dir))
    except (SynchlibError, OSError):
        return None
    ok = status is not None and status.get("ok") is True and status.get("key") == key and status.get("name") == name
    return status if ok else None


def _write_status(out_dir: Path, status: dict) -> dict:
    """Write ``out_dir/<name>/status.json`` (when the item's folder can be used) and return ``status``."""
    try:
        (_item_dir(out_dir, status["name"]) / STATUS_FILE).write_text(json.dumps(status, indent=1))
    except (SynchlibError, OSError) as e:
        status = {**status, "ok": False, "error": status.get("error") or f"cannot write its status: {_one_line(e)}"}
    return status


def _one_line(e: BaseException | str) -> str:
    """The first line of an error message (at most ``MAX_ERROR_CHARS`` characters)."""
    if isinstance(e, BaseException):
        e = str(e) if isinstance(e, SynchlibError) else "".join(traceback.format_exception_only(e)).strip()
        e = e or "unknown error"
    line = e.splitlines()[0] if e.strip() else "unknown error"
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


# ---- summary -----------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["name", "ok", "video", "report", "error", "seconds"]


def write_summary(results: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """summary.csv (one row per item, with the numbers from result.json flattened) and index.html."""
    out_dir = Path(out_dir).resolve()
    keys = sorted({k for r in results for k in (r.get("result") or {})} - set(SUMMARY_COLUMNS))
    csv_path = inside(out_dir / SUMMARY_CSV, out_dir)
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS + keys, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({**(r.get("result") or {}), **{k: r.get(k, "") for k in SUMMARY_COLUMNS}})
    n_ok = sum(bool(r.get("ok")) for r in results)
    rows = []
    for r in results:
        res = r.get("result") or {}
        name = html.escape(str(r["name"]))
        thumb = out_dir / str(r["name"]) / THUMBNAIL_FILE
        src = html.escape(thumb.relative_to(out_dir).as_posix())
        img = f'<img src="{src}" height="60">' if _is_file_inside(thumb, out_dir) else ""
        link = f'<a href="{html.escape(r.get("report", ""))}">{name}</a>' if r.get("ok") else name
        cells = "".join(f"<td>{html.escape(_fmt(res.get(k)))}</td>" for k in keys)
        status = "ok" if r.get("ok") else f'<span style="color:#b00">failed: {html.escape(r.get("error", ""))}</span>'
        rows.append(f"<tr><td>{img}</td><td>{link}</td><td>{status}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    page = (
        "<!doctype html><meta charset='utf-8'><title>synchlib batch report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h1>synchlib batch report</h1><p>{n_ok} of {len(results)} items succeeded; "
        f"<a href='{SUMMARY_CSV}'>{SUMMARY_CSV}</a></p>"
        f"<table><tr><th></th><th>item</th><th>status</th>{head}</tr>{''.join(rows)}</table>"
    )
    index = inside(out_dir / INDEX_HTML, out_dir)
    index.write_text(page, encoding="utf-8")
    return csv_path, index


def _is_file_inside(path: Path, root: Path) -> bool:
    try:
        return inside(path, root).is_file()
    except (SynchlibError, OSError):
        return False


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ---- CLI ---------------------------------------------------------------------------------------------------------


KERNEL_HELP = "Jupyter kernel that runs the notebook (default python3; see `jupyter kernelspec list`)"


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="notebook path or name (demo, offset_sweep, attention, train_tiny)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="notebook parameter (one its 'parameters' cell declares)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    p.add_argument("--kernel", default="python3", help=KERNEL_HELP)


def run_notebook_cli(args: argparse.Namespace) -> int:
    ipynb, page = run_notebook(args.notebook, args.out, parse_parameters(args.parameter), kernel=args.kernel)
    print(ipynb)
    print(page)
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="CSV with a 'path' column (+ optional name and notebook parameters)")
    p.add_argument("--notebook", default="offset_sweep",
                   help="notebook run for every item: a path or a name (default offset_sweep)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: one report per item and the batch summary (required)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="parameter for every item (e.g. -p checkpoint tiny-synthetic)")
    p.add_argument("--workers", type=int, default=2, help="items run at once, each in its own process (default 2)")
    p.add_argument("--kernel", default="python3", help=KERNEL_HELP)


def run_report_cli(args: argparse.Namespace) -> int:
    """Run the batch, print the count and the first ``MAX_LISTED_FAILURES`` failures (one line each).
    Exit code 0 when every item succeeded, ``EXIT_ITEMS_FAILED`` when any failed."""
    results = batch_report(args.manifest, args.out, args.notebook, parse_parameters(args.parameter),
                           workers=args.workers, kernel=args.kernel)
    failed = [r for r in results if not r.get("ok")]
    print(f"{len(results) - len(failed)} of {len(results)} items succeeded; see {Path(args.out) / INDEX_HTML}")
    for r in failed[:MAX_LISTED_FAILURES]:
        print(f"failed: {r['name']}: {r['error']}")
    if len(failed) > MAX_LISTED_FAILURES:
        print(f"... and {len(failed) - MAX_LISTED_FAILURES} more failed items; see {Path(args.out) / SUMMARY_CSV}")
    return EXIT_ITEMS_FAILED if failed else 0
