"""What the server did during a case, from its own Prometheus /metrics: batch sizes, runtime time, padding.

Why: the client sees only latency and throughput; the batcher's behaviour (mean batch size, padding efficiency)
explains them. Scraped before and after each timed window; the delta is the case's.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from .client import Connection, HttpError, get_bytes

_METRIC_RE = re.compile(r'^(berthing_[a-z_]+)\{([^}]*)\}\s+(\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Flatten the berthing_* series into {"name{le=..|kind=..}": value} (model label dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'(\w+="[^"]*")', m.group(2)))
        keep = ",".join(f"{k}={v.strip(chr(34))}" for k, v in sorted(labels.items()) if k not in ("model",))
        key = f"{m.group(1)}{{{keep}}}"
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float], elapsed: float) -> dict[str, Any]:
    """What the server did during one case: batch count and size histogram, runtime busy share, padding."""

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = d("berthing_batch_size_count{}")
    if batches <= 0:
        return {}
    hist: dict[str, int] = {}  # items per batch: "9-16" -> number of batches
    prev, low = 0.0, 1
    for le in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0", "+Inf"):
        cum = d(f"berthing_batch_size_bucket{{le={le}}}")
        high = le.removesuffix(".0")
        if cum - prev > 0:
            hist[high if str(low) == high else f"{low}-{high}" if high != "+Inf" else f">={low}"] = int(cum - prev)
        prev = cum
        low = int(float(le)) + 1 if le != "+Inf" else low
    runtime_s = d("berthing_batch_seconds_sum{}")
    real, padded = d("berthing_tokens_total{kind=real}"), d("berthing_tokens_total{kind=padded}")
    req_n = d("berthing_request_seconds_count{}")
    return {
        "batches": int(batches),
        "mean_batch_size": round(d("berthing_batch_size_sum{}") / batches, 2),
        "batch_size_hist": hist,
        "mean_batch_ms": round(runtime_s / batches * 1000, 2),
        "runtime_busy_pct": round(100 * runtime_s / elapsed, 1) if elapsed > 0 else None,
        "padding_efficiency": round(real / padded, 3) if padded else None,
        "mean_real_tokens_per_item": round(real / d("berthing_batch_size_sum{}"), 1),
        "server_mean_request_ms": round(d("berthing_request_seconds_sum{}") / req_n * 1000, 2) if req_n else None,
    }


async def scrape(host: str, port: int) -> dict[str, float]:
    """GET /metrics on a fresh connection (not one of the workers')."""
    conn = Connection(host, port)
    try:
        status, body = await conn.request(get_bytes(host, port, "/metrics"))
    except (OSError, HttpError, asyncio.IncompleteReadError):
        return {}
    finally:
        await conn.close()
    return parse_metrics(body.decode("utf-8", "replace")) if status == 200 else {}
