"""Async dynamic batching: items from concurrent requests share runtime calls.

A worker dispatches at once when it is idle (no waiting at low load); under load, items pile up
while a batch runs and the next batch takes them by token budget and similar length. Each worker
runs its batches in its own thread, so the event loop never blocks on compute; a lane gets two batches at a time
(LANE_IN_FLIGHT), so its thread never waits on the event loop between them.

Lanes: a model with one all-core worker can get sessions that split its cores ("lanes": one thread each, at
most 4, wider on more cores) once load is sustained. Then the lanes take the batches side by side, and a batch
that finds nothing else running or queued runs on the all-core worker instead, so a lone request keeps the
lowest latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from berthing.engine.admission import Throughput, check_wait, retry_after
from berthing.engine.batching import select_batch
from berthing.tasks.tokenize import Encoded
from berthing.types import BerthingError, DeadlineExceeded, InferenceFailed, Overloaded


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


RunBatch = Callable[[list[Encoded]], np.ndarray]
BatchObserver = Callable[[int, int, int, float], None]

log = logging.getLogger(__name__)

# Batches that end with more items queued, in a row, before the batcher calls on_load (lanes are built then).
LOAD_STREAK = 3
# Batches handed to each lane at once: while one runs, the next is already formed and waits in the lane's own
# one-thread executor, so a lane goes from batch to batch without waiting for the event loop to hand it one
# (benchmarks/README.md, "two batches in flight per lane": long texts at concurrency 8 +13%, p99 at concurrency 32
# -15 to -25%). Workers keep one: a second batch formed early would be smaller, and batches that end with items
# still queued are what tells the batcher to build the lanes.
LANE_IN_FLIGHT = 2
# Failed batches in a row after which the model is reported not ready (one bad input fails only its own batch).
FAILURES_UNHEALTHY = 3


def _timed(run: RunBatch, items: list[Encoded]) -> tuple[np.ndarray, float]:
    """Run a batch and time the run alone (a lane's next batch waits in its executor first; that is not compute)."""
    started = time.perf_counter()
    rows = run(items)
    return rows, time.perf_counter() - started


@dataclass(slots=True)
class _Item:
    encoded: Encoded
    future: asyncio.Future[Any]
    deadline: float | None = None  # time.monotonic() after which the item is dropped rather than computed


@dataclass
class BatchLimits:
    """How batches are formed; every field is a setting."""

    max_batch_tokens: int = 512
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    max_queue: int = 2048
    max_queue_ms: float = 2000.0  # refuse a request expected to wait longer (0: count items only)
    batch_timeout_s: float = 60.0  # stop waiting for a batch after this long (0: wait forever)


class Batcher:
    """Queue + workers for one model; `runners` holds one run function per worker."""

    def __init__(
        self,
        name: str,
        runners: list[RunBatch],
        limits: BatchLimits,
        on_batch: BatchObserver | None = None,
        on_load: Callable[[], None] | None = None,
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
        self._workers: dict[RunBatch, list[asyncio.Task[None]]] = {}
        self._executors: dict[RunBatch, ThreadPoolExecutor] = {}  # one thread per runner: its batches run in order
        self._retiring: set[RunBatch] = set()
        self._on_load = on_load  # called once, when batches keep ending with items queued
        self._streak = 0
        self._lanes: list[RunBatch] = []
        self._solo: RunBatch | None = None  # with lanes: the all-core runner, for batches that run alone
        self._solo_active = False
        self.throughput = Throughput()
        self._queued_tokens = 0  # tokens of _pending (items of a gone client count until the next take)
        self._running_tokens = 0  # tokens of batches handed to a runner and not yet returned
        self.dropped: dict[str, int] = {"disconnected": 0, "deadline": 0}  # items removed before they were computed
        self.batch_timeouts = 0
        self._hung: set[RunBatch] = set()  # runners whose batch outlived batch_timeout_s and has not returned
        self._failures = 0  # batches in a row that raised
        self._last_error = ""
        self.crashed: str | None = None  # why a worker ended on an error: the batcher stopped for good

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    def expected_wait(self) -> float | None:
        """Seconds a new request would wait for its first batch (queued and running tokens over the measured rate)."""
        if not self._pending and not self._busy:
            return 0.0
        return self.throughput.seconds(self._queued_tokens + self._running_tokens)

    @property
    def hung(self) -> bool:
        """Every runner that takes batches is stuck in a batch past batch_timeout_s."""
        active = [run for run in (self._lanes or self._runners) if run in self._workers]
        return bool(active) and all(run in self._hung for run in active)

    @property
    def failing(self) -> bool:
        """Its last FAILURES_UNHEALTHY batches (or more) failed; one success clears it (a readiness probe may run one)."""
        return self._failures >= FAILURES_UNHEALTHY

    @property
    def problem(self) -> str | None:
        """Why the model does not serve well now (readiness says so), or None."""
        if self.crashed is not None:
            return f"its batcher stopped on an error ({self.crashed})"
        if self.hung:
            return f"a batch has run for over {self.limits.batch_timeout_s:g} s and the runtime has not returned"
        if self.failing:
            return f"its last {self._failures} batches failed ({self._last_error})"
        return None

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A worker that ends on an error (a bug: batch errors are caught) stops the batcher for good: every queued
        request fails now instead of waiting for ever, and `crashed` makes the liveness probe fail, so that a
        supervisor restarts the process."""
        if task.cancelled() or task.exception() is None or self.crashed is not None:
            return
        exc = task.exception()
        self.crashed = f"{type(exc).__name__}: {exc}"
        log.error("model %r stopped serving: a batch worker failed", self.name, exc_info=exc)
        for other in self._tasks:
            other.cancel()
        self._abandon(InferenceFailed(f"model {self.name!r} stopped serving: {self.crashed}"))

    def _abandon(self, error: BerthingError) -> None:
        """Forget the (cancelled) workers, fail every queued item with `error`, let the runners' threads go."""
        self._tasks, self._workers = [], {}
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(error)
        self._pending, self._queued_tokens = [], 0
        for executor in self._executors.values():
            executor.shutdown(wait=False)
        self._executors = {}

    def start(self) -> None:
        """Start the workers on the running event loop."""
        if self._tasks:
            return
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        for run in self._runners:
            self._spawn(run)
        for run in self._lanes:
            self._spawn(run, LANE_IN_FLIGHT)

    def _spawn(self, run: RunBatch, in_flight: int = 1) -> None:
        self._executors[run] = ThreadPoolExecutor(1, thread_name_prefix=f"berthing-{self.name}")  # starts lazily
        tasks = [asyncio.create_task(self._work(run)) for _ in range(in_flight)]
        for task in tasks:
            task.add_done_callback(self._ended)
        self._workers[run] = tasks
        self._tasks.extend(tasks)

    @property
    def workers(self) -> int:
        """Workers that take batches now (retiring ones excluded)."""
        return len(self._runners)

    @property
    def lanes(self) -> int:
        """Lanes taking batches now (0 until load builds them)."""
        return len(self._lanes)

    def set_lanes(self, runs: list[RunBatch]) -> None:
        """Hand batches to `runs` (the lanes); the single worker becomes the solo runner for lone batches."""
        if self._lanes or len(self._runners) != 1 or not runs:
            raise BerthingError(f"model {self.name!r} can take lanes only once, with exactly one worker")
        self._solo = self._runners[0]
        self._lanes = list(runs)
        if self._tasks:
            for run in self._lanes:
                self._spawn(run, LANE_IN_FLIGHT)

    async def drop_lanes(self) -> list[RunBatch]:
        """Stop the lanes (their in-flight batches finish); the solo worker takes batches alone again."""
        lanes, self._lanes = self._lanes, []
        self._solo = None
        for run in lanes:
            await self._stop_worker(run)
        if self._wakeup is not None:
            self._wakeup.set()
        return lanes

    def add_worker(self, run: RunBatch) -> None:
        """Scale up at run time: a new worker takes batches from the same queue at once."""
        if self._lanes:
            raise BerthingError(f"model {self.name!r} has lanes; drop them before adding workers")
        self._runners.append(run)
        if self._tasks:
            self._spawn(run)

    async def retire_worker(self, run: RunBatch) -> None:
        """Scale down: the worker finishes its in-flight batch, then stops; queued items stay for the others."""
        if len(self._runners) <= 1:
            raise BerthingError(f"model {self.name!r} needs at least one worker")
        self._runners.remove(run)
        await self._stop_worker(run)

    async def _stop_worker(self, run: RunBatch) -> None:
        tasks = self._workers.pop(run, None)
        if tasks is None:
            return
        self._retiring.add(run)
        if self._wakeup is not None:
            self._wakeup.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retiring.discard(run)
        self._tasks = [task for task in self._tasks if task not in tasks]
        executor = self._executors.pop(run, None)
        if executor is not None:
            executor.shutdown(wait=False)

    def submit(self, encoded: list[Encoded], deadline: float | None = None) -> list[asyncio.Future[Any]]:
        """Queue a request's items, or refuse them at once (503 + Retry-After): when the queue holds max_queue items,
        when they would wait over max_queue_ms, or when they would end after `deadline` (time.monotonic())."""
        if self.crashed is not None:
            raise Overloaded(f"model {self.name!r} stopped serving ({self.crashed}); it serves again after a restart",
                             retry_after=30)
        if not self._tasks or self._wakeup is None:
            raise BerthingError(f"model {self.name!r} is not running")
        own = sum(item.length for item in encoded)
        ahead = self._queued_tokens + self._running_tokens
        if self._pending and len(self._pending) + len(encoded) > self.limits.max_queue:
            over = len(self._pending) + len(encoded) - self.limits.max_queue  # items that must drain first
            excess = self.throughput.seconds(ahead * over // len(self._pending))
            raise Overloaded(
                f"model {self.name!r} has {_count(len(self._pending), 'item')} queued "
                f"(limit {self.limits.max_queue}); retry later",
                retry_after=retry_after(excess or 1.0),
            )
        self.precheck(deadline, own)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in encoded]
        self._pending.extend(_Item(e, f, deadline) for e, f in zip(encoded, futures, strict=True))
        self._queued_tokens += own
        self._wakeup.set()
        return futures

    def precheck(self, deadline: float | None = None, own: int = 0) -> None:
        """Refuse a request (Overloaded) that the work ahead would make wait past max_queue_ms or its deadline, or
        that no runner can take; the model calls it before tokenizing too, so a refusal under overload costs
        almost nothing (at 4x load most requests are refused)."""
        if self.hung:
            raise Overloaded(f"model {self.name!r} is not serving: {self.problem}", retry_after=30)
        if self._pending or self._busy:
            ahead_s = self.throughput.seconds(self._queued_tokens + self._running_tokens)
            if ahead_s is not None:
                left = None if deadline is None else deadline - time.monotonic()
                check_wait(self.name, ahead_s, self.throughput.seconds(own) or 0.0, self.limits.max_queue_ms, left)

    def _live(self) -> list[_Item]:
        """The pending items still wanted: a gone client's (its futures cancelled) and expired ones are dropped."""
        now = time.monotonic()
        live: list[_Item] = []
        for item in self._pending:
            if item.future.done():
                self.dropped["disconnected"] += 1
            elif item.deadline is not None and now > item.deadline:
                self.dropped["deadline"] += 1
                item.future.set_exception(DeadlineExceeded(
                    f"model {self.name!r}: the request's deadline passed while its items were queued; "
                    "they were not computed", retry_after=retry_after(self.expected_wait() or 1.0),
                ))
            else:
                live.append(item)
        return live

    def _take(self) -> list[_Item]:
        pending = self._live()
        # Lanes split the token budget: each core gets a share (one-thread sessions run small batches best;
        # benchmarks/README.md, "Lanes"), so the padded tokens in flight stay what max_batch_tokens says.
        budget = max(1, self.limits.max_batch_tokens // len(self._lanes)) if self._lanes else self.limits.max_batch_tokens
        chosen = select_batch([item.encoded.length for item in pending], budget, self.limits.max_batch_size)
        picked = set(chosen)
        self._pending = [item for i, item in enumerate(pending) if i not in picked]
        self._queued_tokens = sum(item.encoded.length for item in self._pending)
        return [pending[i] for i in chosen]

    async def _work(self, run: RunBatch) -> None:
        assert self._wakeup is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        wait_s = self.limits.max_wait_ms / 1000.0
        while True:
            while (not self._pending or self._solo_active or run is self._solo) and run not in self._retiring:
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
            target = run
            if self._solo is not None and self._busy == 0 and not self._pending:
                target = self._solo  # alone: all cores for this batch; the lanes wait until it ends
                self._solo_active = True
            tokens = sum(item.encoded.length for item in batch)
            self.throughput.started(self._busy)
            self._busy += 1
            self._running_tokens += tokens
            self._idle.clear()
            try:
                rows, seconds = await self._run(loop, target, batch)
                if len(rows) != len(batch):  # a runtime or handler bug: no request may get another's row
                    raise InferenceFailed(
                        f"inference failed on a batch of {_count(len(batch), 'item')}: the model returned "
                        f"{_count(len(rows), 'result')}"
                    )
            except BaseException as exc:  # a failing batch fails only its own requests
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise  # the batcher is closing; a Rust panic (pyo3's PanicException) is a BaseException too
                error = exc if isinstance(exc, BerthingError) else InferenceFailed(
                    f"inference failed on a batch of {_count(len(batch), 'item')}: {type(exc).__name__}: {exc}"
                )
                self._failures += 1
                self._last_error = error.message
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            else:
                self._failures = 0
                for item, row in zip(batch, rows, strict=True):
                    if not item.future.done():
                        item.future.set_result(row)
                if self._on_batch is not None:
                    lengths = [item.encoded.length for item in batch]
                    try:
                        self._on_batch(len(batch), max(lengths) * len(batch), sum(lengths), seconds)
                    except Exception:  # metrics must never stop the serving
                        log.exception("model %r: the batch observer failed", self.name)
            finally:
                self._busy -= 1
                self._running_tokens -= tokens
                self.throughput.finished(tokens)
                if target is not run:
                    self._solo_active = False
                    self._wakeup.set()
                if self._busy == 0 and not self._pending:
                    self._idle.set()
                self._watch_load()

    async def _run(self, loop: asyncio.AbstractEventLoop, target: RunBatch, batch: list[_Item]) -> tuple[np.ndarray, float]:
        """Run a batch on `target`'s thread; past batch_timeout_s its requests fail and the runner counts as hung
        until its thread returns (a thread cannot be stopped), and this worker waits for that before its next batch."""
        running = loop.run_in_executor(self._executors[target], _timed, target, [item.encoded for item in batch])
        timeout = self.limits.batch_timeout_s
        if not timeout:
            return await running
        # asyncio.wait, not wait_for: Python 3.11's wait_for swallows a cancellation that arrives as the batch ends
        # (it returns the result), and a worker that missed its cancel waits for ever in close() or asyncio.run's end
        done, _ = await asyncio.wait((running,), timeout=timeout)
        if done:
            return running.result()
        # past batch_timeout_s
        self.batch_timeouts += 1
        self._hung.add(target)
        error = InferenceFailed(
            f"model {self.name!r}: a batch of {_count(len(batch), 'item')} did not finish in "
            f"{timeout:g} s (batch_timeout_s); the model is reported not ready until its runtime returns"
        )
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)
        if self.hung:  # nothing will take the queue, so do not let it wait
            for item in self._live():
                item.future.set_exception(Overloaded(f"model {self.name!r} is not serving: {self.problem}", retry_after=30))
            self._pending, self._queued_tokens = [], 0
        try:
            await running
        except Exception:  # noqa: BLE001 - its requests were already answered
            pass
        self._hung.discard(target)
        raise error from None

    def _watch_load(self) -> None:
        """After a batch: call on_load once when LOAD_STREAK batches in a row ended with items still queued."""
        if self._on_load is None:
            return
        self._streak = self._streak + 1 if self._pending else 0
        if self._streak >= LOAD_STREAK:
            callback, self._on_load = self._on_load, None
            callback()

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
        self._abandon(BerthingError(f"model {self.name!r} was stopped"))
