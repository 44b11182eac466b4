"""Who used the CPU during a case, from /proc: this process, the server (and its event-loop thread), everybody else.

Why: the machine is shared and has few cores, so figures taken while another process was busy are not comparable;
each case records "other" CPU and steal, and waits for a quiet machine before it starts.
"""

from __future__ import annotations

import os
import time

NOISY_PCT = 20.0  # other processes' CPU (percent of one core) above which a case's figures are flagged

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_seconds(path: str) -> float:
    """utime + stime of a /proc/<pid>[/task/<tid>]/stat file, in seconds."""
    try:
        with open(path, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _system_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine, summed over cores, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


class CpuWatch:
    """Who used the CPU during a case: this client, the server (and its event-loop thread), everybody else.

    The machine is shared, so "other" (busy time not ours) and hypervisor steal are recorded per case:
    figures taken while something else was running are not comparable and the table says so.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.start: tuple[float, ...] = ()

    def _sample(self) -> tuple[float, ...]:
        busy, steal = _system_seconds()
        server = loop = 0.0
        if self.server_pid:
            server = _proc_seconds(f"/proc/{self.server_pid}/stat")
            loop = _proc_seconds(f"/proc/{self.server_pid}/task/{self.server_pid}/stat")
        return time.perf_counter(), busy, steal, _proc_seconds("/proc/self/stat"), server, loop

    def begin(self) -> None:
        self.start = self._sample()

    def end(self) -> dict[str, float]:
        """Percent of one core over the interval (200 = both cores of a 2-core machine)."""
        t1, busy1, steal1, me1, srv1, loop1 = self._sample()
        t0, busy0, steal0, me0, srv0, loop0 = self.start
        span = max(t1 - t0, 1e-9)
        me, srv = me1 - me0, srv1 - srv0
        out = {
            "client_cpu_pct": 100 * me / span,
            "other_cpu_pct": max(0.0, 100 * (busy1 - busy0 - me - srv) / span),
            "steal_pct": 100 * (steal1 - steal0) / span,
        }
        if self.server_pid:
            out["server_cpu_pct"] = 100 * srv / span
            out["server_loop_thread_cpu_pct"] = 100 * (loop1 - loop0) / span
        return {k: round(v, 1) for k, v in out.items()}

    def wait_quiet(self, max_wait: float, threshold_pct: float = NOISY_PCT) -> float:
        """Wait (bounded) until other processes use < threshold % of a core over 1s; returns seconds waited."""
        started = time.perf_counter()
        while True:
            self.begin()
            time.sleep(1.0)
            if self.end()["other_cpu_pct"] < threshold_pct or time.perf_counter() - started >= max_wait:
                return round(time.perf_counter() - started, 1)
