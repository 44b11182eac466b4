"""Admission, deadlines, gone clients, hung and failing models, through a real server on loopback."""

from __future__ import annotations

import concurrent.futures as cf
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import numpy as np

from berthing.engine.batcher import FAILURES_UNHEALTHY, BatchLimits
from berthing.engine.model import Model
from berthing.runtime.base import Runtime
from berthing.tasks.tokenize import Features
from tests.support.http import WAIT_S, clone, metric, wait_for
from tests.support.overload import GatedRuntime
from tests.support.servers import ThreadServer


class BrokenRuntime:
    """A runtime that raises on every batch while `broken` (a corrupt model, a runtime bug), then recovers."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.name, self.threads = inner, inner.name, inner.threads
        self.broken = True

    def run(self, features: Features) -> np.ndarray:
        if self.broken:
            raise RuntimeError("broken runtime")
        return self.inner.run(features)


def served(server: ThreadServer, name: str) -> Model:
    return server.app.state.registry.get(name)


@contextmanager
def gated(load: Callable[..., Model], server_factory: Callable[..., ThreadServer], task: str = "classify",
          **settings: object) -> Iterator[tuple[ThreadServer, GatedRuntime, cf.Future[httpx.Response]]]:
    """A server whose model 'g' has one request's batch held in the runtime; the gate opens on leaving, and that
    request must then be answered 200."""
    base = load(task)
    gate = GatedRuntime(base.runtimes[0])
    with server_factory({"g": clone(base, "g", [gate])}, **settings) as server, cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(httpx.post, f"{server.url}/predictions/g", json={"input": "first"}, timeout=WAIT_S * 2)
        try:
            assert gate.entered.wait(WAIT_S), "the first request never reached the runtime"
            yield server, gate, running
        finally:
            gate.release.set()
        assert running.result().status_code == 200


def test_refusals_by_expected_wait_and_by_deadline_say_when_to_retry(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    with gated(load, server_factory) as (server, gate, running):
        url = f"{server.url}/predictions/g"
        batcher = served(server, "g").batcher
        assert batcher is not None
        batcher.throughput.rate = 1.0  # tokens/s, as if measured: the running batch's tokens are seconds ahead
        ahead = batcher.expected_wait()
        assert ahead is not None and ahead > 2
        shed = httpx.post(url, json={"input": "second"})
        assert shed.status_code == 503
        assert shed.json()["message"] == (
            f"model 'g' is busy: a new request would wait about {ahead:.1f} s in its queue (limit "
            "max_queue_ms=2000); retry later"
        )
        assert shed.headers["retry-after"] == str(int(np.ceil(ahead - 2)))
        batcher.limits.max_queue_ms = 0  # no wait bound: only the request's own deadline refuses it
        late = httpx.post(url, json={"input": "x"}, headers={"X-Berthing-Timeout-Ms": "500"})
        assert late.status_code == 503 and "past its deadline (" in late.json()["message"]
        late = httpx.post(url, json={"input": "x", "timeout_ms": 500})  # the same, as a body option
        assert late.status_code == 503 and "past its deadline (" in late.json()["message"]
        wrong = httpx.post(url, json={"input": "x"}, headers={"X-Berthing-Timeout-Ms": "soon"})
        assert (wrong.status_code, wrong.json()["message"]) == (
            422, "header X-Berthing-Timeout-Ms must be a number of milliseconds above 0 and at most 3600000")
        wrong = httpx.post(f"{server.url}/v1/embeddings", json={"input": "x", "model": "g"},
                           headers={"X-Berthing-Timeout-Ms": "-1"})
        assert wrong.status_code == 422 and "error" in wrong.json()  # in the protocol's own error shape
        gate.release.set()
        assert running.result().status_code == 200
        ok = httpx.post(url, json={"input": "x", "timeout_ms": 30000}, headers={"X-Berthing-Timeout-Ms": "30000"})
        assert ok.status_code == 200
        assert metric(server.url, "berthing_tokens_per_second", model="g:1.0") is not None


def test_a_client_that_disconnects_has_its_queued_items_dropped_before_they_run(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    with gated(load, server_factory) as (server, gate, running):
        body = b'{"input": ["gone one", "gone two"]}'
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            sock.sendall(b"POST /predictions/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: metric(server.url, "berthing_queue_depth", model="g:1.0") == 2.0, "two queued items")
        wait_for(lambda: metric(server.url, "berthing_requests_total", model="g:1.0", status="499") == 1.0,
                 "the disconnect to be seen")
        gate.release.set()
        assert running.result().status_code == 200
        wait_for(lambda: metric(server.url, "berthing_queue_dropped_total", model="g:1.0", reason="disconnected") == 2.0,
                 "the gone client's two items dropped")
        assert metric(server.url, "berthing_batch_size_count", model="g:1.0") == 1.0  # only the first batch ran
        assert httpx.post(f"{server.url}/predictions/g", json={"input": "after"}).status_code == 200


def test_a_model_failing_every_batch_is_not_ready_while_the_others_serve(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    base = load("classify")
    runtime = BrokenRuntime(base.runtimes[0])
    broken = clone(base, "broken", [runtime])
    with server_factory({"broken": broken, "good": base}) as server:
        for _ in range(FAILURES_UNHEALTHY):
            failed = httpx.post(f"{server.url}/predictions/broken", json={"input": "x"})
            assert failed.status_code == 500
            assert failed.json()["message"] == "inference failed on a batch of 1 item: RuntimeError: broken runtime"
        state = httpx.get(f"{server.url}/health/ready/broken")  # its probe batch fails too: one more
        assert state.status_code == 503
        assert state.json()["reason"] == (
            f"its last {FAILURES_UNHEALTHY + 1} batches failed (inference failed on a batch of 1 item: RuntimeError: "
            "broken runtime)"
        )
        assert httpx.get(f"{server.url}/health/ready").status_code == 503
        assert httpx.get(f"{server.url}/health/ready/good").status_code == 200
        assert httpx.post(f"{server.url}/predictions/good", json={"input": "x"}).status_code == 200
        # a model that reads not ready gets no traffic: the probe runs one batch itself to find it well again
        assert httpx.get(f"{server.url}/health/ready/broken").status_code == 503  # still broken: its probe failed too
        runtime.broken = False
        assert httpx.get(f"{server.url}/health/ready/broken").status_code == 200
        assert httpx.get(f"{server.url}/health/ready").status_code == 200


def test_a_hung_batch_is_bounded_reported_and_recovered(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    base = load("classify")
    gate = GatedRuntime(base.runtimes[0])
    with server_factory({"g": clone(base, "g", [gate])}, limits=BatchLimits(batch_timeout_s=0.5)) as server:
        url = f"{server.url}/predictions/g"
        try:
            hung = httpx.post(url, json={"input": "stuck"}, timeout=WAIT_S)
            assert (hung.status_code, hung.json()["message"]) == (500, (
                "model 'g': a batch of 1 item did not finish in 0.5 s (batch_timeout_s); the model is reported not "
                "ready until its runtime returns"))
            state = httpx.get(f"{server.url}/health/ready/g")
            assert (state.status_code, state.json()["reason"]) == (
                503, "a batch has run for over 0.5 s and the runtime has not returned")
            refused = httpx.post(url, json={"input": "next"})
            assert (refused.status_code, refused.headers["retry-after"]) == (503, "30")
            assert metric(server.url, "berthing_batch_timeouts_total", model="g:1.0") == 1.0
        finally:
            gate.release.set()
        wait_for(lambda: httpx.get(f"{server.url}/health/ready/g").status_code == 200, "the model ready again")
        assert httpx.post(url, json={"input": "after"}).status_code == 200


def test_a_grpc_deadline_is_the_request_deadline(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    import tritonclient.grpc as triton

    with gated(load, server_factory, "embed", limits=BatchLimits(max_queue_ms=0)) as (server, _, _):
        client = triton.InferenceServerClient(f"127.0.0.1:{server.listener_port('kserve-grpc', 'grpc')}")
        text = triton.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"late"], dtype=object))
        batcher = served(server, "g").batcher
        assert batcher is not None
        batcher.throughput.rate = 1.0  # tokens/s: the running batch is seconds ahead of anything sent now
        try:
            client.infer("g", [text], client_timeout=1.0)
        except triton.InferenceServerException as exc:
            assert exc.status() == "StatusCode.UNAVAILABLE"
            assert "past its deadline" in exc.message()
        else:
            raise AssertionError("a request that would end after its gRPC deadline was admitted")
        finally:
            client.close()
