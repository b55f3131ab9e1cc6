"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it (``rename(2)``), so a
reader (a serving worker memory-mapping a checkpoint, a cron job reading a report) sees the old file or the new
one, never a torn one, and a failed write leaves no temporary behind.

The file gets the permissions any new file gets, ``0o666`` less the umask, as ``open()`` would give it:
``mkstemp``'s owner-only ``0o600`` made a checkpoint trained by one user (a cron retrain, a host outside a
container) unreadable to a service running as another. A umask of ``077`` keeps files owner-only.

:func:`output_problem` is what the command-line tools check of an output path before any work (a run of minutes
must not end in a traceback, nor overwrite its own input).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# What atomic_write adds to a name for its temporary file beside it: "." + name + "." + mkstemp's 8 random
# characters + ".tmp" is 14 bytes; the rest is room for a caller's own suffix (an ANN cache's).
TEMP_NAME_EXTRA = 24


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


def open_lock(path: str | Path, mode: int = 0o600) -> int:
    """A file descriptor on the lock file ``path`` (created if missing) for ``fcntl.flock``, never through a
    symlink: a link planted at a lock's name in a shared directory is refused (``OSError``, ``ELOOP``), not
    followed to its target, which a holder writing its pid would truncate. Not inherited across exec. Owner-only:
    ``flock`` works on a read-only descriptor, so a lock others could read, others could hold (a security review
    blocked retrain and rollback from another account); opening it read-write needs write access anyway."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:  # a lock file made before (0644): no reading for those who may not write (a 0660 shared by a group stays)
        current = os.fstat(fd).st_mode & 0o777
        wanted = current & ~((~current & 0o022) << 1)
        if wanted != current:
            os.fchmod(fd, wanted)
    except OSError:  # another owner's (we could open it read-write): left as it is
        pass
    return fd


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


def output_problem(out: str, *inputs: str | None) -> str | None:
    """Why the file ``out`` cannot be written, or None: an empty name, a directory, a path under a file, a
    directory this process cannot write in, a name with no room for :func:`atomic_write`'s temporary name beside it,
    or the same file as one of ``inputs`` (which writing would replace: a checkpoint written over its ratings)."""
    if not out:
        return "an empty file name"
    path = Path(out)
    try:
        if path.is_dir():
            return f"{out} is a directory"
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"{parent} is not a directory"
                if not os.access(parent, os.W_OK | os.X_OK):
                    return f"cannot write in {parent}"
                limit = os.pathconf(parent, "PC_NAME_MAX")
                break
        else:
            limit = 255
        if len(os.fsencode(path.name)) + TEMP_NAME_EXTRA > limit:  # the temporary name beside it must fit too
            return f"a file name longer than {limit - TEMP_NAME_EXTRA} bytes"
        for source in inputs:
            if source and path.exists() and Path(source).exists() and os.path.samefile(path, source):
                return f"{out} is also an input ({source}): writing it would replace it"
    except OSError as exc:
        return f"cannot check {out}: {exc.strerror or exc}"
    return None
