"""The ASGI app factory: routes, error mapping, metrics and the models' lifecycle."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.config import Settings
from berthing.registry import Registry
from berthing.server.metrics import Metrics
from berthing.server.openapi import openapi
from berthing.server.protocols import torchserve
from berthing.server.security import check_token
from berthing.types import BerthingError, PayloadTooLarge

log = logging.getLogger("berthing.server")
JSON = "application/json"
CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer": metrics only, never sent


def error_response(error: BerthingError) -> Response:
    """The one place an error becomes HTTP: its status, its JSON body, its headers."""
    return Response(torchserve.dumps(error.to_dict()), error.code, headers=error.headers, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(registry: Registry, settings: Settings, metrics: Metrics | None = None) -> Starlette:
    """Build the inference app over already-loaded models; batchers start with the app's lifespan."""
    metrics = metrics or Metrics()

    async def predictions(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["model"]
        label = "unknown"  # never a label per unknown name: that would let clients grow /metrics without bound
        try:
            if settings.inference_token:
                check_token(request.headers.get("authorization"), settings.inference_token, "inference")
            model = registry.get(name, request.path_params.get("version"))
            label = f"{model.name}:{model.version}"
            body = await read_body(request, settings.max_body_bytes)
            content_type = request.headers.get("content-type", "")
            if model.handler is not None:
                result = await model.handle_request(torchserve.decode_body(body, content_type))
                response = Response(torchserve.dump_result(result), media_type=JSON)
            else:
                inputs, single, options = torchserve.parse_request(
                    body, content_type, settings.max_items, model.task, settings.input_field
                )
                results = await model.infer(inputs, options)
                response = Response(torchserve.encode_result(results, single), media_type=JSON)
        except BerthingError as error:
            if error.code >= 500:  # 503 is load shedding, expected under overload: a warning, not an error
                log.log(logging.WARNING if error.code == 503 else logging.ERROR, "%s: %s", label, error.message)
            response = error_response(error)
        except ClientDisconnect:
            log.info("%s: client disconnected while sending the body", label)
            response = Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            log.exception("unexpected error on %s", label)
            response = error_response(BerthingError(f"internal error: {type(exc).__name__}: {exc}"))
        metrics.requests.labels(label, "predictions", str(response.status_code)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - started)
        return response

    async def ping(_: Request) -> Response:
        return Response(b'{"status":"Healthy"}', media_type=JSON)

    async def describe(_: Request) -> Response:
        return Response(torchserve.dumps(openapi(registry.names())), media_type=JSON)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            kind, message = "NotFound", f"no route for {where} (routes: {', '.join(r.path for r in routes)})"
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
        yield
        for model in registry.all():
            await model.stop()

    routes = [
        Route("/ping", ping, methods=["GET"]),
        Route("/predictions/{model}", predictions, methods=["POST"]),
        Route("/predictions/{model}/{version}", predictions, methods=["POST"]),
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
