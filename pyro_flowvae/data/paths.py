"""Where data are cached, and whether a folder may be written to."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["default_cache_dir", "is_writable_dir"]


def default_cache_dir(name: str) -> Path:
    """``$PYRO_FLOWVAE_CACHE/<name>`` when that variable is set, else ``~/.cache/pyro_flowvae/<name>``."""
    base = os.environ.get("PYRO_FLOWVAE_CACHE") or os.path.join("~", ".cache", "pyro_flowvae")
    return Path(base).expanduser() / name


def is_writable_dir(path: str | os.PathLike[str]) -> bool:
    """Whether files can be created in ``path`` (or in its nearest existing ancestor, if it does not exist).

    A folder without any write permission bit counts as read-only even for root, who could write anyway:
    such a folder is meant to stay untouched (shared, read-only data).
    """
    p = Path(path).absolute()
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        return False
    return bool(p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
