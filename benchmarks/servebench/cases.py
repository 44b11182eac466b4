"""The benchmark cases: HTTP against the server, and the same model in-process (`predict`, and `infer` on its batcher).

Each case warms up, then runs a closed loop bounded by a request count and a wall time, whichever comes first,
and returns a `CaseResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import orjson

from .client import Connection, Limits, post_bytes, run_workers
from .cpu import CpuWatch
from .metrics import metrics_delta, scrape
from .result import CaseResult, set_usage, summarize
from .workload import batches_of

BATCH = 32

CASES: dict[str, tuple[str, int, int, int]] = {
    # id: (label, concurrency, sentences per request, default max requests)
    "c1": ("HTTP, concurrency 1, 1 sentence/request", 1, 1, 20_000),
    "c32": ("HTTP, concurrency 32, 1 sentence/request", 32, 1, 50_000),
    "c4x32": ("HTTP, concurrency 4, 32 sentences/request", 4, BATCH, 5_000),
    "predict": ("in-process Model.predict, batches of 32", 1, BATCH, 5_000),
    "async": ("in-process Model.infer, concurrency 32, 1 sentence/call", 32, 1, 50_000),
}
HTTP_CASES = ("c1", "c32", "c4x32")
INPROC_CASES = ("predict", "async")


async def http_case(
    case: str, host: str, port: int, model: str, sentences: list[str], args: argparse.Namespace, cpu: CpuWatch
) -> CaseResult:
    """One HTTP case: open the connections, warm up, then time a bounded closed loop."""
    label, concurrency, per_request, default_requests = CASES[case]
    path = f"/predictions/{model}"
    if per_request == 1:
        bodies = [orjson.dumps({"input": s}) for s in sentences]
    else:
        bodies = [orjson.dumps({"input": b}) for b in batches_of(sentences, per_request)]
    payloads = [post_bytes(host, port, path, b) for b in bodies]
    conns = [Connection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    offset = 0

    async def call(w: int, i: int) -> bool | int:
        conn = conns[w]
        try:
            status, _body = await conn.request(payloads[(offset + i) % len(payloads)])
        except Exception:
            await conn.close()  # the stream may be mid-response: the next request reconnects
            raise
        return True if status == 200 else status

    # Check one answer's shape before timing, so a wrong server fails loudly instead of looking fast.
    status, body = await conns[0].request(payloads[0])
    if status != 200:
        raise RuntimeError(f"{case}: server answered {status}: {body[:300]!r}")
    answer = orjson.loads(body)
    if per_request > 1 and not (isinstance(answer, list) and len(answer) == per_request):
        raise RuntimeError(f"{case}: expected {per_request} results, got {str(answer)[:200]}")

    warm_errors: Counter[str] = Counter()
    await run_workers(concurrency, call, Limits(10**9, args.warmup), None, warm_errors)
    offset = len(payloads) // 2  # timed requests start on other text than the warm-up's first ones

    before = await scrape(host, port)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    limits = Limits(args.requests or default_requests, args.duration)
    cpu.begin()
    elapsed = await run_workers(concurrency, call, limits, latencies, errors)
    usage = cpu.end()
    after = await scrape(host, port)
    await asyncio.gather(*(c.close() for c in conns))

    result = CaseResult(case, label, concurrency, per_request)
    summarize(result, latencies, errors, elapsed, limits.stopped_by())
    set_usage(result, usage)
    if before and after:
        result.server = metrics_delta(before, after, elapsed)
    if warm_errors:
        result.server["warmup_errors"] = dict(warm_errors)
    return result


def predict_case(model: Any, sentences: list[str], args: argparse.Namespace) -> CaseResult:
    """`Model.predict` on batches of 32, one after the other: the in-process ceiling for this batch size."""
    label, _, per_request, default_requests = CASES["predict"]
    batches = batches_of(sentences, per_request)
    warm_end = time.perf_counter() + args.warmup
    i = 0
    while time.perf_counter() < warm_end:
        model.predict(batches[i % len(batches)])
        i += 1
    offset = len(batches) // 2
    limits = Limits(args.requests or default_requests, args.duration)
    latencies: list[float] = []
    cpu = CpuWatch(None)
    cpu.begin()
    while (n := limits.take()) is not None:
        t0 = time.perf_counter()
        model.predict(batches[(offset + n) % len(batches)])
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - limits.started
    result = CaseResult("predict", label, 1, per_request)
    summarize(result, latencies, Counter(), elapsed, limits.stopped_by())
    set_usage(result, cpu.end())
    return result


async def async_case(model: Any, sentences: list[str], args: argparse.Namespace) -> CaseResult:
    """`Model.infer([text], {})` at concurrency 32 on the model's own batcher: the server's engine without HTTP."""
    label, concurrency, per_request, default_requests = CASES["async"]
    batch_sizes: list[int] = []
    model.batcher = None  # a fresh batcher per attempt, so this attempt's observer is the one called
    model.start(lambda items, _padded, _real, _took: batch_sizes.append(items))
    offset = 0

    async def call(_w: int, i: int) -> bool:
        await model.infer([sentences[(offset + i) % len(sentences)]], {})
        return True

    errors: Counter[str] = Counter()
    await run_workers(concurrency, call, Limits(10**9, args.warmup), None, errors)
    offset = len(sentences) // 2
    batch_sizes.clear()
    latencies: list[float] = []
    limits = Limits(args.requests or default_requests, args.duration)
    cpu = CpuWatch(None)
    cpu.begin()
    elapsed = await run_workers(concurrency, call, limits, latencies, errors)
    usage = cpu.end()
    await model.stop()
    result = CaseResult("async", label, concurrency, per_request)
    summarize(result, latencies, errors, elapsed, limits.stopped_by())
    set_usage(result, usage)
    if batch_sizes:
        result.server = {"batches": len(batch_sizes), "mean_batch_size": round(sum(batch_sizes) / len(batch_sizes), 2)}
    return result
