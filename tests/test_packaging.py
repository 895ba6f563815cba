"""The notebooks ship with the package: a wheel holds them as ``synchlib.notebooks``, and ``synchlib run demo``
works from any folder after a regular (non-editable) install, as ``pip install`` in Colab does it.

The wheel is built from a copy of the sources (the build writes ``build/`` and ``*.egg-info`` next to them), with
setuptools' own PEP 517 backend from the running environment (no network). The installs go into throwaway
virtual environments made with ``venv`` (pip from ``ensurepip``, no network) that see the running environment's
packages through a ``.pth`` file, so only synchlib itself is installed there."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "synchlib", "notebooks")  # what a build of the package reads
NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
SUBPROCESS_TIMEOUT_S = 600  # generous: a hung build or install fails the test instead of hanging the suite


def _copy_sources(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH (the installed synchlib must be the one imported, not the checkout), with
    JUPYTER_PATH naming this environment's Jupyter data (nbconvert's templates): a throwaway venv sees this
    environment's packages but looks for their data files under its own prefix."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                         env.get("JUPYTER_PATH")]))
    return env


def _venv(path: Path) -> Path:
    """A throwaway venv (with pip) that also sees this environment's packages; returns its python."""
    _run([sys.executable, "-m", "venv", str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "main_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # ensurepip's setuptools may be older than the one the build needs (this environment's, seen through the .pth)
    _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], cwd=path.parent)
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _copy_sources(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(dist)!r})"],
         cwd=src, env=_clean_env())
    (whl,) = dist.glob("synchlib-*.whl")
    return whl


def test_wheel_holds_the_notebooks_and_every_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len(NOTEBOOKS) >= 4
    for nb in NOTEBOOKS:
        assert f"synchlib/notebooks/{nb}" in names
    packages = [p.parent.relative_to(REPO).as_posix() for p in (REPO / "synchlib").rglob("__init__.py")]
    for pkg in packages:
        assert f"{pkg}/__init__.py" in names, f"package {pkg} is missing from the wheel: list it in pyproject.toml"


def test_installed_wheel_runs_a_notebook_by_name_from_another_folder(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(python), "-c", "import synchlib; print(synchlib.__file__)"], cwd=elsewhere, env=_clean_env())
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), "the installed synchlib is not the one used"
    out = tmp_path / "out"
    _run([str(tmp_path / "venv" / "bin" / "synchlib"), "run", "demo", "-p", "checkpoint", "tiny-synthetic",
          "-p", "video", "synthetic-demo", "--out", str(out)], cwd=elsewhere, env=_clean_env())
    assert (out / "demo.ipynb").is_file() and (out / "demo.html").is_file()


def test_editable_install_finds_the_notebooks_in_the_checkout(tmp_path):
    src = _copy_sources(tmp_path / "src")
    python = _venv(tmp_path / "venv")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-e",
          str(src)], cwd=tmp_path, env=_clean_env())
    code = "import importlib.resources as r; print(r.files('synchlib.notebooks') / 'demo.ipynb')"
    found = _run([str(python), "-c", code], cwd=tmp_path, env=_clean_env()).stdout.strip()
    assert Path(found) == src / "notebooks" / "demo.ipynb"


# ---- the notebooks' install cell ---------------------------------------------------------------------------------

INSTALL_TAG = "install"


def _install_cell(notebook: Path) -> str:
    cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    assert INSTALL_TAG in cells[0]["metadata"].get("tags", []), f"{notebook.name}: the first code cell is not tagged"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("notebook", sorted((REPO / "notebooks").glob("*.ipynb")) +
                         sorted((REPO / "tests" / "notebooks").glob("*.ipynb")), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_notebook_and_golden_has_the_same_tagged_install_cell(notebook):
    assert _install_cell(notebook) == _install_cell(REPO / "notebooks" / "demo.ipynb")


def test_install_cell_in_a_local_clone_uses_the_clone_without_installing():
    """Run with ``-S`` (no site-packages: synchlib, pip and everything else are missing) from the clone's
    notebooks/ folder: the cell must put the clone on sys.path and run nothing (pip is absent, so any call fails)."""
    code = (_install_cell(REPO / "notebooks" / "demo.ipynb")
            + "\nimport importlib.util; print(importlib.util.find_spec('synchlib').origin)")
    done = _run([sys.executable, "-S", "-c", code], cwd=REPO / "notebooks", env=_clean_env())
    assert Path(done.stdout.strip()) == REPO / "synchlib" / "__init__.py"


def test_install_cell_elsewhere_installs_only_what_is_missing_and_keeps_torch_numpy_ipywidgets(tmp_path,
                                                                                               monkeypatch):
    """As in Colab: synchlib and PyAV missing, torch/numpy/ipywidgets installed (versions made up here)."""
    missing = {"synchlib", "av", "yaml"}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: {"torch": "2.8.0+cu126", "numpy": "2.0.2",
                                                                     "ipywidgets": "7.7.1"}[dist])
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.chdir(tmp_path)  # not a clone
    exec(_install_cell(REPO / "notebooks" / "demo.ipynb"), {})
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert calls == [pip + ["--no-deps", "synchlib @ git+https://github.com/synchlib/synchlib"],
                     pip + ["av", "pyyaml", "torch==2.8.0+cu126", "numpy==2.0.2", "ipywidgets==7.7.1"]]
