"""Every error synchlib raises on purpose derives from SynchlibError (the CLI shows its one line and exits 2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import synchlib
from synchlib.config import load_config
from synchlib.errors import InvalidArgumentError, SynchlibError
from synchlib.preprocess import temporal_crop

PACKAGE = Path(synchlib.__file__).parent
BUILTIN_ERRORS = {"Exception", "ValueError", "RuntimeError", "KeyError", "TypeError", "OSError", "IndexError"}


def test_no_module_raises_a_bare_builtin_error() -> None:
    """A ``raise ValueError(...)`` (or RuntimeError, KeyError, ...) in synchlib is a deliberate error without the
    SynchlibError base: raise a class from synchlib.errors instead (InvalidArgumentError is also a ValueError)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
                if name in BUILTIN_ERRORS:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} raises {name}")
    assert not found, "\n".join(found)


def test_bad_arguments_deep_in_the_api_are_synchlib_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="start_sec"):
        temporal_crop(1000, 100_000, 0.0, -1.0, load_config("tiny-synthetic").data)
    with pytest.raises(SynchlibError, match="no sample"):
        synchlib.sample_path("no-such-sample")
