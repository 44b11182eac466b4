"""Graph benchmark: ONNX graphs of one model timed side by side in one ONNX Runtime session each, no batcher.

Why: a change to the int8 graph (or to the session's graph optimizations) shows its effect here without the
server's or the batcher's noise: long texts one at a time (what a lane runs under long8) and short sentences in
sorted batches of 8, interleaved rounds, best round kept.

    .venv/bin/python benchmarks/graph_bench.py GRAPH.onnx OTHER.onnx
    .venv/bin/python benchmarks/graph_bench.py GRAPH.onnx GRAPH.onnx:SkipLayerNormFusion   # with that fusion off
    .venv/bin/python benchmarks/graph_bench.py --threads 2 --rounds 6 GRAPH.onnx ...

A graph given as PATH:NAME[,NAME] runs with those ONNX Runtime optimizers disabled; a plain PATH runs with every
optimizer on (berthing's own sessions leave runtime.onnx.DISABLED_OPTIMIZERS off). The texts are the peers'
workload files, tokenized with the default model's tokenizer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import onnxruntime as ort

    import berthing
    from berthing.runtime.onnx import session_options

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("graphs", nargs="+", help="model.onnx paths, each optionally :Optimizer,Optimizer to disable")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--long", type=int, default=24, help="long texts, one per run")
    p.add_argument("--short", type=int, default=256, help="short sentences, sorted batches of 8")
    args = p.parse_args()
    workloads = HERE / "workloads"
    if not (workloads / "long.txt").is_file():
        from workloads.make_workloads import main as make  # the workload files are written on first use

        make()

    def lines(name: str, n: int) -> list[str]:
        return [x.strip() for x in (workloads / name).read_text("utf-8").splitlines() if x.strip()][:n]

    encoder = berthing.load().encoder
    long_batches = [encoder.collate([item]) for item in encoder.encode(lines("long.txt", args.long))]
    short = sorted(encoder.encode(lines("short.txt", args.short)), key=lambda item: item.length)
    short_batches = [encoder.collate(short[i : i + 8]) for i in range(0, len(short), 8)]

    def runner(spec: str):  # a closure over one session
        path, _, disabled = spec.partition(":")
        session = ort.InferenceSession(
            path, session_options(args.threads), providers=["CPUExecutionProvider"],
            disabled_optimizers=[d for d in disabled.split(",") if d],
        )
        names = {i.name for i in session.get_inputs()}

        def run(features) -> None:
            feeds = {"input_ids": features.input_ids, "attention_mask": features.attention_mask}
            if "token_type_ids" in names and features.token_type_ids is not None:
                feeds["token_type_ids"] = features.token_type_ids
            session.run(None, feeds)

        run(long_batches[0])
        run(short_batches[0])
        return run

    runs = {spec: runner(spec) for spec in args.graphs}
    best: dict[str, list[float]] = {spec: [0.0, 0.0] for spec in runs}
    for _ in range(args.rounds):
        for spec, run in runs.items():
            for k, (batches, items) in enumerate(((long_batches, len(long_batches)), (short_batches, len(short)))):
                started = time.perf_counter()
                for features in batches:
                    run(features)
                best[spec][k] = max(best[spec][k], items / (time.perf_counter() - started))
    print(f"{args.threads} thread(s), best of {args.rounds} interleaved rounds")
    print("| graph | long texts/s (1 per run) | short sentences/s (batches of 8) |")
    print("|---|---:|---:|")
    for spec, (long_rate, short_rate) in best.items():
        print(f"| `{spec}` | {long_rate:.1f} | {short_rate:.1f} |")


if __name__ == "__main__":
    main()
