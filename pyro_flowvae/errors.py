"""Errors that name the problem and the fix."""

from __future__ import annotations

import errno
from pathlib import Path

__all__ = [
    "FlowVAEError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "TrainingDivergedError",
    "OutputError",
    "os_error_message",
    "find_os_error",
]


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


class OutputError(FlowVAEError):
    """A file of the run directory could not be written (no space, no permission, a file where a folder is
    needed); what was there before is intact."""


#: errno -> what to do about it
_OS_FIXES = {
    errno.ENOSPC: "free space on that disk, or write the run elsewhere (--out)",
    errno.EDQUOT: "free space within your quota, or write the run elsewhere (--out)",
    errno.EACCES: "choose a folder you may write to (--out), or fix its permissions",
    errno.EPERM: "choose a folder you may write to (--out), or fix its permissions",
    errno.EROFS: "that file system is read-only: choose a writable folder (--out, data.cache_dir)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "that path is a folder, not a file: choose a file name",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_message(error: OSError, doing: str = "") -> str:
    """One line naming an OS error (its errno name, the file) and the fix, e.g. ``no space left on device
    (ENOSPC) writing runs/x/checkpoint.pt: free space on that disk, ...``."""
    code = error.errno
    name = errno.errorcode.get(code, "") if code is not None else ""
    reason = (error.strerror or str(error)).rstrip(".")
    reason = reason[0].lower() + reason[1:] if reason else "an OS error"
    where = f" {doing}" if doing else ""
    filename = f" {Path(error.filename)}" if error.filename is not None and not doing else ""
    fix = _OS_FIXES.get(code, "check that path and try again") if code is not None else "check that path"
    return f"{reason}{f' ({name})' if name else ''}{where}{filename}: {fix}"


def find_os_error(error: BaseException) -> OSError | None:
    """The first OSError in ``error``'s chain (torch.save, for one, reports a failed write as a RuntimeError
    raised from it)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
