"""sentence-transformers in its own process, driven over stdin/stdout JSON lines by benchmarks/peers/run.py.

Why a separate process: the reference vectors and the in-process figures must come from a process the benchmark can
measure (CPU, RSS) and stop like the servers, and run.py itself must stay light (no torch) while servers run.

    .venv/bin/python benchmarks/peers/st_worker.py MODEL_DIR      # then one JSON command per line:
    {"op": "embed", "texts": [...]}                               # -> {"vectors": [[...], ...]}
    {"op": "run", "texts": [...], "per_call": 32, "warmup": 2, "duration": 15, "max_calls": 5000}
                                                                  # -> {"latencies": [...], "elapsed": s}
    {"op": "quit"}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

BATCH_SIZE = 32


def _run(model: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    """Closed loop of encode() calls of `per_call` texts each, bounded by a call count and a wall time."""
    texts: list[str] = cmd["texts"]
    per_call = int(cmd["per_call"])
    calls = [[texts[(i * per_call + j) % len(texts)] for j in range(per_call)] for i in range(len(texts))]
    warm_end = time.perf_counter() + float(cmd["warmup"])
    i = 0
    while time.perf_counter() < warm_end:
        model.encode(calls[i % len(calls)], batch_size=BATCH_SIZE)
        i += 1
    offset = len(calls) // 2  # timed calls start on other text than the warm-up's, as servebench's cases do
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + float(cmd["duration"])
    n = 0
    while n < int(cmd["max_calls"]) and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        model.encode(calls[(offset + n) % len(calls)], batch_size=BATCH_SIZE)
        latencies.append(time.perf_counter() - t0)
        n += 1
    return {"latencies": latencies, "elapsed": time.perf_counter() - started}


def main() -> int:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(sys.argv[1], device="cpu")
    import sentence_transformers
    import torch

    print(json.dumps({"ready": True, "sentence_transformers": sentence_transformers.__version__,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "embed":
            vectors = model.encode(cmd["texts"], batch_size=BATCH_SIZE, normalize_embeddings=False)
            out: dict[str, Any] = {"vectors": vectors.tolist()}
        elif cmd["op"] == "run":
            out = _run(model, cmd)
        else:
            out = {"error": f"unknown op {cmd['op']!r}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
