"""Errors that name the problem and the fix."""

from __future__ import annotations

__all__ = ["FlowVAEError", "ConfigError", "DataError", "CheckpointError", "TrainingDivergedError"]


class FlowVAEError(ValueError):
    """Base class of every error this package raises on bad input; the CLI prints it and exits 2."""


class ConfigError(FlowVAEError):
    """A config key, value or override is invalid."""


class DataError(FlowVAEError):
    """Data are missing, malformed, or do not suit the chosen likelihood."""


class CheckpointError(FlowVAEError):
    """A checkpoint is missing, unreadable, or was written with a different config."""


class TrainingDivergedError(FlowVAEError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""
