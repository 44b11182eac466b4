"""Optimization levels of an exported model.onnx ("none", "fused", "int8"), and choosing one by measurement.

The levels themselves live in fuse.py (ONNX Runtime's transformer fusions) and int8.py (why int8 is more than
ONNX Runtime's plain quantize_dynamic); choose() builds, verifies and times them. onnxruntime and onnx are imported
inside the functions: the serving path never pays for onnxruntime.transformers or onnxruntime.quantization.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from berthing.packaging import verify as v
from berthing.packaging.fuse import fuse
from berthing.packaging.graph import replace_with, save_model
from berthing.packaging.int8 import DEFAULT_INT8, Int8Config, quantize
from berthing.spec import ModelSpec

Level = Literal["none", "fused", "int8"]
LEVELS: tuple[Level, ...] = ("none", "fused", "int8")


@dataclass
class Optimized:
    """An optimized graph and what was done to it (JSON-ready `record`, for a package manifest)."""

    path: Path
    level: Level
    record: dict[str, Any] = field(default_factory=dict)


def optimize(src_onnx: Path, level: Level, out_dir: Path, spec: ModelSpec, **options: Any) -> Path:
    """Write `out_dir/model.onnx` optimized to `level` and return its path (options: see optimize_with_record)."""
    return optimize_with_record(src_onnx, level, out_dir, spec, **options).path


def optimize_with_record(
    src_onnx: Path,
    level: Level,
    out_dir: Path,
    spec: ModelSpec,
    *,
    config: Int8Config | None = None,
    tokenizer: Path | None = None,
    texts: Sequence[str] | None = None,
    num_heads: int = 0,
) -> Optimized:
    """Optimize `src_onnx` into `out_dir/model.onnx`; out_dir may be src_onnx's own folder (replaced atomically).

    `tokenizer` (default: tokenizer.json beside src_onnx) and `texts` (default: the built-in calibration sample)
    feed the activation statistics int8 needs; `num_heads` helps the fusions when the graph does not show it.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown optimization level {level!r} (levels: {', '.join(LEVELS)})")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.onnx"
    record: dict[str, Any] = {"level": level}
    if level == "none":
        if src_onnx.resolve() != target.resolve():
            data = src_onnx.with_name(src_onnx.name + ".data")
            if data.is_file():  # weights beside the graph (models over 2 GB)
                shutil.copyfile(data, target.with_name(target.name + ".data"))
            replace_with(target, lambda tmp: shutil.copyfile(src_onnx, tmp))
    else:
        import onnx

        model = onnx.load(str(src_onnx))
        if level == "fused" or (config or DEFAULT_INT8).fuse_first:
            model, record["fusions"] = fuse(model, spec, num_heads)
        if level == "int8":
            cfg = config or DEFAULT_INT8
            tok = tokenizer or src_onnx.parent / "tokenizer.json"
            model, record["int8"] = quantize(model, spec, cfg, tok, list(texts) if texts is not None else None)
        replace_with(target, lambda tmp: save_model(model, tmp, target.name + ".data"))
    record["seconds"] = round(time.perf_counter() - started, 2)
    record["size_bytes"] = target.stat().st_size
    return Optimized(target, level, record)


DEFAULT_ORDER: tuple[Level, ...] = ("int8", "fused", "none")


@dataclass
class LevelResult:
    """One level tried by choose(): its graph, verification, speed, and what the optimizer did."""

    level: Level
    path: str | None
    passed: bool
    speed: float  # inputs per second on the verification inputs (sentences/s for embed and classify)
    report: dict[str, Any] | None  # VerifyReport.to_dict()
    record: dict[str, Any]
    error: str | None = None  # the optimization itself failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Choice:
    """The chosen level (None when none passed) and every level's result, for the package manifest."""

    level: Level | None
    path: Path | None
    results: list[LevelResult]
    # what every level was verified on: the task's inputs, their options and the reference's results (for probes)
    inputs: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    reference_results: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "results": [r.to_dict() for r in self.results]}

    def result(self, level: Level) -> LevelResult | None:
        return next((r for r in self.results if r.level == level), None)


def choose(
    src_onnx: Path,
    spec: ModelSpec,
    work_dir: Path,
    levels: Sequence[Level] = DEFAULT_ORDER,
    *,
    tokenizer: Path | None = None,
    reference: Any = None,
    texts: Sequence[str] | Path | None = None,
    thresholds: Any = None,
    config: Int8Config | None = None,
    threads: int = 0,
    num_heads: int = 0,
    tolerance: float = 0.05,
    rounds: int = 3,
    progress: Any = None,
) -> Choice:
    """The fastest level that passes verification, with every level's report and speed.

    Each level is written to work_dir/<level>/model.onnx, verified against `reference` (a Model or path for
    verify.as_model; default: src_onnx itself, the fp32 graph) and timed round-robin on the verification inputs.
    Speeds within `tolerance` of the fastest count as a tie, and ties go to the earlier level in `levels`
    (int8 -> fused -> none by default), so timing noise does not flip the choice between equals.
    """
    say = progress or (lambda _message: None)
    tok = tokenizer or src_onnx.parent / "tokenizer.json"
    sample = v.read_texts_or_default(texts)
    ref_model = v.as_model(reference if reference is not None else src_onnx, spec, tok, threads)
    inputs, options = v.task_inputs(spec.task, sample)
    say(f"running the reference on {len(inputs)} calibration inputs")
    ref_results = ref_model.predict(inputs, **options)
    results: list[LevelResult] = []
    models: dict[str, Any] = {}
    for level in levels:
        say(f"optimizing: {level}, then verifying it")
        try:
            done = optimize_with_record(
                src_onnx, level, work_dir / level, spec, config=config, tokenizer=tok,
                texts=sample if level == "int8" else None, num_heads=num_heads,
            )
            model = v.onnx_model(done.path, spec, tok, threads, level)
        except Exception as exc:  # noqa: BLE001 - a level that cannot be built is reported and skipped, not fatal
            results.append(LevelResult(level, None, False, 0.0, None, {"level": level}, f"{type(exc).__name__}: {exc}"))
            continue
        report = v.verify(
            model, ref_model, spec=spec, tokenizer=tok, texts=sample, thresholds=thresholds, reference_results=ref_results
        )
        models[level] = model
        results.append(LevelResult(level, str(done.path), report.passed, 0.0, report.to_dict(), done.record))
    if len(models) > 1:
        say(f"timing {', '.join(models)} on the calibration inputs")
    speeds = v.interleaved_speeds(models, inputs, options, rounds if len(models) > 1 else 1) if models else {}
    for r in results:
        r.speed = round(speeds.get(r.level, 0.0), 1)
    passing = [r for r in results if r.passed]
    if not passing:
        return Choice(None, None, results, inputs, options, ref_results)
    fastest = max(r.speed for r in passing)
    chosen = next(r for r in passing if r.speed >= fastest * (1 - tolerance))
    return Choice(chosen.level, Path(chosen.path) if chosen.path else None, results, inputs, options, ref_results)
