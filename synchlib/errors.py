"""Exceptions and warnings that synchlib raises on purpose.

Every error derives from :class:`SynchlibError`, so callers (the CLI, batch reports) can catch one type and show
its message, which always says what went wrong *and* what to do about it.
"""

from __future__ import annotations


class SynchlibError(Exception):
    """Base class of every error synchlib raises on purpose."""


class ConfigError(SynchlibError):
    """A config file or checkpoint id is unknown or malformed."""


class CheckpointError(SynchlibError):
    """A checkpoint could not be found, downloaded, verified or loaded."""


class VideoNotFoundError(SynchlibError, FileNotFoundError):
    """The input path does not exist or cannot be opened for reading."""


class VideoDecodeError(SynchlibError):
    """The input exists but is not a decodable media file (empty, truncated, corrupt, not a video)."""


class MissingStreamError(SynchlibError):
    """The file lacks the audio or the video stream the model needs."""


class ClipTooShortError(SynchlibError):
    """The clip is too short for the requested window, offset and start time."""


class InvalidArgumentError(SynchlibError, ValueError):
    """A number or option the user gave is out of range, not finite, or of the wrong kind (the message names
    the accepted range)."""


class SynchlibWarning(UserWarning):
    """Base class of synchlib's warnings: the answer may be unreliable for a stated reason."""


class OffsetOutsideGridWarning(SynchlibWarning):
    """An injected shift lies outside the offset grid the model was trained on."""


class UnreliableInputWarning(SynchlibWarning):
    """Valid input on which the prediction may be unreliable (silent audio, still video, ...)."""
