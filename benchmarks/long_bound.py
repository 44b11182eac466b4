"""The engine's bound on long texts: single-thread ONNX Runtime sessions running ~250-token texts side by side.

Why: the peers' long8 case (8 clients, one long text per request) is CPU-bound with berthing's lanes busy on
every core. This measures what the same artifact does with no HTTP and no tokenization in the loop: one
single-thread session alone, then one per core concurrently (what the lanes do), on the long workload.

    .venv/bin/python benchmarks/long_bound.py                       # the default model's served artifact
    .venv/bin/python benchmarks/long_bound.py --artifact DIR --count 64
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import berthing
    from berthing.runtime.onnx import OnnxRuntime
    from berthing.runtime.threads import available_cores

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, help="folder with model.onnx and tokenizer.json (default: the served MiniLM)")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    model = berthing.load() if args.artifact is None else berthing.load(str(args.artifact))
    onnx = model.runtimes[0].model_path
    long_file = HERE / "workloads" / "long.txt"
    if not long_file.is_file():
        from workloads.make_workloads import main as make  # the workload files are written on first use

        make()
    texts = [line.strip() for line in long_file.read_text("utf-8").splitlines() if line.strip()][: args.count]
    items = model.encoder.encode(texts)
    features = [model.encoder.collate([item]) for item in items]

    def rate(sessions: int) -> float:
        runtimes = [OnnxRuntime(onnx, 1) for _ in range(sessions)]
        for rt in runtimes:
            rt.run(features[0])
        best = 0.0
        for _ in range(args.rounds):
            parts = [features[i::sessions] for i in range(sessions)]
            threads = [
                threading.Thread(target=lambda rt=rt, part=part: [rt.run(f) for f in part])
                for rt, part in zip(runtimes, parts, strict=True)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best = max(best, len(features) / (time.perf_counter() - started))
        return best

    mean = sum(item.length for item in items) / len(items)
    cores = available_cores()
    print(f"{len(items)} long texts (mean {mean:.0f} tokens), {onnx}")
    print(f"1 single-thread session: {rate(1):.1f} texts/s")
    print(f"{cores} single-thread sessions side by side: {rate(cores):.1f} texts/s")


if __name__ == "__main__":
    main()
