"""The ASGI app factory: every enabled protocol's routes over one gateway, error mapping, metrics, lifecycle."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.config import Settings
from berthing.registry import Registry
from berthing.server import health, playground
from berthing.server.gateway import Gateway, error_response
from berthing.server.listeners import Listeners
from berthing.server.metrics import Metrics
from berthing.server.openapi import openapi
from berthing.server.protocols.codec import dumps
from berthing.types import BerthingError

log = logging.getLogger("berthing.server")
JSON = "application/json"

# HTTP protocols on the inference port, in route order: where two protocols share a path (/embeddings, /rerank,
# /health) the first registers it and answers both shapes. Each module has routes(gateway) and openapi_paths().
HTTP_PROTOCOLS = {
    "torchserve": "berthing.server.protocols.torchserve_http",
    "openai": "berthing.server.protocols.openai",
    "tei": "berthing.server.protocols.tei",
    "rerank": "berthing.server.protocols.rerank_apis",
    "infinity": "berthing.server.protocols.infinity",
    "kserve": "berthing.server.protocols.kserve",
    "bert-serving": "berthing.server.protocols.bert_serving",
}


def create_app(
    registry: Registry,
    settings: Settings,
    metrics: Metrics | None = None,
    say: Callable[[str], None] | None = None,
    own_ports: bool = True,
) -> Starlette:
    """Build the inference app over already-loaded models; batchers and own-port listeners start with its lifespan.

    `say` prints what the own-port listeners (gRPC, ZeroMQ) bound, once they have; `own_ports=False` starts none
    (Ray replicas: several on one node would fight over the ports, and Ray's proxy fronts only HTTP)."""
    metrics = metrics or Metrics()
    gateway = Gateway(registry, settings, metrics)
    enabled = settings.enabled_protocols()
    modules: dict[str, Any] = {p: importlib.import_module(HTTP_PROTOCOLS[p]) for p in HTTP_PROTOCOLS if p in enabled}
    listeners = Listeners(gateway, say, enabled=own_ports)
    http_protocols = [p for p in enabled if p in HTTP_PROTOCOLS]
    on_port = f"protocols: {', '.join(http_protocols)}" if http_protocols else "no protocol is on (--protocols)"

    async def ping(_: Request) -> Response:
        if registry.crashed():  # TorchServe's answer when its workers are gone
            return Response(b'{"status":"Unhealthy"}', status_code=500, media_type=JSON)
        return Response(b'{"status":"Healthy"}', media_type=JSON)

    async def describe(_: Request) -> Response:
        extra: dict[str, dict[str, Any]] = {}
        for protocol, module in modules.items():  # as routing does: the first protocol to claim a path+verb has it
            for path, operations in module.openapi_paths(gateway).items():
                for verb, operation in operations.items():
                    extra.setdefault(path, {}).setdefault(verb, {"tags": [protocol], **operation})
        for path, operations in {**health.openapi_paths(), **(playground.openapi_paths() if settings.ui else {})}.items():
            for verb, operation in operations.items():
                extra.setdefault(path, {}).setdefault(verb, operation)
        return Response(dumps(openapi(registry.names(), extra)), media_type=JSON)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            kind, message = "NotFound", f"no route for {where} ({on_port}; GET /openapi.json lists every route)"
        elif exc.status_code == 405:
            kind, message = "MethodNotAllowed", f"method not allowed: {where} (allowed: {headers.get('Allow', 'none')})"
        else:
            kind, message = "HTTPError", f"{where}: {exc.detail}"
        error = BerthingError(message, headers=headers)
        error.code, error.type = exc.status_code, kind
        return error_response(error)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(BerthingError(f"internal error: {type(exc).__name__}"))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for model in registry.all():
            model.start(metrics.watch(model))
        listeners.start()
        yield
        await listeners.stop()
        for model in registry.all():
            await model.stop()

    routes = [
        Route("/ping", ping, methods=["GET"]),
        *health.routes(registry, error_response),
        *(playground.routes(gateway, error_response) if settings.ui else []),  # GET / only for browsers: others fall through
        *(route for module in modules.values() for route in module.routes(gateway)),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", describe, methods=["GET"]),
        Route("/", describe, methods=["OPTIONS"]),
    ]
    middleware = []
    if settings.cors_origins:
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type", "Authorization"], max_age=600,
        ))
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: unexpected},
        middleware=middleware,
    )
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.gateway = gateway
    app.state.listeners = listeners
    return app


def create_metrics_app(metrics: Metrics) -> Starlette:
    """/metrics alone, for a separate metrics address (TorchServe's 8082) that scrapers reach and clients do not."""

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = BerthingError(f"no route for {request.method} {request.url.path} (routes: /metrics)")
        error.code, error.type = exc.status_code, "NotFound" if exc.status_code == 404 else "HTTPError"
        return error_response(error)

    return Starlette(routes=[Route("/metrics", metrics_endpoint, methods=["GET"])], exception_handlers={HTTPException: not_found})
