"""Quiet the notebook stack's messages that say nothing to a synchlib user (``synchlib run`` / ``report``).

Each message is dropped by name (logger and start of the message), so that everything else those libraries log,
and every error of synchlib or of a notebook cell, still shows:

- papermill: "Passed unknown parameter" and "Unable to parse line" (synchlib checks the parameters against the
  notebook's ``parameters`` cell itself, see :mod:`synchlib.nbparams`);
- nbconvert (through traitlets' logger): "Alternative text is missing" (plots in a report have no alt text);
- the kernel process (ipykernel): its log only, at :data:`KERNEL_LOG_LEVEL` ("Kernel is running over TCP without
  encryption": the kernel listens on localhost only; "KeyboardInterrupt caught in kernel" when it is shut down).
  Errors of notebook cells do not go through that log: they come back as cell outputs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

# logger name -> starts of the messages dropped from it
DROPPED = {
    "papermill": ("Passed unknown parameter",),
    "papermill.translators": ("Unable to parse line",),
    "traitlets": ("Alternative text is missing",),
}  # fmt: skip
KERNEL_LOG_LEVEL = "CRITICAL"
KERNEL_ARGUMENTS = (f"--IPKernelApp.log_level={KERNEL_LOG_LEVEL}",)  # for an IPython kernel's command line


class _Drop(logging.Filter):
    """Drops the records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


@contextmanager
def quiet_notebook_stack() -> Iterator[None]:
    """Within the block, the messages of :data:`DROPPED` are not logged; the filters are removed after it."""
    filters = [(logging.getLogger(name), _Drop(starts)) for name, starts in DROPPED.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
