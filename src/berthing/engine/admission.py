"""Admission by expected wait: the tokens ahead of a request over the model's measured tokens/s.

Counting queued items says nothing about time (2,048 short items drain in a second, 2,048 long ones in a minute), so
the batcher measures what it drains while busy and refuses at once a request that would wait past `max_queue_ms` or
its own deadline, with a Retry-After computed from the same figures.
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar
from typing import Any

from berthing.types import InvalidInput, Overloaded

# The request's deadline (time.monotonic()), set by the server from X-Berthing-Timeout-Ms for every protocol; a
# `timeout_ms` option in the body wins over it.
DEADLINE: ContextVar[float | None] = ContextVar("berthing_deadline", default=None)
MAX_TIMEOUT_MS = 3_600_000.0

# A throughput sample covers at least this much busy time, so one tiny batch does not swing the estimate.
WINDOW_S = 0.2
# Weight of a new sample in the moving average: the estimate follows a change of load (lanes, long texts) within a
# second of busy time.
SMOOTHING = 0.3


class Throughput:
    """Tokens drained per second of busy time (at least one batch running), over every worker and lane together.

    Busy time counts once however many batches overlap, so the figure is the model's aggregate rate; idle time is
    left out, so a lightly loaded server does not look slow."""

    def __init__(self) -> None:
        self.rate: float | None = None  # tokens/s; None until the first window closes
        self._mark = 0.0
        self._window_s = 0.0
        self._window_tokens = 0

    def started(self, busy_before: int) -> None:
        """A batch starts; `busy_before` batches were running already."""
        if busy_before == 0:
            self._mark = time.perf_counter()

    def finished(self, tokens: int) -> None:
        """A batch of `tokens` real tokens ended (failed or not: the runtime spent the time)."""
        now = time.perf_counter()
        self._window_s += now - self._mark
        self._mark = now
        self._window_tokens += tokens
        if self._window_s >= WINDOW_S:
            sample = self._window_tokens / self._window_s
            self.rate = sample if self.rate is None else (1 - SMOOTHING) * self.rate + SMOOTHING * sample
            self._window_s, self._window_tokens = 0.0, 0

    def seconds(self, tokens: int) -> float | None:
        """Expected seconds to drain `tokens`, or None before any measurement."""
        return None if not self.rate else tokens / self.rate


def retry_after(seconds: float) -> int:
    """Whole seconds for Retry-After (HTTP takes integers), at least 1."""
    return max(1, math.ceil(seconds))


def check_wait(
    name: str, ahead_s: float, own_s: float, max_queue_ms: float, deadline_s: float | None
) -> None:
    """Refuse (Overloaded) a request whose items would wait over `max_queue_ms`, or end after its deadline.

    `ahead_s`: expected drain time of the work queued and running before it; `own_s`: of its own items;
    `deadline_s`: seconds left until the request's deadline (None: no deadline)."""
    limit_s = max_queue_ms / 1000.0
    if max_queue_ms and ahead_s > limit_s:
        raise Overloaded(
            f"model {name!r} is busy: a new request would wait about {ahead_s:.1f} s in its queue "
            f"(limit max_queue_ms={max_queue_ms:g}); retry later",
            retry_after=retry_after(ahead_s - limit_s),
        )
    if deadline_s is not None and ahead_s + own_s > deadline_s:
        raise Overloaded(
            f"model {name!r} is busy: this request would be answered in about {ahead_s + own_s:.1f} s, past its "
            f"deadline ({max(deadline_s, 0) * 1000:.0f} ms away); retry later or allow more time",
            retry_after=retry_after(ahead_s),
        )


def deadline_after(timeout_ms: Any, where: str = "timeout_ms") -> float:
    """The monotonic deadline `timeout_ms` from now, or a 422 naming `where` when it is not a positive number."""
    if isinstance(timeout_ms, str):
        try:
            timeout_ms = float(timeout_ms)
        except ValueError:
            timeout_ms = None
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidInput(f"{where} must be a number of milliseconds above 0 and at most {MAX_TIMEOUT_MS:.0f}")
    return time.monotonic() + float(timeout_ms) / 1000.0
