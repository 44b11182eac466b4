"""berthing against its peers on all-MiniLM-L6-v2, on this machine: TorchServe, Infinity, sentence-transformers.

Why: issue 5 asks whether berthing is worth running instead of what people already run. Each system serves the same
checkpoint folder on 127.0.0.1, alone on the machine (one stopped before the next starts), is checked against
sentence-transformers' vectors (cosine >= 0.999 on 60 workload texts) before it is timed, and then faces the same
bounded cases from servebench's keep-alive client: concurrency 1 and 32 with one sentence per request, concurrency
4 with 32 sentences per request, and long texts (~250 tokens) at concurrency 8. Also per system: cold start (launch
to first successful answer) and peak RSS of its whole process tree.

    bash benchmarks/peers/setup.sh                                   # the peers' venvs (once; pinned; minutes)
    .venv/bin/python benchmarks/peers/run.py --setup-only            # venvs + archives/ONNX copies + one priming start
    .venv/bin/python benchmarks/peers/run.py                         # everything, about 10 minutes
    .venv/bin/python benchmarks/peers/run.py --systems berthing,torchserve --cases c1,c32 --duration 3

Results: a markdown report printed and written with the JSON to benchmarks/results/peers-<time>.{md,json}; each
server's log beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: servebench and this package

from peers.bench import CASES, ST_CASES, SystemResult, log, prime, run_system  # noqa: E402
from peers.report import markdown  # noqa: E402
from peers.systems import PEERS, System, all_systems  # noqa: E402
from servebench.cpu import NOISY_PCT  # noqa: E402
from servebench.report import machine  # noqa: E402
from servebench.result import CaseResult  # noqa: E402

WORKLOADS = HERE.parent / "workloads"
RESULTS = HERE.parent / "results"
FAMILIES = ("berthing", "torchserve", "infinity", "st")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(all_systems())
    p.add_argument("--systems", default=",".join(FAMILIES),
                   help=f"comma-separated families {','.join(FAMILIES)} or variants {','.join(names)} (default: all)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--duration", type=float, default=15.0, help="max timed seconds per case (default 15)")
    p.add_argument("--requests", type=int, default=0, help="max requests per case (default: per case, large)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each case (default 2)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each case, wait up to this many seconds for other processes to go quiet (default 20)")
    p.add_argument("--retry-noisy", type=int, default=1, help="rerun a disturbed case up to N times (default 1)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for a first answer (default 300)")
    p.add_argument("--time-failed", action="store_true", help="time a system even when its vectors are wrong")
    p.add_argument("--setup", action="store_true", help="first make the peers' venvs (setup.sh) and prime each server once")
    p.add_argument("--setup-only", action="store_true", help="--setup, then exit without timing anything")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/peers-TIME.json)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="no run: merge earlier runs' JSON files, keeping each system's least disturbed attempt per case")
    args = p.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := [c for c in args.case_list if c not in CASES]:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := [s for s in wanted if s not in FAMILIES and s not in names]:
        p.error(f"unknown system(s) {unknown}; choose from {list(FAMILIES)} or {names}")
    args.system_list = [n for n, s in all_systems().items() if n in wanted or s.peer in wanted]
    return args


def load_workloads() -> dict[str, list[str]]:
    from workloads.make_workloads import ensure

    ensure()
    return {name: (WORKLOADS / f"{name}.txt").read_text(encoding="utf-8").splitlines() for name in ("short", "long")}


def check_texts(texts: dict[str, list[str]]) -> list[str]:
    """60 texts for the correctness gate: 50 short ones spread over the file, 10 long ones."""
    return texts["short"][::40][:50] + texts["long"][::20][:10]


def setup(systems: list[System], args: argparse.Namespace, stamp: str) -> bool:
    """Make the venvs, build each peer's artifacts, then start and stop each server once (first-start work, cached)."""
    peers = sorted({s.peer for s in systems if s.peer in ("torchserve", "infinity")})
    if peers:
        log(f"setup.sh {' '.join(peers)} (pip installs, minutes the first time) ...")
        if subprocess.run(["bash", str(HERE / "setup.sh"), *peers], check=False).returncode != 0:
            log("setup.sh failed")
            return False
    ok = True
    for system in systems:
        if (missing := system.installed()) is not None:
            log(f"{system.name}: {missing}")
            ok = False
            continue
        system.prepare(log)
        if system.http:  # prime: Infinity optimizes its ONNX graph and berthing exports its ONNX on a first start
            result = prime(system, args, RESULTS / f"peers-{stamp}" / f"prime-{system.name}.log", load_workloads()["short"][0])
            log(f"{system.name}: first start {result.cold_start_s}s" + (f", FAILED: {result.error}" if result.error else ""))
            ok = ok and result.error is None
    return ok


def merge(paths: list[Path], out: Path | None, stamp: str) -> int:
    """One report from several runs (e.g. a full run, then a rerun of the cases another job disturbed): per system and
    case the attempt with the least other CPU; per system the start-up, memory and vectors of its first run."""
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    merged: dict[str, SystemResult] = {}
    for report in reports:
        for raw in report["systems"]:
            cases = [CaseResult(**c) for c in raw.pop("cases")]
            r = merged.setdefault(raw["system"], SystemResult(**raw))
            for c in cases:
                old = next((i for i, o in enumerate(r.cases) if o.case == c.case), None)
                if old is None:
                    r.cases.append(c)
                elif c.other_cpu_pct < r.cases[old].other_cpu_pct:
                    r.cases[old] = c
    order = list(CASES)
    results = list(merged.values())
    for r in results:  # today's wording of each system
        r.label = all_systems()[r.system].label if r.system in all_systems() else r.label
    for r in results:
        r.cases.sort(key=lambda c: order.index(c.case))
    report = dict(reports[-1], systems=[asdict(r) for r in results], merged_from=[str(p) for p in paths])
    report["argv"] = ["--merge", *(p.name for p in paths)]
    out = out or RESULTS / f"peers-merged-{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    cases = [c for c in order if any(x.case == c for r in results for x in r.cases)]
    md = markdown(report, results, cases)
    out.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    print(md)
    print(f"\nJSON: {out}; markdown: {out.with_suffix('.md')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.merge:
        return merge(args.merge, args.out, stamp)
    systems = [all_systems()[n] for n in args.system_list]
    started = time.perf_counter()
    if args.setup or args.setup_only:
        ok = setup(systems, args, stamp)
        if args.setup_only:
            return 0 if ok else 2
    texts = load_workloads()
    checks = check_texts(texts)
    logs = RESULTS / f"peers-{stamp}"
    results: list[SystemResult] = []
    reference: list[list[float]] | None = None

    def keep(vectors: list[list[float]]) -> None:
        nonlocal reference
        reference = vectors

    # The reference first: sentence-transformers' vectors (timed too when "st" is selected).
    st = all_systems()["st"]
    if "st" in args.system_list:
        results.append(run_system(st, texts, checks, None, args.case_list, args, logs / "st.log", on_reference=keep))
    else:
        run_system(st, texts, checks, None, [], args, logs / "st-reference.log", on_reference=keep)
    if reference is None:
        log("error: no reference vectors from sentence-transformers; nothing can be checked")
        return 2

    for system in systems:
        if system.name == "st":
            continue
        if (missing := system.installed()) is not None:
            log(f"== {system.name}: not set up: {missing}")
            results.append(SystemResult(system.name, system.label, error=f"not set up: {missing}"))
            continue
        results.append(run_system(system, texts, checks, reference, args.case_list, args, logs / f"{system.name}.log"))

    report = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "requests": args.requests or "per case",
                     "quiet_wait_s": args.quiet_wait, "retry_noisy": args.retry_noisy, "noisy_pct": NOISY_PCT},
        "cases": {k: {"label": v[0], "concurrency": v[1], "texts_per_request": v[2], "workload": v[3]} for k, v in CASES.items()},
        "st_cases": {k: {"label": v[0], "texts_per_call": v[1]} for k, v in ST_CASES.items()},
        "workloads": {k: {"file": f"benchmarks/workloads/{k}.txt", "texts": len(v)} for k, v in texts.items()},
        "check_texts": len(checks),
        "peers_dir": str(PEERS),
        "systems": [asdict(r) for r in results],
        "total_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or RESULTS / f"peers-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md = markdown(report, results, args.case_list)
    out.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    print()
    print(md)
    print(f"\ntotal {report['total_s']}s; JSON: {out}; markdown: {out.with_suffix('.md')}; logs: {logs}")
    bad = [r.system for r in results if r.error or any(c.errors for c in r.cases)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
