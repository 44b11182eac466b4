"""Memory under a long mixed load: the server's RSS after warm-up, every N requests, and at the end.

    .venv/bin/python benchmarks/soak.py [--requests 200000] [--clients 8] [--sample-every 5000] [--warmup 10000]
                                        [--package dist/minilm-1.0.berth] [--no-tiny]

Runs `berthing serve` with the default model (as a package; packed once when --package is not given) and, unless
--no-tiny, the tests' tiny seeded classifier, NER, reranker and QA models, then sends a seeded stream of mixed requests
(`Mix`) from several client threads over keep-alive connections, some closed after each request:

- sizes: one word to a 1,000-word text (truncated), batches of 1 to 64 texts, English, Chinese, emoji;
- tasks: embeddings, classification, NER, reranking, question answering;
- protocols: TorchServe, OpenAI, TEI, KServe V2 (HTTP), Cohere rerank, Infinity, bert-serving's HTTP /encode;
- errors: bad JSON, invalid UTF-8, unknown models (a new name each time: no per-name state may grow), unknown routes,
  a too-long text with truncate false, an empty list, an unknown field, too many items, a wrong method.

Every answer's status is checked against what its request expects (503/429 count as shed, not failures). The RSS of
the server process (psutil) is sampled after the warm-up and every --sample-every requests: the run reports start,
end, max, end/start and the least-squares slope in MiB per 100,000 requests. The issue's bound: end within 10% of
start. tests/e2e/test_soak.py runs the same mix for a few thousand requests and checks for a trend.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable too

from benchmarks.crash_restart import cpu_line, free_port

REPO = Path(__file__).resolve().parents[1]
SHED = (429, 503)  # overload answers: a request refused with Retry-After is not a failure
# KServe gRPC and bert-serving's ZeroMQ pair on free ports (their defaults, 8001 and 5555, may be another server's)
OWN_PORTS = {"BERTHING_GRPC_PORT": "0", "BERTHING_BERT_SERVING_PORT": "0", "BERTHING_BERT_SERVING_PORT_OUT": "0"}

_EN = (
    "the model server answers requests quickly while batching them on two cpu cores deploying bert to production used "
    "to mean writing a custom handler a quick brown fox jumps over the lazy dog near the river bank embeddings turn "
    "sentences into vectors so that similar meanings end up close together"
).split()
_ZH = "教练我想打篮球如何使用部署模型今天天气很好我们去公园散步这本书的内容非常精彩值得推荐给朋友们物流很快包装完好"
_EMOJI = "😀🚀🔥🎉🤖📦🌏✨"


@dataclass(frozen=True)
class Call:
    """One request of the mix and the statuses it may get."""

    kind: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    expect: tuple[int, ...] = (200,)


@dataclass(frozen=True)
class Models:
    """The served model names per task; None where that task is not served."""

    embed: str = "minilm"
    classify: str | None = "sentiment"
    ner: str | None = "ner"
    rerank: str | None = "reranker"
    qa: str | None = "qa"


class Mix:
    """A seeded stream of mixed requests (sizes, tasks, protocols, errors); `next()` is thread-safe."""

    def __init__(self, models: Models, seed: int = 18) -> None:
        self.models, self.rng, self.lock, self.count = models, random.Random(seed), threading.Lock(), 0
        self.choices = [(weight, make) for weight, make, task in self._table() if task is None or getattr(models, task)]
        self.weights = [weight for weight, _ in self.choices]

    def next(self) -> Call:
        with self.lock:
            self.count += 1
            (_, make), = self.rng.choices(self.choices, self.weights)
            return make()

    # --- texts ---

    def text(self, words: int | None = None) -> str:
        rng = self.rng
        words = words or rng.choice([1, 2, 3, 5, 8, 12, 20, 35, 60])
        style = rng.random()
        if style < 0.6:
            return " ".join(rng.choice(_EN) for _ in range(words))
        if style < 0.85:
            return "".join(rng.choice(_ZH) for _ in range(words))
        return " ".join(rng.choice(_EN) + rng.choice(_EMOJI) for _ in range(words))

    def texts(self, most: int) -> list[str]:
        return [self.text() for _ in range(self.rng.randint(1, most))]

    # --- the mix: (weight, maker, task it needs) ---

    def _table(self) -> list[tuple[int, object, str | None]]:
        m = self.models

        def j(obj: object) -> bytes:
            return json.dumps(obj, ensure_ascii=False).encode()

        pred = f"/predictions/{m.embed}"
        return [
            (20, lambda: Call("embed-one", "POST", pred, j({"input": self.text()})), None),
            (10, lambda: Call("embed-batch", "POST", pred, j({"input": self.texts(8)})), None),
            (1, lambda: Call("embed-batch-64", "POST", pred, j({"input": self.texts(64)})), None),
            (3, lambda: Call("embed-long-truncated", "POST", pred, j({"input": self.text(1000)})), None),
            (3, lambda: Call("embed-text-plain", "POST", pred, self.text().encode(), "text/plain"), None),
            (2, lambda: Call("embed-tokenized", "POST", pred,
                             j({"input": [self.text(5).split() or ["x"]], "is_tokenized": True})), None),
            (8, lambda: Call("openai-embeddings", "POST", "/v1/embeddings", j({"model": m.embed, "input": self.texts(4)})), None),
            (6, lambda: Call("tei-embed", "POST", "/embed", j({"inputs": self.texts(4)})), None),
            (4, lambda: Call("kserve-infer", "POST", f"/v2/models/{m.embed}/infer", j({"inputs": [
                {"name": "text", "shape": [2], "datatype": "BYTES", "data": [self.text(), self.text()]}]})), None),
            (3, lambda: Call("bert-serving-encode", "POST", "/encode", j({"id": 1, "texts": self.texts(4)})), None),
            (6, lambda: Call("classify", "POST", f"/predictions/{m.classify}", j({"input": self.texts(8), "top_k": 2})),
             "classify"),
            (2, lambda: Call("infinity-classify", "POST", "/classify", j({"model": m.classify, "input": self.texts(4)})),
             "classify"),
            (5, lambda: Call("ner", "POST", f"/predictions/{m.ner}",
                             j({"input": self.text(30), "aggregation_strategy": "simple"})), "ner"),
            (4, lambda: Call("cohere-rerank", "POST", "/v1/rerank",
                             j({"model": m.rerank, "query": self.text(6), "documents": self.texts(8), "top_n": 3})), "rerank"),
            (3, lambda: Call("qa", "POST", f"/predictions/{m.qa}",
                             j({"question": self.text(6) + "?", "context": self.text(80)})), "qa"),
            # errors: the server answers each with its 4xx and keeps nothing of it
            (4, lambda: Call("bad-json", "POST", pred, b'{"input": ["unterminated', expect=(400,)), None),
            (1, lambda: Call("bad-utf8", "POST", pred, b'{"input": "\xff\xfe"}', expect=(400,)), None),
            (3, lambda: Call("unknown-model", "POST", f"/predictions/nobody-{self.count}", j({"input": "x"}),
                             expect=(404,)), None),
            (1, lambda: Call("unknown-route", "GET", f"/no/such/route/{self.count}", None, None, expect=(404,)), None),
            (3, lambda: Call("too-long", "POST", pred, j({"input": self.text(2000), "truncate": False}), expect=(413,)), None),
            (2, lambda: Call("empty-list", "POST", pred, j({"input": []}), expect=(422,)), None),
            (2, lambda: Call("unknown-field", "POST", pred, j({"input": "x", "bogus": 1}), expect=(422,)), None),
            (1, lambda: Call("too-many-items", "POST", pred, j({"input": ["x"] * 1025}), expect=(413,)), None),
            (1, lambda: Call("wrong-method", "PUT", pred, j({"input": "x"}), expect=(405,)), None),
            (1, lambda: Call("ready", "GET", "/health/ready", None, None), None),
            (1, lambda: Call("metrics", "GET", "/metrics", None, None), None),
        ]


@dataclass
class Tally:
    """What the clients saw: statuses by kind, shed answers, unexpected ones (with a sample), connection errors."""

    statuses: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def failures(self) -> int:
        return len(self.unexpected) + self.errors


def drive(port: int, mix: Mix, requests: int, clients: int, tally: Tally, close_every: int = 20) -> None:
    """Send `requests` calls of the mix from `clients` threads; each keeps a connection alive and closes it every
    `close_every` requests (and after any error), so connections are also opened and closed throughout."""
    left = [requests]
    left_lock = threading.Lock()

    def client(index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while True:
            with left_lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            call = mix.next()
            sent += 1
            headers = {"Content-Type": call.content_type} if call.content_type else {}
            if sent % close_every == index % close_every:
                headers["Connection"] = "close"
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request(call.method, call.path, call.body, headers)
                answer = conn.getresponse()
                body = answer.read()
                if answer.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with tally.lock:
                    tally.errors += 1
                    if len(tally.unexpected) < 20:
                        tally.unexpected.append(f"{call.kind}: {type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            with tally.lock:
                tally.statuses[(call.kind, answer.status)] += 1
                if answer.status not in call.expect and answer.status not in SHED:
                    tally.unexpected.append(f"{call.kind}: {answer.status} {body[:200]!r}")
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def slope_per_100k(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MiB) over requests sent, per 100,000 requests."""
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return 0.0 if not spread else sum((x - mx) * (y - my) for x, y in samples) / spread * 100_000


def start_server(specs: list[str], cache: Path, log: Path, timeout: float = 600) -> tuple[subprocess.Popen, int]:
    """`berthing serve SPECS` on a free loopback port; returns once /health/ready answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTHING_")} | {
        "BERTHING_CACHE_DIR": str(cache), "BERTHING_OPTIMIZE": "none", "HF_HUB_OFFLINE": "1", **OWN_PORTS}
    cmd = [str(REPO / ".venv" / "bin" / "berthing"), "serve", *specs, "--host", "127.0.0.1", "--port", str(port),
           "--management-port", "0", "--default-model", "minilm"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"berthing serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health/ready")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server was not ready in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests after the warm-up")
    parser.add_argument("--warmup", type=int, default=10_000, help="requests before the first RSS sample")
    parser.add_argument("--sample-every", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=8, help="client threads (one connection each at a time)")
    parser.add_argument("--package", type=Path, default=None, help="the embedder as a package (default: packed once)")
    parser.add_argument("--no-tiny", action="store_true", help="the embedder alone (no classify, ner, rerank, qa)")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.crash_restart import pack_default

    package = args.package or pack_default(Path(tempfile.gettempdir()) / "berthing-bench")
    specs = [f"minilm={package}"]
    models = Models(classify=None, ner=None, rerank=None, qa=None) if args.no_tiny else Models()
    if not args.no_tiny:
        from tests.support.models import build

        tiny = REPO / ".cache" / "tests" / "tiny"
        specs += [f"{name}={build(kind, tiny)}" for name, kind in
                  (("sentiment", "classify"), ("ner", "ner"), ("reranker", "rerank"), ("qa", "qa"))]
    print(f"cpu: {cpu_line()}\nmodels: {' '.join(specs)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="berthing-soak-") as work:
        proc, port = start_server(specs, Path(work) / "cache", Path(work) / "serve.log")
        try:
            mix, tally = Mix(models, args.seed), Tally()
            started = time.perf_counter()
            drive(port, mix, args.warmup, args.clients, tally)
            samples = [(0, rss_mib(proc.pid))]
            print(f"warm-up: {args.warmup} requests in {time.perf_counter() - started:.0f} s; RSS {samples[0][1]:.1f} MiB",
                  flush=True)
            t0 = time.perf_counter()
            while samples[-1][0] < args.requests:
                step = min(args.sample_every, args.requests - samples[-1][0])
                drive(port, mix, step, args.clients, tally)
                samples.append((samples[-1][0] + step, rss_mib(proc.pid)))
                rate = samples[-1][0] / (time.perf_counter() - t0)
                print(f"  {samples[-1][0]:>7} requests: RSS {samples[-1][1]:.1f} MiB ({rate:.0f} requests/s)", flush=True)
            took = time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
    start, end = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    by_class = Counter()
    for (_kind, status), count in tally.statuses.items():
        by_class["shed" if status in SHED else f"{status // 100}xx"] += count
    print(f"\n{args.requests} requests after a {args.warmup}-request warm-up, {args.clients} clients, {took:.0f} s "
          f"({args.requests / took:.0f} requests/s); answers {dict(sorted(by_class.items()))}; unexpected "
          f"{len(tally.unexpected)}, connection errors {tally.errors}; server exit {code} after SIGTERM")
    print("| RSS after warm-up MiB | end MiB | max MiB | end/start | slope MiB per 100k requests |\n|---|---|---|---|---|")
    print(f"| {start:.1f} | {end:.1f} | {peak:.1f} | {end / start:.3f} | {slope_per_100k(samples):+.2f} |")
    for line in tally.unexpected[:20]:
        print("unexpected:", line)
    within = end <= start * 1.10
    print(f"end within 10% of the RSS after warm-up: {'yes' if within else 'NO'}")
    return 0 if within and not tally.failures else 1


if __name__ == "__main__":
    sys.exit(main())
