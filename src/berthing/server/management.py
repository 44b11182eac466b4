"""The management API (TorchServe's shapes): list, describe, register, scale, set-default, unregister models.

It is a separate ASGI app on its own address (loopback by default) and every route needs the bearer token."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.config import MAX_WORKERS, Settings
from berthing.engine.model import Model
from berthing.loading import load_model
from berthing.names import check_name, check_version
from berthing.packaging.sources import ModelSource, resolve
from berthing.registry import Conflict, Registry
from berthing.server.app import JSON
from berthing.server.gateway import error_response
from berthing.server.metrics import Metrics
from berthing.server.protocols import torchserve
from berthing.server.security import check_source, check_token
from berthing.types import BadRequest, BerthingError, ModelLoadError

log = logging.getLogger("berthing.management")
Handler = Callable[[Request], Awaitable[Response]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(torchserve.dumps(body), status, media_type=JSON)


def _shown(raw: str) -> str:
    """A query value as an error message quotes it: the first 64 characters."""
    return repr(raw) if len(raw) <= 64 else f"{raw[:64]!r}... ({len(raw)} characters)"


def _int(request: Request, name: str, default: int | None, low: int = 0, high: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:  # isdigit() holds for "²" and other digits int() refuses; int() refuses over 4300 digits
        value = int(raw) if raw.isascii() and raw.isdigit() else None
    except ValueError:
        value = None
    if value is None or value < low:
        raise BadRequest(f"parameter {name!r} must be an integer >= {low}, not {_shown(raw)}")
    if high is not None and value > high:
        raise BadRequest(f"parameter {name!r} must be at most {high}, not {_shown(raw)}")
    return value


def _bool(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name, "").lower()
    if raw in ("", "true", "false"):
        return default if raw == "" else raw == "true"
    raise BadRequest(f"parameter {name!r} must be true or false, not {raw!r}")


def describe(model: Model, default: str) -> dict[str, Any]:
    """One version as GET /models/{name} lists it; memoryBytes is the model file each worker loads."""
    return {
        **model.describe(),
        "modelUrl": model.url,
        "isDefault": model.version == default,
        "status": "READY",
        "minWorkers": len(model.runtimes),
        "maxWorkers": len(model.runtimes),
        "memoryBytes": model.memory_bytes,
        "queueDepth": model.batcher.depth if model.batcher else 0,
    }


def create_management_app(registry: Registry, settings: Settings, metrics: Metrics, token: str | None) -> Starlette:
    """Build the management app over the registry the inference app serves from."""
    pending: dict[tuple[str, str], dict[str, Any]] = {}  # registrations LOADING, or FAILED with their error
    background: set[asyncio.Task[None]] = set()

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                check_token(request.headers.get("authorization"), token, "management")
                return await handler(request)
            except BerthingError as error:
                if error.code >= 500:
                    log.error("%s %s: %s", request.method, request.url.path, error.message)
                return error_response(error)

        return run

    def pending_of(name: str) -> list[dict[str, Any]]:
        return [entry for (n, _v), entry in sorted(pending.items()) if n == name]

    async def list_models(request: Request) -> Response:
        limit = _int(request, "limit", 100, low=1) or 100
        start = _int(request, "next_page_token", 0) or 0
        names = sorted(set(registry.names()) | {n for n, _v in pending})
        page = []
        for name in names[start : start + limit]:
            try:
                page.append({"modelName": name, "modelUrl": registry.get(name).url})
            except BerthingError:  # only pending (loading or failed), or unregistered meanwhile
                if pending_of(name):
                    entry = pending_of(name)[0]
                    page.append({"modelName": name, "modelUrl": entry["modelUrl"], "status": entry["status"]})
        body: dict[str, Any] = {"models": page}
        if start + limit < len(names):
            body["nextPageToken"] = str(start + limit)
        return _json(body)

    async def describe_model(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        if version and (name, version) in pending:
            return _json([pending[(name, version)]])
        waiting = [] if version else pending_of(name)
        if waiting and name not in registry.names():
            return _json(waiting)
        models = [registry.get(name, version)] if version else registry.versions(name)
        default = registry.default_version(name)
        return _json([describe(m, default) for m in models] + waiting)

    async def load(source: ModelSource, version: str | None, workers: int | None, url: str) -> Model:
        """Load in a worker thread (the event loop keeps serving); start batching on the loop is the caller's.

        Workers: initial_workers, else the model's [per_model] workers, else default_workers."""
        options = settings.load_options(source.name)
        overrides = settings.per_model.get(source.name)
        options.workers = workers or (overrides.workers if overrides and overrides.workers else settings.default_workers)
        options.registry = registry
        if version:
            options.version = version
        try:
            model = await asyncio.to_thread(load_model, source, options)
        except BerthingError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load model from {url!r}: {type(exc).__name__}: {exc}") from exc
        model.url = url
        return model

    async def register(request: Request) -> Response:
        url = request.query_params.get("url", "")
        path = check_source(url, settings.model_store, settings.allowed_sources)
        name = request.query_params.get("model_name") or ""
        version = request.query_params.get("model_version") or None
        try:  # both end up in URLs and file names
            if name:
                check_name(name)
            if version:
                check_version(version)
        except ModelLoadError as exc:
            raise BadRequest(exc.message) from None
        workers = _int(request, "initial_workers", None, low=1, high=MAX_WORKERS)
        synchronous = _bool(request, "synchronous", True)
        try:  # quick (a package is extracted and checked here): its errors answer this request, even asynchronous
            # always NAME=SOURCE: a bare path with '=' in it would be split there
            source = await asyncio.to_thread(resolve, f"{name}={path}", settings.cache_dir)
        except BerthingError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot open model source {url!r}: {type(exc).__name__}: {exc}") from exc
        key = (source.name, version or source.version or "1.0")
        if pending.get(key, {}).get("status") == "LOADING" or any(m.version == key[1] for m in _versions(key[0])):
            raise Conflict(f"model '{key[0]}' version '{key[1]}' is already registered")
        pending[key] = {"modelName": key[0], "modelVersion": key[1], "modelUrl": url, "status": "LOADING"}

        async def finish() -> Model:
            try:
                model = await load(source, version, workers, url)
                registry.add(model, make_default=False, replace=False)
            except BerthingError as error:
                pending[key].update(status="FAILED", error=error.to_dict())
                raise
            except Exception as exc:
                pending[key].update(status="FAILED", error=BerthingError(f"{type(exc).__name__}: {exc}").to_dict())
                raise
            pending.pop(key, None)
            model.start(metrics.watch(model))
            log.info("registered %s v%s from %s", model.name, model.version, url)
            return model

        if synchronous:
            model = await finish()
            pending.pop(key, None)  # a synchronous failure is answered here, not kept
            return _json(
                {"status": f'Model "{model.name}" Version: {model.version} registered with {len(model.runtimes)} initial workers'}
            )

        async def in_background() -> None:
            try:
                await finish()
            except Exception as error:  # noqa: BLE001 - kept as FAILED for GET /models/{name}
                log.error("registering %s failed: %s", url, getattr(error, "message", error))

        task = asyncio.create_task(in_background())
        background.add(task)
        task.add_done_callback(background.discard)
        started = f'Model "{key[0]}" Version: {key[1]} registration started; GET /models/{key[0]}/{key[1]} shows its status'
        return _json({"status": started}, 202)

    def _versions(name: str) -> list[Model]:
        return registry.versions(name) if name in registry.names() else []

    async def scale(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = registry.get(name, version)
        low = _int(request, "min_worker", None, low=1, high=MAX_WORKERS)
        high = _int(request, "max_worker", None, low=1)
        if low is None and high is None:
            raise BadRequest("give min_worker and/or max_worker")
        if low is not None and high is not None and low > high:
            raise BadRequest(f"min_worker {low} is over max_worker {high}")
        target = low if low is not None else min(len(model.runtimes), high or 1)
        await model.scale(target)
        return _json({"status": f'Workers of model "{name}" version {model.version} scaled to {len(model.runtimes)}'})

    async def set_default(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        registry.set_default(name, version)
        return _json({"status": f'Default version of model "{name}" set to {version}'})

    async def unregister(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        entry = pending.get((name, version))
        if entry is not None and entry["status"] == "FAILED":
            del pending[(name, version)]
            return _json({"status": f'Failed registration of model "{name}" version {version} cleared'})
        if entry is not None:
            raise Conflict(f"model '{name}' version '{version}' is still loading; delete it once it is READY or FAILED")
        model = registry.remove(name, version)  # new requests 404 from here on
        await model.retire()
        metrics.forget(model)
        log.info("unregistered %s v%s", name, version)
        return _json({"status": f'Model "{name}" version {version} unregistered'})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = BerthingError(f"{request.method} {request.url.path}: {exc.detail}", headers=dict(exc.headers or {}))
        error.code, error.type = exc.status_code, "NotFound" if exc.status_code == 404 else "HTTPError"
        return error_response(error)

    routes = [
        Route("/models", guarded(list_models), methods=["GET"]),
        Route("/models", guarded(register), methods=["POST"]),
        Route("/models/{name}", guarded(describe_model), methods=["GET"]),
        Route("/models/{name}", guarded(scale), methods=["PUT"]),
        Route("/models/{name}/{version}", guarded(describe_model), methods=["GET"]),
        Route("/models/{name}/{version}", guarded(scale), methods=["PUT"]),
        Route("/models/{name}/{version}", guarded(unregister), methods=["DELETE"]),
        Route("/models/{name}/{version}/set-default", guarded(set_default), methods=["PUT"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
