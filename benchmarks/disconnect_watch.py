"""What watching for a client's disconnect costs each request: `gateway.until_disconnect` against a plain await.

    .venv/bin/python benchmarks/disconnect_watch.py [--calls 20000] [--rounds 3]

Every inference request awaits its model through `until_disconnect` (issue 18: a client that goes away has its queued
items dropped before they are computed). That adds a watcher task and an `asyncio.wait` per request on the event
loop's thread, the thread every request shares. This measures the added microseconds per call, on uvloop (what
`berthing serve` runs when installed) and on asyncio's own loop, with a request whose `receive()` never returns (the
client stays) and work that yields once, as a queued model call does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable too

from benchmarks.crash_restart import cpu_line

from berthing.server.gateway import until_disconnect


class StayingClient:
    """A request whose client never disconnects: `receive()` waits for ever (the watcher is cancelled at the end)."""

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def work() -> int:
    await asyncio.sleep(0)  # a model call yields at least once before its result
    return 1


async def added_us(calls: int, rounds: int) -> list[float]:
    """Per round: microseconds per watched call minus microseconds per plain call."""
    request = StayingClient()
    added = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await work()
        plain = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(calls):
            await until_disconnect(request, work())  # type: ignore[arg-type]
        watched = time.perf_counter() - start
        added.append((watched - plain) / calls * 1e6)
    return added


def loops() -> list[tuple[str, Callable[[Coroutine[Any, Any, list[float]]], list[float]]]]:
    found: list[tuple[str, Callable[[Coroutine[Any, Any, list[float]]], list[float]]]] = []
    try:
        import uvloop

        found.append(("uvloop", uvloop.run))
    except ImportError:
        pass
    found.append(("asyncio", asyncio.run))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(cpu_line())
    print("| loop | added per request (µs), each round | median |")
    print("|---|---|---:|")
    for name, run in loops():
        added = run(added_us(args.calls, args.rounds))
        print(f"| {name} | {', '.join(f'{a:.1f}' for a in added)} | {statistics.median(added):.1f} |")


if __name__ == "__main__":
    main()
