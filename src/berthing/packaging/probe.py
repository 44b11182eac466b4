"""A package's self-check: the original model's outputs on a few calibration inputs, and the CPU they were checked on.

Why: verification at pack time runs on the packing CPU, and int8 kernels differ between CPU classes (see
runtime/cpu.py). The probe lets a serving host check the graph it is about to serve, without torch: it runs the
probe inputs through the loaded Model and compares them with the reference results under the package's own
thresholds, through the same task code as `berthing pack`'s verification (verify.compare / verify.judge).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from berthing.engine.model import Model

PROBE_FILE = "probe.json"
PROBE_INPUTS = 32  # MiniLM: ~140 KB of JSON for 32 vectors of 384 floats at 7 significant digits
FORMAT = 1


def pick(count: int, n: int = PROBE_INPUTS) -> list[int]:
    """Evenly spaced indices over the calibration inputs (short and long texts, every language of the sample)."""
    if count <= n:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, n).round()})


def _plain(value: Any) -> Any:
    """Task results -> JSON values; floats to 7 significant digits (float32 holds about that many)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(f"{float(value):.7g}")
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class Probe:
    """Inputs, the options they are predicted with, and the reference model's results for them."""

    task: str
    inputs: list[Any]
    options: dict[str, Any]
    results: list[Any]
    reference: str = "pytorch"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "task": self.task, "reference": self.reference, "options": self.options,
                "inputs": self.inputs, "results": _plain(self.results)}


def write_probe(folder: Path, probe: Probe) -> Path:
    """Write folder/probe.json; returns its path."""
    path = folder / PROBE_FILE
    path.write_text(json.dumps(probe.to_dict(), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return path


def read_probe(folder: Path) -> Probe | None:
    """The probe a package carries, or None for packages packed before probes existed."""
    path = folder / PROBE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Probe(data["task"], data["inputs"], data.get("options", {}), data["results"], data.get("reference", "pytorch"))


@dataclass
class ProbeResult:
    """What running a probe on this host gave: figures, thresholds, verdict and cost."""

    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float]
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self) -> str:
        """'cosine_min 0.9712, cosine_mean 0.9951' for start lines and errors."""
        return figures(self.metrics, self.thresholds)


def figures(metrics: dict[str, float], thresholds: dict[str, float]) -> str:
    """The figures that have a threshold (all of them when none has), as 'name 0.1234, ...'."""
    shown = list(thresholds) or list(metrics)
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in shown if k in metrics)


def run_probe(model: Model, probe: Probe, thresholds: dict[str, float]) -> ProbeResult:
    """Predict the probe's inputs with `model` and judge them against the reference results and `thresholds`
    (the package's own: the ones its verification used)."""
    from berthing.packaging.verify import Thresholds, compare, judge

    started = time.perf_counter()
    results = model.predict(list(probe.inputs), **probe.options)
    metrics = compare(probe.task, results, probe.results, model.spec)
    marks: dict[str, float | None] = dict.fromkeys(Thresholds.__dataclass_fields__)  # a check turned off at pack: off
    marks.update({k: float(v) for k, v in thresholds.items() if k in marks})
    applied, _failed, messages = judge(probe.task, metrics, Thresholds(**marks))
    return ProbeResult(not messages, {k: round(v, 6) for k, v in metrics.items()}, applied, messages,
                       round(time.perf_counter() - started, 3))


def build_probe(
    artifact: Path, spec: Any, inputs: list[Any], options: dict[str, Any], reference_results: list[Any],
    thresholds: dict[str, float], threads: int = 0,
) -> dict[str, Any]:
    """Write artifact/probe.json from a verification's inputs and reference results, run it once on the graph in
    artifact/model.onnx on this CPU, and return the record for berthing.json: where it was checked, its figures
    and what it cost (the price of checking on load)."""
    import onnxruntime

    from berthing.packaging.verify import onnx_model
    from berthing.runtime.cpu import detect

    chosen = pick(len(inputs))
    probe = Probe(spec.task, [inputs[i] for i in chosen], options, [reference_results[i] for i in chosen])
    path = write_probe(artifact, probe)
    model = onnx_model(artifact / "model.onnx", spec, artifact / "tokenizer.json", threads, "probe")
    here = run_probe(model, read_probe(artifact) or probe, thresholds)  # the rounded copy a host will read
    return {
        "file": PROBE_FILE, "inputs": len(chosen), "bytes": path.stat().st_size, "cpu": detect().to_dict(),
        "onnxruntime": onnxruntime.__version__, "thresholds": dict(thresholds), "metrics": here.metrics,
        "passed": here.passed, "seconds": here.seconds,
    }
