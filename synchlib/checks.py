"""Checks of user-supplied numbers and options, at the boundary of the public API and the command line.

Each check returns the value in its plain Python type (``float``, ``int``, ``str``) or raises
:class:`~synchlib.errors.InvalidArgumentError` with one line that names the argument, the accepted range and the
value given. NumPy scalars are accepted as numbers; ``bool`` is not (``True`` is no offset).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np

from .errors import InvalidArgumentError

SHOWN_CHARS = 40  # a refused value is quoted up to this long in the message


def _as_float(value: Any) -> float:
    """A real number (not a bool) as a float; NaN for anything else, or an int too large for a float."""
    if not isinstance(value, Real) or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _shown(value: Any) -> str:
    x = _as_float(value)
    return _short(f"{x:.12g}" if math.isfinite(x) or isinstance(value, float) else repr(value))


def real(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf, above: float | None = None,
         why: str = "") -> float:
    """``value`` as a finite float in ``[low, high]`` (and ``> above`` when given); ``why`` explains the limits."""
    x = _as_float(value)
    if math.isfinite(x) and low <= x <= high and (above is None or x > above):
        return x
    if above is None and math.isfinite(low) and math.isfinite(high):
        limits = f"from {low:g} to {high:g}"
    else:
        parts = [f"> {above:g}"] if above is not None else []
        parts += [f">= {low:g}"] if math.isfinite(low) else []
        limits = " and ".join(parts + ([f"<= {high:g}"] if math.isfinite(high) else []))
    limits = f" {limits}" if limits else ""
    why = f"; {why}" if why else ""
    raise InvalidArgumentError(f"{name} must be a finite number{limits}, got {_shown(value)}{why}")


def integer(name: str, value: Any, *, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[low, high]`` (no upper limit when None); floats, even 2.0, are refused."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        if low <= int(value) and (high is None or int(value) <= high):
            return int(value)
    limits = f"from {low} to {high}" if high is not None else f">= {low}"
    why = f"; {why}" if why else ""
    raise InvalidArgumentError(f"{name} must be a whole number {limits}, got {_short(repr(value))}{why}")


def one_of(name: str, value: Any, options: Sequence[str]) -> str:
    """``value`` when it is one of ``options`` (strings)."""
    if isinstance(value, str) and value in options:
        return value
    raise InvalidArgumentError(f"{name} must be one of {', '.join(map(repr, options))}, got {_short(repr(value))}")


def flag(name: str, value: Any) -> bool:
    """``value`` when it is a bool (NumPy's included)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidArgumentError(f"{name} must be True or False, got {_short(repr(value))}")
