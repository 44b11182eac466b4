"""A server's whole process tree, from /proc: its members, its memory (peak RSS, sampled), its CPU, and stopping it.

Why trees: TorchServe is a Python launcher, a JVM and one Python process per worker; Infinity and berthing are one
process each. Memory and CPU are compared over the whole tree, and a tree's CPU must not be counted as "other"
(disturbance) by servebench's CpuWatch, so `TreeCpuWatch` extends it to every process of the tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

from servebench.cpu import NOISY_PCT, CpuWatch, _proc_seconds, _system_seconds

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's `children` file; needs CONFIG_PROC_CHILDREN, else a /proc scan)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out.extend(int(x) for x in fh.read().split())
        except FileNotFoundError:
            return _children_by_scan(pid)
        except OSError:
            continue
    return out


def _children_by_scan(pid: int) -> list[int]:
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{name}/stat", "rb") as fh:
                if int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    out.append(int(name))
    return out


def tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            pids.append(pid)
            todo.extend(_children(pid))
    return pids


def rss_bytes(pids: list[int]) -> int:
    """Sum of resident set sizes (pages shared between processes count once per process: an upper bound)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * _PAGE
    return total


class RssSampler:
    """Samples the tree's summed RSS every `interval` seconds in a thread; keeps the peak and the last reading."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.last = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> int:
        pids = tree(self.root)
        self.last = rss_bytes(pids)
        self.peak = max(self.peak, self.last)
        self.processes = max(self.processes, len(pids))
        return self.last

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class TreeCpuWatch(CpuWatch):
    """servebench's CpuWatch with the server's CPU summed over its process tree (children found at each sample)."""

    def wait_quiet_stretch(self, max_wait: float, seconds: int = 3) -> float:
        """servebench's wait_quiet, but for `seconds` quiet seconds in a row: another job's bursts with short gaps
        between them do not pass for quiet. Returns seconds waited (>= `seconds`)."""
        started = time.perf_counter()
        quiet = 0
        while quiet < seconds:
            left = max_wait - (time.perf_counter() - started)
            if left <= 0:
                break
            self.begin()
            time.sleep(1.0)
            quiet = quiet + 1 if self.end()["other_cpu_pct"] < NOISY_PCT else 0  # a busy second starts the count over
        return round(time.perf_counter() - started, 1)

    def _sample(self) -> tuple[float, ...]:
        busy, steal = _system_seconds()
        server = loop = 0.0
        if self.server_pid:
            server = sum(_proc_seconds(f"/proc/{pid}/stat") for pid in tree(self.server_pid))
            loop = _proc_seconds(f"/proc/{self.server_pid}/task/{self.server_pid}/stat")
        return time.perf_counter(), busy, steal, _proc_seconds("/proc/self/stat"), server, loop


def stop_tree(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM every process of the tree we started (parents first, so a supervisor does not respawn a worker),
    wait, then SIGKILL whatever is left of those pids and their descendants. Only our own Popen's tree is signalled.
    """
    pids = tree(proc.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
        else:
            time.sleep(0.2)
    left = {q for p in pids if _alive(p) for q in tree(p)}
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        return None


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True
