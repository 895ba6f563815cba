"""Headless notebook runs and batch reports.

``run_notebook`` executes a notebook with papermill (parameters injected after the cell tagged ``parameters``)
and writes an HTML report next to the executed ``.ipynb``. ``batch_report`` does that for every video of a
manifest, in parallel, records failures without stopping, skips finished items on a rerun, and writes a summary
(CSV + HTML index).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from .errors import SynchlibError
from .media import write_thumbnail

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
STATUS_FILE = "status.json"
RESULT_FILE = "result.json"  # notebooks may write their key numbers here (``synchlib.reports.save_result``)


def find_notebook(name: str | Path) -> Path:
    """A notebook path, or the name of one of synchlib's notebooks (``demo``, ``offset_sweep``, ...)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve()
    q = NOTEBOOK_DIR / (p.name if p.suffix == ".ipynb" else f"{p.name}.ipynb")
    if q.is_file():
        return q
    known = ", ".join(sorted(x.stem for x in NOTEBOOK_DIR.glob("*.ipynb"))) or "none found"
    raise SynchlibError(f"no notebook {str(name)!r}: not a file, and not one of synchlib's notebooks ({known})")


def to_html(ipynb: Path) -> Path:
    """Write ``<name>.html`` next to an executed notebook (nbconvert's HTML exporter, outputs embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    out = ipynb.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
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

    The notebook runs with ``out_dir`` as its working directory, so files it writes land next to the report.
    A failing cell raises :class:`SynchlibError` naming the cell's error; the partly executed notebook and its
    HTML are still written.
    """
    import papermill as pm

    src = find_notebook(notebook)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name or src.stem}.ipynb"
    try:
        pm.execute_notebook(
            str(src), str(out), parameters=dict(parameters or {}), kernel_name=kernel, cwd=str(out_dir),
            progress_bar=progress, execution_timeout=timeout,
        )  # fmt: skip
    except pm.PapermillExecutionError as e:
        to_html(out)
        raise SynchlibError(f"{src.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (see {out})") from None
    return out, to_html(out)


def save_result(values: Mapping[str, Any], path: str | Path = RESULT_FILE) -> Path:
    """From inside a notebook: record its key numbers (JSON) for the batch summary."""
    path = Path(path)
    path.write_text(json.dumps(dict(values), default=float, indent=1))
    return path


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_parameters(pairs: list[list[str]] | None) -> dict[str, Any]:
    return {k: _parse_value(v) for k, v in (pairs or [])}


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest CSV with a ``path`` (or ``video``) column, relative to the manifest or absolute.

    Other columns (``offset_sec``, ``start_sec``, ...) become notebook parameters; ``name`` names the item.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SynchlibError(f"no manifest at {path}; give a CSV with a 'path' column")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SynchlibError(f"{path} has no rows")
    key = "path" if "path" in rows[0] else "video" if "video" in rows[0] else None
    if key is None:
        raise SynchlibError(f"{path} needs a 'path' (or 'video') column; it has {list(rows[0])}")
    items, seen = [], set()
    for row in rows:
        video = Path(row.pop(key)).expanduser()
        video = video if video.is_absolute() else (path.parent / video)
        name = row.pop("name", None) or video.stem
        base, i = re.sub(r"[^\w.-]+", "_", name), 1
        name = base
        while name in seen:
            i += 1
            name = f"{base}_{i}"
        seen.add(name)
        params = {k: _parse_value(v) for k, v in row.items() if v not in ("", None)}
        items.append({"name": name, "video": str(video.resolve()), "params": params})
    return items


def _run_item(item: dict, notebook: Path, out_dir: Path, common: Mapping[str, Any], kernel: str) -> dict:
    item_dir = out_dir / item["name"]
    t0 = time.perf_counter()
    status: dict[str, Any] = {"name": item["name"], "video": item["video"]}
    try:
        params = {**common, **item["params"], "video": item["video"]}
        ipynb, page = run_notebook(notebook, item_dir, params, kernel=kernel, progress=False)
        status.update(ok=True, report=str(page.relative_to(out_dir)), error="")
        write_thumbnail(item["video"], item_dir / "thumbnail.png")
        result = item_dir / RESULT_FILE
        if result.is_file():
            status["result"] = json.loads(result.read_text())
    except Exception as e:  # one bad video must not stop the batch
        msg = str(e) if isinstance(e, SynchlibError) else "".join(traceback.format_exception_only(e)).strip()
        status.update(ok=False, error=msg.splitlines()[0] if msg else type(e).__name__)
    status["seconds"] = round(time.perf_counter() - t0, 2)
    item_dir.mkdir(parents=True, exist_ok=True)
    (item_dir / STATUS_FILE).write_text(json.dumps(status, indent=1))
    return status


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
    """Run ``notebook`` for every item of ``manifest``; items that finished before are skipped.

    Writes ``out_dir/<item>/`` (executed notebook, HTML, status.json) and ``out_dir/summary.csv`` +
    ``out_dir/index.html``. Returns the status of every item.
    """
    nb = find_notebook(notebook)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = read_manifest(manifest)
    done, todo = [], []
    for item in items:
        st = out_dir / item["name"] / STATUS_FILE
        prev = json.loads(st.read_text()) if st.is_file() else None
        (done if prev and prev.get("ok") else todo).append(prev if prev and prev.get("ok") else item)
    results = list(done)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_run_item, it, nb, out_dir, dict(parameters or {}), kernel) for it in todo]
        for f in tqdm(as_completed(futures), total=len(futures), desc=f"{nb.stem} reports", disable=not progress):
            results.append(f.result())
    order = {it["name"]: i for i, it in enumerate(items)}
    results.sort(key=lambda r: order.get(r["name"], 0))
    write_summary(results, out_dir)
    return results


def write_summary(results: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """summary.csv (one row per item, with the numbers from result.json flattened) and index.html."""
    keys = sorted({k for r in results for k in (r.get("result") or {})})
    cols = ["name", "ok", "video", "report", "error", "seconds"] + keys
    csv_path = out_dir / "summary.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({**r, **(r.get("result") or {})})
    n_ok = sum(bool(r.get("ok")) for r in results)
    rows = []
    for r in results:
        res = r.get("result") or {}
        thumb = out_dir / r["name"] / "thumbnail.png"
        img = f'<img src="{html.escape(thumb.relative_to(out_dir).as_posix())}" height="60">' if thumb.is_file() else ""
        link = f'<a href="{html.escape(r.get("report", ""))}">{html.escape(r["name"])}</a>' if r.get("ok") else html.escape(r["name"])
        cells = "".join(f"<td>{html.escape(_fmt(res.get(k)))}</td>" for k in keys)
        status = "ok" if r.get("ok") else f'<span style="color:#b00">failed: {html.escape(r.get("error", ""))}</span>'
        rows.append(f"<tr><td>{img}</td><td>{link}</td><td>{status}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    page = (
        "<!doctype html><meta charset='utf-8'><title>synchlib batch report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ddd}</style>"
        f"<h1>synchlib batch report</h1><p>{n_ok} of {len(results)} items succeeded; "
        f"<a href='summary.csv'>summary.csv</a></p>"
        f"<table><tr><th></th><th>item</th><th>status</th>{head}</tr>{''.join(rows)}</table>"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return csv_path, index


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ---- CLI ---------------------------------------------------------------------------------------------------------


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", help="notebook path or name (demo, offset_sweep, attention, train_tiny)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), help="notebook parameter")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    p.add_argument("--kernel", default="python3")


def run_notebook_cli(args: argparse.Namespace) -> int:
    ipynb, page = run_notebook(args.notebook, args.out, parse_parameters(args.parameter), kernel=args.kernel)
    print(ipynb)
    print(page)
    return 0


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="CSV with a 'path' column (+ optional offset_sec, start_sec, name)")
    p.add_argument("--notebook", default="offset_sweep")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="parameter for every item (e.g. -p checkpoint tiny-synthetic)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kernel", default="python3")


def run_report_cli(args: argparse.Namespace) -> int:
    results = batch_report(args.manifest, args.out, args.notebook, parse_parameters(args.parameter),
                           workers=args.workers, kernel=args.kernel)
    failed = [r for r in results if not r.get("ok")]
    print(f"{len(results) - len(failed)} of {len(results)} items succeeded; see {Path(args.out) / 'index.html'}")
    for r in failed:
        print(f"failed: {r['name']}: {r['error']}")
    return 0
