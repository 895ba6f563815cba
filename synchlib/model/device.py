"""Where the model runs and in what precision: device and autocast helpers shared by every runner."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..checks import one_of
from ..errors import InvalidArgumentError

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_TYPES = ("cpu", "cuda", "mps")  # what resolve_device accepts besides "auto"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (or a
    ``torch.device``) as they are, when present on this machine; anything else is an :class:`InvalidArgumentError`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = f"device must be 'auto', {', '.join(map(repr, DEVICE_TYPES))} or 'cuda:N'"
    if not isinstance(device, (str, torch.device)):
        raise InvalidArgumentError(f"{accepted}, got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidArgumentError(f"{accepted}, got {device!r}") from None
    if dev.type not in DEVICE_TYPES:
        raise InvalidArgumentError(f"{accepted}, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(
                f"CUDA is not available; use --device cpu (or auto), device='cpu' in Python (asked for {str(device)!r})"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InvalidArgumentError(
                f"device {str(device)!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError("MPS is not available; use --device cpu (or auto), device='cpu' in Python")
    return dev


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`."""
    return one_of("precision", precision, PRECISIONS)


def autocast(device: torch.device, precision: str):
    """Context for ``precision`` ("fp32": none; "bf16"/"fp16": torch.autocast on ``device``)."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
