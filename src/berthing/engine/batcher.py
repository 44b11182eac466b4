"""Async dynamic batching: items from concurrent requests share runtime calls.

A worker dispatches at once when it is idle (no waiting at low load); under load, items pile up
while a batch runs and the next batch takes them by token budget and similar length. Each worker
runs its batches in its own thread, so the event loop never blocks on compute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from berthing.engine.batching import select_batch
from berthing.tasks.tokenize import Encoded
from berthing.types import BerthingError, InferenceFailed, Overloaded


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


RunBatch = Callable[[list[Encoded]], np.ndarray]
BatchObserver = Callable[[int, int, int, float], None]


@dataclass(slots=True)
class _Item:
    encoded: Encoded
    future: asyncio.Future[Any]


@dataclass
class BatchLimits:
    """How batches are formed; every field is a setting."""

    max_batch_tokens: int = 512
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    max_queue: int = 2048


class Batcher:
    """Queue + workers for one model; `runners` holds one run function per worker."""

    def __init__(
        self,
        name: str,
        runners: list[RunBatch],
        limits: BatchLimits,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self._runners = runners
        self._on_batch = on_batch
        self._pending: list[_Item] = []
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._busy = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[RunBatch, asyncio.Task[None]] = {}
        self._retiring: set[RunBatch] = set()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        """Start the workers on the running event loop."""
        if self._tasks:
            return
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(64, thread_name_prefix=f"berthing-{self.name}")  # threads start lazily
        for run in list(self._runners):
            self._spawn(run)

    def _spawn(self, run: RunBatch) -> None:
        task = asyncio.create_task(self._work(run))
        self._workers[run] = task
        self._tasks.append(task)

    @property
    def workers(self) -> int:
        """Workers that take batches now (retiring ones excluded)."""
        return len(self._runners)

    def add_worker(self, run: RunBatch) -> None:
        """Scale up at run time: a new worker takes batches from the same queue at once."""
        self._runners.append(run)
        if self._tasks:
            self._spawn(run)

    async def retire_worker(self, run: RunBatch) -> None:
        """Scale down: the worker finishes its in-flight batch, then stops; queued items stay for the others."""
        if len(self._runners) <= 1:
            raise BerthingError(f"model {self.name!r} needs at least one worker")
        self._runners.remove(run)
        task = self._workers.pop(run, None)
        if task is None:
            return
        self._retiring.add(run)
        if self._wakeup is not None:
            self._wakeup.set()
        await asyncio.gather(task, return_exceptions=True)
        self._retiring.discard(run)
        if task in self._tasks:
            self._tasks.remove(task)

    def submit(self, encoded: list[Encoded]) -> list[asyncio.Future[Any]]:
        """Queue a request's items; a full queue answers 503 instead of growing without bound."""
        if not self._tasks or self._wakeup is None:
            raise BerthingError(f"model {self.name!r} is not running")
        if self._pending and len(self._pending) + len(encoded) > self.limits.max_queue:
            raise Overloaded(
                f"model {self.name!r} has {_count(len(self._pending), 'item')} queued "
                f"(limit {self.limits.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in encoded]
        self._pending.extend(_Item(e, f) for e, f in zip(encoded, futures, strict=True))
        self._wakeup.set()
        return futures

    def _take(self) -> list[_Item]:
        pending = [item for item in self._pending if not item.future.done()]
        chosen = select_batch(
            [item.encoded.length for item in pending], self.limits.max_batch_tokens, self.limits.max_batch_size
        )
        picked = set(chosen)
        self._pending = [item for i, item in enumerate(pending) if i not in picked]
        return [pending[i] for i in chosen]

    async def _work(self, run: RunBatch) -> None:
        assert self._wakeup is not None and self._idle is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        wait_s = self.limits.max_wait_ms / 1000.0
        while True:
            while not self._pending and run not in self._retiring:
                self._wakeup.clear()
                await self._wakeup.wait()
            if run in self._retiring:
                if self._pending:
                    self._wakeup.set()  # pass the wake-up on to a worker that stays
                return
            if wait_s and len(self._pending) < self.limits.max_batch_size:
                await asyncio.sleep(wait_s)
            batch = self._take()
            if not batch:
                continue
            self._busy += 1
            self._idle.clear()
            started = time.perf_counter()
            try:
                rows = await loop.run_in_executor(self._executor, run, [item.encoded for item in batch])
            except Exception as exc:  # noqa: BLE001 - a failing batch fails only its own requests
                error = exc if isinstance(exc, BerthingError) else InferenceFailed(
                    f"inference failed on a batch of {_count(len(batch), 'item')}: {type(exc).__name__}: {exc}"
                )
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            else:
                for item, row in zip(batch, rows, strict=True):
                    if not item.future.done():
                        item.future.set_result(row)
                if self._on_batch is not None:
                    lengths = [item.encoded.length for item in batch]
                    self._on_batch(len(batch), max(lengths) * len(batch), sum(lengths), time.perf_counter() - started)
            finally:
                self._busy -= 1
                if self._busy == 0 and not self._pending:
                    self._idle.set()

    async def close(self, drain: bool = True) -> None:
        """Stop the workers; with drain, first finish every queued item."""
        if not self._tasks:
            return
        if drain and self._idle is not None:
            while self._pending or self._busy:
                self._idle.clear()
                if not self._pending and not self._busy:
                    break
                await asyncio.wait_for(self._idle.wait(), timeout=None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._workers = {}
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(BerthingError(f"model {self.name!r} was stopped"))
        self._pending = []
        if self._executor is not None:
            self._executor.shutdown(wait=False)
