"""Checks uWSGI runs before it binds its socket (``exec-asap`` in uwsgi.ini): a setting it cannot use stops the
start with one line naming it, and the Prometheus directory is prepared without a shell.

uWSGI itself reads ``RECSYS_HOST``, ``RECSYS_PORT``, ``RECSYS_PROCESSES`` and ``RECSYS_RELOAD_ON_RSS`` through
uwsgi.ini, and takes whatever it gets: an empty ``RECSYS_HOST`` bound every interface, ``RECSYS_PORT=abc`` a
random port, ``RECSYS_PROCESSES=0`` a master with no workers whose requests hang. The app's own settings
(:mod:`service.config`) are checked here too, once, instead of as a traceback in every worker.

The metrics directory (``PROMETHEUS_MULTIPROC_DIR``, set by uwsgi.ini) is emptied of prometheus_client's files
from an earlier run, and of nothing else: a directory that is a symlink or belongs to another user is refused
(a shell ``rm -f DIR/*.db`` deleted any ``.db`` there, followed a planted link, and ran what the value held).
Each worker holds a shared lock on ``DIR/.recsys-instance.lock`` for its life (:func:`hold_metrics_dir`, from
``service.wsgi``); the check takes it exclusively while it cleans, and refuses a directory a running instance
holds: a second instance given the same directory deleted the first one's live metric files.

uWSGI's own core count (``%k``) is the machine's: a container limited to 2 CPUs on a 64-core host started 64
workers, each importing torch and mapping the model. ``python -m service.prestart --workers`` prints the CPUs
this process may actually use (:func:`model.cpus.available_cpus`: its affinity mask, capped by a cgroup CPU quota
such as ``docker run --cpus``); uwsgi.ini runs it for the default worker count.

Run as ``python -m service.prestart``; it imports nothing heavy (the package defers the app to first use).
"""

from __future__ import annotations

import difflib
import fcntl
import ipaddress
import os
import re
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from model.cpus import available_cpus
from model.files import open_lock
from service.config import SETTINGS, ConfigError, load_settings

# prometheus_client's multiprocess files: counter_<pid>.db, histogram_..., summary_..., gauge_<mode>_<pid>.db
METRIC_FILE = re.compile(r"^(counter|histogram|summary|gauge_[a-z]+)_\d+\.db$")
INSTANCE_LOCK = ".recsys-instance.lock"  # in the metrics directory: shared by a running instance's workers
UWSGI_SETTINGS = ("RECSYS_HOST", "RECSYS_PORT", "RECSYS_PROCESSES", "RECSYS_RELOAD_ON_RSS")  # read by uwsgi.ini


def _whole_number(environ: Mapping[str, str], name: str, low: int, high: int | None = None) -> None:
    value = environ.get(name)
    if value is None:
        return
    if not (value.isascii() and value.isdigit()) or int(value) < low or (high is not None and int(value) > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name}={value!r}: expected a whole number {span}")


def _host(environ: Mapping[str, str]) -> None:
    value = environ.get("RECSYS_HOST")
    if value is None:
        return
    if not value or value != value.strip():
        raise ConfigError(f"RECSYS_HOST={value!r}: expected an address to listen on (unset: 127.0.0.1)")
    if value.startswith("[") and value.endswith("]"):
        literal = value[1:-1]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ConfigError(f"RECSYS_HOST={value!r}: not an IPv6 address in brackets") from None
        return
    if ":" in value:
        raise ConfigError(
            f"RECSYS_HOST={value!r}: an IPv6 address goes in brackets ([::1]), and the port in RECSYS_PORT"
        )
    try:
        socket.getaddrinfo(value, None, socket.AF_INET)
    except OSError as exc:
        raise ConfigError(f"RECSYS_HOST={value!r}: not an IPv4 address or a name that resolves ({exc})") from None


def prepare_metrics_dir(value: str | None) -> None:
    """Create the directory (owner-only) or check an existing one, then remove an earlier run's metric files."""
    if not value:
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value!r}: expected a directory for the workers' metric files")
    path = Path(value)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value!r}: cannot be used ({exc})") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value!r}: is a symlink or not a directory; give a real directory")
    if info.st_uid != os.getuid():
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value!r}: belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:  # another user could plant files there (a junk .db broke /metrics) or links
        mode = oct(stat.S_IMODE(info.st_mode))
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value!r}: writable by other users ({mode}); chmod go-w it")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={value!r}: not writable")
    lock = _open_lock(path)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"PROMETHEUS_MULTIPROC_DIR={value!r}: in use by another running instance (its workers hold "
                f"{INSTANCE_LOCK}); give each instance its own directory"
            ) from None
        for entry in path.iterdir():
            if METRIC_FILE.match(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
    finally:
        os.close(lock)


def _open_lock(directory: Path) -> int:
    try:
        return open_lock(directory / INSTANCE_LOCK, 0o600)
    except OSError as exc:
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={str(directory)!r}: cannot lock {INSTANCE_LOCK} ({exc})") from None


_held: list[int] = []  # the worker's lock on its metrics directory, open for the process's life


def hold_metrics_dir(value: str | None) -> None:
    """A worker's shared lock on its metrics directory, held until it exits, so that another instance's pre-start
    check refuses the directory instead of deleting this one's live files. Waits out a check that is cleaning
    (milliseconds). A directory that cannot be locked costs only that protection: a warning, not a failed start."""
    if not value or _held:
        return
    try:
        lock = _open_lock(Path(value))
        fcntl.flock(lock, fcntl.LOCK_SH)
    except (ConfigError, OSError) as exc:
        print(f"recsys: warning: metrics directory not locked: {exc}", file=sys.stderr)
        return
    _held.append(lock)


def check(environ: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` for the first setting uWSGI or the app cannot use; prepare the metrics directory."""
    _host(environ)
    _whole_number(environ, "RECSYS_PORT", 1, 65535)
    _whole_number(environ, "RECSYS_PROCESSES", 1)
    _whole_number(environ, "RECSYS_RELOAD_ON_RSS", 1)
    load_settings(environ)
    if "PROMETHEUS_MULTIPROC_DIR" in environ:  # always, under uwsgi.ini
        prepare_metrics_dir(environ["PROMETHEUS_MULTIPROC_DIR"])


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``RECSYS_*`` variable that is no setting (a typo is otherwise ignored without a word)."""
    known = {*UWSGI_SETTINGS, *(f"RECSYS_{name}" for name in SETTINGS)}
    warnings = []
    for name in sorted(n for n in environ if n.startswith("RECSYS_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        warnings.append(f"{name} is not a setting, ignored" + (f" (did you mean {close[0]}?)" if close else ""))
    return warnings


def main(argv: Sequence[str] = ()) -> int:
    if list(argv) == ["--workers"]:  # uwsgi.ini's default worker count
        print(available_cpus())
        return 0
    try:
        check(os.environ)
    except ConfigError as exc:
        print(f"recsys: refusing to start: {exc}", file=sys.stderr)
        return 2
    for warning in unknown_settings(os.environ):
        print(f"recsys: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
