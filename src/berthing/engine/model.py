"""A servable Model: task + encoder + runtime(s) + batcher; the one object every entry point calls.

Built from parts (a spec, an encoder, runtimes), so packaging can run one to verify a graph; turning a source into
a Model is loading.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from berthing.engine.admission import DEADLINE, deadline_after
from berthing.engine.batcher import Batcher, BatchLimits, BatchObserver
from berthing.engine.batching import plan_batches
from berthing.runtime.base import Runtime
from berthing.spec import ModelSpec
from berthing.tasks.prefix import input_chars
from berthing.tasks.registry import make_task
from berthing.tasks.tokenize import Encoded, Encoder
from berthing.types import BadRequest, ModelNotFound, PayloadTooLarge, TextInput

# At most this many lanes: each is a whole session (~55 MB for MiniLM int8), so a many-core host gets fewer,
# wider lanes (16 cores: 4 lanes x 4 threads) instead of one session per core. Measured only on 2 cores.
MAX_LANES = 4

# Requests with more items, or more characters, than this tokenize in a thread instead of on the event loop: a long
# text would otherwise hold every other request until its tokenization ends.
_INLINE_TOKENIZE_ITEMS = 16
_INLINE_TOKENIZE_CHARS = 32_768
PROBE_S = 5.0  # a readiness probe's batch gets this long (probes time out at 1 s by default; they retry)

# A trusted package's custom handler as loading.py attaches it: one request body in, its answer out (handler.py runs
# the TorchServe lifecycle and names the handler's own errors).
RequestHandler = Callable[[Any], Any]


class Model:
    """One loaded model version, usable from async servers (infer) and plain Python (predict)."""

    def __init__(
        self,
        name: str,
        version: str,
        spec: ModelSpec,
        encoder: Encoder,
        runtimes: list[Runtime],
        limits: BatchLimits,
        source: Path,
        load_seconds: float,
    ) -> None:
        self.name = name
        self.version = version
        self.spec = spec
        self.encoder = encoder
        self.task = make_task(spec)
        self.runtimes = list(runtimes)  # own list: scaling one model never changes a clone's workers
        self.limits = limits
        self.source = source
        self.load_seconds = load_seconds
        self.batcher: Batcher | None = None
        self.make_runtime: Callable[[], Runtime] | None = None  # set by loading.load_model; scaling up needs it
        self.make_lane: Callable[[int], Runtime] | None = None  # a runtime of N threads for a lane; None = no lanes
        self.lanes: list[Runtime] = []  # built under sustained load (batcher.py explains lanes)
        self.on_lanes: Callable[[str], None] | None = None  # told what lanes were added, for the server's log
        self._lane_task: asyncio.Task[None] | None = None
        self.memory_bytes = 0  # size of the model file the runtimes load (ONNX or weights), per worker
        self.optimization: dict[str, Any] | None = None  # the artifact's optimization record (berthing.json)
        self.verification: dict[str, Any] | None = None  # what the load-time probe did here (load_check.LoadCheck)
        self._runners: dict[int, Callable[[list[Encoded]], np.ndarray]] = {}
        self.url = str(source)  # what it was registered from, as the management API lists it
        self.retired = False
        self._scaling = asyncio.Lock()  # one scale change at a time per model
        self._inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # where the batcher runs, for calls from other threads
        self.handler: RequestHandler | None = None  # a trusted package's custom handler

    def _runner(self, runtime: Runtime) -> Callable[[list[Encoded]], np.ndarray]:
        if id(runtime) in self._runners:
            return self._runners[id(runtime)]

        def run(items: list[Encoded]) -> np.ndarray:
            features = self.encoder.collate(items)
            return self.task.split(runtime.run(features), features)

        self._runners[id(runtime)] = run
        return run

    async def scale(self, workers: int) -> None:
        """Add or retire runtime instances while serving: queued items stay queued, in-flight batches finish."""
        if workers < 1:
            raise BadRequest(f"a model needs at least 1 worker, not {workers}")
        async with self._scaling:
            await self._scale(workers)

    async def _scale(self, workers: int) -> None:
        if self.lanes and workers != len(self.runtimes):
            await self._drop_lanes()  # an explicit worker count replaces the automatic lanes
        while len(self.runtimes) < workers:
            if self.make_runtime is None:
                raise BadRequest(f"model {self.name!r} was not loaded from a folder; it cannot add workers")
            runtime = await asyncio.to_thread(self.make_runtime)
            self.runtimes.append(runtime)
            if self.batcher is not None:
                self.batcher.add_worker(self._runner(runtime))
        while len(self.runtimes) > workers:
            runtime = self.runtimes.pop()
            if self.batcher is not None:
                await self.batcher.retire_worker(self._runner(runtime))
            self._runners.pop(id(runtime), None)

    def start(self, on_batch: BatchObserver | None = None) -> None:
        """Start batching on the running event loop (server entry points call this once)."""
        if self.batcher is None:
            on_load = self._lanes_soon if self._lanes_wanted() else None
            self.batcher = Batcher(self.name, [self._runner(r) for r in self.runtimes], self.limits, on_batch, on_load)
        self.batcher.start()
        self._loop = asyncio.get_running_loop()

    def lanes_planned(self) -> bool:
        """Whether sustained load will add lanes (or already has)."""
        return bool(self.lanes) or self._lanes_wanted()

    def lane_threads(self) -> list[int]:
        """Threads of each lane, splitting the worker's cores: one-thread lanes up to MAX_LANES, wider ones beyond
        (6 cores: 2+2+1+1, so no core is left out; any idle lane takes the next batch)."""
        cores = self.runtimes[0].threads
        count = min(cores, MAX_LANES)
        return [cores // count + (1 if i < cores % count else 0) for i in range(count)]

    def _lanes_wanted(self) -> bool:
        """Lanes pay off only for one worker with several threads: they split its cores under load."""
        return self.make_lane is not None and len(self.runtimes) == 1 and self.runtimes[0].threads > 1

    def _lanes_soon(self) -> None:
        """The batcher saw sustained load: build the lanes in a thread, without blocking the event loop."""
        self._lane_task = asyncio.get_running_loop().create_task(self._build_lanes())

    async def _build_lanes(self) -> None:
        async with self._scaling:
            if self.retired or self.lanes or not self._lanes_wanted() or self.batcher is None:
                return
            make = self.make_lane
            assert make is not None
            threads = self.lane_threads()
            cores = self.runtimes[0].threads
            what = f"{len(threads)} {describe_lanes(threads)}"
            started = time.perf_counter()
            try:
                lanes = await asyncio.to_thread(lambda: [make(n) for n in threads])
            except Exception as exc:  # noqa: BLE001 - lanes are an optimization; the worker keeps serving
                self._say(f"{self.name}: could not add {what} ({type(exc).__name__}: {exc})")
                return
            if self.retired or len(self.runtimes) != 1:
                return
            self.lanes = lanes
            self.batcher.set_lanes([self._runner(r) for r in lanes])
            self._say(
                f"{self.name}: sustained load - added {what} in "
                f"{time.perf_counter() - started:.2f} s; a batch that runs alone still takes all {cores} cores"
            )

    def _say(self, message: str) -> None:
        if self.on_lanes is not None:
            self.on_lanes(message)
        else:
            logging.getLogger("berthing").info(message)

    async def _drop_lanes(self) -> None:
        if self.batcher is not None:
            await self.batcher.drop_lanes()
        for runtime in self.lanes:
            self._runners.pop(id(runtime), None)
        self.lanes = []

    async def stop(self) -> None:
        """Finish queued work and stop the workers."""
        if self._lane_task is not None and not self._lane_task.done():
            self._lane_task.cancel()
        if self.batcher is not None:
            await self.batcher.close(drain=True)

    async def retire(self) -> None:
        """Unregistering: refuse new calls, let in-flight requests finish, drain the queue, free the runtimes."""
        self.retired = True
        while self._inflight:
            await asyncio.sleep(0.01)
        await self.stop()
        self.runtimes = []
        self.lanes = []
        self._runners.clear()

    async def infer(self, inputs: list[TextInput], options: dict[str, Any], usage: dict[str, int] | None = None) -> list[Any]:
        """Results for already-parsed inputs, in order, through the shared batcher; `usage['tokens']` counts the
        tokens run (every window of a long input), for protocols that report usage."""
        if self.retired:
            raise ModelNotFound(f"version '{self.version}' of model '{self.name}' was unregistered")
        self._inflight += 1
        try:
            return await self._infer(inputs, options, usage)
        finally:
            self._inflight -= 1

    async def _infer(self, inputs: list[TextInput], options: dict[str, Any], usage: dict[str, int] | None) -> list[Any]:
        if self.batcher is None or not self.batcher.running:
            self.start()
        assert self.batcher is not None
        deadline = DEADLINE.get()
        if "timeout_ms" in options:  # any protocol's body may carry it; the task's own options do not include it
            options = dict(options)
            deadline = deadline_after(options.pop("timeout_ms"))
        checked = self.task.check(inputs, options)
        self.batcher.precheck(deadline)  # before tokenizing: under overload most requests end here, cheaply
        if len(inputs) > _INLINE_TOKENIZE_ITEMS or sum(map(input_chars, inputs)) > _INLINE_TOKENIZE_CHARS:
            encoded = await asyncio.to_thread(self.task.encode, self.encoder, inputs, checked)
        else:
            encoded = self.task.encode(self.encoder, inputs, checked)
        if len(encoded) > self.limits.max_queue:
            raise PayloadTooLarge(
                f"the request makes {len(encoded)} model passes (inputs and the windows of long inputs), "
                f"over the queue limit of {self.limits.max_queue}; send fewer or shorter inputs"
            )
        if usage is not None:
            usage["tokens"] = usage.get("tokens", 0) + sum(item.length for item in encoded)
        futures = self.batcher.submit(encoded, deadline)
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:  # one item failed, or the client went away: its other items need not be computed
            for future in futures:
                future.cancel()
            raise
        return self.task.finish(list(rows), encoded, inputs, checked)

    async def probe(self, timeout: float = PROBE_S) -> None:
        """One tiny batch through the batcher, raising if it fails: how a model whose batches failed is found well
        again without traffic (a readiness probe that is failing gets none)."""
        if self.batcher is None or not self.batcher.running:
            return
        items = self.encoder.encode(["berthing readiness probe"])
        await asyncio.wait_for(asyncio.gather(*self.batcher.submit(items)), timeout)

    async def handle_request(self, body: Any) -> Any:
        """One request body through the custom handler, in a worker thread (its model calls use the batcher)."""
        if self.retired:
            raise ModelNotFound(f"version '{self.version}' of model '{self.name}' was unregistered")
        assert self.handler is not None
        self._inflight += 1
        try:
            if self.batcher is None or not self.batcher.running:
                self.start()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_handler_pool(), self.handler, body)
        finally:
            self._inflight -= 1

    def handle(self, body: Any) -> Any:
        """In-process: one request body through the custom handler, as the server would answer it."""
        if self.handler is None:
            raise BadRequest(f"model {self.name!r} has no custom handler; call predict()")
        return self.handler(body)

    def predict(self, inputs: Any, **options: Any) -> Any:
        """Synchronous in-process prediction on the same task, encoder and runtime; mirrors the input."""
        items, single = self.task.parse(inputs)
        results = self.predict_items(items, options)
        return results[0] if single else results

    def predict_items(self, items: list[TextInput], options: dict[str, Any]) -> list[Any]:
        """Results for parsed inputs; from a thread other than a serving loop's, through that loop's batcher."""
        loop = self._loop
        if loop is not None and loop.is_running() and self.batcher is not None and self.batcher.running:
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is not loop:  # a handler's worker thread: join the dynamic batches
                return asyncio.run_coroutine_threadsafe(self.infer(items, dict(options)), loop).result()
        checked = self.task.check(items, options)
        encoded = self.task.encode(self.encoder, items, checked)
        rows: list[np.ndarray] = [np.empty(0)] * len(encoded)
        run = self._runner(self.runtimes[0])
        lengths = [e.length for e in encoded]
        for batch in plan_batches(lengths, self.limits.max_batch_tokens, self.limits.max_batch_size):
            out = run([encoded[i] for i in batch])
            for i, row in zip(batch, out, strict=True):
                rows[i] = row
        return self.task.finish(rows, encoded, items, checked)

    def describe(self) -> dict[str, Any]:
        """What /models-style listings and logs say about this model."""
        return {
            "modelName": self.name,
            "modelVersion": self.version,
            "task": self.spec.task,
            "runtime": self.runtimes[0].name,
            "workers": len(self.runtimes),
            "threadsPerWorker": self.runtimes[0].threads,
            "lanes": len(self.lanes),
            "maxLength": self.spec.max_length,
            "loadSeconds": round(self.load_seconds, 3),
            "customHandler": self.handler is not None,
            "optimization": _optimization_brief(self.optimization),
            "verification": self.verification,
            "batchSettings": {
                "maxBatchTokens": self.limits.max_batch_tokens,
                "maxBatchSize": self.limits.max_batch_size,
                "maxWaitMs": self.limits.max_wait_ms,
                "maxQueue": self.limits.max_queue,
            },
        }


def describe_lanes(threads: list[int]) -> str:
    """'single-thread lanes', 'lanes of 4 threads' or 'lanes of 2+2+1+1 threads', for logs and the start line."""
    if set(threads) == {1}:
        return "single-thread lanes"
    return f"lanes of {threads[0] if len(set(threads)) == 1 else '+'.join(map(str, threads))} threads"


def _optimization_brief(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The served level and its verification figures, for describe(); the full record lives in berthing.json."""
    if not record:
        return None
    kept = next((lv for lv in record.get("levels", []) if lv.get("level") == record.get("level")), {})
    return {
        "level": record.get("level"), "requested": record.get("requested"), "forced": record.get("forced", False),
        "passed": kept.get("passed"), "metrics": kept.get("metrics", {}),
    }


_POOL: ThreadPoolExecutor | None = None


def _handler_pool() -> ThreadPoolExecutor:
    """Threads for handler calls: they mostly wait on the batcher, so many of them (asyncio's default pool is 6 here)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="berthing-handler")
    return _POOL
