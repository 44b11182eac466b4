"""Ray Serve's cost: c32 single-sentence embeddings/s and p50/p99 latency through berthing serve alone and through Ray.

Why: berthing on Ray Serve (`berthing.ray`) runs berthing's own app, batcher and engine in every replica, so whatever
it loses against `berthing serve` on the same cores is Ray's path: its HTTP proxy (or HAProxy ingress, or the
DeploymentHandle router) and the hop to the replica. This measures that loss, with the same model (the built-in
all-MiniLM-L6-v2, "minilm") and the same --optimize everywhere, rounds interleaved (berthing serve in every round)
so drift in the machine hits every case alike:

    serve        `berthing serve` alone, 2 threads, --no-lanes (a replica never builds lanes: the engines match;
                 --lanes gives berthing serve its default lanes)
    proxy-1x2    Ray's HTTP proxy, one replica of 2 CPUs (ONNX Runtime gets 2 threads)
    handle-1x2   a DeploymentHandle from this process, 32 concurrent `await handle.infer.remote([s])`, the same replica
    proxy-2x1    Ray's HTTP proxy, two replicas of 1 CPU (1 thread) each
    haproxy-1x2  Ray's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1), one replica of 2 CPUs: opt-in, --haproxy

HTTP cases: servebench's keep-alive client, 32 connections, one sentence a request to /predictions/minilm. Every case
warms up 1 s, then runs a closed loop of --duration seconds; before timing, its answer for one sentence is checked
against berthing serve's vector (within 1e-4). "Proxy cost" is proxy-1x2 (and haproxy-1x2) over handle-1x2: the same
replica with and without an HTTP ingress in front. The handle's router runs in this process, so its CPU is the client's.

The Ray cluster is a local one-node cluster of 2 logical CPUs: loopback addresses (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0),
token auth, no dashboard, no usage stats, Serve's proxy on a free 127.0.0.1 port. Its 2 CPUs hold either one 2-CPU
replica or two 1-CPU ones, so the application is redeployed when the next case needs the other shape; it is stopped
before every `serve` case, so berthing serve runs alone on the machine (an idle cluster beside it took ~40% of its
throughput on 2 cores). It ends through
its own handles (serve.shutdown(), ray.shutdown()), never `ray stop`, which would end every Ray process on the host.

What binds beyond loopback: Ray 2.60 starts every Serve replica's inter-deployment gRPC server on [::]:0
(ray/serve/_private/replica.py, no setting); berthing's replicas rebind it to 127.0.0.1 on a loopback cluster like this
one (berthing.ray.serve_app), so the proxy and handle cases stay on loopback. --haproxy is opt-in because that mode
adds more: it must be set before a cluster starts (so with --haproxy each round starts that cluster and the proxy one
again, and Serve's shutdown in that mode waits its 30 s bound), and while its frontend and the replicas' direct-ingress
ports follow Serve's http_options host (127.0.0.1 here), Ray's HAProxy template hard-codes the stats listener
(`bind *:RAY_SERVE_HAPROXY_STATS_PORT`) and the Prometheus one (`bind :RAY_SERVE_HAPROXY_METRICS_PORT`) on every
interface, with no host setting (ray/serve/_private/haproxy_templates.py). The script moves those ports, the fallback
proxy's and HAProxy's files to free ones of its own. To keep every listener off the network, run it in a private
network namespace, where "every interface" is that namespace's loopback (the last line below; Linux, unprivileged):

    .venv/bin/python benchmarks/ray_bench.py                      # 3 rounds x 8 s per case
    .venv/bin/python benchmarks/ray_bench.py --quick              # 1 round x 3 s: does every case work end to end
    .venv/bin/python benchmarks/ray_bench.py --cases serve,proxy-1x2 --optimize none --rounds 5 --duration 10
    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/ray_bench.py --haproxy'
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servebench.client import Connection, HttpError, Limits, post_bytes, run_async, run_workers
from servebench.cpu import CpuWatch
from servebench.report import machine
from servebench.result import CaseResult, set_usage, summarize
from servebench.server import ServerProcess, listener_pid
from servebench.workload import SEED, make_sentences

HERE = Path(__file__).resolve().parent
CONCURRENCY = 32
CPUS = 2  # the cores measured: berthing serve's threads, the cluster's logical CPUs
WARMUP_S = 1.0
QUIET_WAIT_S = 10.0  # at most this long before each case for other processes to go quiet
TOLERANCE = 1e-4  # largest difference from berthing serve's vector
READY_S = 600.0  # bound on one deployment (each replica loads the model; a first --optimize auto may take minutes)
ANSWER_S = 60.0  # bound on a new route answering (Ray's proxy learns routes, HAProxy reloads, asynchronously)
OBJECT_STORE_BYTES = 128 * 1024 * 1024
PATH = "/predictions/minilm"  # the default model's name, in berthing serve and in its Ray application alike


@dataclass(frozen=True)
class Case:
    """One way in: berthing serve (cluster None), or a Ray cluster kind with the replicas it needs."""

    label: str
    cluster: str | None = None  # "proxy": Ray's HTTP proxy; "haproxy": Ray's HAProxy ingress
    replicas: int = 0
    cpus: float = 0.0
    handle: bool = False


# In the order run within a round: one redeploy between the 2-CPU and the 1-CPU shapes, one more per round.
CASES: dict[str, Case] = {
    "serve": Case(f"berthing serve alone, {CPUS} threads"),
    "proxy-1x2": Case("Ray HTTP proxy, 1 replica x 2 CPUs", "proxy", 1, 2.0),
    "handle-1x2": Case("DeploymentHandle from the driver, 1 replica x 2 CPUs", "proxy", 1, 2.0, handle=True),
    "proxy-2x1": Case("Ray HTTP proxy, 2 replicas x 1 CPU", "proxy", 2, 1.0),
    "haproxy-1x2": Case("Ray HAProxy ingress, 1 replica x 2 CPUs", "haproxy", 1, 2.0),
}
DEFAULT_CASES = ("serve", "proxy-1x2", "handle-1x2", "proxy-2x1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_env(scratch: str) -> dict[str, str]:
    """HAProxy mode, its fixed default ports (8404, 9101, 8500, 9500) moved to free ones, its files in `scratch`."""
    files = {"CONFIG_FILE_LOC": "haproxy.cfg", "SOCKET_PATH": "admin.sock", "SERVER_STATE_FILE": "server-state",
             "METRICS_SOCKET_PATH": "metrics.sock"}
    ports = ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT", "FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT")
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": scratch,
        **{f"RAY_SERVE_HAPROXY_{key}": os.path.join(scratch, name) for key, name in files.items()},
        **{f"RAY_SERVE_{key}": str(free_port()) for key in ports},
    }


class Cluster:
    """A local one-node Ray cluster with Serve on a loopback port, and the shape of the application it runs now.

    One at a time in this process: the environment (Ray reads HAProxy mode from it when the cluster starts) is set
    for the cluster's life and put back by `stop`.
    """

    def __init__(self, kind: str, optimize: str) -> None:
        self.kind = kind
        self.optimize = optimize
        self.shape: tuple[int, float] | None = None
        self.url = ""
        self.saved: dict[str, str | None] = {}
        self.scratch: str | None = None

    def start(self) -> None:
        env = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
        if self.kind == "haproxy":
            self.scratch = tempfile.mkdtemp(prefix="rayhap-")  # short: HAProxy's unix sockets go in node-id folders here
            env.update(haproxy_env(self.scratch))
        self.saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        import ray
        from ray import serve

        ray.init(address="local", num_cpus=CPUS, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                 logging_level="WARNING", log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        self.url = f"http://127.0.0.1:{port}"

    def deploy(self, replicas: int, cpus: float) -> None:
        """The default model's application at "/" with `replicas` x `cpus` (kept when it already has that shape)."""
        if self.shape == (replicas, cpus):
            return
        from ray import serve

        from berthing.ray.options import ServeArgs
        from berthing.ray.serve_app import build

        args = ServeArgs(model=None, settings={"optimize": self.optimize}, replicas=replicas, cpus=cpus)
        if self.shape is not None:
            serve.delete(args.name())  # the old replicas must free the CPUs before the new ones can be placed
        self.shape = None
        target = serve.RunTarget(build(args), name=args.name(), route_prefix="/")
        serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        wait_running(args.name(), READY_S)
        self.shape = (replicas, cpus)

    def ingress(self) -> str:
        """The process answering the cluster's HTTP port (ray::ProxyActor, or haproxy in HAProxy mode)."""
        pid = listener_pid(int(urlsplit(self.url).port or 0))
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() if pid else "?"
        except OSError:
            return "?"

    def handle(self) -> Any:
        from ray import serve

        from berthing.ray.options import ServeArgs

        return serve.get_app_handle(ServeArgs().name())

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            for key, value in self.saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if self.scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)


def wait_running(app: str, timeout: float) -> None:
    """Until the application is RUNNING; its own failure message (or a timeout) as an error, never a hang."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"application {app} is {status.status}: {status.message}")
        time.sleep(0.5)
    raise RuntimeError(f"application {app} not RUNNING after {timeout:.0f} s")


async def first_answer(conn: Connection, payload: bytes) -> Any:
    """The first 200 answer's JSON, retried while a new route is not served yet (404/503/refused), bounded."""
    deadline = time.monotonic() + ANSWER_S
    while True:
        try:
            status, body = await conn.request(payload)
        except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
            await conn.close()
            status, body = 0, repr(exc).encode()
        if status == 200:
            return orjson.loads(body)
        if time.monotonic() > deadline:
            raise RuntimeError(f"answered {status} for {ANSWER_S:.0f} s: {body[:300]!r}")
        await asyncio.sleep(0.5)


def check(case: str, got: Any, want: Any) -> None:
    """The case's vector for the first sentence is berthing serve's, within TOLERANCE."""
    a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
    if not diff <= TOLERANCE:
        raise RuntimeError(f"{case}: vector {a.shape} differs from berthing serve's {b.shape} by {diff:.2e}")


async def timed(case: str, send: Callable[[int, int], Awaitable[bool | int]], pool: int, duration: float,
                watch: CpuWatch) -> CaseResult:
    """Warm up, then a closed loop of CONCURRENCY workers for `duration`; `send(worker, sentence index)`.
    The timed requests start half the pool on, on other text than the warm-up's first ones."""
    await run_workers(CONCURRENCY, lambda w, i: send(w, i % pool), Limits(10**9, WARMUP_S), None, Counter())
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    limits = Limits(10**9, duration)
    watch.begin()
    elapsed = await run_workers(CONCURRENCY, lambda w, i: send(w, (pool // 2 + i) % pool), limits, latencies, errors)
    result = CaseResult(case, CASES[case].label, CONCURRENCY, 1)
    set_usage(result, watch.end())
    summarize(result, latencies, errors, elapsed, limits.stopped_by())
    return result


async def http_case(case: str, url: str, sentences: list[str], duration: float, reference: Any,
                    watch: CpuWatch) -> CaseResult:
    """CONCURRENCY keep-alive connections, one sentence a request to /predictions/minilm."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = [post_bytes(host, port, PATH, orjson.dumps({"input": s})) for s in sentences]
    conns = [Connection(host, port) for _ in range(CONCURRENCY)]

    async def send(w: int, i: int) -> bool | int:
        try:
            status, _ = await conns[w].request(payloads[i])
        except Exception:
            await conns[w].close()  # the stream may be mid-response: the next request reconnects
            raise
        return True if status == 200 else status

    try:
        check(case, await first_answer(conns[0], payloads[0]), reference)
        return await timed(case, send, len(payloads), duration, watch)
    finally:
        await asyncio.gather(*(c.close() for c in conns))


async def handle_case(case: str, handle: Any, sentences: list[str], duration: float, reference: Any,
                      watch: CpuWatch) -> CaseResult:
    """CONCURRENCY coroutines awaiting `handle.infer.remote([sentence])`: no HTTP, no JSON."""
    check(case, (await handle.infer.remote([sentences[0]]))[0], reference)

    async def send(_w: int, i: int) -> bool:
        await handle.infer.remote([sentences[i]])
        return True

    return await timed(case, send, len(sentences), duration, watch)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"of {', '.join(CASES)}; serve always runs")
    p.add_argument("--haproxy", action="store_true", help="add haproxy-1x2 (binds two listeners beyond loopback)")
    p.add_argument("--optimize", default="auto", choices=("auto", "none", "fused", "int8"), help="for every case")
    p.add_argument("--lanes", action="store_true", help="berthing serve with its default lanes (replicas have none)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="timed seconds per case per round")
    p.add_argument("--quick", action="store_true", help="1 round x 3 s: does every case work")
    p.add_argument("--sentences", type=int, default=2000)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    chosen = {c for c in args.cases.split(",") if c} | ({"haproxy-1x2"} if args.haproxy else set())
    if chosen - set(CASES):
        p.error(f"unknown case(s) {', '.join(sorted(chosen - set(CASES)))} (cases: {', '.join(CASES)})")
    if "haproxy-1x2" in chosen and not args.haproxy:
        p.error("haproxy-1x2 binds listeners on every interface: ask for it with --haproxy")
    if args.haproxy and interfaces() != ["lo"]:
        print(f"note: HAProxy's stats and metrics listeners will be reachable on {', '.join(interfaces())}; "
              "see the docstring for a private network namespace", file=sys.stderr)
    args.order = [c for c in CASES if c in chosen | {"serve"}]
    return args


def interfaces() -> list[str]:
    """This process's network namespace's interfaces (/proc/self/net is per namespace, /sys/class/net may not be)."""
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    return sorted(line.split(":", 1)[0].strip() for line in lines)


def last_line(error: str) -> str:
    """A Ray task error's cause is its last line (the JSON keeps the whole traceback)."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error


def median(runs: list[CaseResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def main() -> None:
    args = parse_args()
    # Read by Ray when first imported, so set for the whole run before that; HAProxy mode only per cluster, after it.
    os.environ.update({
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's "no multi-host cluster" switch: node addresses stay loopback
    })
    from ray import serve  # noqa: F401 - imported before any HAProxy variable is set: this driver's Serve stays as it is

    sentences = make_sentences(args.sentences, SEED)
    (HERE / "results").mkdir(exist_ok=True)
    extra = ["--threads", str(CPUS), "--optimize", args.optimize, *([] if args.lanes else ["--no-lanes"])]
    server = ServerProcess(None, HERE / "results" / "ray-serve.log", extra)
    runs: dict[str, list[CaseResult]] = {c: [] for c in args.order}
    failed: dict[str, str] = {}
    cluster: Cluster | None = None
    try:
        server.start(READY_S)
        assert server.url and server.proc
        reference = run_async(first_vector(server.url, sentences[0]))
        for r in range(args.rounds):
            for name in args.order:
                if name in failed:
                    continue
                case = CASES[name]
                try:
                    if case.cluster is None and cluster is not None:  # berthing serve alone: an idle cluster's
                        cluster.stop()  # controller, proxy and replicas took ~40% of 2 cores in a first run
                        cluster = None
                    if case.cluster and (cluster is None or cluster.kind != case.cluster):
                        if cluster is not None:
                            cluster.stop()
                        cluster = Cluster(case.cluster, args.optimize)
                        cluster.start()
                    if cluster is not None and case.cluster:
                        cluster.deploy(case.replicas, case.cpus)
                    watch = CpuWatch(server.proc.pid if case.cluster is None else None)
                    watch.wait_quiet(QUIET_WAIT_S)
                    if case.handle and cluster is not None:
                        job = handle_case(name, cluster.handle(), sentences, args.duration, reference, watch)
                    else:
                        url = cluster.url if cluster is not None and case.cluster else server.url
                        job = http_case(name, url, sentences, args.duration, reference, watch)
                    result = run_async(job)
                    if cluster is not None and case.cluster and not case.handle:
                        result.server["ingress"] = cluster.ingress()
                        if case.cluster == "haproxy" and result.server["ingress"] != "haproxy":
                            raise RuntimeError(f"HAProxy mode did not start: {result.server['ingress']} answers the port")
                except Exception as exc:
                    if case.cluster != "haproxy":
                        raise
                    failed[name] = f"{type(exc).__name__}: {exc}"  # recorded and reported, the other cases go on
                    print(f"round {r + 1} {name:12s} did not run: {last_line(failed[name])}", flush=True)
                    if cluster is not None:
                        cluster.stop()
                        cluster = None
                    continue
                runs[name].append(result)
                busy = result.other_cpu_pct + (result.server_cpu_pct or 0.0)  # berthing serve's, or Ray's, and others'
                print(f"round {r + 1} {name:12s} {result.sentences_per_s:7.1f}/s p50 {result.p50_ms:6.1f} ms "
                      f"p99 {result.p99_ms:6.1f} ms errors {result.error_kinds or 0} CPU: client {result.client_cpu_pct:.0f}% "
                      f"rest {busy:.0f}%", flush=True)
    finally:
        try:
            if cluster is not None:
                cluster.stop()
        finally:
            server.stop()
    report(args, runs, failed)


def report(args: argparse.Namespace, runs: dict[str, list[CaseResult]], failed: dict[str, str]) -> None:
    """The markdown table (medians over rounds), the proxy cost, and the JSON record in benchmarks/results/."""
    import ray

    from berthing.runtime.cpu import detect

    summary: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        if results:
            summary[name] = {f: round(median(results, f), 1) for f in ("sentences_per_s", "p50_ms", "p99_ms")}
    base = summary["serve"]["sentences_per_s"]
    print(f"\nc{CONCURRENCY}, 1 sentence/request, --optimize {args.optimize}, median of {args.rounds} rounds x "
          f"{args.duration:.0f} s; CPU: {detect().describe()}")
    print("| case | sentences/s | p50 ms | p99 ms | x berthing serve |\n|---|---:|---:|---:|---:|")
    for name in args.order:
        if name in summary:
            s = summary[name]
            s["ratio"] = round(s["sentences_per_s"] / base, 3)
            print(f"| {CASES[name].label} | {s['sentences_per_s']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                  f"{s['ratio']:.2f} |")
        elif name in failed:
            print(f"| {CASES[name].label} | did not run | | | |")
    proxy_cost: dict[str, float] = {}
    for ingress in ("proxy-1x2", "haproxy-1x2"):
        if ingress in summary and "handle-1x2" in summary:
            proxy_cost[ingress] = round(summary[ingress]["sentences_per_s"] / summary["handle-1x2"]["sentences_per_s"], 3)
            print(f"proxy cost: {ingress} / handle-1x2 = {proxy_cost[ingress]:.2f} (same replica, with and without the ingress)")
    for name, error in failed.items():
        print(f"{name} did not run: {last_line(error)}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = HERE / "results" / f"ray-{stamp}.json"
    record = {"machine": {**machine(), "ray": ray.__version__}, "cpu": detect().describe(), "args": vars(args),
              "summary": summary, "proxy_cost": proxy_cost, "failed": failed,
              "runs": {name: [asdict(r) for r in results] for name, results in runs.items()}}
    out.write_text(json.dumps(record, indent=1))
    print(f"written {out}")


async def first_vector(url: str, sentence: str) -> Any:
    """berthing serve's vector for `sentence`: what every case's answer is checked against."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    conn = Connection(host, port)
    try:
        return await first_answer(conn, post_bytes(host, port, PATH, orjson.dumps({"input": sentence})))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
