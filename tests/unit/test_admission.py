"""Admission by expected wait, deadlines, dropped items, batch timeouts and failing models, on a real Batcher.

The runner is a gate the test opens, and the measured rate is set by hand: every decision below follows from the
tokens queued and the rate, never from how fast this machine is.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from berthing.engine.admission import Throughput, check_wait, deadline_after, retry_after
from berthing.engine.batcher import FAILURES_UNHEALTHY, Batcher, BatchLimits
from berthing.tasks.tokenize import Encoded
from berthing.types import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded


def item(tokens: int) -> Encoded:
    return Encoded(list(range(tokens)), [0] * tokens)


class Gate:
    """A runner that holds each batch until released, and records the lengths it ran."""

    def __init__(self, fail: bool = False) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.ran: list[list[int]] = []
        self.fail = fail

    def __call__(self, items: list[Encoded]) -> np.ndarray:
        self.entered.set()
        assert self.open.wait(30), "the test never opened the gate"
        self.ran.append([i.length for i in items])
        if self.fail:
            raise RuntimeError("the runtime raised")
        return np.zeros((len(items), 1))


async def started(gate: Gate) -> None:
    while not gate.entered.is_set():
        await asyncio.sleep(0.005)


def test_a_request_that_would_wait_past_max_queue_ms_is_refused_with_a_computed_retry_after() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = Batcher("m", [gate], BatchLimits(max_queue_ms=1000))
        batcher.start()
        batcher.throughput.rate = 10.0  # tokens/s
        running = batcher.submit([item(10)])  # 1 s of work, in the runtime
        await started(gate)
        queued = batcher.submit([item(20)])  # 1 s ahead of it: admitted (at the limit, not over)
        assert batcher.expected_wait() == pytest.approx(3.0)
        with pytest.raises(Overloaded) as refused:
            batcher.submit([item(5)])  # 3 s ahead: 2 s over the limit
        assert refused.value.headers == {"Retry-After": "2"}
        assert refused.value.code == 503
        assert refused.value.message == (
            "model 'm' is busy: a new request would wait about 3.0 s in its queue (limit max_queue_ms=1000); retry later"
        )
        gate.open.set()
        await asyncio.gather(*running, *queued)
        assert gate.ran == [[10], [20]]  # the refused item never reached the runtime
        await batcher.close()

    asyncio.run(scenario())


def test_no_wait_bound_before_the_rate_is_measured_or_when_turned_off() -> None:
    async def scenario() -> None:
        for rate, limit in ((None, 1000.0), (10.0, 0.0)):
            gate = Gate()
            batcher = Batcher("m", [gate], BatchLimits(max_queue_ms=limit))
            batcher.start()
            batcher.throughput.rate = rate
            first = batcher.submit([item(100)])
            await started(gate)
            second = batcher.submit([item(100)])  # 10 s ahead at 10 tokens/s, but nothing bounds it here
            gate.open.set()
            await asyncio.gather(*first, *second)
            await batcher.close()

    asyncio.run(scenario())


def test_a_request_that_would_end_after_its_deadline_is_refused_at_once() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = Batcher("m", [gate], BatchLimits(max_queue_ms=0))
        batcher.start()
        batcher.throughput.rate = 10.0
        running = batcher.submit([item(30)])  # 3 s ahead of the next one
        await started(gate)
        with pytest.raises(Overloaded) as refused:
            batcher.submit([item(10)], deadline=time.monotonic() + 3.5)  # would end in ~4 s
        assert "past its deadline (" in refused.value.message
        assert refused.value.headers == {"Retry-After": "3"}
        admitted = batcher.submit([item(10)], deadline=time.monotonic() + 60)
        gate.open.set()
        await asyncio.gather(*running, *admitted)
        await batcher.close()

    asyncio.run(scenario())


def test_items_whose_deadline_passed_or_whose_client_left_are_dropped_before_they_are_computed() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = Batcher("m", [gate], BatchLimits())
        batcher.start()
        running = batcher.submit([item(3)])
        await started(gate)
        expiring = batcher.submit([item(4)], deadline=time.monotonic() + 0.01)
        gone = batcher.submit([item(5), item(6)])
        kept = batcher.submit([item(7)])
        for future in gone:
            future.cancel()  # what a disconnected client's request does to its futures
        await asyncio.sleep(0.05)  # the deadline passes while the item is queued
        gate.open.set()
        await asyncio.gather(*running, *kept)
        with pytest.raises(DeadlineExceeded) as late:
            await expiring[0]
        assert late.value.code == 503 and "Retry-After" in late.value.headers
        assert "deadline passed while its items were queued" in late.value.message
        assert gate.ran == [[3], [7]]
        assert batcher.dropped == {"disconnected": 2, "deadline": 1}
        await batcher.close()

    asyncio.run(scenario())


def test_a_hung_batch_fails_its_requests_and_the_model_reports_it_until_the_runtime_returns() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = Batcher("m", [gate], BatchLimits(batch_timeout_s=0.05))
        batcher.start()
        stuck = batcher.submit([item(3)])
        await started(gate)
        queued = batcher.submit([item(4)])
        with pytest.raises(InferenceFailed) as failed:
            await stuck[0]
        assert failed.value.message == (
            "model 'm': a batch of 1 item did not finish in 0.05 s (batch_timeout_s); the model is reported not "
            "ready until its runtime returns"
        )
        with pytest.raises(Overloaded) as waiting:  # nothing would take the queue: its items are answered at once
            await queued[0]
        assert "is not serving" in waiting.value.message
        assert batcher.problem == "a batch has run for over 0.05 s and the runtime has not returned"
        with pytest.raises(Overloaded) as refused:
            batcher.submit([item(2)])
        assert refused.value.headers == {"Retry-After": "30"}
        assert batcher.batch_timeouts == 1
        gate.open.set()  # the runtime returns: the worker takes batches again
        while batcher._hung:
            await asyncio.sleep(0.005)
        assert batcher.problem is None or "failed" in batcher.problem
        await asyncio.gather(*batcher.submit([item(2)]))
        assert batcher.problem is None
        await batcher.close()

    asyncio.run(scenario())


def test_batches_failing_in_a_row_make_the_model_unhealthy_until_one_succeeds() -> None:
    async def scenario() -> None:
        gate = Gate(fail=True)
        gate.open.set()
        batcher = Batcher("m", [gate], BatchLimits())
        batcher.start()
        for n in range(FAILURES_UNHEALTHY):
            assert batcher.problem is None, n
            with pytest.raises(InferenceFailed):
                await batcher.submit([item(2)])[0]
        assert batcher.problem == (
            f"its last {FAILURES_UNHEALTHY} batches failed (inference failed on a batch of 1 item: RuntimeError: the "
            "runtime raised)"
        )
        gate.fail = False
        await batcher.submit([item(2)])[0]
        assert batcher.problem is None
        await batcher.close()

    asyncio.run(scenario())


def test_throughput_counts_busy_time_once_however_many_batches_overlap_and_never_idle_time() -> None:
    meter = Throughput()
    assert meter.seconds(100) is None
    before = time.perf_counter()
    meter.started(0)
    meter.started(1)  # a second batch beside the first: busy time does not count twice
    time.sleep(0.25)
    meter.finished(500)
    busy = time.perf_counter() - before
    assert meter.rate is not None and meter.rate >= 500 / busy  # busy counted twice would give at most half
    first = meter.rate
    meter.finished(0)  # the second batch ends: the model is idle from here
    time.sleep(0.3)  # idle: not counted
    before = time.perf_counter()
    meter.started(0)
    time.sleep(0.25)
    meter.finished(500)
    busy = time.perf_counter() - before
    sample = (meter.rate - 0.7 * first) / 0.3  # the moving average's new sample
    assert sample >= 500 / busy * 0.99  # with the idle 0.3 s counted it would be below 500 / 0.55
    assert meter.seconds(int(meter.rate)) == pytest.approx(1.0, rel=1e-3)


def test_check_wait_and_deadlines_validate_their_input() -> None:
    check_wait("m", 0.5, 0.1, 1000, None)
    check_wait("m", 5.0, 0.1, 0, 6.0)
    assert retry_after(0.01) == 1 and retry_after(2.2) == 3
    assert deadline_after("250") > time.monotonic()
    for bad in (0, -5, "soon", True, None, 1e12):
        with pytest.raises(InvalidInput) as refused:
            deadline_after(bad)
        assert refused.value.message == "timeout_ms must be a number of milliseconds above 0 and at most 3600000"


def test_overload_warnings_are_one_per_model_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    from berthing.server.gateway import SHED_LOG_S, ShedLog

    shed = ShedLog()
    with caplog.at_level("WARNING", logger="berthing.server"):
        for _ in range(50):
            shed.note("torchserve", "m:1.0", "model 'm' is busy")
        shed.note("openai", "other:1.0", "model 'other' is busy")  # each model has its own interval
        shed._last["m:1.0"] -= SHED_LOG_S  # the interval has passed
        shed.note("torchserve", "m:1.0", "model 'm' is busy")
    assert [r.getMessage() for r in caplog.records] == [
        "torchserve m:1.0: model 'm' is busy",
        "openai other:1.0: model 'other' is busy",
        "torchserve m:1.0: model 'm' is busy (49 more refusals since the last line)",
    ]


class Panic(BaseException):
    """What pyo3 raises for a Rust panic (tokenizers): a BaseException, not an Exception."""


def test_a_native_panic_in_a_batch_fails_that_batch_and_the_worker_goes_on() -> None:
    async def scenario() -> None:
        calls: list[int] = []

        def runner(items: list[Encoded]) -> np.ndarray:
            calls.append(len(items))
            if len(calls) == 1:
                raise Panic("called `Option::unwrap()` on a `None` value")
            return np.zeros((len(items), 1))

        batcher = Batcher("m", [runner], BatchLimits())
        batcher.start()
        with pytest.raises(InferenceFailed) as failed:
            await batcher.submit([item(2)])[0]
        assert failed.value.message == (
            "inference failed on a batch of 1 item: Panic: called `Option::unwrap()` on a `None` value")
        await batcher.submit([item(2)])[0]  # the worker survived
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_answered_with_the_wrong_number_of_rows_fails_its_requests_and_the_worker_goes_on() -> None:
    async def scenario() -> None:
        short = [True]

        def runner(items: list[Encoded]) -> np.ndarray:  # a runtime or handler bug: one row missing
            return np.zeros((len(items) - short.pop() if short else len(items), 1))

        batcher = Batcher("m", [runner], BatchLimits())
        batcher.start()
        futures = batcher.submit([item(2), item(3)])
        for future in futures:  # never a row given to the wrong request, never a request left waiting
            with pytest.raises(InferenceFailed) as failed:
                await future
            assert failed.value.message == "inference failed on a batch of 2 items: the model returned 1 result"
        assert (await batcher.submit([item(2)])[0]).shape == (1,)
        await batcher.close()

    asyncio.run(scenario())


def test_a_worker_that_ends_on_an_error_stops_the_batcher_and_nothing_waits_for_ever() -> None:
    async def scenario() -> None:
        def bug() -> None:  # on_load runs after LOAD_STREAK batches that end with items queued; a bug there
            raise RuntimeError("a bug")

        gate = Gate()
        batcher = Batcher("m", [gate], BatchLimits(max_batch_size=1), on_load=bug)
        batcher.start()
        futures = batcher.submit([item(2)] * 5)
        gate.open.set()
        for future in futures[:3]:  # the three batches before the bug are answered
            await future
        for future in futures[3:]:
            with pytest.raises(InferenceFailed) as failed:
                await future
            assert failed.value.message == "model 'm' stopped serving: RuntimeError: a bug"
        assert (batcher.crashed, batcher.running) == ("RuntimeError: a bug", False)
        assert batcher.problem == "its batcher stopped on an error (RuntimeError: a bug)"
        with pytest.raises(Overloaded) as refused:
            batcher.submit([item(2)])
        assert refused.value.message == "model 'm' stopped serving (RuntimeError: a bug); it serves again after a restart"
        assert refused.value.headers == {"Retry-After": "30"}
        await batcher.close()

    asyncio.run(scenario())
