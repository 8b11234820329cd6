"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pyro_flowvae.errors import OutputError, find_os_error, os_error_message

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it onto
    ``path``. If the process dies midway, ``path`` still holds its previous content. An OS error (a full disk,
    no permission) becomes an :class:`~pyro_flowvae.errors.OutputError` that names it, the file and the fix."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(os_error_message(error, f"creating {path}")) from error
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide run files from other users
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = find_os_error(error) if isinstance(error, (OSError, RuntimeError)) else None
        if cause is not None:  # ENOSPC and its kin, also when torch.save wraps them in a RuntimeError
            kept = "; its previous content is intact" if path.exists() else ""
            raise OutputError(os_error_message(cause, f"writing {path}") + kept) from error
        raise
