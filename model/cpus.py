"""How many CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (``docker run --cpus``,
a Kubernetes CPU limit). ``os.cpu_count()`` is the machine's whatever either says: a container limited to 2 CPUs
on a 64-core host started 64 uWSGI workers, and would start 64 OpenMP threads for an ANN build.

The one home of that count: uWSGI's default worker count (``python -m service.prestart --workers``), torch's
threads in training (:func:`model.distributed.threads_per_process`), and the threads that build an ANN index and
rank top-N lists at load (:mod:`service.ann`, :mod:`service.topn`). Imports nothing heavy (the pre-start check
runs it before each start).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """The CPUs this process may run on (its affinity mask), capped by its cgroup's CPU quota rounded up; at
    least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(count, 1)


def cgroup_cpu_quota(cgroup_root: Path, self_cgroup: Path) -> float | None:
    """The smallest CPU quota, in CPUs, on this process's cgroup and its ancestors (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``); None when there is none or it cannot be read. Inside a container
    the process's own cgroup path may not exist under the mount (the mount is the container's cgroup): the
    ancestors up to the mount are read then."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # v2, unified
            quotas += [_v2_quota(d / "cpu.max") for d in _ancestors(cgroup_root, path)]
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu,cpuacct (and a cpu link)
            mount = cgroup_root / "cpu" if (cgroup_root / "cpu").is_dir() else cgroup_root / controllers
            quotas += [_v1_quota(d) for d in _ancestors(mount, path)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each directory above it up to ``mount`` itself."""
    here = mount / path.strip("/")
    return [here, *[p for p in here.parents if p == mount or mount in p.parents]]


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
