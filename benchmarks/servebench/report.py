"""The report: the markdown table (pasted into benchmarks/README.md), the headline ratios, workload token stats, machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from .cases import INPROC_CASES
from .result import CaseResult, percentile


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model or platform.processor(),
        "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"),
        "tokenizers": version("tokenizers"),
        "uvicorn": version("uvicorn"),
        "berthing": version("berthing"),
        "platform": platform.platform(),
    }


def table(results: list[CaseResult]) -> str:
    """The markdown table printed and pasted into benchmarks/README.md."""
    head = (
        "| case | req/s | sentences/s | p50 ms | p90 ms | p99 ms | errors | mean batch | server CPU % (loop thread) "
        "| client CPU % | other CPU % |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for r in results:
        batch = r.server.get("mean_batch_size")
        cpu = "" if r.server_cpu_pct is None else f"{r.server_cpu_pct:.0f} ({r.server_loop_thread_cpu_pct:.0f})"
        rows.append(
            f"| {r.label} | {r.requests_per_s:.1f} | {r.sentences_per_s:.1f} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.errors} | {'' if batch is None else batch} | {cpu} | {r.client_cpu_pct:.0f} "
            f"| {r.other_cpu_pct:.0f} |"
        )
    return "\n".join([head, *rows])


def ratios(results: list[CaseResult]) -> dict[str, float]:
    """Server c32 single-sentence sentences/s over each in-process figure (target >= 0.80 vs predict)."""
    by = {r.case: r for r in results}
    out: dict[str, float] = {}
    if "c32" in by:
        for ref in INPROC_CASES:
            if ref in by and by[ref].sentences_per_s > 0:
                out[f"c32/{ref}"] = round(by["c32"].sentences_per_s / by[ref].sentences_per_s, 3)
    return out


def token_stats(model: Any, sentences: list[str]) -> dict[str, float]:
    """Token lengths of the pool (with [CLS]/[SEP]), so the workload can be compared across runs."""
    lengths = sorted(e.length for e in model.encoder.encode(sentences))
    return {
        "sentences": len(sentences),
        "min": lengths[0],
        "mean": round(sum(lengths) / len(lengths), 1),
        "p50": percentile(lengths, 50),
        "p90": percentile(lengths, 90),
        "max": lengths[-1],
    }
