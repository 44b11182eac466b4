"""The server under test: start and stop `berthing serve`, or find the process behind an already running one.

Why here and not in a fixture: the benchmark must own the server's lifetime (fresh start, graceful stop) and
know its pid, so the server's CPU is measured rather than counted as "other".
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class ServerProcess:
    """`berthing serve` on 127.0.0.1, port 0; ready once it printed its URL and uvicorn's startup line."""

    def __init__(self, model: str | None, log_path: Path, extra: list[str]) -> None:
        self.cmd = [sys.executable, "-m", "berthing.cli", "serve", *([model] if model else []),
                    "--host", "127.0.0.1", "--port", "0", *extra]
        self.log_path = log_path
        self.lines: list[str] = []
        self.url: str | None = None
        self.name: str | None = None
        self.ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float) -> None:
        env = dict(os.environ, COLUMNS="250", PYTHONUNBUFFERED="1")  # rich wraps at 80 columns without a tty
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n" + "".join(self.lines[-30:]))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f}s:\n" + "".join(self.lines[-30:]))

    def _pump(self) -> None:
        """Keep draining the server's output (a full pipe would block its logging) and watch for readiness."""
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                m = re.search(r"serving (\S+?),? .*?on (http://127\.0\.0\.1:\d+)", line)
                if m:
                    self.name, self.url = m.group(1), m.group(2)
                if self.url and "Application startup complete" in line:
                    self.ready.set()

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in 30s."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def listener_pid(port: int) -> int | None:
    """The local process listening on `port` (for --url on this machine), so its CPU is not counted as 'other'."""
    inodes: set[str] = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_path, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
    return None
