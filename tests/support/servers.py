"""Real servers on 127.0.0.1: in a thread (fast, shares loaded models) or as a `berthing serve` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from berthing.config import Settings
from berthing.registry import Registry
from berthing.server.app import create_app
from berthing.server.runner import bind


class ThreadServer:
    """A uvicorn server over a registry, in a background thread, on a free loopback port."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.app = create_app(registry, settings)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, loop="asyncio", http="httptools", log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        if not self.app.state.listeners.ready.wait(30):
            raise RuntimeError("test server's own-port listeners (gRPC, ZeroMQ) did not start")
        return self

    def listener_port(self, protocol: str, role: str) -> int:
        """The port an own-port protocol bound ('kserve-grpc', 'grpc'; 'bert-serving', 'in' or 'out')."""
        return self.app.state.listeners.started[protocol].ports[role]

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


class DualServer:
    """One uvicorn server with the inference and the management socket, as `berthing serve` runs them."""

    def __init__(self, settings: Settings, models: dict[str, Any] | None = None) -> None:
        from berthing.server.runner import build_apps
        from tests.support.http import clone

        self.registry = Registry()
        for name, model in (models or {}).items():
            self.registry.add(clone(model, name))
        self.key = Path()
        app, self.sockets, self.token = build_apps(settings, self.registry)
        self.url = f"http://127.0.0.1:{self.sockets[0].getsockname()[1]}"
        self.admin = f"http://127.0.0.1:{self.sockets[1].getsockname()[1]}"
        self.management_url = self.admin
        self.inference_app = app.inference
        self.management_app = app.by_port[self.sockets[1].getsockname()[1]]
        config = uvicorn.Config(app, loop="asyncio", http="httptools", log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True)

    def __enter__(self) -> DualServer:
        from tests.support.http import wait_for

        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), "the server to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()


def clones_server(models: dict[str, Any], settings: Settings) -> ThreadServer:
    """A ThreadServer over fresh clones of loaded models, by name (a reference to compare other servers with)."""
    from tests.support.http import clone

    registry = Registry()
    for name, model in models.items():
        registry.add(clone(model, name))
    return ThreadServer(registry, settings)


@contextmanager
def cli_server(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120, module: str = "berthing.cli"
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `berthing serve ARGS --port 0` as a process; yield (process, base URL); stop it with SIGTERM.

    `module` "berthing" runs it as the installed `berthing` script does (read-ahead helper first)."""
    full_env = {**os.environ, "BERTHING_MANAGEMENT_PORT": "0", **(env or {})}  # never the fixed 8081 in tests
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "serve", *args, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
    )
    url = None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"on (https?://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
        if url and "startup complete" in line:
            break
    proc.startup_output = "".join(lines)  # type: ignore[attr-defined]  # e.g. the management API's address
    if url is None:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.stdout.close()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


class OutputTail:
    """The lines a `cli_server` process prints after its start, collected by a thread (the pipe never fills)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        except (ValueError, OSError):  # cli_server closed the pipe
            pass

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The first line containing `text`, waiting for it at most `timeout` seconds."""
        with self._changed:
            found = self._changed.wait_for(lambda: next((x for x in self.lines if text in x), None), timeout)
        if found is None:
            raise AssertionError(f"no line with {text!r} in:\n{self.text()}")
        return found

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)


def raw_exchange(port: int, payload: bytes, timeout: float = 15) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the server closes (what arrived, even if sending failed)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
        except OSError:  # the server refused and closed while we were still sending: its answer may be there
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def read_response(sock: Any) -> bytes:
    """One response on a keep-alive connection: its head, then Content-Length bytes (head and body may come in
    separate reads)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head: {answer!r}")
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response body: {answer!r}")
        body += chunk
    return head + b"\r\n\r\n" + body
