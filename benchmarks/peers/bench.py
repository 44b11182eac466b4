"""One system's whole session: start it, time its cold start, check its vectors, run the cases, sample its memory, stop it.

Why one loop for all: every HTTP system is driven by servebench's keep-alive client (client.py: Connection,
run_workers, Limits), the same workloads, warm-up, bounds and quiet-machine checks; only the request bodies and the
answer parsing differ (systems.py). sentence-transformers is driven over its worker's stdin with the same bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from servebench.client import Connection, Limits, post_bytes, run_async, run_workers
from servebench.cpu import NOISY_PCT
from servebench.result import CaseResult, set_usage, summarize

from .procs import RssSampler, TreeCpuWatch, stop_tree
from .systems import System

# id: (label, concurrency, texts per request, workload, default max requests)
CASES: dict[str, tuple[str, int, int, str, int]] = {
    "c1": ("concurrency 1, 1 sentence/request", 1, 1, "short", 20_000),
    "c32": ("concurrency 32, 1 sentence/request", 32, 1, "short", 50_000),
    "c4x32": ("concurrency 4, 32 sentences/request", 4, 32, "short", 5_000),
    "long8": ("concurrency 8, 1 long text (~250 tokens)/request", 8, 1, "long", 10_000),
}
# sentence-transformers has no concurrency: one encode() call after another, on the same texts.
ST_CASES: dict[str, tuple[str, int]] = {
    "c1": ("in-process encode(), 1 sentence/call", 1),
    "c4x32": ("in-process encode(), 32 sentences/call", 32),
    "long8": ("in-process encode(), 32 long texts/call", 32),
}
COSINE_MIN = 0.999


@dataclass
class SystemResult:
    """Everything measured about one system."""

    system: str
    label: str
    versions: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    cold_start_s: float | None = None
    idle_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    processes: int = 0
    correctness: dict[str, Any] = field(default_factory=dict)
    cases: list[CaseResult] = field(default_factory=list)
    error: str | None = None
    log: str = ""
    exit_code: int | None = None


def log(msg: str) -> None:
    print(msg, flush=True)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1e-12)


def compare(
    vectors: list[list[float]], reference: list[list[float]], floor: float = COSINE_MIN, mean_floor: float = 0.0
) -> dict[str, Any]:
    """Cosine to the reference for each text; passes when every one is >= floor (and their mean >= mean_floor)."""
    if len(vectors) != len(reference):
        return {"ok": False, "why": f"{len(vectors)} vectors for {len(reference)} texts"}
    if any(len(v) != len(r) for v, r in zip(vectors, reference, strict=True)):
        return {"ok": False, "why": f"dimension {len(vectors[0])}, expected {len(reference[0])}"}
    cos = [cosine(v, r) for v, r in zip(vectors, reference, strict=True)]
    norms = [math.sqrt(sum(x * x for x in v)) for v in vectors]
    ok = min(cos) >= floor and sum(cos) / len(cos) >= mean_floor
    return {"ok": ok, "gate": floor, "texts": len(cos), "min_cosine": round(min(cos), 6),
            "mean_cosine": round(sum(cos) / len(cos), 6), "norm_min": round(min(norms), 4), "norm_max": round(max(norms), 4)}


def post(port: int, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    """One blocking POST on a fresh connection (start-up polling and correctness checks, not the timed loops)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Session:
    """One system from launch to stop. Use as a context manager: the process tree is always stopped."""

    def __init__(self, system: System, log_path: Path, args: argparse.Namespace) -> None:
        self.system = system
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss: RssSampler | None = None
        self.port = 0
        self.result = SystemResult(system.name, system.label, log=str(log_path))
        self._log_fh: IO[bytes] | None = None
        self._lines: list[str] = []

    # -- lifetime -------------------------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, probe_text: str) -> None:
        """Launch and wait for the first successful answer; that span is the cold start."""
        from .systems import free_port

        self.port = free_port()
        launch = self.system.launch(self.port)
        self.result.command = " ".join(launch.cmd)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "wb")  # closed in stop()
        t0 = time.perf_counter()
        if self.system.http:
            self.proc = subprocess.Popen(launch.cmd, cwd=launch.cwd, env=launch.env, stdin=subprocess.DEVNULL,
                                         stdout=self._log_fh, stderr=subprocess.STDOUT, start_new_session=True)
        else:
            self.proc = subprocess.Popen(launch.cmd, cwd=launch.cwd, env=launch.env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log_fh, start_new_session=True)
        self.rss = RssSampler(self.proc.pid)
        self.rss.start()
        deadline = t0 + self.args.startup_timeout
        if self.system.http:
            body = self.system.body([probe_text], single=True)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode} before answering; log {self.log_path}:\n"
                                       + self._tail())
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no answer after {self.args.startup_timeout:.0f}s; log {self.log_path}:\n" + self._tail())
                with contextlib.suppress(OSError, http.client.HTTPException):
                    status, answer = post(self.port, self.system.path, body, timeout=30)
                    if status == 200:
                        self.system.vectors(answer, 1, single=True)
                        break
                time.sleep(0.02)  # polls this often so a start is timed to within 20 ms
        else:
            ready = self._read_json(deadline)
            self.result.versions["worker"] = ready
            self.st_call({"op": "embed", "texts": [probe_text]})
        self.result.cold_start_s = round(time.perf_counter() - t0, 2)
        time.sleep(1.0)  # let start-up work settle (JIT, GC), then read the idle footprint
        self.result.idle_rss_mb = round(self.rss.sample() / 2**20, 1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if not self.system.http and self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.write(b'{"op": "quit"}\n')
                    self.proc.stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
            self.result.exit_code = stop_tree(self.proc)
        if self.rss is not None:
            self.rss.stop()
            self.result.peak_rss_mb = round(self.rss.peak / 2**20, 1)
            self.result.processes = self.rss.processes
            self.rss = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        return ""

    # -- sentence-transformers worker -----------------------------------------------------------------------------
    def _read_json(self, deadline: float) -> dict[str, Any]:
        """Next JSON line from the worker, bounded by `deadline` (a reader thread, so a hung worker cannot hang us)."""
        assert self.proc is not None and self.proc.stdout is not None
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(max(0.0, deadline - time.perf_counter()))
        if not box or not box[0]:
            raise RuntimeError(f"worker gave no answer (exit {self.proc.poll()}); log {self.log_path}:\n" + self._tail())
        return json.loads(box[0])

    def st_call(self, cmd: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode("utf-8") + b"\n")
        self.proc.stdin.flush()
        out = self._read_json(time.perf_counter() + timeout)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    # -- checks and cases -----------------------------------------------------------------------------------------
    def embed(self, texts: list[str], per_request: int = 10) -> list[list[float]]:
        """Vectors for `texts`, asked in lists of `per_request` (exercises padding inside a batch)."""
        if not self.system.http:
            return self.st_call({"op": "embed", "texts": texts})["vectors"]
        out: list[list[float]] = []
        for i in range(0, len(texts), per_request):
            chunk = texts[i : i + per_request]
            status, body = post(self.port, self.system.path, self.system.body(chunk, single=False))
            if status != 200:
                raise RuntimeError(f"answered {status}: {body[:300]!r}")
            out.extend(self.system.vectors(body, len(chunk), single=False))
        return out

    def check(self, texts: list[str], reference: list[list[float]]) -> dict[str, Any]:
        """Correctness before timing: lists of 10 texts, and the first text alone (the single-text path)."""
        try:
            got = self.embed(texts)
            single: list[list[float]] = []
            if self.system.http:
                status, body = post(self.port, self.system.path, self.system.body(texts[:1], single=True))
                single = self.system.vectors(body, 1, single=True) if status == 200 else []
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
            return {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
        verdict = compare(got, reference, self.system.cosine_min, self.system.cosine_mean)
        if single:
            one = cosine(single[0], reference[0])
            verdict["single_text_cosine"] = round(one, 6)
            verdict["ok"] = verdict["ok"] and one >= self.system.cosine_min  # the system's own gate, as for the lists
        return verdict

    def run_case(self, case: str, texts: list[str]) -> CaseResult:
        """Wait for a quiet machine, run the case, rerun it (bounded) when other processes disturbed it."""
        assert self.proc is not None
        watch = TreeCpuWatch(self.proc.pid)
        best: CaseResult | None = None
        for attempt in range(1, 2 + max(0, self.args.retry_noisy)):
            waited = watch.wait_quiet_stretch(self.args.quiet_wait)
            if self.system.http:
                r = run_async(self._http_case(case, texts, watch))
            else:
                r = self._st_case(case, texts, watch)
            r.waited_for_quiet_s, r.attempts = waited, attempt
            noisy = r.other_cpu_pct > NOISY_PCT
            log(f"  {case}: {r.requests_per_s:.1f} req/s, {r.sentences_per_s:.1f} sentences/s, p50 {r.p50_ms:.1f} "
                f"p99 {r.p99_ms:.1f} ms, errors {r.errors}, server CPU {r.server_cpu_pct}%, other CPU {r.other_cpu_pct}%"
                + (f" (waited {waited}s for quiet)" if waited > 3.5 else "")
                + (" WARNING: disturbed by other processes" if noisy else ""))
            if best is None or r.other_cpu_pct < best.other_cpu_pct:
                best = r
            if not noisy:
                break
        assert best is not None
        return best

    async def _http_case(self, case: str, texts: list[str], watch: TreeCpuWatch) -> CaseResult:
        label, concurrency, per_request, _, default_requests = CASES[case]
        single = per_request == 1
        if single:
            groups = [[t] for t in texts]
        else:
            groups = [[texts[(i * per_request + j) % len(texts)] for j in range(per_request)] for i in range(len(texts))]
        payloads = [post_bytes("127.0.0.1", self.port, self.system.path, self.system.body(g, single)) for g in groups]
        conns = [Connection("127.0.0.1", self.port) for _ in range(concurrency)]
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

        status, body = await conns[0].request(payloads[0])  # one answer's shape, before timing
        if status != 200:
            raise RuntimeError(f"{case}: answered {status}: {body[:300]!r}")
        self.system.vectors(body, per_request, single)

        warm_errors: Counter[str] = Counter()
        await run_workers(concurrency, call, Limits(10**9, self.args.warmup), None, warm_errors)
        offset = len(payloads) // 2  # timed requests start on other text than the warm-up's first ones
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        limits = Limits(self.args.requests or default_requests, self.args.duration)
        watch.begin()
        elapsed = await run_workers(concurrency, call, limits, latencies, errors)
        usage = watch.end()
        await asyncio.gather(*(c.close() for c in conns))
        result = CaseResult(case, label, concurrency, per_request)
        summarize(result, latencies, errors, elapsed, limits.stopped_by())
        set_usage(result, usage)
        if warm_errors:
            result.server["warmup_errors"] = dict(warm_errors)
        return result

    def _st_case(self, case: str, texts: list[str], watch: TreeCpuWatch) -> CaseResult:
        label, per_call = ST_CASES[case]
        default_requests = CASES[case][4]
        watch.begin()  # the worker's warm-up is inside the window: subtract it below
        out = self.st_call({"op": "run", "texts": texts, "per_call": per_call, "warmup": self.args.warmup,
                            "duration": self.args.duration, "max_calls": self.args.requests or default_requests},
                           timeout=self.args.warmup + self.args.duration + 300)
        usage = watch.end()
        result = CaseResult(case, label, 1, per_call)
        summarize(result, out["latencies"], Counter(), out["elapsed"], "duration")
        set_usage(result, usage)
        return result


def run_system(system: System, texts: dict[str, list[str]], check_texts: list[str], reference: list[list[float]] | None,
               cases: list[str], args: argparse.Namespace, log_path: Path,
               on_reference: Callable[[list[list[float]]], None] | None = None) -> SystemResult:
    """Start one system, check it, time it, stop it. Failures are recorded in the result, never raised."""
    log(f"== {system.name}: {system.label}")
    with Session(system, log_path, args) as s:
        s.result.versions.update(system.versions())
        try:
            system.prepare(log)
            s.start(texts["short"][0])
            log(f"  cold start {s.result.cold_start_s}s (launch -> first answer), idle RSS {s.result.idle_rss_mb} MiB")
            if reference is None:  # this system is the reference
                reference = s.embed(check_texts)
                if on_reference is not None:
                    on_reference(reference)
            s.result.correctness = s.check(check_texts, reference)
            c = s.result.correctness
            log(f"  vectors vs sentence-transformers: {'OK' if c['ok'] else 'FAILED'} "
                + (f"(min cosine {c.get('min_cosine')}, {c.get('texts')} texts)" if "min_cosine" in c else c.get("why", "")))
            if not c["ok"] and not args.time_failed:
                s.result.error = "wrong vectors: not timed (--time-failed to time it anyway)"
                cases = []
            for case in cases:
                if not system.http and case not in ST_CASES:
                    continue
                s.result.cases.append(s.run_case(case, texts[CASES[case][3]]))
        except Exception as exc:  # noqa: BLE001 - one system's failure is reported, the others still run
            s.result.error = f"{type(exc).__name__}: {exc}"
            log(f"  FAILED: {s.result.error}")
    log(f"  stopped (exit {s.result.exit_code}), peak RSS {s.result.peak_rss_mb} MiB over {s.result.processes} process(es)")
    return s.result


def prime(system: System, args: argparse.Namespace, log_path: Path, probe_text: str) -> SystemResult:
    """Start once and stop: a first start does one-time work (ONNX export or graph optimization) that later starts reuse."""
    with Session(system, log_path, args) as s:
        try:
            system.prepare(log)
            s.start(probe_text)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            s.result.error = f"{type(exc).__name__}: {exc}"
    return s.result
