"""Give an exported artifact its optimization level: what `berthing pack` and a checkpoint's first load run.

`auto` (the default) builds int8, fused and fp32 graphs, verifies each against the original PyTorch model on the
calibration texts, times the ones that pass and keeps the fastest; a named level is built and verified alone. A
level that misses its thresholds is refused with its figures unless forced. The record (every level's figures,
speed, the thresholds and the calibration sample) goes into berthing.json and a package's manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from berthing.packaging.probe import build_probe
from berthing.spec import ModelSpec
from berthing.types import BerthingError, ModelLoadError

CHOICES = ("auto", "none", "fused", "int8")
FALLBACK_DIR = "fp32"  # a package's fp32 graph, served where the int8 graph fails its probe
TUNE_FORMAT = "3"  # bump when what a level builds changes, so cached optimized artifacts are rebuilt
Progress = Callable[[str], None]


def _thresholds_cls():
    from berthing.packaging.verify import Thresholds

    return Thresholds


def parse_thresholds(values: Mapping[str, Any] | None) -> Any:
    """Thresholds from {name: number or 'off'}; an unknown name is an error that lists the known ones."""
    thresholds_cls = _thresholds_cls()
    known = [f.name for f in fields(thresholds_cls)]
    changes: dict[str, float | None] = {}
    for name, value in (values or {}).items():
        if name not in known:
            raise BerthingError(f"unknown verification threshold {name!r} (thresholds: {', '.join(known)})")
        if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none")):
            changes[name] = None
            continue
        try:
            changes[name] = float(value)
        except (TypeError, ValueError):
            raise BerthingError(f"threshold {name} must be a number or 'off', not {value!r}") from None
    return replace(thresholds_cls(), **changes)


def parse_threshold_flags(items: list[str] | None) -> dict[str, str]:
    """`--threshold cosine_min=0.97` flags -> {name: value}."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise BerthingError(f"--threshold takes NAME=VALUE (e.g. cosine_min=0.97), not {item!r}")
        out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class OptimizeRequest:
    """What was asked for: a level (or auto), the calibration file (None: the built-in sample), thresholds, force."""

    level: str = "auto"
    calibration: Path | None = None
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    force: bool = False

    def __post_init__(self) -> None:
        if self.level not in CHOICES:
            raise BerthingError(f"unknown optimization level {self.level!r} (levels: {', '.join(CHOICES)})")
        if self.calibration is not None and not self.calibration.is_file():
            raise BerthingError(f"calibration file {self.calibration} not found (one text per line)")
        parse_thresholds(self.thresholds)  # fail early, before any export

    def key(self) -> str:
        """Cache key of the optimized artifact: every input that can change what is built or chosen."""
        from berthing.packaging.int8 import DEFAULT_INT8
        from berthing.runtime.cpu import detect

        calibration = hashlib.sha256(self.calibration.read_bytes()).hexdigest() if self.calibration else "built-in"
        data = {
            "format": TUNE_FORMAT, "level": self.level, "force": self.force, "calibration": calibration,
            "thresholds": asdict(parse_thresholds(self.thresholds)), "int8": DEFAULT_INT8.to_dict(),
            "cpu": detect().cpu_class,  # auto keeps the fastest level on this CPU; a shared cache keeps one per class
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def tune(
    checkpoint: Path,
    spec: ModelSpec,
    artifact: Path,
    request: OptimizeRequest,
    *,
    threads: int = 0,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    keep_fp32: bool = False,
) -> dict[str, Any]:
    """Replace artifact/model.onnx (the fp32 export) by the requested level, verified against PyTorch; return the record.

    Also writes artifact/probe.json (the reference's results on a few calibration inputs, checked on this CPU) and,
    with keep_fp32 and an int8 pick, keeps the fp32 export as artifact/fp32/model.onnx for a host whose check fails.
    Raises ModelLoadError with every level's figures when the level (auto: every level) misses its thresholds,
    unless request.force.
    """
    from berthing.packaging.calibration import calibration_texts, read_texts
    from berthing.packaging.int8 import DEFAULT_INT8
    from berthing.packaging.optimize import DEFAULT_ORDER, choose
    from berthing.packaging.verify import torch_model

    say = progress or (lambda _message: None)
    thresholds = parse_thresholds(request.thresholds)
    texts = read_texts(request.calibration) if request.calibration else calibration_texts()
    levels = DEFAULT_ORDER if request.level == "auto" else (request.level,)
    tokenizer = artifact / "tokenizer.json"
    say(f"optimizing ({request.level}): loading the PyTorch reference")
    reference = torch_model(checkpoint, spec, tokenizer, threads, allow_pickle)
    work = Path(tempfile.mkdtemp(prefix=".berthing-optimize-", dir=artifact.parent))
    try:
        choice = choose(
            artifact / "model.onnx", spec, work, levels, tokenizer=tokenizer, reference=reference, texts=texts,
            thresholds=thresholds, threads=threads, progress=say,
        )
        record: dict[str, Any] = {
            "level": choice.level,
            "requested": request.level,
            "forced": False,
            "reference": "pytorch",
            "calibration": {
                "source": request.calibration.name if request.calibration else "built-in",
                "texts": len(texts),
                "sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
            },
            "thresholds": next((r.report["thresholds"] for r in choice.results if r.report), {}),
            "levels": [_level_record(r) for r in choice.results],
        }
        picked = choice.level
        if picked is None:
            built = [r for r in choice.results if r.path]
            if not request.force or not built:
                raise ModelLoadError(refusal(request.level, choice.results))
            picked = built[-1].level if request.level == "auto" else built[0].level  # auto + force: the fp32 graph
            record.update(level=picked, forced=True)
        if picked == "int8":
            record["int8"] = DEFAULT_INT8.to_dict()
            if keep_fp32:
                _keep_fp32(artifact)
        chosen = work / picked / "model.onnx"
        for suffix in ("", ".data"):
            src = chosen.with_name(chosen.name + suffix)
            dst = artifact / ("model.onnx" + suffix)
            if src.is_file():
                shutil.copyfile(src, dst)
            elif suffix:
                dst.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("checking the kept graph's probe on this CPU")
    probe = build_probe(artifact, spec, choice.inputs, choice.options, choice.reference_results, record["thresholds"],
                        threads)
    meta = json.loads((artifact / "berthing.json").read_text(encoding="utf-8"))
    meta["optimization"] = record
    meta["probe"] = probe
    (artifact / "berthing.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return record


def _keep_fp32(artifact: Path) -> None:
    """Copy the fp32 export (and its external weights, if any) to artifact/fp32/ before int8 replaces it."""
    (artifact / FALLBACK_DIR).mkdir(exist_ok=True)
    for suffix in ("", ".data"):
        src = artifact / ("model.onnx" + suffix)
        if src.is_file():
            shutil.copyfile(src, artifact / FALLBACK_DIR / src.name)


def _level_record(result: Any) -> dict[str, Any]:
    """One level's figures for the manifest: passed, speed, metrics, failures, file size (no temporary paths)."""
    report = result.report or {}
    return {
        "level": result.level,
        "passed": result.passed,
        "inputs_per_s": result.speed,
        "metrics": report.get("metrics", {}),
        "failed": report.get("messages", []),
        "inputs": report.get("inputs", 0),
        "size_bytes": result.record.get("size_bytes"),
        "error": result.error,
    }


def refusal(requested: str, results: list[Any]) -> str:
    """Why no level was accepted, with each level's figures, and how to go on."""
    parts = []
    for r in results:
        if r.error:
            parts.append(f"{r.level}: could not be built ({r.error})")
            continue
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (r.report or {}).get("metrics", {}).items())
        messages = "; ".join((r.report or {}).get("messages", []))
        parts.append(f"{r.level}: {metrics} -> {'passed' if r.passed else 'FAILED ' + messages}")
    what = "no optimization level passed" if requested == "auto" else f"optimization level {requested!r} did not pass"
    return (
        f"{what} verification against the PyTorch model: " + " | ".join(parts)
        + ". Use another level, loosen a threshold (--threshold NAME=VALUE), or --force to accept it anyway"
    )


def summary(record: Mapping[str, Any] | None) -> str:
    """One line for the CLI: the level kept, its figures and speed, and the levels it beat."""
    if not record:
        return "optimization: none (not verified against PyTorch beyond the export check)"
    kept = next((lv for lv in record.get("levels", []) if lv["level"] == record.get("level")), None)
    figures = ", ".join(f"{k} {v:.4f}" for k, v in (kept or {}).get("metrics", {}).items())
    others = ", ".join(
        f"{lv['level']} {lv['inputs_per_s']:.0f}/s{'' if lv['passed'] else ' (failed)'}"
        for lv in record.get("levels", []) if lv["level"] != record.get("level")
    )
    speed = f" at {kept['inputs_per_s']:.0f} inputs/s" if kept and kept.get("inputs_per_s") else ""
    forced = " FORCED past its thresholds" if record.get("forced") else ""
    tail = f"; also tried {others}" if others else ""
    return f"optimization: {record.get('level')}{forced} ({figures}){speed}{tail}"
