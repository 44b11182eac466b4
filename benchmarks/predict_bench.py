"""`berthing predict` on 10k sentences against the in-process engine on the same sentences and artifact.

Why: issue 6 asks the batch CLI to stay within 10% of the engine's sentences/s (it runs every line through the
server's batcher, one request per line, so this is the price of that path), and its memory not to grow with the
file. Both runs use the default model as `berthing serve` loads it (the cached, verified int8 artifact).

    .venv/bin/python benchmarks/predict_bench.py                    # 10k sentences, then 100k for memory
    .venv/bin/python benchmarks/predict_bench.py --count 20000 --memory-count 0

In-process: `Model.predict(all sentences)` (length-sorted batches of max_batch_tokens, one ONNX Runtime session).
CLI: the load is excluded (the CLI's own items/s counts from the first line read to the last line written).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from servebench.workload import make_sentences  # noqa: E402


def cli(path: Path, out: Path) -> tuple[float, float, float]:
    """(items/s as the CLI reports it, wall seconds, peak RSS MiB of the CLI process)."""
    started = time.perf_counter()
    child = (
        "import resource, sys; from berthing.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\n"
        "finally:\n    print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", child, "berthing", "predict", "default", str(path), "-o", str(out)],
        capture_output=True, text=True, timeout=3600,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    rate = float(re.search(r"\((\d+) items/s\)", result.stderr).group(1))
    rss = int(re.search(r"peak_rss_kib (\d+)", result.stderr).group(1)) / 1024
    return rate, wall, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--memory-count", type=int, default=100_000, help="a second, larger file for peak RSS (0 = skip)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of in-process and CLI (default 2)")
    args = p.parse_args()
    import berthing

    pool = make_sentences()
    sentences = [pool[i % len(pool)] for i in range(args.count)]
    work = HERE / "results" / "predict"
    work.mkdir(parents=True, exist_ok=True)
    src = work / "sentences.txt"
    src.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    model = berthing.load()
    model.predict(sentences[:64])  # warm-up
    inproc, viacli = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        model.predict(sentences)
        inproc.append(len(sentences) / (time.perf_counter() - t))
        viacli.append(cli(src, work / "out.jsonl"))
    best_in = max(inproc)
    best_cli = max(r[0] for r in viacli)
    print(f"| {args.count} sentences | in-process Model.predict | berthing predict | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| sentences/s (best of {args.rounds}) | {best_in:.0f} | {best_cli:.0f} | {best_cli / best_in:.2f} |")
    rows = {"count": args.count, "inprocess": inproc, "cli": viacli, "ratio": best_cli / best_in,
            "inprocess_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.memory_count:
        big = work / "big.txt"
        big.write_text("\n".join(pool[i % len(pool)] for i in range(args.memory_count)) + "\n", encoding="utf-8")
        rate, wall, rss = cli(big, work / "big.jsonl")
        small_rss = max(r[2] for r in viacli)
        print(f"peak RSS of `berthing predict`: {small_rss:.0f} MiB on {args.count} lines, {rss:.0f} MiB on {args.memory_count} "
              f"lines ({rate:.0f} items/s, {wall:.0f} s wall)")
        rows.update({"memory_count": args.memory_count, "rss_small_mib": small_rss, "rss_big_mib": rss})
        big.unlink()
    out = HERE / "results" / f"predict-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
