"""Thread counts come from the cores this process may use, never from constants.

The cores are the CPU affinity mask (a cpuset, taskset) narrowed by a CPU quota (a container's CPU limit, systemd's
CPUQuota=): a limit of 2 CPUs on a 64-core node leaves 64 cores in the mask, and 64 intra-op threads on a 2-CPU
quota spend most of each period throttled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cores() -> int:
    """Cores this process may use: its affinity mask, at most its CPU quota (rounded down, at least 1)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        cores = max(1, os.cpu_count() or 1)
    quota = cpu_quota()
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs this process's cgroups allow (quota over period, the tightest of its cgroup and their parents), or None
    when none is set or none can be read. cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":  # v2: "0::/path"
            limits += _walk(root, path, _v2)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for mount in (controllers, "cpu,cpuacct", "cpu"):
                if (root / mount).is_dir():
                    limits += _walk(root / mount, path, _v1)
                    break
    return min(limits) if limits else None


def _walk(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set on the cgroup at `path` under `mount` and on each parent up to the mount. Inside a container
    the mount is often the container's own cgroup while /proc/self/cgroup names the host's path: then the mount's
    own files are read."""
    found: list[float] = []
    here = mount / path.strip("/")
    if not here.is_dir():
        here = mount
    while True:
        value = read(here)
        if value is not None:
            found.append(value)
        if here == mount or mount not in here.parents:
            return found
        here = here.parent


def _v2(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def threads_per_worker(workers: int, requested: int = 0) -> int:
    """Intra-op threads for each of `workers` model workers: the cores split evenly unless set."""
    if requested > 0:
        return requested
    return max(1, available_cores() // max(1, workers))
