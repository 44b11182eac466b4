"""One case's figures (`CaseResult`) and how raw latencies and CPU readings become them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CaseResult:
    """One case's figures; latencies in milliseconds."""

    case: str
    label: str
    concurrency: int
    sentences_per_request: int
    requests: int = 0
    sentences: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    requests_per_s: float = 0.0
    sentences_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    stopped_by: str = ""
    client_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    steal_pct: float = 0.0
    waited_for_quiet_s: float = 0.0
    attempts: int = 1
    server_cpu_pct: float | None = None
    server_loop_thread_cpu_pct: float | None = None
    server: dict[str, Any] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(result: CaseResult, latencies: list[float], errors: Counter[str], elapsed: float, stopped_by: str) -> None:
    """Fill rates and latency percentiles from raw per-request latencies (seconds)."""
    latencies.sort()
    result.requests = len(latencies)
    result.sentences = len(latencies) * result.sentences_per_request
    result.errors = sum(errors.values())
    result.error_kinds = dict(errors)
    result.seconds = round(elapsed, 3)
    result.requests_per_s = len(latencies) / elapsed if elapsed > 0 else 0.0
    result.sentences_per_s = result.sentences / elapsed if elapsed > 0 else 0.0
    result.p50_ms = percentile(latencies, 50) * 1000
    result.p90_ms = percentile(latencies, 90) * 1000
    result.p99_ms = percentile(latencies, 99) * 1000
    result.mean_ms = (sum(latencies) / len(latencies) * 1000) if latencies else float("nan")
    result.stopped_by = stopped_by


def set_usage(result: CaseResult, usage: dict[str, float]) -> None:
    """Copy a CpuWatch reading onto the result."""
    for key, value in usage.items():
        setattr(result, key, value)
