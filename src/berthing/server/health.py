"""Liveness and readiness for Kubernetes and KServe-style probes: /health/live, /health/ready, per model too.

`GET /ping` stays TorchServe's. Probes carry no token, so these routes need none, and they say no more than which
models serve. A model is ready while its batcher runs (loaded, started with the server, not unregistered), no
batch is hung past batch_timeout_s on every runner, and its last batches did not all fail. The process is live
unless a model's batcher stopped on an error (a bug, not a failing batch): only a restart brings that back.
"""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.registry import Registry
from berthing.server.openapi import ERROR_REF, json_body, not_found
from berthing.server.protocols.codec import dumps
from berthing.types import ModelNotFound

JSON = "application/json"


def problem(model: Any, failures: bool = True) -> str | None:
    """Why a model does not serve now, or None when it does; `failures=False` leaves out batches failing in a row
    (Ray's health check: replacing a replica for what its inputs did would let a client restart replicas)."""
    if model.retired:
        return "unregistered"
    if model.batcher is None or not model.batcher.running:
        if model.batcher is None:
            return "not started"
        return model.batcher.problem if model.batcher.crashed else "its batcher stopped"
    if not failures and not model.batcher.hung:
        return None
    return model.batcher.problem  # a batch hung past batch_timeout_s, or batches failing in a row


async def recheck(model: Any) -> str | None:
    """problem(), after one probe batch when the model's batches have been failing: a model that gets no traffic
    because it reads not ready would otherwise never read ready again."""
    reason = problem(model)
    if reason is not None and model.batcher is not None and model.batcher.failing:
        with contextlib.suppress(Exception):
            await model.probe()
        reason = problem(model)
    return reason


async def _state(model: Any) -> dict[str, Any]:
    reason = await recheck(model)
    return {"version": model.version, "ready": reason is None, **({"reason": reason} if reason else {})}


def routes(registry: Registry, error_response: Any) -> list[Route]:
    """The probe routes over the live registry."""

    async def live(_: Request) -> Response:
        dead = registry.crashed()
        if dead:  # only a restart brings such a model back: a supervisor's liveness probe should see that
            return Response(dumps({"status": "dead", "models": dead}), status_code=503, media_type=JSON)
        return Response(b'{"status":"alive"}', media_type=JSON)

    async def ready(_: Request) -> Response:
        models = {f"{m.name}:{m.version}": await _state(m) for m in registry.all()}
        ok = all(state["ready"] for state in models.values())  # no model yet (a store to register from): ready
        body = {"status": "ready" if ok else "not ready", "models": models}
        return Response(dumps(body), status_code=200 if ok else 503, media_type=JSON)

    async def model_ready(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        try:
            model = registry.get(name, version)
        except ModelNotFound as exc:
            return error_response(exc)
        state = {"model": model.name, **(await _state(model))}
        return Response(dumps(state), status_code=200 if state["ready"] else 503, media_type=JSON)

    return [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/health/ready/{name}", model_ready, methods=["GET"]),
        Route("/health/ready/{name}/{version}", model_ready, methods=["GET"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """The probe routes in /openapi.json."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    state = {"type": "object", "required": ["version", "ready"], "properties": {
        "model": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"},
        "reason": {"type": "string", "description": "why the model does not serve"}}}
    every = {"type": "object", "required": ["status", "models"], "properties": {
        "status": {"enum": ["ready", "not ready"]}, "models": {"type": "object", "additionalProperties": state}}}
    ready = {"200": json_body(every, "serving"), "503": json_body(every, "not serving (the body says why)")}
    one = {"200": json_body(state, "serving"), "503": json_body(state, "not serving (reason)"), **not_found(ERROR_REF)}
    alive = {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["alive", "dead"]},
        "models": {"type": "object", "additionalProperties": {"type": "string"}, "description": "why each stopped"}}}
    return {
        "/health/live": {"get": {"summary": "Liveness: the process answers", "responses": {
            "200": json_body(alive, "alive"),
            "503": json_body(alive, "a model stopped on an error: restart the process")}}},
        "/health/ready": {"get": {"summary": "Readiness: every model serves", "responses": ready}},
        "/health/ready/{name}": {"get": {"summary": "One model's readiness", "parameters": [name], "responses": one}},
        "/health/ready/{name}/{version}": {
            "get": {"summary": "One model version's readiness", "parameters": [name, version], "responses": one}
        },
    }
