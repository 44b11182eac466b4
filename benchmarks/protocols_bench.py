"""Protocol overhead: c32 single-sentence embeddings/s through each HTTP protocol against the TorchServe route, one run.

Why: every adapter maps its wire format onto the same Model and batcher, so each should be within 10% of the
TorchServe route; this measures it on one server, rounds interleaved (TorchServe in every round) so drift in the
machine hits every protocol alike. The client is servebench's keep-alive HTTP/1.1 client (requests pre-encoded);
the answer of each protocol is checked once before timing. Only 127.0.0.1.

    .venv/bin/python benchmarks/protocols_bench.py                       # default model, 3 rounds x 8 s
    .venv/bin/python benchmarks/protocols_bench.py --rounds 5 --duration 10 --protocols torchserve,openai-float
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import statistics
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servebench.client import Connection, Limits, post_bytes, run_async, run_workers
from servebench.cpu import CpuWatch
from servebench.report import machine
from servebench.server import ServerProcess
from servebench.workload import SEED, make_sentences

HERE = Path(__file__).resolve().parent
CONCURRENCY = 32


def _kserve_binary(text: str) -> tuple[bytes, dict[str, str]]:
    """tritonclient's default request: a JSON header, then the BYTES tensor (4-byte little-endian length + bytes)."""
    raw = text.encode("utf-8")
    tensor = struct.pack("<I", len(raw)) + raw
    header = orjson.dumps({
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(tensor)}}],
        "parameters": {"binary_data_output": True},
    })
    return header + tensor, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": ""}


def _json(body: Any) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(body), {}


# name -> (path template, body builder for one sentence, check of the answer)
PROTOCOLS: dict[str, tuple[str, Callable[[str, str], tuple[bytes, dict[str, str]]], Callable[[bytes], bool]]] = {
    "torchserve": ("/predictions/{m}", lambda m, s: _json({"input": s}), lambda b: isinstance(orjson.loads(b)[0], float)),
    "openai-float": ("/v1/embeddings", lambda m, s: _json({"model": m, "input": s, "encoding_format": "float"}),
                     lambda b: isinstance(orjson.loads(b)["data"][0]["embedding"][0], float)),
    "openai-base64": ("/v1/embeddings", lambda m, s: _json({"model": m, "input": s, "encoding_format": "base64"}),
                      lambda b: len(base64.b64decode(orjson.loads(b)["data"][0]["embedding"])) % 4 == 0),
    "tei": ("/embed", lambda m, s: _json({"inputs": s}), lambda b: isinstance(orjson.loads(b)[0][0], float)),
    "infinity": ("/embeddings", lambda m, s: _json({"model": m, "input": [s], "dimensions": 0}),
                 lambda b: isinstance(orjson.loads(b)["data"][0]["embedding"][0], float)),
    "kserve-json": ("/v2/models/{m}/infer",
                    lambda m, s: _json({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [s]}]}),
                    lambda b: "outputs" in orjson.loads(b)),
    "kserve-binary": ("/v2/models/{m}/infer", lambda m, s: _kserve_binary(s), lambda b: b.startswith(b"{")),
    "bert-serving": ("/encode", lambda m, s: _json({"id": 1, "texts": [s]}),
                     lambda b: isinstance(orjson.loads(b)["result"][0][0], float)),
}


async def run_case(host: str, port: int, model: str, protocol: str, sentences: list[str], duration: float) -> dict[str, Any]:
    """One closed loop of 32 connections, one sentence a request, for `duration` seconds."""
    template, build, check = PROTOCOLS[protocol]
    path = template.format(m=model)
    payloads = [post_bytes(host, port, path, *build(model, s)) for s in sentences]
    conns = [Connection(host, port) for _ in range(CONCURRENCY)]
    await asyncio.gather(*(c.open() for c in conns))
    status, body = await conns[0].request(payloads[0])
    if status != 200 or not check(body):
        raise RuntimeError(f"{protocol}: answered {status}: {body[:300]!r}")

    async def call(w: int, i: int) -> bool | int:
        status, _ = await conns[w].request(payloads[i % len(payloads)])
        return True if status == 200 else status

    await run_workers(CONCURRENCY, call, Limits(10**9, 1.0), None, Counter())  # warm-up
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    elapsed = await run_workers(CONCURRENCY, call, Limits(10**9, duration), latencies, errors)
    for c in conns:
        await c.close()
    return {"protocol": protocol, "sentences_per_s": len(latencies) / elapsed, "errors": dict(errors),
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="NAME=PATH for the server (default: the built-in minilm)")
    p.add_argument("--url", help="an already running server instead of starting one (then give --name)")
    p.add_argument("--name", default="minilm", help="model name on that server")
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="timed seconds per protocol per round")
    p.add_argument("--sentences", type=int, default=2000)
    args = p.parse_args()
    chosen = [x for x in args.protocols.split(",") if x]
    order = ["torchserve", *[x for x in chosen if x != "torchserve"]]
    sentences = make_sentences(args.sentences, SEED)
    server = None
    if args.url:
        url, name = args.url, args.name
    else:
        server = ServerProcess(args.model, HERE / "results" / "protocols-server.log", [])
        (HERE / "results").mkdir(exist_ok=True)
        server.start(300)
        assert server.url and server.name
        url, name = server.url, server.name
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    runs: dict[str, list[dict[str, Any]]] = {x: [] for x in order}
    cpu = CpuWatch(server.proc.pid if server and server.proc else None)
    try:
        for r in range(args.rounds):
            for protocol in order:
                cpu.wait_quiet(10)
                result = run_async(run_case(host, port, name, protocol, sentences, args.duration))
                runs[protocol].append(result)
                print(f"round {r + 1} {protocol:14s} {result['sentences_per_s']:7.1f}/s p50 {result['p50_ms']:.1f} ms "
                      f"errors {result['errors'] or 0}", flush=True)
    finally:
        if server is not None:
            server.stop()
    base = statistics.median(x["sentences_per_s"] for x in runs["torchserve"])
    from berthing.runtime.cpu import detect

    print(f"\nc32, 1 sentence/request, median of {args.rounds} rounds x {args.duration:.0f} s; CPU: {detect().describe()}")
    print("| protocol | sentences/s | x TorchServe route |\n|---|---:|---:|")
    summary = {}
    for protocol in order:
        value = statistics.median(x["sentences_per_s"] for x in runs[protocol])
        summary[protocol] = {"sentences_per_s": round(value, 1), "ratio": round(value / base, 3)}
        print(f"| {protocol} | {value:.0f} | {value / base:.2f} |")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = HERE / "results" / f"protocols-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    record = {"machine": machine(), "cpu": detect().describe(), "args": vars(args), "summary": summary, "runs": runs}
    out.write_text(json.dumps(record, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
