"""Export attention: transformers' SDPA trace vs eager attention, fp32 and int8, on all-MiniLM-L6-v2.

Why: the exporter traces whatever attention transformers picks; the SDPA trace carries IsNaN/Where guards around the
softmax, the eager one is plain MatMul/Softmax that ONNX Runtime runs (and fuses) better. This script exports the
default model both ways, builds berthing's int8 from each, verifies int8 against PyTorch, and times all four with
`Model.predict` over 512 sentences of workloads/short.txt, round-robin (verify.interleaved_speeds).

    .venv/bin/python benchmarks/attention_bench.py          # ~3 minutes
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from berthing.packaging import verify as v  # noqa: E402
from berthing.packaging.checkpoint import read_checkpoint  # noqa: E402
from berthing.packaging.export import write_artifact  # noqa: E402
from berthing.packaging.optimize import optimize_with_record  # noqa: E402
from berthing.packaging.sources import default_model_path  # noqa: E402
from workloads.make_workloads import ensure  # noqa: E402


def main() -> None:
    ckpt = default_model_path()
    spec = read_checkpoint(ckpt, None)
    root = Path(tempfile.mkdtemp(prefix="attention-bench-"))
    try:
        models = {}
        reference = None
        for attention in ("sdpa", "eager"):
            folder = root / attention
            folder.mkdir()
            write_artifact(ckpt, spec, folder, attention=attention)
            tokenizer = folder / "tokenizer.json"
            reference = reference or v.torch_model(ckpt, spec, tokenizer)
            int8 = optimize_with_record(folder / "model.onnx", "int8", folder / "int8", spec, tokenizer=tokenizer)
            print(attention, "int8:", v.verify(int8.path, reference, spec=spec, tokenizer=tokenizer).summary())
            models[f"{attention}-fp32"] = v.onnx_model(folder / "model.onnx", spec, tokenizer)
            models[f"{attention}-int8"] = v.onnx_model(int8.path, spec, tokenizer)
        texts = (ensure() / "short.txt").read_text(encoding="utf-8").splitlines()[:512]
        speeds = v.interleaved_speeds(models, texts, {}, rounds=4, min_seconds=1.0)
        print("sentences/s:", json.dumps({k: round(x, 1) for k, x in speeds.items()}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
