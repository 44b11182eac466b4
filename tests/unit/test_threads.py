"""Thread counts from the cores a process may use: the affinity mask narrowed by a cgroup CPU quota (v1 and v2), read
from cgroup trees laid out as the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

from berthing.runtime.threads import available_cores, cpu_quota, threads_per_worker


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path: Path) -> None:
    root = tree(tmp_path / "fs", {
        "cpu.max": "max 100000\n",  # the root: no limit
        "kubepods/cpu.max": "800000 100000\n",  # 8 CPUs for every Pod
        "kubepods/pod1/cpu.max": "150000 100000\n",  # 1.5 for this one
        "kubepods/pod1/c1/cpu.max": "max 100000\n",
    })
    proc = tree(tmp_path, {"cgroup": "0::/kubepods/pod1/c1\n"}) / "cgroup"
    assert cpu_quota(root, proc) == 1.5


def test_cgroup_v2_inside_a_container_reads_its_own_mount(tmp_path: Path) -> None:
    root = tree(tmp_path / "fs", {"cpu.max": "200000 100000\n"})  # cgroup namespace: the mount is the container's
    assert cpu_quota(root, tree(tmp_path, {"cgroup": "0::/\n"}) / "cgroup") == 2.0
    # without a cgroup namespace the host's path is named, and it is not under the container's mount
    assert cpu_quota(root, tree(tmp_path, {"cgroup": "0::/docker/abc\n"}) / "cgroup") == 2.0


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    root = tree(tmp_path / "fs", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    proc = tree(tmp_path, {"cgroup": "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"}) / "cgroup"
    assert cpu_quota(root, proc) == 3.0
    proc.write_text("4:cpu,cpuacct:/\n")
    assert cpu_quota(root, proc) is None  # -1: no quota
    assert cpu_quota(root, tmp_path / "missing") is None  # not Linux, or no /proc: the affinity alone


def test_garbage_in_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    root = tree(tmp_path / "fs", {"cpu.max": "lots 0\n"})
    assert cpu_quota(root, tree(tmp_path, {"cgroup": "0::/\n"}) / "cgroup") is None


def test_this_process_gets_at_most_its_affinity_and_threads_split_it() -> None:
    cores = available_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    quota = cpu_quota()
    assert quota is None or cores == max(1, min(len(os.sched_getaffinity(0)), int(quota)))
    assert threads_per_worker(cores * 2) == 1 and threads_per_worker(1) == cores and threads_per_worker(3, 5) == 5
