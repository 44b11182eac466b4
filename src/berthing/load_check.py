"""A package checks itself where it is loaded: its probe runs when this host differs from where it was verified.

Why: int8 kernels differ by CPU class (runtime/cpu.py) and by ONNX Runtime release, and a package is packed on one
machine and served on others. The probe (packaging/probe.py) holds the original model's results on a few
calibration inputs; on a host of another class (or another ONNX Runtime, or always, if asked) the loaded graph
must meet the package's own thresholds on them, or the policy applies: `fallback` serves the fp32 graph the
package carries, `refuse` fails the load with the figures, `serve` serves it anyway with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berthing.engine.model import Model
from berthing.packaging.probe import PROBE_FILE, read_probe, run_probe
from berthing.packaging.tune import FALLBACK_DIR
from berthing.runtime.cpu import CpuInfo, detect
from berthing.types import ModelLoadError

log = logging.getLogger("berthing.load_check")
POLICIES = ("fallback", "refuse", "serve")
WHEN = ("auto", "always", "never")


@dataclass
class LoadCheck:
    """What the load-time check did: `outcome` is one of passed, fallback, failed-served, not-needed, skipped,
    no-probe; the rest explains it (figures, CPUs, cost), for the start line, /metrics and the management API."""

    outcome: str
    note: str
    graph: str = "model.onnx"  # the graph served, relative to the artifact
    reason: str | None = None  # why the probe ran
    metrics: dict[str, float] | None = None
    fallback_metrics: dict[str, float] | None = None
    verified_on: str | None = None  # the recorded CPU, described
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "note": self.note, "graph": self.graph, "reason": self.reason,
                "metrics": self.metrics, "fallbackMetrics": self.fallback_metrics, "verifiedOn": self.verified_on,
                "cpu": detect().describe(), "seconds": self.seconds}


def _reason(meta: dict[str, Any], when: str, host: CpuInfo) -> str | None:
    """Why the probe must run on this host, or None."""
    import onnxruntime

    if when == "always":
        return "verify_on_load=always"
    recorded = CpuInfo.from_dict(meta.get("cpu") or {})
    if recorded.cpu_class != host.cpu_class:
        return f"CPU class {host.cpu_class} here, {recorded.cpu_class} where it was verified"
    if meta.get("onnxruntime") and meta["onnxruntime"] != onnxruntime.__version__:
        return f"onnxruntime {onnxruntime.__version__} here, {meta['onnxruntime']} where it was verified"
    return None


def check_on_load(
    model: Model, artifact: Path, meta: dict[str, Any], policy: str, when: str,
    rebuild: Callable[[Path], None],
) -> LoadCheck:
    """Run the artifact's probe on `model` when needed and apply `policy`; `rebuild(graph)` swaps the model's
    runtimes for another graph of the artifact (the fp32 fallback). Raises ModelLoadError under `refuse`."""
    if policy not in POLICIES:
        raise ModelLoadError(f"unknown on_verify_fail {policy!r} (choices: {', '.join(POLICIES)})")
    if when not in WHEN:
        raise ModelLoadError(f"unknown verify_on_load {when!r} (choices: {', '.join(WHEN)})")
    record = meta.get("probe")
    level = (meta.get("optimization") or {}).get("level") or "none"
    host = detect()
    if record is None or not (artifact / PROBE_FILE).is_file():
        note = "no probe (packed before berthing recorded one): not checked on this CPU" if meta.get("optimization") else "fp32"
        int8 = (meta.get("optimization") or {}).get("int8") or {}
        if level == "int8" and host.saturates_u8s8 and not int8.get("pair_bound") and not int8.get("reduce_range"):
            note += f"; its int8 weights are not pair-bounded and can overflow on this CPU ({host.describe()}): repack it"
            log.warning("model %s: %s", model.name, note)
        return LoadCheck("no-probe", note)
    verified_on = CpuInfo.from_dict(record.get("cpu") or {}).describe()
    reason = _reason(record, when, host)
    if when == "never" or reason is None:
        outcome, note = ("skipped", "verify_on_load=never") if when == "never" else ("not-needed", "same CPU class")
        return LoadCheck(outcome, f"{note}; verified on {verified_on}", verified_on=verified_on)
    probe = read_probe(artifact)  # only now: ~140 KB of JSON that a start on the verified CPU class never parses
    assert probe is not None
    result = run_probe(model, probe, record.get("thresholds") or {})
    check = LoadCheck("passed", f"{level} passed its probe here ({result.figures()})", reason=reason,
                      metrics=result.metrics, verified_on=verified_on, seconds=result.seconds)
    if result.passed:
        return check
    failure = (
        f"model {model.name}: its {level} graph fails its probe on this CPU, {host.describe()} "
        f"({'; '.join(result.messages)}; verified on {verified_on}; {reason})"
    )
    fallback = artifact / FALLBACK_DIR / "model.onnx"
    if policy == "refuse":
        raise ModelLoadError(failure + ". Start with --on-verify-fail fallback or serve to load it anyway")
    if policy == "serve":
        log.warning("%s; serving it anyway (on_verify_fail=serve)", failure)
        check.outcome, check.note = "failed-served", f"{level} FAILED its probe here ({result.figures()}), served anyway"
        return check
    if not fallback.is_file():
        raise ModelLoadError(
            failure + ". The package carries no fp32 graph (packed with --int8-only): repack it without, or start "
            "with --on-verify-fail serve to serve it anyway"
        )
    rebuild(fallback)
    again = run_probe(model, probe, record.get("thresholds") or {})
    if not again.passed:
        raise ModelLoadError(failure + f"; its fp32 graph fails too ({'; '.join(again.messages)})")
    log.warning("%s; serving its fp32 graph instead (on_verify_fail=fallback)", failure)
    check.outcome, check.graph = "fallback", f"{FALLBACK_DIR}/model.onnx"
    check.note = f"{level} FAILED its probe here ({result.figures()}): serving fp32 ({again.figures()})"
    check.fallback_metrics, check.seconds = again.metrics, round(result.seconds + again.seconds, 3)
    return check
