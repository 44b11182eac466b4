"""The load generator: a minimal keep-alive HTTP/1.1 client and the closed-loop worker pool that drives it.

Why hand-rolled: server and client share the machine's cores, so the client must cost next to nothing. One
StreamReader/Writer pair per worker, request bytes encoded before timing starts, nothing parsed we don't need.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class HttpError(Exception):
    """A response we cannot parse (the server broke the protocol or closed the connection)."""


class Connection:
    """One persistent HTTP/1.1 connection; requests are pre-encoded bytes, responses are (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send one request and read one response (Content-Length or chunked)."""
        if self.writer is None or self.reader is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            raise HttpError(f"bad status line {head[:40]!r}")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(lower[at + 17 : end]))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            body = await self._chunked()
        else:
            raise HttpError("response without content-length or chunked encoding")
        if b"\r\nconnection: close" in lower:
            await self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])


def post_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A complete POST request, encoded once before timing starts (JSON unless `headers` says otherwise)."""
    extra = {"Content-Type": "application/json", **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items() if v)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body


def get_bytes(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("ascii")


class Limits:
    """Shared between a case's workers: stop issuing at `max_requests` or at `deadline`, whichever first."""

    def __init__(self, max_requests: int, duration: float) -> None:
        self.max_requests = max_requests
        self.issued = 0
        self.started = time.perf_counter()
        self.deadline = self.started + duration

    def take(self) -> int | None:
        if self.issued >= self.max_requests or time.perf_counter() >= self.deadline:
            return None
        self.issued += 1
        return self.issued - 1

    def stopped_by(self) -> str:
        return "requests" if self.issued >= self.max_requests else "duration"


async def run_workers(
    concurrency: int,
    call: Callable[[int, int], Any],
    limits: Limits,
    latencies: list[float] | None,
    errors: Counter[str],
    grace: float = 60.0,
) -> float:
    """Run `concurrency` closed-loop workers; `call(worker, i)` does request number i. Returns elapsed seconds.

    Workers that are still busy `grace` seconds after the deadline are cancelled and counted as timeouts,
    so a stuck server cannot hang the benchmark.
    """
    clock = time.perf_counter
    last_done = [limits.started]

    async def worker(w: int) -> None:
        while (i := limits.take()) is not None:
            t0 = clock()
            try:
                ok = await call(w, i)
            except Exception as exc:  # noqa: BLE001 - any failure is one failed request, counted by kind
                errors[type(exc).__name__] += 1
                continue
            t1 = clock()
            last_done[0] = t1
            if ok is True:
                if latencies is not None:
                    latencies.append(t1 - t0)
            else:
                errors[str(ok)] += 1

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    timeout = max(0.0, limits.deadline - clock()) + grace
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
        errors["timeout"] += 1
    await asyncio.gather(*pending, return_exceptions=True)
    return last_done[0] - limits.started


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, like the server, so client and in-process async cost the same per wakeup."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def run_async(coro: Any) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
