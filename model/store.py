"""A model store: versioned checkpoints plus a ``current`` pointer that is moved atomically.

Layout of a store directory ``DIR``::

    DIR/versions/<model_version>.ckpt   one checkpoint per version, written once, never modified
    DIR/current -> versions/<v>.ckpt     the served version: a relative symlink
    DIR/reports/<run>.json               retrain run reports (scripts/retrain.py)
    DIR/.lock                            flock'ed by whoever changes the store (retrain, rollback)

Why a symlink for ``current`` rather than a small ``CURRENT`` file naming the version: the pointer is
moved by creating a temporary symlink and ``rename(2)``-ing it over ``current``, which is atomic, so a
reader sees the old or the new target, never a half-written name; ``open(DIR/current)`` then reaches
the checkpoint with no parsing step, so ``RECSYS_CHECKPOINT=DIR/current`` works like any checkpoint
file, and ``ls -l DIR/current`` shows what is served. The service, given ``DIR`` itself, resolves the
link and identifies the model by the target's path and inode (``service.state``).

Version files are memory-mapped by every serving worker (``checkpoint.load``), so they are never
truncated or rewritten in place: a version is written to a temporary file and renamed in once, and
pruning only unlinks (a worker still mapping an unlinked file keeps its pages until it reloads).

Order: versions are ordered by the time they were added (file mtime, then name). What was *served* is
recorded apart, in ``DIR/served`` (one version per line, the last one current, rewritten atomically):
moving ``current`` to a version pushes it there, or, when the version is already in it, unwinds the list
back to it. ``rollback`` without a target goes to the version served before the current one, so a
rollback followed by a promotion rolls back to the version rolled back to, not to the one rolled away
from; a worker that cannot load ``current`` serves that same version (:meth:`ModelStore.served_before`).
Versions never recorded there (a store from before the file, a pointer moved by hand) follow in the order
they were added. ``prune`` keeps the ``keep`` newest versions and never deletes the current one or the one a
rollback would go to.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from model import checkpoint
from model.checkpoint_checks import VERSION
from model.files import atomic_write, open_lock, output_problem

VERSIONS, CURRENT, REPORTS, LOCK, SERVED = "versions", "current", "reports", ".lock", "served"
SUFFIX = ".ckpt"
DEFAULT_KEEP = 5


class StoreError(RuntimeError):
    """The store is inconsistent or an operation on it is impossible (unknown version, ...)."""


class StoreLocked(StoreError):
    """Another process holds the store's lock (a retrain or rollback is running)."""


class ServedListNotWritten(StoreError):
    """:meth:`ModelStore.set_current` moved ``current`` but could not record it in ``served`` (a full disk): the move
    stands, and every reader follows the pointer. ``version`` is what ``current`` points at now, ``before`` what
    it pointed at (None: nothing, or not a version)."""

    def __init__(self, version: str, before: str | None, exc: OSError):
        super().__init__(f"the list of served versions could not be written after current moved to {version} ({exc})")
        self.version, self.before = version, before


@dataclass(frozen=True)
class Version:
    name: str  # the model_version
    path: Path
    added_ns: int  # mtime of the file: when it was added to the store


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a store directory (a directory with a ``versions/`` subdirectory or ``current``)."""
    path = Path(path)
    return path.is_dir() and ((path / VERSIONS).is_dir() or (path / CURRENT).is_symlink())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """A store directory (see the module docstring). Reading needs no lock; changing it should hold :meth:`lock`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / VERSIONS
        self.reports_dir = self.root / REPORTS
        self.current_link = self.root / CURRENT

    def init(self) -> ModelStore:
        """Create the directories (idempotent)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        return self

    # --- reading -------------------------------------------------------------------------------------

    def path_of(self, version: str) -> Path:
        if not VERSION.fullmatch(version):
            raise StoreError(f"not a valid version name: {version!r}")
        return self.versions_dir / f"{version}{SUFFIX}"

    def versions(self) -> list[Version]:
        """Every stored version, oldest first (by the time it was added)."""
        found = []
        for entry in self.versions_dir.glob(f"*{SUFFIX}") if self.versions_dir.is_dir() else []:
            if entry.name.startswith(".") or not VERSION.fullmatch(entry.name[: -len(SUFFIX)]) or not self.holds(entry):
                continue  # a save's temporary file (in progress, or of a killed one), a file dropped there by hand, or
                # a link to a file elsewhere: not a version
            if not entry.is_file():  # a directory named like a version: pruning it failed on every run, forever
                continue
            try:
                found.append(Version(entry.name[: -len(SUFFIX)], entry, entry.stat().st_mtime_ns))
            except OSError:  # pruned meanwhile, or a link that does not lead to a file
                continue
        return sorted(found, key=lambda v: (v.added_ns, v.name))

    def current(self) -> str | None:
        """The version ``current`` points at, or None when there is none yet.

        Raises:
            StoreError: ``current`` is not a symlink, or points outside ``versions/``.
        """
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise StoreError(f"{self.current_link} is not a symlink") from None
            raise
        if not self.holds(self.root / target):
            raise StoreError(f"{self.current_link} points outside {self.versions_dir}: {target}")
        return Path(target).name[: -len(SUFFIX)]

    def holds(self, file: Path) -> bool:
        """Whether ``file`` is a version file of this store (in ``versions/``), the only files ``current`` may
        point at: a pointer elsewhere (hand-made, or a store copied without its versions) would name a version
        the store does not hold, or the wrong file. The service and the offline tools apply this one rule, to
        the file itself once resolved: a link in ``versions/`` to a file elsewhere is no version either."""
        try:
            real = file.resolve()
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            return False
        if real.is_symlink():  # a loop, as Python 3.13's resolve() leaves it
            return False
        return real.parent == self.versions_dir.resolve() and file.name.endswith(SUFFIX) and real.name.endswith(SUFFIX)

    def current_path(self) -> Path | None:
        version = self.current()
        return None if version is None else self.path_of(version)

    def served(self) -> list[str]:
        """The versions ``current`` was moved to, oldest first, unwound by rollbacks (the last: current's)."""
        try:
            return [line for line in (self.root / SERVED).read_text().split() if VERSION.fullmatch(line)]
        except (OSError, UnicodeDecodeError):  # none yet, or unreadable: the order versions were added
            return []

    def served_now(self, current: str | None) -> list[str]:
        """``served`` with ``current`` the version served now. The list as written when it ends in ``current``. When
        it does not, the list missed a move (a run killed between moving the pointer and writing the list, a full
        disk, a pointer moved by hand): a ``current`` that loads was served, so the list is read as that move would
        have left it (unwound back to it, or with it added); one that does not load never was (the workers kept
        what they had, the list's last), and the list is read as written."""
        stack = self.served()
        if current is None or not stack or stack[-1] == current or not self._loads(current):
            return stack
        return stack[: len(stack) - stack[::-1].index(current)] if current in stack else [*stack, current]

    def _loads(self, version: str) -> bool:
        try:
            checkpoint.load(self.path_of(version))
        except (checkpoint.CheckpointError, StoreError):
            return False
        return True

    def served_before(self, version: str | None = None) -> list[str]:
        """The stored versions to fall back to from ``version`` (default: the current one), best first: those
        served before it, most recent first (by :meth:`served_now`: after a rollback the list missed, a rollback
        goes on back, never forward to the version rolled away from; a worker that cannot load a ``current`` aimed
        by hand falls back to the last one served), then the others added before it, newest first."""
        version = version or self.current()
        names = [v.name for v in self.versions()]
        stack = self.served_now(version)
        if stack and stack[-1] == version:
            stack = stack[:-1]
        added = names[: names.index(version)] if version in names else []
        out: list[str] = []
        for name in [*reversed(stack), *reversed(added)]:
            if name in names and name != version and name not in out:
                out.append(name)
        return out

    def previous(self, version: str | None = None) -> str | None:
        """The version a rollback from ``version`` (default: the current one) goes to; None if there is none."""
        version = version or self.current()
        if version is None:
            return None
        before = self.served_before(version)
        return before[0] if before else None

    # --- changing ------------------------------------------------------------------------------------

    def lock(self) -> StoreLock:
        """The store's exclusive, non-blocking lock (a context manager); raises :class:`StoreLocked`."""
        return StoreLock(self.root / LOCK)

    def add(self, ckpt: checkpoint.Checkpoint) -> Path:
        """Write ``ckpt`` as a new version (atomically); an existing version is never overwritten."""
        self.init()
        path = self.path_of(ckpt.model_version)
        if path.exists():
            raise StoreError(f"version {ckpt.model_version} is already in the store")
        return checkpoint.save(ckpt, path)

    def add_file(self, source: str | Path) -> str:
        """Copy a checkpoint file in as a new version (validated first); returns its version."""
        ckpt = checkpoint.load(source)
        self.init()
        path = self.path_of(ckpt.model_version)
        if path.exists():
            raise StoreError(f"version {ckpt.model_version} is already in the store")
        atomic_write(path, lambda tmp: shutil.copyfile(source, tmp), sync_dir=True)
        return ckpt.model_version

    def set_current(self, version: str) -> None:
        """Point ``current`` at ``version`` atomically (temporary symlink renamed over it), then record it in
        ``served``.

        The version must load as a checkpoint: the service would refuse it anyway, and a pointer to a
        bad file would leave freshly started workers with nothing to serve.

        Raises:
            ServedListNotWritten: the pointer moved but ``served`` could not be written (the move stands; any
                other exception means it did not move).
        """
        path = self.path_of(version)
        if not path.is_file() or not self.holds(path):
            raise StoreError(f"no version {version} in {self.versions_dir}")
        checkpoint.load(path)  # raises CheckpointError for a bad file
        before = self._current_or_none()
        stack = self.served_now(before)  # what was served up to now, whether or not the list was written then
        self._point(path)
        if not stack and before is not None and before != version:  # a store from before the list: seed it
            stack = [*reversed(self.served_before(before)), before]
        stack = stack[: len(stack) - stack[::-1].index(version)] if version in stack else [*stack, version]
        try:
            self._write_served(stack)
        except OSError as exc:
            raise ServedListNotWritten(version, before, exc) from exc

    def _current_or_none(self) -> str | None:
        try:
            return self.current()
        except StoreError:
            return None

    def _write_served(self, stack: list[str]) -> None:
        text = "".join(f"{name}\n" for name in stack)
        atomic_write(self.root / SERVED, lambda tmp: Path(tmp).write_text(text), sync_dir=True)

    def discard(self, version: str) -> None:
        """Delete a version that was never made current (a promotion that failed or was stopped after writing it),
        with anything cached beside it. Call it under the lock."""
        self._delete(self.path_of(version))

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        for cache in self.versions_dir.glob(f"{path.name}.*"):  # e.g. ANN indexes cached beside it
            cache.unlink(missing_ok=True)

    def write_problem(self) -> str | None:
        """Why this process cannot change the store (take its lock, add a version), or None: asked before a run
        of minutes, which would otherwise end in a traceback at its first write (a read-only mount)."""
        return output_problem(str(self.root / LOCK))

    def check_replaceable(self) -> None:
        """Raises StoreError when ``current`` is a directory: a rename cannot replace it, and it is not ours to
        delete (whatever else it is, a file or a link anywhere, :meth:`set_current` replaces it)."""
        if self.current_link.is_dir() and not self.current_link.is_symlink():
            raise StoreError(f"{self.current_link} is a directory, not a link to a version: move it away first")

    def _point(self, path: Path) -> None:
        """Move the pointer without validating (tests use it to aim ``current`` at a bad file)."""
        self.check_replaceable()
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(path, self.root), tmp)
        os.replace(tmp, self.current_link)
        _fsync_dir(self.root)

    def rollback(self, to: str | None = None) -> tuple[str | None, str]:
        """Point ``current`` at ``to`` (default: the version served before the current one, :meth:`previous`).

        Returns (the version served before, the version served now). With ``to``, a ``current`` that is not a
        link into this store (made by hand, or damaged) is replaced too (the version before is then None).
        """
        self.check_replaceable()  # a directory: no version named with --to would help
        try:
            before = self.current()
        except StoreError:
            if to is None:
                raise StoreError(f"{self.current_link} is not a link to a version: name one to serve (--to)") from None
            before = None
        target = to or self.previous()
        if target is None:
            if before is None:
                raise StoreError(f"{self.root} serves no version yet: name one to serve (--to)")
            if not self.path_of(before).is_file():
                raise StoreError(f"current points at {before}, which {self.versions_dir} no longer holds: name a "
                                 "version to serve (--to)")  # fmt: skip
            raise StoreError(f"nothing to roll back to: {before} is the oldest version in {self.root}")
        self.set_current(target)
        return before, target

    def prune(self, keep: int = DEFAULT_KEEP) -> list[str]:
        """Delete all but the ``keep`` newest versions, never the current one or its predecessor.

        Deletion is ``unlink`` only: workers still mapping a deleted file keep it until they reload.
        Also removes ANN caches of deleted versions, their names from ``served`` and stale temporary files (call
        it under the lock).
        Returns the deleted versions.
        """
        current = self.current()
        protected = {current, self.previous(current)}
        versions = self.versions()
        doomed = [v for v in versions[: max(len(versions) - max(keep, 1), 0)] if v.name not in protected]
        for v in doomed:
            self._delete(v.path)
        gone = {v.name for v in doomed}
        stack = self.served()
        if gone & set(stack):  # the list of what was served names only what is left (it grew by one a promotion)
            self._write_served([name for name in stack if name not in gone])
        self.clean_temporary()
        return [v.name for v in doomed]

    def clean_temporary(self, now: float | None = None) -> list[Path]:
        """Remove temporary files left by killed writers (only safe while holding the lock).

        A version's (``.V.ckpt.XXXXXXXX.tmp``) only the lock holders write. Serving workers write the ANN
        index and top-N lists cached beside a version (``.V.ckpt.ann-....XXXXXXXX.tmp``) without the lock, in
        seconds: theirs are removed only when older than :data:`STALE_CACHE_S`, or a live write would fail.
        """
        now = time.time() if now is None else now
        temporary = list(self.versions_dir.glob(".*.tmp")) if self.versions_dir.is_dir() else []
        stale = [p for p in temporary if _CKPT_TMP.match(p.name) or _age(p, now) > STALE_CACHE_S]
        stale += [*self.root.glob(f".{CURRENT}.*.tmp"), *self.root.glob(f".{SERVED}.*.tmp")]
        stale += [*self.reports_dir.glob(".*.tmp")] if self.reports_dir.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale


# A checkpoint's temporary file (checkpoint.save, ModelStore.add_file, both through model.files.atomic_write):
# ".<version>.ckpt.<mkstemp's 8>.tmp"; a cache's has another suffix before its random part.
_CKPT_TMP = re.compile(r"^\..+\.ckpt\.[A-Za-z0-9_]+\.tmp$")
STALE_CACHE_S = 3600.0


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class StoreLock:
    """``fcntl.flock`` on ``DIR/.lock``, exclusive and non-blocking.

    The kernel drops the lock when the holder's file descriptor closes, including when the process is
    killed, so a crashed run never leaves a stale lock behind. The file holds the holder's pid, for the
    message the next run prints.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_lock(self.path)  # a planted link: refused, not written
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreLocked(f"{self.path.parent} is locked by {_holder(holder)}; try again later") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _holder(pid_text: str) -> str:
    """Who holds a store lock, by the pid the last run that took it wrote: that run while it lives, else another
    process (a pid there no longer running names nobody: the lock is held all the same)."""
    if not (pid_text.isdigit() and 0 < int(pid_text) < 1 << 22):  # Linux pids; 0 would signal our own group
        return "another process"
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"another process (the last run, pid {pid}, has exited)"
    except PermissionError:  # another user's process: alive
        pass
    return f"another run (pid {pid})"


def pointer(path: str | Path) -> Path:
    """What ``RECSYS_CHECKPOINT`` names, unresolved: ``path`` itself, or a model store directory's ``current``."""
    path = Path(path)
    return path / CURRENT if path.is_dir() else path


def served_file(path: str | Path) -> Path:
    """The checkpoint file a worker given ``path`` (``RECSYS_CHECKPOINT``) loads, resolved (a symlink's target):
    ``path`` itself, or for a model store directory the version its ``current`` points at. The offline tools
    (``evaluate.py``, ``prebuild_ann.py``, the Python API and ``recommend_batch.py``) read the model the service
    would serve through it.

    Raises:
        checkpoint.CheckpointError: nothing there (a store with no current version yet), a ``current`` aimed
            outside the store's ``versions/`` (:meth:`ModelStore.holds`), or a symlink loop.
    """
    path, target = Path(path), pointer(path)
    try:
        resolved = target.resolve(strict=True)
    except FileNotFoundError:
        missing = f"{target}: no such checkpoint file (a store: no current version yet)"
        raise checkpoint.CheckpointError(missing) from None
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise checkpoint.CheckpointError(f"{target}: {exc}") from None
    if path.is_dir() and not ModelStore(path).holds(resolved):
        raise checkpoint.CheckpointError(f"{target} points outside the store's versions/ ({resolved})")
    return resolved
