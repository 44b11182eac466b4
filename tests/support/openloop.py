"""An open-loop load for tests: requests sent on a fixed schedule whatever the answers, each outcome recorded.

A closed loop (clients that wait for their answer) slows down with the server and never overloads it; overload
tests need arrivals that keep coming. Minimal HTTP/1.1 on asyncio streams, so the client costs little of the cores
it shares with the server; bounded by a request count and a per-request timeout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Outcome:
    """One request's fate: its status (0 when it got none), Retry-After, body, or the exception that ended it."""

    status: int = 0
    retry_after: str | None = None
    body: bytes = b""
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            key = o.error or str(o.status)
            counts[key] = counts.get(key, 0) + 1
        return counts


async def _request(host: str, port: int, payload: bytes, timeout: float) -> Outcome:
    started = time.perf_counter()
    outcome = Outcome()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            outcome.status = int(lines[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            outcome.retry_after = headers.get("retry-after")
            outcome.body = await reader.readexactly(int(headers.get("content-length", "0")))
    except TimeoutError:
        outcome.error = "no answer"
    except Exception as exc:  # noqa: BLE001 - a reset or a broken answer is the outcome under test
        outcome.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    outcome.seconds = time.perf_counter() - started
    return outcome


def post(host: str, port: int, path: str, body: bytes) -> bytes:
    """A whole POST request with a JSON body, closing the connection after its answer."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def open_loop(host: str, port: int, payload: bytes, rate: float, count: int, timeout: float = 60.0) -> Load:
    """Send `count` requests at `rate` per second, each on its own connection; wait for every outcome."""

    async def run() -> Load:
        start = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_request(host, port, payload, timeout)))
        return Load(list(await asyncio.gather(*tasks)))

    return asyncio.run(run())


def closed_loop_rate(host: str, port: int, payload: bytes, clients: int, seconds: float) -> float:
    """Answered requests/s of `clients` clients that each send the next request when the last is answered."""

    async def run() -> float:
        done = 0
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < end:
                outcome = await _request(host, port, payload, 60.0)
                done += outcome.status == 200  # a refusal (a small max_queue_ms) is not capacity

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done / (time.perf_counter() - started)

    return asyncio.run(run())
