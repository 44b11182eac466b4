"""Replicas on a real two-node cluster: spread over both nodes and both serving, one killed mid-load (only what it held
is lost, and Ray brings the deployment back to two), autoscaling up under load and down when idle, overload answered
with 503 + Retry-After by Ray's queue and by berthing's own, never a hang."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from berthing.config import Settings
from tests.support.http import WAIT_S, wait_for
from tests.support.ray_cluster import RayCluster, deployed, replica_states, replicas
from tests.support.texts import mixed_sentences

CLIENT_TIMEOUT_S = 60.0  # a request not answered in this long counts as a hang (the test fails on it)
ROUNDS = 5  # rounds of load until the proxy routes to both replicas
TEXTS = mixed_sentences(64)


def _load(url: str, count: int, concurrency: int, body: Any, on_done: Any = None) -> Counter[str]:
    """`count` POSTs with `concurrency` in flight; the tally of status codes ('timeout'/'reset' for transport errors)."""
    tally: Counter[str] = Counter()

    def one(i: int) -> None:
        try:
            response = client.post(url, json=body(i))
            tally[str(response.status_code)] += 1
            if response.status_code in (429, 503):
                tally["retry-after"] += "retry-after" in response.headers
        except httpx.TimeoutException:
            tally["timeout"] += 1
        except httpx.TransportError:
            tally["reset"] += 1
        if on_done is not None:
            on_done(i)

    with httpx.Client(timeout=CLIENT_TIMEOUT_S, limits=httpx.Limits(max_connections=concurrency)) as client:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
    return tally


def _wait_running(app: str, count: int, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = replica_states(app)
        if states.get("RUNNING") == count and sum(states.values()) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{app}: wanted {count} running replicas, have {replica_states(app)}")


def test_two_replicas_on_two_nodes_both_serve_and_survive_a_kill(
    cluster: RayCluster, load, tiny_model_dir, settings: Settings
) -> None:
    from ray import serve

    load("classify")
    # 1.5 CPUs each on nodes of 2: the replicas cannot share a node
    with deployed(settings, {"sentiment": tiny_model_dir("classify")}, replicas=2, cpus=1.5):
        handle = serve.get_app_handle("sentiment")
        before = replicas("sentiment", handle, 2)
        assert len(before) == 2
        assert {info["node_id"] for info in before.values()} == {cluster.head_node_id, cluster.worker_node_id}

        url = f"{cluster.url}/predictions/sentiment"
        # The proxy learns of a replica through its own long poll, a moment after the handle's router does (one CI run
        # sent all 200 of a first round to one replica): rounds of 200, bounded, until both have taken HTTP traffic.
        served: dict[int, int] = {}
        for _ in range(ROUNDS):
            tally = _load(url, 200, 8, lambda i: {"input": TEXTS[i % len(TEXTS)]})
            assert tally == Counter({"200": 200})
            after = replicas("sentiment", handle, 2)
            served = {pid: after[pid]["requests"] - before[pid]["requests"] for pid in before}
            if all(count > 0 for count in served.values()):
                break
        assert all(count > 0 for count in served.values()), served  # both replicas took HTTP traffic

        victim = min(before)
        killed: list[int] = []

        def kill_once(i: int) -> None:
            if i == 100 and not killed:
                os.kill(victim, signal.SIGKILL)  # a real crash of the replica's process, mid-load
                killed.append(i)

        tally = _load(url, 400, 8, lambda i: {"input": [TEXTS[i % len(TEXTS)]] * 8}, on_done=kill_once)
        print(f"\nkill during load: {dict(tally)}")
        assert killed
        assert tally["timeout"] == tally["reset"] == 0  # every request was answered
        lost = 400 - tally["200"]
        assert lost <= 8, tally  # at most what the killed replica held: the client's 8 in flight
        assert set(tally) <= {"200", "500", "503", "retry-after"}, tally  # Ray answers a dead replica's requests 500

        _wait_running("sentiment", 2)
        now = replicas("sentiment", handle, 2)
        assert victim not in now and len(now) == 2


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(
    cluster: RayCluster, load, tiny_model_dir, settings: Settings
) -> None:
    load("embed")
    scaling: dict[str, Any] = {
        "autoscale": "1:2", "cpus": 1, "target_ongoing_requests": 1, "upscale_delay_s": 0, "downscale_delay_s": 2,
        "look_back_period_s": 1,
    }
    with deployed(settings, {"scaled": tiny_model_dir("embed")}, **scaling):
        assert replica_states("scaled") == {"RUNNING": 1}
        url = f"{cluster.url}/predictions/scaled"
        seen: list[dict[str, int]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # bounded bursts of load until the second replica runs
            _load(url, 64, 8, lambda i: {"input": TEXTS})
            seen.append(replica_states("scaled"))
            if seen[-1].get("RUNNING") == 2:
                break
        assert seen and seen[-1].get("RUNNING") == 2, seen
        _wait_running("scaled", 1, seconds=60)  # idle: back to one after downscale_delay_s


def test_overload_is_answered_with_retry_after_never_a_hang(
    cluster: RayCluster, load, tiny_model_dir, settings: Settings
) -> None:
    load("embed")
    # Ray's queue: one request at a time in the replica, one queued at the proxy; the rest are refused at once
    with deployed(settings, {"tight": tiny_model_dir("embed")}, cpus=1, max_ongoing_requests=1, max_queued_requests=1):
        tally = _load(f"{cluster.url}/predictions/tight", 48, 12, lambda i: {"input": TEXTS})
        print(f"\nRay's queue full: {dict(tally)}")
        assert tally["timeout"] == tally["reset"] == 0
        assert tally["200"] > 0 and tally["503"] > 0, tally
        assert tally["retry-after"] == tally["503"], tally
        assert set(tally) <= {"200", "503", "retry-after"}, tally

    # berthing's own queue inside the replica (max_queue items), with Ray letting everything through
    small = settings.model_copy(update={"max_queue": 64})
    with deployed(small, {"queue": tiny_model_dir("embed")}, cpus=1):
        tally = _load(f"{cluster.url}/predictions/queue", 48, 12, lambda i: {"input": TEXTS})
        print(f"\nberthing's queue full: {dict(tally)}")
        assert tally["timeout"] == tally["reset"] == 0
        assert tally["200"] > 0 and tally["503"] > 0, tally
        assert tally["retry-after"] == tally["503"], tally


@pytest.mark.parametrize("status", [429])
def test_overload_status_429_when_asked(cluster: RayCluster, load, tiny_model_dir, settings: Settings, status: int) -> None:
    load("embed")
    with deployed(
        settings, {"polite": tiny_model_dir("embed")}, cpus=1, max_ongoing_requests=1, max_queued_requests=1,
        overload_status=status, retry_after_s=3,
    ):
        url = f"{cluster.url}/predictions/polite"
        tally = _load(url, 36, 12, lambda i: {"input": TEXTS})
        assert tally[str(status)] > 0 and tally["retry-after"] == tally[str(status)], tally
        wait_for(lambda: httpx.post(url, json={"input": "ok"}, timeout=WAIT_S).status_code == 200, "the queue to drain")
