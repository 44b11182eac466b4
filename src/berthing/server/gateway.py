"""What every protocol adapter shares: model lookup, body reading, auth, metrics and error mapping; never tensors.

An adapter (server/protocols/*.py) is a set of routes whose handlers take (request, call): `call` resolves models,
reads the body and runs inference through the same Model/Batcher as every other entry point, and the endpoint
wrapper turns any BerthingError into the adapter's own error shape and counts the request by protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from berthing.config import Settings
from berthing.engine.admission import DEADLINE, deadline_after
from berthing.engine.model import Model
from berthing.registry import Registry
from berthing.server.metrics import Metrics
from berthing.server.protocols.codec import dumps, parse_json
from berthing.server.security import check_token
from berthing.types import BadRequest, BerthingError, InvalidInput, ModelNotFound, PayloadTooLarge, TextInput

DRAIN_BYTES = 64 * 1024 * 1024  # of a refused body read and dropped so its client can read the 413 (see _drain)
DRAIN_S = 10.0
SHED_LOG_S = 10.0  # at most one overload warning per model per this many seconds
__all__ = ["Call", "Gateway", "WrongTask", "dumps", "error_response", "json_response", "parse_json", "read_body"]

log = logging.getLogger("berthing.server")
CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer": metrics only, never sent
MODEL_HEADER = "x-berthing-model"  # picks the model on routes whose protocol names none (TEI, bert-serving)
TIMEOUT_HEADER = "x-berthing-timeout-ms"  # the request's deadline on every protocol (a body's timeout_ms wins)
TASK_NOUNS = {
    "embed": "an embedding model", "classify": "a classification model", "ner": "a token classification (NER) model",
    "qa": "a question answering model", "rerank": "a reranking model",
}

ErrorMapper = Callable[[BerthingError], Response]
Handler = Callable[[Request, "Call"], Awaitable[Response]]


class WrongTask(InvalidInput):
    """The model exists but its task does not fit the route (an embeddings route on a classifier)."""

    type = "WrongTask"


class ShedLog:
    """Refusals under overload, logged as one warning per model per SHED_LOG_S with the count since: at 4x load a
    line per refusal would be thousands of lines a second, written by the loop that should be answering."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def note(self, protocol: str, label: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(label, -SHED_LOG_S) < SHED_LOG_S:
            self._since[label] = self._since.get(label, 0) + 1
            return
        more = self._since.pop(label, 0)
        self._last[label] = now
        extra = f" ({more} more refusals since the last line)" if more else ""
        log.warning("%s %s: %s%s", protocol, label, message, extra)


class Gateway:
    """The models and limits every adapter serves from; one per app."""

    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics) -> None:
        self.registry, self.settings, self.metrics = registry, settings, metrics
        self.shed = ShedLog()

    def default_name(self, tasks: tuple[str, ...] | None = None) -> str:
        """The model of requests that name none: --default-model, else the first model served; when the route needs
        `tasks` and that model does another, the first model served whose task fits (if any)."""
        names = self.registry.names()
        wanted = self.settings.default_model
        if not wanted:
            if not names:
                raise ModelNotFound("no model is loaded")
            first = next((n for n in (self.settings.models or []) if n.partition("=")[0] in names), None)
            wanted = first.partition("=")[0] if first else names[0]
        if tasks and wanted in names and self.registry.get(wanted).spec.task not in tasks:
            wanted = next((n for n in names if self.registry.get(n).spec.task in tasks), wanted)
        return wanted

    def lookup(self, name: str | None, version: str | None = None, task: str | tuple[str, ...] | None = None,
               route: str = "this route") -> Model:
        """A model by name ('name:version' too), checked against the route's task(s); None or '' = the default model
        when its task fits, else the first model served whose task does (a rerank route finds the reranker beside an
        embedder)."""
        tasks = (task,) if isinstance(task, str) else task
        if not name:
            name = self.default_name(tasks)
        elif version is None and ":" in name:
            name, _, version = name.partition(":")
        model = self.registry.get(name, version or None)
        if tasks and model.spec.task not in tasks:
            wanted = " or ".join(TASK_NOUNS[t] for t in tasks)
            raise WrongTask(f"model '{model.name}' is {TASK_NOUNS.get(model.spec.task, model.spec.task)}; {route} needs {wanted}")
        return model

    def endpoint(
        self, protocol: str, route: str, handler: Handler, errors: ErrorMapper
    ) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint: auth, the handler, errors in the protocol's shape, metrics by protocol and route."""
        metrics, settings, shed = self.metrics, self.settings, self.shed

        async def run(request: Request) -> Response:
            started = time.perf_counter()
            call = Call(self, request)
            try:
                if settings.inference_token:
                    check_token(request.headers.get("authorization"), settings.inference_token, "inference")
                timeout = request.headers.get(TIMEOUT_HEADER)
                if timeout is not None:
                    DEADLINE.set(deadline_after(timeout, "header X-Berthing-Timeout-Ms"))
                response = await handler(request, call)
            except BerthingError as error:
                if error.code == 503:  # load shedding, expected under overload: a warning, at most one per interval
                    shed.note(protocol, call.label, error.message)
                elif error.code >= 500:
                    log.error("%s %s: %s", protocol, call.label, error.message)
                response = errors(error)
            except ClientDisconnect:
                log.info("%s: the client disconnected before its answer", call.label)
                response = Response(status_code=CLIENT_CLOSED)
            except BaseException as exc:  # a Rust panic in the tokenizer (pyo3's PanicException) is a BaseException
                if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                    raise
                log.exception("unexpected error on %s %s", protocol, call.label)
                response = errors(BerthingError(f"internal error: {type(exc).__name__}: {exc}"))
            metrics.requests.labels(call.label, protocol, route, str(response.status_code)).inc()
            metrics.latency.labels(call.label).observe(time.perf_counter() - started)
            return response

        return run


class Call:
    """One request's view of the gateway: which model it used (for metrics), its body, its inference."""

    def __init__(self, gateway: Gateway, request: Request) -> None:
        self.gateway, self.request = gateway, request
        self.label = "unknown"  # never a label per unknown name: that would let clients grow /metrics without bound
        self._body_read = False

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    def model(self, name: str | None = None, version: str | None = None, task: str | tuple[str, ...] | None = None,
              route: str = "this route") -> Model:
        """Resolve the model (header X-Berthing-Model when the protocol names none) and remember it for metrics."""
        if not name:
            name = self.request.headers.get(MODEL_HEADER) or None
        model = self.gateway.lookup(name, version, task, route)
        self.label = f"{model.name}:{model.version}"
        return model

    async def body(self) -> bytes:
        """The body, refused with 413 as soon as it passes the limit (declared or streamed)."""
        body = await read_body(self.request, self.settings.max_body_bytes)
        self._body_read = True
        return body

    async def json(self, empty: str = "empty body: send a JSON object") -> Any:
        """The body parsed as JSON whatever its Content-Type (tritonclient and curl -T send none); 400 when it is not."""
        body = await self.body()
        if not body.strip():
            raise BadRequest(empty)
        return parse_json(body)

    async def infer(self, model: Model, inputs: list[TextInput], options: dict[str, Any],
                    usage: dict[str, int] | None = None) -> list[Any]:
        """Results in input order through the model's batcher; `usage['tokens']` gets the tokens run. A client that
        disconnects meanwhile has its queued items dropped (ClientDisconnect: logged and counted, never answered)."""
        if not self._body_read:  # the watcher would take body chunks; every JSON route has read its body by now
            return await model.infer(inputs, options, usage=usage)
        return await until_disconnect(self.request, model.infer(inputs, options, usage=usage))

    def check_items(self, count: int, field: str) -> None:
        """The server's per-request item limit (max_items), as a 413 naming the field."""
        if count > self.settings.max_items:
            raise PayloadTooLarge(f"field '{field}' has {count} items, over the limit of {self.settings.max_items}")


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """`work`'s result, or ClientDisconnect as soon as the client goes away (the work is cancelled: its queued items
    are dropped before they are computed). Only after the body was read: then the next ASGI message is the
    disconnect."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnect()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (declared or streamed)."""
    declared = request.headers.get("content-length")
    stream = request.stream()
    if declared and declared.isdigit() and int(declared) > limit:
        await _drain(request, stream)
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            await _drain(request, stream)
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, stream: AsyncIterator[bytes]) -> None:
    """Read and drop the rest of a refused body, up to DRAIN_BYTES and DRAIN_S, before the 413 goes out.

    A client that sends the whole body before reading (urllib, requests: no `Expect: 100-continue`) would otherwise
    get a connection reset instead of the 413, since closing a socket with unread data resets it. A client that
    asked to continue is answered at once: it has not sent the body, and now will not."""
    if request.headers.get("expect", "").lower() == "100-continue":
        return
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            async for chunk in stream:
                drained += len(chunk)
                if drained > DRAIN_BYTES:
                    return
    except (TimeoutError, ClientDisconnect):
        return


def error_response(error: BerthingError) -> Response:
    """berthing's own error shape {"code", "type", "message"} (TorchServe's routes, management, unknown routes), with
    the error's status and headers (Retry-After)."""
    return json_response(error.to_dict(), error.code, headers=error.headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer."""
    return Response(dumps(data), status, headers=headers, media_type="application/json")
