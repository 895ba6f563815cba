"""Batch reports and notebook runs treat manifests, parameters and result files as data: no code from a CSV or
``-p``, no results under another item's name, nothing written outside ``--out``, cheap failures for bad rows.

The notebook used here (tests/data/record_params.ipynb) loads no model: it prints and saves (with
``save_result``) the parameters it got and the folder it ran in, so each kernel costs only its start. Tests whose
inputs are refused before a kernel starts need no kernel at all."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import pytest

from synchlib import manifests, reports
from synchlib.cli import main
from synchlib.errors import InvalidArgumentError, SynchlibError
from synchlib.manifests import read_manifest
from synchlib.reports import batch_report, run_notebook, run_report_cli, save_result

pytest.importorskip("papermill")
NOTEBOOK = Path(__file__).parent / "data" / "record_params.ipynb"
DECLARED = "video, offset_sec, fail, save"  # the notebook's parameters cell, as error messages list it
SAMPLE = Path(reports.__file__).parent / "assets" / "samples" / "synthetic_demo.mp4"


def write_manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def videos(folder: Path, n: int) -> list[Path]:
    """``n`` copies of the shipped synthetic clip under distinct names (distinct video paths per item)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / f"clip_{i}.mp4" for i in range(n)]
    for p in out:
        shutil.copyfile(SAMPLE, p)
    return out


def summary(out: Path) -> dict[str, dict]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def printed_record(ipynb: Path) -> dict:
    """What the executed notebook printed (its record of the parameters it got and where it ran)."""
    nb = json.loads(ipynb.read_text())
    text = "".join(
        "".join(o["text"]) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )  # fmt: skip
    return json.loads(text.strip().splitlines()[0])


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


# ---- 1. no code from a manifest, -p or the API ----------------------------------------------------------------


def marker_code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


INJECTED_NAMES = [  # each runs {code} when papermill writes "<name> = <value>"
    "x={code};y",
    "x = 1\n{code}\ny",
    "globals()[{code}]",
    "({code}).real",
]


def test_manifest_column_headers_cannot_run_code(tmp_path):
    """One column per injection attempt; each row fills one of them, the last row none (it runs)."""
    markers = [tmp_path / f"PWNED_{i}" for i in range(len(INJECTED_NAMES))]
    columns = [t.format(code=marker_code(m)) for t, m in zip(INJECTED_NAMES, markers)]
    clips = videos(tmp_path / "clips", len(columns) + 1)
    rows = [[clip, 0.1 * i] + ["1" if j == i else "" for j in range(len(columns))] for i, clip in enumerate(clips)]
    manifest = write_manifest(tmp_path / "m.csv", ["path", "offset_sec"] + columns, rows)
    *bad, good = batch_report(manifest, tmp_path / "out", NOTEBOOK, workers=2, progress=False)
    assert not any(m.exists() for m in markers), "a manifest column header ran as code"
    for r in bad:
        assert not r["ok"] and "not parameters of record_params.ipynb" in r["error"] and DECLARED in r["error"]
        assert "\n" not in r["error"] and not (tmp_path / "out" / r["name"] / "record_params.ipynb").exists()
    assert good["ok"] and good["result"]["offset_sec"] == rows[-1][1]  # the batch went on; empty cells pass nothing


@pytest.mark.parametrize(
    "name",
    ["x=__import__('pathlib').Path('{m}').touch();y", "globals()[__import__('pathlib').Path('{m}').touch()]", "os",
     "__builtins__", "class", "offset sec", "", "video\n"],
)  # fmt: skip
def test_run_notebook_refuses_parameter_names_it_does_not_declare(tmp_path, name):
    marker = tmp_path / "PWNED"
    with pytest.raises(InvalidArgumentError, match=DECLARED):
        run_notebook(NOTEBOOK, tmp_path / "out", {name.format(m=marker): 1}, progress=False)
    assert not marker.exists() and not (tmp_path / "out" / "record_params.ipynb").exists()


def test_shipped_notebooks_take_no_output_path_from_a_manifest(tmp_path):
    """A shipped notebook writes its files next to its report only: no parameter names a path to write to."""
    with pytest.raises(InvalidArgumentError, match="no parameter .out_csv."):
        run_notebook("offset_sweep", tmp_path / "out", {"out_csv": str(tmp_path.parent / "elsewhere.csv")},
                     progress=False)
    assert not (tmp_path / "out" / "offset_sweep.ipynb").exists()


class EvilFloat(float):
    """A float that prints as code: papermill writes floats with ``f"{value}"``."""

    def __format__(self, spec):
        return f"{float(self)}; {marker_code(self.marker)}"

    __str__ = __repr__ = lambda self: self.__format__("")


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), {"a": 1}, object(), [[1.0]], 10**5000, b"bytes", 1j],
    ids=["nan", "inf", "-inf", "dict", "object", "nested", "hugeint", "bytes", "complex"],
)  # fmt: skip
def test_run_notebook_refuses_values_that_are_not_plain_data(tmp_path, value):
    with pytest.raises(InvalidArgumentError, match="offset_sec"):
        run_notebook(NOTEBOOK, tmp_path / "out", {"offset_sec": value}, progress=False)
    assert not (tmp_path / "out" / "record_params.ipynb").exists()


def test_a_value_that_prints_as_code_reaches_the_notebook_as_its_number(tmp_path):
    value = EvilFloat(0.25)
    value.marker = tmp_path / "PWNED"
    ipynb, _ = run_notebook(NOTEBOOK, tmp_path / "out", {"offset_sec": value}, progress=False)
    assert not value.marker.exists(), "a parameter value ran as code"
    assert printed_record(ipynb)["offset_sec"] == 0.25


def test_cli_run_refuses_an_injected_parameter_before_running(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    code = main(["run", str(NOTEBOOK), "--out", str(tmp_path / "out"), "-p", f"x=1;{marker_code(marker)};y", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("synchlib: error:") and DECLARED in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_run_refuses_nan(tmp_path, capsys):
    assert main(["run", str(NOTEBOOK), "--out", str(tmp_path / "out"), "-p", "offset_sec", "nan"]) == 2
    assert "finite" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_typo_columns_fail_their_items_and_synth_metadata_is_ignored(tmp_path, capfd):
    """Neither case starts a kernel: the typo fails the item, the metadata row fails at the missing video."""
    manifest = write_manifest(tmp_path / "m.csv", ["path", "ofset_sec", "seed", "n_av_events"],
                              [["missing_a.mp4", "0.4", "", ""], ["missing_b.mp4", "", "7", "3"]])
    typo, meta = batch_report(manifest, tmp_path / "out", NOTEBOOK, workers=1, progress=False)
    assert not typo["ok"] and "'ofset_sec'" in typo["error"] and DECLARED in typo["error"]
    assert not meta["ok"] and "no such file" in meta["error"]
    assert "ignored: n_av_events, seed" in capfd.readouterr().err


# ---- 2. parallel items are isolated, and a result carries its item's identity ---------------------------------


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory):
    """6 items, all at once: 4 with distinct offsets and videos, one whose notebook fails, one that saves no result
    but has a stale result.json (from an 'earlier run') waiting in its folder."""
    root = tmp_path_factory.mktemp("parallel")
    clips = videos(root / "clips", 6)
    rows = [[clip, f"o_{i}", round(0.1 * (i + 1), 2), "", ""] for i, clip in enumerate(clips[:4])]
    rows += [[clips[4], "fails", 0.5, "true", ""], [clips[5], "stale", 0.6, "", "false"]]
    manifest = write_manifest(root / "m.csv", ["path", "name", "offset_sec", "fail", "save"], rows)
    out = root / "out"
    (out / "stale").mkdir(parents=True)
    (out / "stale" / "result.json").write_text(json.dumps(
        {"video": str(clips[5]), "offset_sec": 99.0, reports.IDENTITY_KEY: {"item": "stale", "video": str(clips[5]),
                                                                             "run": "earlier"}}))  # fmt: skip
    results = batch_report(manifest, out, NOTEBOOK, workers=len(rows), progress=False)  # all start at once
    return root, manifest, rows, results


def test_parallel_items_each_get_their_own_results(parallel_run):
    root, _, rows, results = parallel_run
    out = root / "out"
    assert [r["name"] for r in results] == [row[1] for row in rows]
    table = summary(out)
    for video, name, offset, fail, _ in rows[:4]:
        row = table[name]
        assert row["ok"] == "True" and row["error"] == ""
        assert (float(row["offset_sec"]), row["video"], row["cwd"]) == (offset, str(video), str(out / name))
        record = printed_record(out / name / "record_params.ipynb")
        assert record == {"video": str(video), "offset_sec": offset, "cwd": str(out / name)}
        assert json.loads((out / name / "status.json").read_text())["result"]["offset_sec"] == offset


def test_a_failed_item_gets_no_result_and_a_stale_result_is_not_used(parallel_run):
    root, _, _, results = parallel_run
    out = root / "out"
    by_name = {r["name"]: r for r in results}
    assert not by_name["fails"]["ok"] and "asked to fail" in by_name["fails"]["error"]
    assert not (out / "fails" / "result.json").exists()
    assert by_name["stale"]["ok"] and "result" not in by_name["stale"]
    assert summary(out)["stale"]["offset_sec"] == "" and not (out / "stale" / "result.json").exists()


def test_a_result_of_another_item_is_refused(tmp_path, monkeypatch):
    """save_result records the identity the batch put in the kernel's environment; the batch checks it."""
    identity = {"item": "a", "video": "/v/a.mp4", "run": "r1"}
    monkeypatch.setenv(reports.ITEM_ENV, json.dumps(identity))
    path = save_result({"offset_sec": 0.5}, tmp_path / "result.json")
    assert json.loads(path.read_text())[reports.IDENTITY_KEY] == identity
    assert reports._own_result(path, identity) == {"offset_sec": 0.5}
    with pytest.raises(SynchlibError, match="not written for this item"):
        reports._own_result(path, {**identity, "item": "b"})
    monkeypatch.delenv(reports.ITEM_ENV)
    save_result({"offset_sec": 0.5}, path)  # outside a batch: no identity, so a batch would refuse it
    with pytest.raises(SynchlibError, match="not written for this item"):
        reports._own_result(path, identity)


def test_rerun_redoes_items_whose_row_changed_and_skips_the_rest(parallel_run, tmp_path):
    root, _, rows, _ = parallel_run
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    changed = [list(r) for r in rows]
    changed[0][0], changed[1][0] = rows[1][0], rows[0][0]  # o_0 and o_1 swap videos
    changed = changed[:4]  # and the two odd items leave the manifest
    m2 = write_manifest(tmp_path / "m2.csv", ["path", "name", "offset_sec", "fail", "save"], changed)
    before = {r[1]: (out / r[1] / "status.json").stat().st_mtime_ns for r in changed}
    results = batch_report(m2, out, NOTEBOOK, workers=2, progress=False)
    redone = {r[1] for r in changed if (out / r[1] / "status.json").stat().st_mtime_ns != before[r[1]]}
    assert redone == {"o_0", "o_1"}
    table = summary(out)
    for video, name, offset, *_ in changed:
        assert (float(table[name]["offset_sec"]), table[name]["video"]) == (offset, str(video))
    assert all(r["ok"] for r in results)
    args = argparse.Namespace(manifest=m2, out=out, notebook=str(NOTEBOOK), parameter=None, workers=2,
                              kernel="python3")  # fmt: skip
    assert run_report_cli(args) == 0  # everything finished: all skipped, exit 0


# ---- 3. nothing is written outside --out ----------------------------------------------------------------------

ESCAPING_NAMES = ["..", ".", "../escape", "/tmp/abs", "a/../../b", ".hidden", "summary.csv", "INDEX.HTML", "CON",
                  "Clip", "clip", "x" * 300, "vidéo", "a\\..\\b", "~", "-rf", ""]  # fmt: skip


def names_manifest(path: Path) -> Path:
    return write_manifest(path, ["path", "name"], [[f"v{i}.mp4", n] for i, n in enumerate(ESCAPING_NAMES)])


def test_item_folders_are_safe_and_unique_names(tmp_path):
    manifest = names_manifest(tmp_path / "m.csv")
    names = [it["name"] for it in read_manifest(manifest)]
    assert len({n.casefold() for n in names}) == len(names)
    for n in names:
        assert n and len(n) <= manifests.MAX_NAME_CHARS and not n.startswith((".", "-"))
        assert "/" not in n and "\\" not in n
        assert n.casefold() not in {"summary.csv", "index.html", "con"} and (tmp_path / n).parent == tmp_path
    assert names[ESCAPING_NAMES.index("vidéo")] == "video"
    assert names == [it["name"] for it in read_manifest(manifest)], "names are stable across reruns"


def test_batch_writes_nothing_outside_out(tmp_path):
    """Missing videos: every item fails before a kernel starts, but still gets its folder and status.json."""
    parent = tmp_path / "parent"
    out = parent / "out"
    manifest = names_manifest(tmp_path / "m.csv")
    results = batch_report(manifest, out, NOTEBOOK, workers=1, progress=False)
    assert files_under(parent) - files_under(out) == {out}, "files were written outside --out"
    assert (out / "summary.csv").is_file() and (out / "index.html").is_file()
    for r in results:
        assert (out / r["name"] / "status.json").is_file() and "no such file" in r["error"]
    assert len(summary(out)) == len(ESCAPING_NAMES)


@pytest.mark.parametrize("name", ["../escape", "..", "/tmp/abs", ".hidden", "a/b"])
def test_run_notebook_name_must_be_a_plain_file_name(tmp_path, name):
    with pytest.raises(InvalidArgumentError, match="plain file name"):
        run_notebook(NOTEBOOK, tmp_path / "parent" / "out", {"offset_sec": 0.1}, name=name, progress=False)
    assert files_under(tmp_path / "parent") <= {tmp_path / "parent" / "out"}


def test_out_folder_with_braces_is_used_as_named(tmp_path):
    """papermill formats output paths with the parameters (``str.format``); the folder the user named is kept."""
    out = tmp_path / "r{video}"
    ipynb, page = run_notebook(NOTEBOOK, out, {"video": "abc"}, progress=False)
    assert ipynb == out.resolve() / "record_params.ipynb" and ipynb.is_file() and page.parent == out.resolve()
    assert not (tmp_path / "rabc").exists()


# ---- 8. bad rows and missing files fail cheaply, readably, one by one -----------------------------------------


def test_missing_files_fail_before_a_kernel_and_are_listed_readably(tmp_path, capsys):
    (tmp_path / "text.mp4").write_text("not a video\n" * 10)
    rows = [[f"missing_{i}.mp4"] for i in range(24)] + [["text.mp4"], ["d" * 300 + "/long.mp4"]]
    manifest = write_manifest(tmp_path / "m.csv", ["path"], rows)
    args = argparse.Namespace(manifest=manifest, out=tmp_path / "out", notebook=str(NOTEBOOK), parameter=None,
                              workers=1, kernel="python3")  # fmt: skip
    assert run_report_cli(args) == reports.EXIT_ITEMS_FAILED
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("0 of 26 items succeeded")
    assert len([x for x in lines if x.startswith("failed: ")]) == reports.MAX_LISTED_FAILURES
    assert lines[-1].startswith("... and 6 more failed items; see") and "summary.csv" in lines[-1]
    assert all(len(x) < 2 * reports.MAX_ERROR_CHARS for x in lines)
    assert not list((tmp_path / "out").rglob("*.ipynb")), "a kernel ran for an unusable video"
    table = summary(tmp_path / "out")
    assert "no such file" in table["missing_0"]["error"] and "not a media file" in table["text"]["error"]


def test_one_bad_row_fails_only_that_row(tmp_path):
    too_big = b"9" * (csv.field_size_limit() + 1)
    lines = [b"path,name,offset_sec", b"good_1.mp4,g1,0.1", b"bad\xff\xfe.mp4,enc,0.2", b",nopath,0.3",
             b"x.mp4,cells,0.4,extra", b"big.mp4,big," + too_big, b"nul\x00.mp4,nulbyte,0.5", b"", b"good_2.mp4,g2,0.6"]
    (tmp_path / "m.csv").write_bytes(b"\n".join(lines) + b"\n")
    items = {it["name"]: it for it in read_manifest(tmp_path / "m.csv")}
    assert items["g1"]["error"] == items["g2"]["error"] == "" and items["g2"]["params"] == {"offset_sec": 0.6}
    assert "UTF-8" in items["enc"]["error"] and "no video" in items["nopath"]["error"]
    assert "4 cells" in items["cells"]["error"] and "not valid CSV" in items["line_6"]["error"]  # no name: its line
    assert "null byte" in items["nulbyte"]["error"] and len(items) == 7


def test_manifest_size_is_bounded(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path / "m.csv", ["path"], [[f"v{i}.mp4"] for i in range(4)])
    monkeypatch.setattr(manifests, "MAX_MANIFEST_ROWS", 3)
    with pytest.raises(SynchlibError, match="more than 3 rows"):
        read_manifest(manifest)
    monkeypatch.setattr(manifests, "MAX_MANIFEST_BYTES", 10)
    with pytest.raises(SynchlibError, match="larger than"):
        read_manifest(manifest)
