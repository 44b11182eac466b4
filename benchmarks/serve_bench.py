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

This file parses the flags and runs the cases; the parts live in the `servebench` package next to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The package sits next to this script; say so explicitly, so the script also works via runpy or `python -m`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servebench.cases import CASES, HTTP_CASES, INPROC_CASES, async_case, http_case, predict_case
from servebench.client import run_async
from servebench.cpu import NOISY_PCT, CpuWatch
from servebench.report import machine, ratios, table, token_stats
from servebench.result import CaseResult
from servebench.server import ServerProcess, listener_pid
from servebench.workload import SEED, make_sentences

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_RATIO = 0.80


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
