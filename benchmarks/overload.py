"""Overload benchmark: open-loop arrivals at multiples of the measured capacity; goodput, refusals, p50/p99, RSS.

Why open loop: a closed loop (N clients that wait for their answer) slows down with the server and never overloads
it; real traffic keeps arriving. Each configuration starts its own `berthing serve` (default model minilm), measures
capacity with a closed loop at concurrency 32 (which also warms it up alike: lanes built), then sends requests on a
fixed schedule at 0.5x, 1x, 2x, 4x and 8x of the first configuration's capacity. Every request is counted once:
200, refused (503/429, with Retry-After), other status, connection error, or no answer within --client-timeout.
The configurations run side by side in one invocation (default: admission by expected wait, max_queue_ms 2000,
against item counting alone, --max-queue-ms 0, which was berthing's admission before issue 18).

    .venv/bin/python benchmarks/overload.py                                   # 20 s per rate, both configurations
    .venv/bin/python benchmarks/overload.py --rates 4 --duration 60 --configs wait   # the issue's 60 s at 4x

Client and server share this machine's cores; the client is the minimal one of servebench (pre-encoded requests,
one connection per request in flight, reused when idle). Results go to benchmarks/results/overload-*.json and a plot
(matplotlib) of goodput and admitted p99 against offered load next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servebench.client import Connection, Limits, post_bytes, run_async, run_workers
from servebench.report import machine
from servebench.server import ServerProcess, listener_pid
from servebench.workload import make_sentences

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONFIGS = {"wait": ["--max-queue-ms", "2000"], "count": ["--max-queue-ms", "0"]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="0.5,1,2,4,8", help="offered load as multiples of the measured capacity")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per rate (default 20)")
    p.add_argument("--texts", type=int, default=4, help="sentences per request (default 4)")
    p.add_argument("--configs", default="wait,count", help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--client-timeout", type=float, default=60.0, help="a request unanswered this long is lost")
    p.add_argument("--replot", help="draw the plot of a saved results JSON again, and stop")
    p.add_argument("--capacity", type=float, default=0.0, help="requests/s to take as capacity (default: measure)")
    return p.parse_args(argv)


IDLE_REUSE_S = 3.0  # an idle connection older than this is not reused: the server closes idle ones after 5 s


class Pool:
    """Idle keep-alive connections; a request in flight takes one or opens a new one (open loop: no waiting).

    Like HTTP clients do, a connection the server may be closing (idle too long, or already at EOF) is not reused:
    a POST sent on it would be lost to the keep-alive race, which is the client's, not the server's, doing."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[Connection, float]] = []
        self.opened = 0

    def _take(self) -> Connection:
        while self.idle:
            conn, since = self.idle.pop()
            if time.perf_counter() - since < IDLE_REUSE_S and conn.reader is not None and not conn.reader.at_eof():
                return conn
            if conn.writer is not None:
                conn.writer.close()
        return Connection(self.host, self.port)

    async def call(self, payload: bytes, timeout: float) -> tuple[int, bytes]:
        conn = self._take()
        if conn.writer is None:
            self.opened += 1
        try:
            status, body = await asyncio.wait_for(conn.request(payload), timeout)
        except BaseException:
            await conn.close()
            raise
        if conn.writer is not None:
            self.idle.append((conn, time.perf_counter()))
        return status, body


def capacity(host: str, port: int, payloads: list[bytes]) -> float:
    """Requests/s of a closed loop at concurrency 32 for 8 s (after 2 s of warm-up): the server's capacity."""

    async def run(seconds: float) -> float:
        conns = [Connection(host, port) for _ in range(32)]
        errors: Counter[str] = Counter()
        latencies: list[float] = []

        async def call(w: int, i: int) -> bool | str:
            status, _ = await conns[w].request(payloads[i % len(payloads)])
            return True if status == 200 else f"status {status}"

        limits = Limits(10**9, seconds)
        elapsed = await run_workers(32, call, limits, latencies, errors)
        for conn in conns:
            await conn.close()
        return len(latencies) / elapsed

    run_async(run(2.0))
    return run_async(run(8.0))


def open_loop(host: str, port: int, payloads: list[bytes], rate: float, duration: float, timeout: float,
              pid: int | None) -> dict[str, Any]:
    """Send `rate` requests/s on a fixed schedule for `duration` s; every request's outcome and latency."""
    import psutil

    proc = psutil.Process(pid) if pid else None

    async def run() -> dict[str, Any]:
        pool = Pool(host, port)
        outcomes: Counter[str] = Counter()
        ok: list[float] = []
        refused: list[float] = []
        rss: list[int] = []
        total = int(rate * duration)
        start = time.perf_counter()

        async def one(i: int) -> None:
            sent = time.perf_counter()
            try:
                status, _ = await pool.call(payloads[i % len(payloads)], timeout)
            except TimeoutError:
                outcomes["no answer"] += 1
                return
            except Exception as exc:  # noqa: BLE001 - a reset or a broken response is one lost request
                outcomes[type(exc).__name__] += 1
                return
            took = time.perf_counter() - sent
            if status == 200:
                ok.append(took)
            elif status in (503, 429):
                refused.append(took)
            outcomes[str(status)] += 1

        async def sample() -> None:
            while proc is not None:
                rss.append(proc.memory_info().rss)
                await asyncio.sleep(0.5)

        server_cpu = sum(proc.cpu_times()[:2]) if proc is not None else 0.0
        client_cpu = time.process_time()
        sampler = asyncio.create_task(sample())
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        sampler.cancel()
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        server_cpu = sum(proc.cpu_times()[:2]) - server_cpu if proc is not None else 0.0
        for conn, _ in pool.idle:
            await conn.close()
        return {
            "offered_rps": rate, "sent": total, "outcomes": dict(outcomes),
            "goodput_rps": len(ok) / elapsed,  # answers over the time they took, the queue's drain included
            "lost": total - len(ok) - len(refused),
            "p50_ms": _pct(ok, 50), "p99_ms": _pct(ok, 99), "refused_p99_ms": _pct(refused, 99),
            "max_rss_mb": max(rss) / 2**20 if rss else None, "connections_opened": pool.opened,
            "elapsed_s": elapsed, "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
        }

    return run_async(run())


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def run_config(name: str, args: argparse.Namespace, payload_texts: list[list[str]]) -> dict[str, Any]:
    log = RESULTS / f"overload-{name}.log"
    server = ServerProcess(None, log, ["--management-port", "0", *CONFIGS[name]])
    server.start(600)
    try:
        assert server.url is not None
        parts = urlsplit(server.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = f"/predictions/{server.name}"
        payloads = [post_bytes(host, port, path, json.dumps({"input": texts}).encode()) for texts in payload_texts]
        pid = listener_pid(port) or (server.proc.pid if server.proc else None)
        # measured on every server, also as its warm-up: each builds its lanes under this load alike (a server
        # without them has less capacity, which would confound the configurations)
        measured = capacity(host, port, payloads)
        cap = args.capacity or measured
        print(f"[{name}] capacity {measured:.1f} requests/s ({measured * args.texts:.0f} sentences/s); offered loads "
              f"are multiples of {cap:.1f}", flush=True)
        rows = []
        for multiple in (float(x) for x in args.rates.split(",")):
            row = open_loop(host, port, payloads, cap * multiple, args.duration, args.client_timeout, pid)
            row["multiple"] = multiple
            rows.append(row)
            print(f"[{name}] {multiple:g}x: {_line(row)}", flush=True)
            time.sleep(3)  # let the queue empty before the next rate
        return {"config": name, "flags": CONFIGS[name], "capacity_rps": cap, "measured_rps": measured, "rows": rows}
    finally:
        server.stop()


def _line(row: dict[str, Any]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    return (f"goodput {row['goodput_rps']:.1f}/s, outcomes {row['outcomes']}, p50 {fmt(row['p50_ms'])} ms, "
            f"p99 {fmt(row['p99_ms'])} ms, refusal p99 {fmt(row['refused_p99_ms'])} ms, lost {row['lost']}, "
            f"RSS max {fmt(row['max_rss_mb'])} MB, CPU s server {row['server_cpu_s']:.0f} client {row['client_cpu_s']:.0f} "
            f"over {row['elapsed_s']:.0f} s")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Goodput and admitted p99 against offered load, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        xs = [r["multiple"] for r in result["rows"]]
        left.plot(xs, [r["goodput_rps"] / result["capacity_rps"] for r in result["rows"]], marker="o", label=result["config"])
        right.plot(xs, [(r["p99_ms"] or 0) / 1000 for r in result["rows"]], marker="o", label=result["config"])
    left.set(xlabel="offered load (x capacity)", ylabel="goodput (x capacity)", xscale="log", title="goodput")
    right.set(xlabel="offered load (x capacity)", ylabel="p99 of admitted requests (s)", xscale="log", title="p99")
    ticks = sorted({r["multiple"] for result in results for r in result["rows"]})
    for ax in (left, right):
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        plot(saved["results"], Path(args.replot).with_suffix(".png"))
        return
    RESULTS.mkdir(exist_ok=True)
    sentences = make_sentences()
    payload_texts = [[sentences[(i * args.texts + j) % len(sentences)] for j in range(args.texts)] for i in range(512)]
    results = []
    for name in args.configs.split(","):  # the first configuration's measured capacity is every one's offered load
        results.append(run_config(name, args, payload_texts))
        args.capacity = args.capacity or results[0]["capacity_rps"]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"overload-{stamp}.json"
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "results": results}, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"\nwritten {out} and {out.with_suffix('.png')}")
    for result in results:
        print(f"\n{result['config']} ({' '.join(result['flags'])}), capacity {result['capacity_rps']:.1f} req/s "
              f"x {args.texts} sentences")
        print("| offered | goodput (x cap) | 200 | refused | lost | p50 ms | p99 ms | refusal p99 ms | RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in result["rows"]:
            refused = sum(v for k, v in r["outcomes"].items() if k in ("503", "429"))
            fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
            print(f"| {r['multiple']:g}x | {r['goodput_rps'] / result['capacity_rps']:.2f} | {r['outcomes'].get('200', 0)} "
                  f"| {refused} | {r['lost']} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['refused_p99_ms'])} "
                  f"| {fmt(r['max_rss_mb'])} |")


if __name__ == "__main__":
    main()
