"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it (``rename(2)``), so a
reader (a serving worker memory-mapping a checkpoint, a cron job reading a report) sees the old file or the new
one, never a torn one, and a failed write leaves no temporary behind.

The file gets the permissions any new file gets, ``0o666`` less the umask, as ``open()`` would give it:
``mkstemp``'s owner-only ``0o600`` made a checkpoint trained by one user (a cron retrain, a host outside a
container) unreadable to a service running as another. A umask of ``077`` keeps files owner-only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None], sync_dir: bool = False) -> Path:
    """``write(tmp)`` a temporary file in ``path``'s directory, fsync it and rename it over ``path``; with
    ``sync_dir`` also fsync the directory, so the rename itself survives a crash."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~umask())
        finally:
            os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` can only swap it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
