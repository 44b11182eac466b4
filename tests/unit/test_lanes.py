"""Lanes: the real Batcher with recording run functions, then a real model that builds its lanes under load."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from berthing.config import Settings
from berthing.engine.batcher import LANE_IN_FLIGHT, LOAD_STREAK, Batcher, BatchLimits
from berthing.loading import load_model
from berthing.packaging.sources import ModelSource
from berthing.tasks.tokenize import Encoded
from berthing.types import BerthingError


class Recorder:
    """Run functions that log (runner, items, start, end) and take a few milliseconds, like a small model."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float, float]] = []
        self.lock = threading.Lock()

    def runner(self, name: str, delay: float = 0.01):
        def run(items: list[Encoded]) -> np.ndarray:
            started = time.perf_counter()
            time.sleep(delay)
            with self.lock:
                self.calls.append((name, len(items), started, time.perf_counter()))
            return np.array([[float(item.source)] for item in items])

        return run

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def items(n: int, length: int = 10, first: int = 0) -> list[Encoded]:
    return [Encoded([1] * length, [0] * length, source=first + i) for i in range(n)]


def overlaps(a: tuple[str, int, float, float], b: tuple[str, int, float, float]) -> bool:
    return a[2] < b[3] and b[2] < a[3]


def test_on_load_fires_once_when_batches_keep_ending_with_items_queued() -> None:
    rec = Recorder()
    fired: list[int] = []

    async def main() -> None:
        batcher = Batcher("m", [rec.runner("solo")], BatchLimits(max_batch_tokens=40), on_load=lambda: fired.append(1))
        batcher.start()
        for i in range(2 * LOAD_STREAK):  # one request at a time: never a queue, never load
            assert await asyncio.gather(*batcher.submit(items(1, first=i))) == [np.array([float(i)])]
        assert fired == []
        rows = await asyncio.gather(*batcher.submit(items(40)))  # 10 batches of 4: each ends with more queued
        assert [float(r[0]) for r in rows] == [float(i) for i in range(40)]
        rows = await asyncio.gather(*batcher.submit(items(40)))
        await batcher.close()

    asyncio.run(main())
    assert fired == [1]


def test_lanes_share_the_queue_and_a_lone_batch_runs_on_all_cores() -> None:
    rec = Recorder()

    async def main() -> None:
        batcher = Batcher("m", [rec.runner("solo")], BatchLimits(max_batch_tokens=80))
        batcher.start()
        batcher.set_lanes([rec.runner("lane0"), rec.runner("lane1")])
        assert batcher.lanes == 2
        rows = await asyncio.gather(*batcher.submit(items(1)))
        assert rec.names() == ["solo"]  # nothing else running or queued: the all-core session takes it
        rec.calls.clear()
        rows = await asyncio.gather(*batcher.submit(items(40)))
        assert [float(r[0]) for r in rows] == [float(i) for i in range(40)]
        await batcher.close()

    asyncio.run(main())
    lanes = [c for c in rec.calls if c[0].startswith("lane")]
    solo = [c for c in rec.calls if c[0] == "solo"]
    assert sum(c[1] for c in rec.calls) == 40
    assert {c[0] for c in lanes} == {"lane0", "lane1"}
    assert max(c[1] for c in lanes) == 4  # each lane's budget is 80 // 2 padded tokens: 4 items of 10
    assert any(overlaps(a, b) for a in lanes for b in lanes if a[0] != b[0])  # both cores busy at once
    assert not any(overlaps(s, lane) for s in solo for lane in lanes)  # the solo session never competes with them


def test_a_lane_has_its_next_batch_waiting_and_runs_one_at_a_time() -> None:
    """While a lane's batch runs, its next batch is already taken from the queue (the lane never waits on the event
    loop between batches), but a lane's batches never overlap each other; batch times count the run alone."""
    rec = Recorder()
    release = threading.Event()
    observed: list[tuple[int, float]] = []

    def blocking(items: list[Encoded]) -> np.ndarray:
        started = time.perf_counter()
        release.wait(5)
        with rec.lock:
            rec.calls.append(("lane0", len(items), started, time.perf_counter()))
        return np.array([[float(item.source)] for item in items])

    async def main() -> None:
        batcher = Batcher("m", [rec.runner("solo")], BatchLimits(max_batch_tokens=80),
                          on_batch=lambda n, padded, real, seconds: observed.append((n, seconds)))
        batcher.start()
        batcher.set_lanes([blocking])  # one lane (budget 80: 8 items of 10)
        futures = batcher.submit(items(20))
        for _ in range(100):  # the first batch blocks in the lane; the second is taken meanwhile
            await asyncio.sleep(0.01)
            if batcher.depth == 20 - LANE_IN_FLIGHT * 8:
                break
        assert batcher.depth == 20 - LANE_IN_FLIGHT * 8 and len(rec.calls) == 0
        await asyncio.sleep(0.05)
        release.set()
        rows = await asyncio.gather(*futures)
        assert [float(r[0]) for r in rows] == [float(i) for i in range(20)]
        await batcher.close()

    asyncio.run(main())
    lane = sorted((c for c in rec.calls if c[0] == "lane0"), key=lambda c: c[2])
    assert [c[1] for c in lane] == [8, 8, 4]
    assert not any(overlaps(a, b) for a in lane for b in lane if a is not b)  # one thread per lane
    assert observed[1][1] < 0.05  # the second batch waited ~0.05 s in the lane's queue: not counted as compute


def test_dropping_lanes_hands_batches_back_to_the_worker() -> None:
    rec = Recorder()

    async def main() -> None:
        batcher = Batcher("m", [rec.runner("solo")], BatchLimits(max_batch_tokens=40))
        batcher.start()
        batcher.set_lanes([rec.runner("lane0"), rec.runner("lane1")])
        with pytest.raises(BerthingError, match="model 'm' has lanes; drop them before adding workers"):
            batcher.add_worker(rec.runner("w2"))
        with pytest.raises(BerthingError, match="can take lanes only once"):
            batcher.set_lanes([rec.runner("lane2")])
        await asyncio.gather(*batcher.submit(items(12)))
        assert len(await batcher.drop_lanes()) == 2 and batcher.lanes == 0
        rec.calls.clear()
        await asyncio.gather(*batcher.submit(items(12)))
        await batcher.close()

    asyncio.run(main())
    assert set(rec.names()) == {"solo"}
    assert [c[1] for c in rec.calls] == [4, 4, 4]  # the whole budget again


@pytest.fixture(scope="module")
def two_thread_model(settings: Settings, tiny_model_dir):
    """A tiny embedder with one worker of 2 threads (lanes are planned whatever the machine's cores)."""
    options = settings.model_copy(update={"threads": 2, "max_batch_tokens": 64}).load_options()
    return lambda: load_model(ModelSource("lanes", Path(tiny_model_dir("embed"))), options)


def test_a_loaded_model_adds_lanes_under_load_and_answers_the_same(two_thread_model) -> None:
    model = two_thread_model()
    texts = [f"sentence number {i} " + "word " * (i % 13) for i in range(96)]
    expected = model.predict(texts)
    said: list[str] = []
    model.on_lanes = said.append
    assert model.lanes_planned() and model.describe()["lanes"] == 0

    async def main() -> tuple[list[object], dict[str, object], tuple[int, int]]:
        model.start()
        first = await asyncio.gather(*(model.infer([t], {}) for t in texts))
        assert model._lane_task is not None
        await model._lane_task
        again = await asyncio.gather(*(model.infer([t], {}) for t in texts))
        np.testing.assert_allclose(np.array([r[0] for r in first]), np.array([r[0] for r in again]), atol=1e-5)
        described = model.describe()
        await model.scale(2)  # an explicit worker count replaces the lanes
        scaled = (len(model.lanes), len(model.runtimes))
        await model.stop()
        return [row[0] for row in again], described, scaled

    rows, described, scaled = asyncio.run(main())
    assert described["lanes"] == 2 and described["workers"] == 1 and described["threadsPerWorker"] == 2
    assert said == [said[0]] and said[0].startswith("lanes: sustained load - added 2 single-thread lanes in ")
    assert said[0].endswith("s; a batch that runs alone still takes all 2 cores")
    assert scaled == (0, 2)
    np.testing.assert_allclose(np.array(rows), np.array(expected), atol=1e-5)


def test_many_cores_get_at_most_four_wider_lanes(settings: Settings, tiny_model_dir) -> None:
    folder = Path(tiny_model_dir("embed"))
    shapes = {}
    for threads in (2, 3, 4, 6, 8, 16):
        model = load_model(ModelSource("m", folder), settings.model_copy(update={"threads": threads}).load_options())
        shapes[threads] = model.lane_threads()
    assert shapes == {2: [1, 1], 3: [1, 1, 1], 4: [1] * 4, 6: [2, 2, 1, 1], 8: [2] * 4, 16: [4] * 4}


def test_lanes_off_or_one_thread_means_no_lanes(settings: Settings, tiny_model_dir) -> None:
    folder = Path(tiny_model_dir("embed"))
    off = load_model(ModelSource("off", folder), settings.model_copy(update={"threads": 2, "lanes": False}).load_options())
    one = load_model(ModelSource("one", folder), settings.model_copy(update={"threads": 1}).load_options())
    assert not off.lanes_planned() and not one.lanes_planned()


def test_wider_lanes_are_built_with_their_thread_count(settings: Settings, tiny_model_dir) -> None:
    options = settings.model_copy(update={"threads": 8, "max_batch_tokens": 64}).load_options()
    model = load_model(ModelSource("wide", Path(tiny_model_dir("embed"))), options)
    said: list[str] = []
    model.on_lanes = said.append

    async def main() -> None:
        model.start()
        await asyncio.gather(*(model.infer([f"text {i} " + "word " * (i % 9)], {}) for i in range(96)))
        assert model._lane_task is not None
        await model._lane_task
        await model.stop()

    asyncio.run(main())
    assert [lane.threads for lane in model.lanes] == [2, 2, 2, 2]
    assert said[0].startswith("wide: sustained load - added 4 lanes of 2 threads in ")
    assert said[0].endswith("a batch that runs alone still takes all 8 cores")
