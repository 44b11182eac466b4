"""Thread counts come from the cores this process may use, never from constants."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's CPU affinity mask (what a container or taskset allows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, requested: int = 0) -> int:
    """Intra-op threads for each of `workers` model workers: the cores split evenly unless set."""
    if requested > 0:
        return requested
    return max(1, available_cores() // max(1, workers))
