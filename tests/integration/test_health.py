"""Liveness and readiness probes: /health/live, /health/ready and per model, without a token, in /openapi.json."""

from __future__ import annotations

import httpx
import tritonclient.grpc as triton

from tests.support.http import clone


def test_live_and_ready_while_every_model_serves(server_factory, load) -> None:
    with server_factory({"embedder": load("embed"), "sentiment": load("classify")}, inference_token="t0ken") as server:
        live = httpx.get(f"{server.url}/health/live")  # probes carry no token: these routes need none
        assert (live.status_code, live.json()) == (200, {"status": "alive"})
        ready = httpx.get(f"{server.url}/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "models": {
            "embedder:1.0": {"version": "1.0", "ready": True}, "sentiment:1.0": {"version": "1.0", "ready": True}}}
        one = httpx.get(f"{server.url}/health/ready/sentiment")
        assert (one.status_code, one.json()) == (200, {"model": "sentiment", "version": "1.0", "ready": True})
        assert httpx.get(f"{server.url}/health/ready/sentiment/1.0").status_code == 200
        missing = httpx.get(f"{server.url}/health/ready/nobody")
        assert missing.status_code == 404
        assert missing.json()["message"].startswith("model 'nobody' not found")
        assert httpx.post(f"{server.url}/predictions/sentiment", json={"input": "x"}).status_code == 401  # still guarded


def test_a_model_that_does_not_serve_makes_the_server_not_ready(server_factory, load) -> None:
    with server_factory({"embedder": load("embed")}) as server:
        server.app.state.registry.add(clone(load("classify"), "late"), make_default=False)  # registered, never started
        ready = httpx.get(f"{server.url}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready"
        assert ready.json()["models"]["late:1.0"] == {"version": "1.0", "ready": False, "reason": "not started"}
        assert ready.json()["models"]["embedder:1.0"]["ready"] is True
        late = httpx.get(f"{server.url}/health/ready/late")
        assert (late.status_code, late.json()["reason"]) == (503, "not started")
        assert httpx.get(f"{server.url}/health/ready/embedder").status_code == 200  # the others still say ready
        assert httpx.get(f"{server.url}/health/live").status_code == 200


def test_probes_are_in_openapi(server_factory, load) -> None:
    with server_factory({"embedder": load("embed")}) as server:
        paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        assert {"/health/live", "/health/ready", "/health/ready/{name}", "/health/ready/{name}/{version}"} <= set(paths)
        assert set(paths["/health/ready"]["get"]["responses"]) == {"200", "503"}


def test_a_model_whose_batcher_stopped_on_an_error_fails_liveness_and_the_others_serve(
    server_factory, load, monkeypatch
) -> None:
    with server_factory({"embedder": load("embed"), "broken": clone(load("classify"), "broken")}) as server:
        batcher = server.app.state.registry.get("broken").batcher

        def bug() -> list:  # a bug in the batcher's own code (batch errors are caught and fail only their batch)
            raise RuntimeError("a bug")

        monkeypatch.setattr(batcher, "_take", bug)
        failed = httpx.post(f"{server.url}/predictions/broken", json={"input": "x"})  # queued, then the worker ends
        assert (failed.status_code, failed.json()["message"]) == (500, "model 'broken' stopped serving: RuntimeError: a bug")
        refused = httpx.post(f"{server.url}/predictions/broken", json={"input": "x"})  # not queued for ever: 503
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "30")
        assert refused.json()["message"] == (
            "model 'broken' stopped serving (RuntimeError: a bug); it serves again after a restart")
        reason = "its batcher stopped on an error (RuntimeError: a bug)"
        live = httpx.get(f"{server.url}/health/live")  # only a restart helps: the supervisor's liveness probe says so
        assert (live.status_code, live.json()) == (503, {"status": "dead", "models": {"broken:1.0": reason}})
        assert httpx.get(f"{server.url}/health/ready/broken").json()["reason"] == reason
        for path, status, body in [  # every protocol's liveness route says so too
            ("/ping", 500, {"status": "Unhealthy"}),
            ("/health", 503, {"error": "unhealthy", "error_type": "Unhealthy"}),
            ("/v2/health/live", 503, {"live": False}),
        ]:
            answer = httpx.get(f"{server.url}{path}")
            assert (answer.status_code, answer.json()) == (status, body), path
        grpc = triton.InferenceServerClient(f"127.0.0.1:{server.listener_port('kserve-grpc', 'grpc')}")
        try:
            assert grpc.is_server_live() is False
        finally:
            grpc.close()
        assert httpx.get(f"{server.url}/health/ready/embedder").status_code == 200
        assert httpx.post(f"{server.url}/predictions/embedder", json={"input": "x"}).status_code == 200
