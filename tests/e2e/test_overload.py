"""Open-loop overload against a real `berthing serve` with the default model: every request is answered 200, or 503
with a Retry-After and the JSON error, none is lost; the server serves normally afterwards.

The short version of benchmarks/overload.py (which runs 0.5x-8x for 20-60 s and reports latency): arrivals at 4x
the capacity measured just before, for a few seconds. No timing is asserted; a small max_queue_ms makes the refusals
certain on any machine.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx

from tests.support.http import metric
from tests.support.openloop import closed_loop_rate, open_loop, post
from tests.support.servers import OutputTail, cli_server

TEXTS = [f"sentence number {i} about shipping models to production, with a few more words" for i in range(8)]


def test_four_times_capacity_is_answered_or_refused_with_retry_after_and_nothing_is_lost() -> None:
    with cli_server(["--max-queue-ms", "300", "--no-ui"]) as (proc, url):
        OutputTail(proc)  # the server's log must never fill its pipe
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 0
        payload = post(host, port, "/predictions/minilm", json.dumps({"input": TEXTS}).encode())
        capacity = closed_loop_rate(host, port, payload, clients=4, seconds=2.0)
        before = metric(url, "berthing_requests_total", model="minilm:1.0", status="503") or 0.0
        load = open_loop(host, port, payload, rate=4 * capacity, count=int(4 * capacity * 4))
        statuses = load.statuses()
        assert set(statuses) == {"200", "503"}, statuses  # no reset, no timeout, no other status
        for outcome in load.outcomes:
            if outcome.status == 503:
                assert outcome.retry_after is not None and int(outcome.retry_after) >= 1
                body = json.loads(outcome.body)
                assert body["type"] == "ServiceUnavailable" and "retry later" in body["message"]
        assert metric(url, "berthing_requests_total", model="minilm:1.0", status="503") == before + statuses["503"]
        assert httpx.get(f"{url}/health/ready").status_code == 200
        assert httpx.post(f"{url}/predictions/minilm", json={"input": "after the storm"}).status_code == 200
