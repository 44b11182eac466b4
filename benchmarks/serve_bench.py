"""Serving benchmark: HTTP throughput and latency of `berthing serve` against the same model run in-process.

Why: the server's job is to add as little as possible on top of the model. This script measures what a
client sees over HTTP (single sentences at concurrency 1 and 32, client-side batches of 32 at
concurrency 4) and what the same model does in-process (`Model.predict` on batches of 32, and
`Model.infer` at concurrency 32 through the model's own batcher), and reports the ratio
server sentences/s (c32, single sentence) / in-process sentences/s; the project's target is >= 0.80.

The client is deliberately cheap (server and client share the machine's cores): a minimal keep-alive
HTTP/1.1 client on asyncio streams (uvloop when installed), one connection per concurrent worker,
request bytes encoded before timing starts. It only talks to 127.0.0.1 (or the --url you give), and
every case is bounded by a request count and a wall time, whichever comes first.

    .venv/bin/python benchmarks/serve_bench.py                      # starts the server itself
    .venv/bin/python benchmarks/serve_bench.py --cases c32,predict  # a subset
    .venv/bin/python benchmarks/serve_bench.py --url http://127.0.0.1:8080 --model minilm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_RATIO = 0.80
NOISY_PCT = 20.0  # other processes' CPU (percent of one core) above which a case's figures are flagged
POOL_SIZE = 4096
SEED = 20240611
BATCH = 32

# ---------------------------------------------------------------------------------------------------------------
# Workload: short mixed-length sentences, English and some Chinese, fully determined by the seed.
# ---------------------------------------------------------------------------------------------------------------

_SUBJECTS = (
    "the customer", "our team", "the new model", "a small startup", "the support agent", "my neighbour",
    "the city council", "this library", "the delivery driver", "the research group", "a junior engineer",
    "the hotel staff", "the mobile app", "the search engine", "the weather service", "a local bakery",
)
_VERBS = (
    "reported", "fixed", "shipped", "reviewed", "cancelled", "explained", "improved", "ignored", "measured",
    "announced", "refunded", "scheduled", "translated", "summarized", "rejected", "approved", "deployed",
)
_OBJECTS = (
    "the order", "a billing problem", "the login page", "the quarterly report", "an urgent request",
    "the database migration", "a broken link", "the train schedule", "the product roadmap", "a late payment",
    "the onboarding guide", "the latency regression", "a duplicate invoice", "the privacy policy",
)
_TAILS = (
    "before the deadline", "after a long meeting", "without telling anyone", "on Monday morning",
    "during the holiday sale", "for the third time this week", "with surprisingly good results",
    "because the old version kept crashing", "although nobody asked for it", "in less than an hour",
    "while the servers were under heavy load", "so that customers in Europe could sign up again",
)
_EXTRA = (
    "honestly", "however", "as expected", "unfortunately", "in the end", "to be fair", "for example",
    "according to the logs", "once again", "by the way",
)
_QUESTIONS = (
    "how do I reset my password", "where is my package", "can I change the delivery address",
    "why was my card declined", "what time does the store open", "is this jacket available in blue",
    "does the plan include international calls", "how long does a refund take",
)
# Common simplified Chinese characters; the BERT uncased vocabulary maps each to one token.
_HANZI = (
    "我们的产品今天发布了新版本用户可以在手机上查看订单状态这个问题已经解决请稍后再试客服人员会尽快联系您"
    "天气很好适合出去散步公司明年计划扩大市场研究人员发现模型在长文本上表现更好服务器响应时间明显下降"
    "请问这家餐厅几点开门退款需要多长时间会议改到下周三上午十点系统升级期间部分功能暂时无法使用"
)


def _english(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        text = rng.choice(_QUESTIONS) + "? " + _english_clause(rng)
    else:
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.8:
            parts.append(rng.choice(_TAILS))
        if rng.random() < 0.35:
            parts.insert(0, rng.choice(_EXTRA) + ",")
        text = " ".join(parts) + rng.choice((".", ".", ".", "!"))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 2))):  # a second/third clause makes the long tail
        text += " " + _english_clause(rng)
    return text[0].upper() + text[1:]


def _english_clause(rng: random.Random) -> str:
    clause = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.5:
        clause += " " + rng.choice(_TAILS)
    return clause[0].upper() + clause[1:] + "."


def _chinese(rng: random.Random) -> str:
    n = rng.randint(12, 56)
    start = rng.randrange(len(_HANZI) - n)
    text = _HANZI[start : start + n]
    cut = rng.randint(4, n - 3)
    return text[:cut] + "，" + text[cut:] + "。"


def make_sentences(n: int = POOL_SIZE, seed: int = SEED) -> list[str]:
    """A fixed pool of `n` sentences: ~80% English, ~20% Chinese, 8-60 tokens, mean ~31 with [CLS]/[SEP]."""
    rng = random.Random(seed)
    return [_chinese(rng) if rng.random() < 0.2 else _english(rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# A minimal keep-alive HTTP/1.1 client: one StreamReader/Writer pair per worker, nothing parsed we don't need.
# ---------------------------------------------------------------------------------------------------------------


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


def post_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    """A complete POST request, encoded once before timing starts."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def get_bytes(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("ascii")


# ---------------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """One case's figures; latencies in milliseconds."""

    case: str
    label: str
    concurrency: int
    sentences_per_request: int
    requests: int = 0
    sentences: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    requests_per_s: float = 0.0
    sentences_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    stopped_by: str = ""
    client_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    steal_pct: float = 0.0
    waited_for_quiet_s: float = 0.0
    attempts: int = 1
    server_cpu_pct: float | None = None
    server_loop_thread_cpu_pct: float | None = None
    server: dict[str, Any] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(result: CaseResult, latencies: list[float], errors: Counter[str], elapsed: float, stopped_by: str) -> None:
    """Fill rates and latency percentiles from raw per-request latencies (seconds)."""
    latencies.sort()
    result.requests = len(latencies)
    result.sentences = len(latencies) * result.sentences_per_request
    result.errors = sum(errors.values())
    result.error_kinds = dict(errors)
    result.seconds = round(elapsed, 3)
    result.requests_per_s = len(latencies) / elapsed if elapsed > 0 else 0.0
    result.sentences_per_s = result.sentences / elapsed if elapsed > 0 else 0.0
    result.p50_ms = percentile(latencies, 50) * 1000
    result.p90_ms = percentile(latencies, 90) * 1000
    result.p99_ms = percentile(latencies, 99) * 1000
    result.mean_ms = (sum(latencies) / len(latencies) * 1000) if latencies else float("nan")
    result.stopped_by = stopped_by


def set_usage(result: CaseResult, usage: dict[str, float]) -> None:
    """Copy a CpuWatch reading onto the result."""
    for key, value in usage.items():
        setattr(result, key, value)


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


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_seconds(path: str) -> float:
    """utime + stime of a /proc/<pid>[/task/<tid>]/stat file, in seconds."""
    try:
        with open(path, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _system_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine, summed over cores, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as fh:
            v = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


class CpuWatch:
    """Who used the CPU during a case: this client, the server (and its event-loop thread), everybody else.

    The machine is shared, so "other" (busy time not ours) and hypervisor steal are recorded per case:
    figures taken while something else was running are not comparable and the table says so.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.start: tuple[float, ...] = ()

    def _sample(self) -> tuple[float, ...]:
        busy, steal = _system_seconds()
        server = loop = 0.0
        if self.server_pid:
            server = _proc_seconds(f"/proc/{self.server_pid}/stat")
            loop = _proc_seconds(f"/proc/{self.server_pid}/task/{self.server_pid}/stat")
        return time.perf_counter(), busy, steal, _proc_seconds("/proc/self/stat"), server, loop

    def begin(self) -> None:
        self.start = self._sample()

    def end(self) -> dict[str, float]:
        """Percent of one core over the interval (200 = both cores of a 2-core machine)."""
        t1, busy1, steal1, me1, srv1, loop1 = self._sample()
        t0, busy0, steal0, me0, srv0, loop0 = self.start
        span = max(t1 - t0, 1e-9)
        me, srv = me1 - me0, srv1 - srv0
        out = {
            "client_cpu_pct": 100 * me / span,
            "other_cpu_pct": max(0.0, 100 * (busy1 - busy0 - me - srv) / span),
            "steal_pct": 100 * (steal1 - steal0) / span,
        }
        if self.server_pid:
            out["server_cpu_pct"] = 100 * srv / span
            out["server_loop_thread_cpu_pct"] = 100 * (loop1 - loop0) / span
        return {k: round(v, 1) for k, v in out.items()}

    def wait_quiet(self, max_wait: float, threshold_pct: float = NOISY_PCT) -> float:
        """Wait (bounded) until other processes use < threshold % of a core over 1s; returns seconds waited."""
        started = time.perf_counter()
        while True:
            self.begin()
            time.sleep(1.0)
            if self.end()["other_cpu_pct"] < threshold_pct or time.perf_counter() - started >= max_wait:
                return round(time.perf_counter() - started, 1)


def listener_pid(port: int) -> int | None:
    """The local process listening on `port` (for --url on this machine), so its CPU is not counted as 'other'."""
    inodes: set[str] = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_path, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Prometheus scraping: batch sizes, runtime time and padding per case, from the server's own /metrics.
# ---------------------------------------------------------------------------------------------------------------

_METRIC_RE = re.compile(r'^(berthing_[a-z_]+)\{([^}]*)\}\s+(\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Flatten the berthing_* series into {"name{le=..|kind=..}": value} (model label dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'(\w+="[^"]*")', m.group(2)))
        keep = ",".join(f"{k}={v.strip(chr(34))}" for k, v in sorted(labels.items()) if k not in ("model",))
        key = f"{m.group(1)}{{{keep}}}"
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, Any]:
    """What the server did during one case: batch count and size histogram, runtime busy share, padding."""

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = d("berthing_batch_size_count{}")
    if batches <= 0:
        return {}
    hist: dict[str, int] = {}  # items per batch: "9-16" -> number of batches
    prev, low = 0.0, 1
    for le in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0", "+Inf"):
        cum = d(f"berthing_batch_size_bucket{{le={le}}}")
        high = le.removesuffix(".0")
        if cum - prev > 0:
            hist[high if str(low) == high else f"{low}-{high}" if high != "+Inf" else f">={low}"] = int(cum - prev)
        prev = cum
        low = int(float(le)) + 1 if le != "+Inf" else low
    runtime_s = d("berthing_batch_seconds_sum{}")
    real, padded = d("berthing_tokens_total{kind=real}"), d("berthing_tokens_total{kind=padded}")
    req_n = d("berthing_request_seconds_count{}")
    return {
        "batches": int(batches),
        "mean_batch_size": round(d("berthing_batch_size_sum{}") / batches, 2),
        "batch_size_hist": hist,
        "mean_batch_ms": round(runtime_s / batches * 1000, 2),
        "runtime_busy_pct": round(100 * runtime_s / elapsed, 1) if elapsed > 0 else None,
        "padding_efficiency": round(real / padded, 3) if padded else None,
        "mean_real_tokens_per_item": round(real / d("berthing_batch_size_sum{}"), 1),
        "server_mean_request_ms": round(d("berthing_request_seconds_sum{}") / req_n * 1000, 2) if req_n else None,
    }


# ---------------------------------------------------------------------------------------------------------------
# The server process
# ---------------------------------------------------------------------------------------------------------------


class ServerProcess:
    """`berthing serve` on 127.0.0.1, port 0; ready once it printed its URL and uvicorn's startup line."""

    def __init__(self, model: str | None, log_path: Path, extra: list[str]) -> None:
        self.cmd = [sys.executable, "-m", "berthing.cli", "serve", *([model] if model else []),
                    "--host", "127.0.0.1", "--port", "0", *extra]
        self.log_path = log_path
        self.lines: list[str] = []
        self.url: str | None = None
        self.name: str | None = None
        self.ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float) -> None:
        env = dict(os.environ, COLUMNS="250", PYTHONUNBUFFERED="1")  # rich wraps at 80 columns without a tty
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n" + "".join(self.lines[-30:]))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f}s:\n" + "".join(self.lines[-30:]))

    def _pump(self) -> None:
        """Keep draining the server's output (a full pipe would block its logging) and watch for readiness."""
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                m = re.search(r"serving (\S+?),? .*?on (http://127\.0\.0\.1:\d+)", line)
                if m:
                    self.name, self.url = m.group(1), m.group(2)
                if self.url and "Application startup complete" in line:
                    self.ready.set()

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in 30s."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------

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


def batches_of(sentences: list[str], size: int) -> list[list[str]]:
    """Consecutive, wrapping slices of the pool so every request of a case gets different text."""
    return [[sentences[(i * size + j) % len(sentences)] for j in range(size)] for i in range(len(sentences))]


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


async def scrape(host: str, port: int) -> dict[str, float]:
    """GET /metrics on a fresh connection (not one of the workers')."""
    conn = Connection(host, port)
    try:
        status, body = await conn.request(get_bytes(host, port, "/metrics"))
    except (OSError, HttpError, asyncio.IncompleteReadError):
        return {}
    finally:
        await conn.close()
    return parse_metrics(body.decode("utf-8", "replace")) if status == 200 else {}


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


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model or platform.processor(),
        "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"),
        "tokenizers": version("tokenizers"),
        "uvicorn": version("uvicorn"),
        "berthing": version("berthing"),
        "platform": platform.platform(),
    }


def table(results: list[CaseResult]) -> str:
    """The markdown table printed and pasted into benchmarks/README.md."""
    head = (
        "| case | req/s | sentences/s | p50 ms | p90 ms | p99 ms | errors | mean batch | server CPU % (loop thread) "
        "| client CPU % | other CPU % |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for r in results:
        batch = r.server.get("mean_batch_size")
        cpu = "" if r.server_cpu_pct is None else f"{r.server_cpu_pct:.0f} ({r.server_loop_thread_cpu_pct:.0f})"
        rows.append(
            f"| {r.label} | {r.requests_per_s:.1f} | {r.sentences_per_s:.1f} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.errors} | {'' if batch is None else batch} | {cpu} | {r.client_cpu_pct:.0f} "
            f"| {r.other_cpu_pct:.0f} |"
        )
    return "\n".join([head, *rows])


def ratios(results: list[CaseResult]) -> dict[str, float]:
    """Server c32 single-sentence sentences/s over each in-process figure (target >= 0.80 vs predict)."""
    by = {r.case: r for r in results}
    out: dict[str, float] = {}
    if "c32" in by:
        for ref in INPROC_CASES:
            if ref in by and by[ref].sentences_per_s > 0:
                out[f"c32/{ref}"] = round(by["c32"].sentences_per_s / by[ref].sentences_per_s, 3)
    return out


def token_stats(model: Any, sentences: list[str]) -> dict[str, float]:
    """Token lengths of the pool (with [CLS]/[SEP]), so the workload can be compared across runs."""
    lengths = sorted(e.length for e in model.encoder.encode(sentences))
    return {
        "sentences": len(sentences),
        "min": lengths[0],
        "mean": round(sum(lengths) / len(lengths), 1),
        "p50": percentile(lengths, 50),
        "p90": percentile(lengths, 90),
        "max": lengths[-1],
    }


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="NAME=PATH (or PATH, or NAME with --url); default: the built-in 'minilm'")
    p.add_argument("--url", help="benchmark an already running server at this URL instead of starting one")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--requests", type=int, default=0, help="max requests per case (default: per case, large)")
    p.add_argument("--duration", type=float, default=15.0, help="max timed seconds per case (default 15)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each case (default 2)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each case, wait up to this many seconds for other processes to go quiet (default 20)")
    p.add_argument("--retry-noisy", type=int, default=1,
                   help="rerun a case up to N times when other processes used the CPU during it (default 1)")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for the server (first start exports)")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for `berthing serve` (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/serve_bench-TIME.json)")
    args = p.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.case_list if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if args.url:
        parts = urlsplit(args.url)
        if parts.scheme != "http" or not parts.hostname:
            p.error("--url must be http://HOST:PORT")
    return args


def model_name_and_source(spec: str | None) -> tuple[str, str | None]:
    """'NAME=PATH' -> (NAME, PATH); 'PATH' -> (derived by the server, PATH); None -> ('minilm', None)."""
    if not spec:
        return "minilm", None
    name, sep, source = spec.partition("=")
    if sep:
        return name, source or None
    return "", spec


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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_case(case: str, args: argparse.Namespace, watch: CpuWatch, once: Callable[[], CaseResult]) -> CaseResult:
    """Run a case after waiting for a quiet machine; rerun it (bounded) when other processes disturbed it."""
    best: CaseResult | None = None
    for attempt in range(1, 2 + max(0, args.retry_noisy)):
        waited = watch.wait_quiet(args.quiet_wait)
        note = f" (waited {waited}s for a quiet machine)" if waited > 1.5 else ""
        log(f"case {case}: {CASES[case][0]}{note}, attempt {attempt} ...")
        r = once()
        r.waited_for_quiet_s, r.attempts = waited, attempt
        log(f"  {r.sentences_per_s:.1f} sentences/s, p50 {r.p50_ms:.1f} ms, errors {r.errors}, "
            f"other CPU {r.other_cpu_pct}%{', server ' + str(r.server) if r.server else ''}")
        if best is None or r.other_cpu_pct < best.other_cpu_pct:
            best = r
        if r.other_cpu_pct <= NOISY_PCT:
            break
    assert best is not None
    return best


def run_http(args: argparse.Namespace, sentences: list[str], stamp: str) -> tuple[list[CaseResult], dict[str, Any]]:
    """Start (or reach) the server, run the HTTP cases, stop it."""
    name, source = model_name_and_source(args.model)
    if args.url and not name and source:  # --url with a bare NAME: the model's name on that server
        name = source
    info: dict[str, Any] = {}
    server: ServerProcess | None = None
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        if not name:
            raise SystemExit("with --url, name the model: --model NAME or NAME=PATH")
        info["url"] = args.url
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(args.model, RESULTS / f"server-{stamp}.log", args.server_arg)
        log(f"starting: {' '.join(server.cmd)}")
        t0 = time.perf_counter()
        server.start(args.startup_timeout)
        assert server.url and server.name and server.proc
        info.update(command=" ".join(server.cmd), startup_s=round(time.perf_counter() - t0, 2), log=str(server.log_path))
        info.update(next((
            {"server_banner": ln.strip()} for ln in server.lines if " task=" in ln and " threads/worker=" in ln
        ), {}))
        parts = urlsplit(server.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        name = server.name
        log(f"server ready on {server.url} in {info['startup_s']}s (model {name})")
    local = host in ("127.0.0.1", "localhost", "::1")
    server_pid = server.proc.pid if server and server.proc else (listener_pid(port) if local else None)
    info["server_pid_found"] = server_pid is not None
    cpu = CpuWatch(server_pid)
    results: list[CaseResult] = []
    try:
        for case in args.case_list:
            if case in HTTP_CASES:
                results.append(run_case(case, args, cpu, lambda c=case: run_async(
                    http_case(c, host, port, name, sentences, args, cpu))))
    finally:
        if server is not None:
            info["exit_code"] = server.stop()
    return results, info


def run_inprocess(args: argparse.Namespace, sentences: list[str]) -> tuple[list[CaseResult], dict[str, Any]]:
    """Load the same model in this process (the server is stopped by now) and run the in-process cases."""
    import berthing

    name, source = model_name_and_source(args.model)
    cases = [c for c in args.case_list if c in INPROC_CASES]
    t0 = time.perf_counter()
    model = berthing.load(source, name=name or None) if source else berthing.load()
    info: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 2), "model": model.describe()}
    info["tokens"] = token_stats(model, sentences)
    results = []
    watch = CpuWatch(None)
    for case in cases:
        if case == "predict":
            results.append(run_case(case, args, watch, lambda: predict_case(model, sentences, args)))
        else:
            results.append(run_case(case, args, watch, lambda: run_async(async_case(model, sentences, args))))
    return results, info


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sentences = make_sentences()
    started = time.perf_counter()
    try:
        http_results, server_info = (
            run_http(args, sentences, stamp) if any(c in HTTP_CASES for c in args.case_list) else ([], {})
        )
    except (OSError, RuntimeError) as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 2
    inproc_results, inproc_info = (
        run_inprocess(args, sentences) if any(c in INPROC_CASES for c in args.case_list) else ([], {})
    )
    order = {c: i for i, c in enumerate(CASES)}
    results = sorted(http_results + inproc_results, key=lambda r: order[r.case])
    ratio = ratios(results)
    report = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "requests": args.requests or "per case",
            "quiet_wait_s": args.quiet_wait, "retry_noisy": args.retry_noisy, "noisy_pct": NOISY_PCT,
        },
        "workload": {"seed": SEED, "pool": len(sentences), "tokens": inproc_info.get("tokens")},
        "server": server_info,
        "inprocess": {k: v for k, v in inproc_info.items() if k != "tokens"},
        "cases": [asdict(r) for r in results],
        "ratios": ratio,
        "target_ratio": TARGET_RATIO,
        "total_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or RESULTS / f"serve_bench-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    print(table(results))
    print()
    if "c32/predict" in ratio:
        verdict = "meets" if ratio["c32/predict"] >= TARGET_RATIO else "below"
        print(f"ratio server c32 single / in-process predict(32): {ratio['c32/predict']:.3f} "
              f"({verdict} the {TARGET_RATIO:.2f} target)")
    if "c32/async" in ratio:
        print(f"ratio server c32 single / in-process infer c32:   {ratio['c32/async']:.3f}")
    if inproc_info.get("tokens"):
        print(f"workload tokens: {inproc_info['tokens']}")
    noisy = [r.case for r in results if r.other_cpu_pct > NOISY_PCT]
    if noisy:
        print(f"WARNING: other processes used > {NOISY_PCT:.0f}% of a core during {', '.join(noisy)}: not comparable, rerun")
    print(f"total {report['total_s']}s; JSON: {out}")
    failed = sum(r.errors for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
