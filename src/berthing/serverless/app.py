"""AWS Lambda events in, the server's answers out: one request at a time through the same models and protocol.

Three HTTP event shapes reach a function: API Gateway REST APIs (payload 1.0), HTTP APIs (payload 2.0) and
Lambda function URLs (also 2.0). Anything else is a direct invocation: the event is the request body itself,
plus an optional "model" (and "version") naming the model, and the answer is the result itself.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from berthing.config import Settings
from berthing.inputs import json_type
from berthing.registry import Registry
from berthing.server.protocols import torchserve
from berthing.types import BadRequest, BerthingError, PayloadTooLarge

log = logging.getLogger("berthing.serverless")
JSON = "application/json"
ROUTES = ("/ping", "/predictions/{model}", "/predictions/{model}/{version}")
_PREDICTIONS = re.compile(r"^/predictions/([^/]+)(?:/([^/]+))?/?$")


@dataclass
class HttpRequest:
    """What the handler needs of an HTTP event, whichever payload version carried it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def is_http_event(event: Any) -> bool:
    """API Gateway (REST or HTTP API) or function URL events carry requestContext and a method somewhere."""
    return isinstance(event, Mapping) and "requestContext" in event and ("httpMethod" in event or "rawPath" in event)


def _object(value: Any, field: str) -> Mapping[str, Any]:
    """An event field that holds an object (absent or null: an empty one); anything else is the caller's error."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"event field {field!r} must be an object, got {json_type(value)}")
    return value


def parse_http_event(event: Mapping[str, Any]) -> HttpRequest:
    """Method, path (without an API Gateway stage), headers and the decoded body of a 1.0 or 2.0 event."""
    context = _object(event.get("requestContext"), "requestContext")
    if event.get("version") == "2.0" or "rawPath" in event:
        method = str(_object(context.get("http"), "requestContext.http").get("method") or "GET")
        path = str(event.get("rawPath") or "/")
    else:
        method = str(event.get("httpMethod") or "GET")
        path = str(event.get("path") or "/")
    for what, value in (("method", method), ("path", path)):
        try:  # error messages quote both, and JSON holds no lone surrogate
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"the event's {what} is not valid UTF-8: {exc}") from None
    stage = str(context.get("stage") or "")
    if stage and stage != "$default" and (path == f"/{stage}" or path.startswith(f"/{stage}/")):
        path = path[len(stage) + 1 :] or "/"  # HTTP APIs keep a named stage in rawPath; REST APIs do not
    headers = {str(k).lower(): str(v) for k, v in _object(event.get("headers"), "headers").items() if v is not None}
    for key, values in _object(event.get("multiValueHeaders"), "multiValueHeaders").items():
        if values and not isinstance(values, list):
            raise BadRequest(f"event field 'multiValueHeaders' must hold lists, got {json_type(values)} for {key!r}")
        if values and str(key).lower() not in headers:
            headers[str(key).lower()] = ", ".join(str(v) for v in values)
    raw = event.get("body")
    if raw is None:
        body = b""
    elif event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"body is marked base64 but does not decode: {exc}") from None
    else:
        try:
            body = str(raw).encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: what Python's json makes of "\ud800" or invalid UTF-8
            raise BadRequest(f"body is not valid UTF-8: {exc}") from None
    return HttpRequest(method.upper(), path, headers, body)


def envelope(response: HttpResponse) -> dict[str, Any]:
    """The Lambda proxy answer, the same for payload 1.0 and 2.0: status, headers, a text body (never base64)."""
    return {
        "statusCode": response.status,
        "headers": {"Content-Type": JSON, **response.headers},
        "body": response.body.decode("utf-8"),
        "isBase64Encoded": False,
    }


def error_response(error: BerthingError) -> HttpResponse:
    return HttpResponse(error.code, torchserve.dumps(error.to_dict()), dict(error.headers))


class Cors:
    """Access-Control-* headers for the configured origins ('*' for any); none configured, no headers."""

    def __init__(self, origins: list[str]) -> None:
        self.origins = [o.rstrip("/") for o in origins]

    def headers(self, origin: str | None, preflight: bool = False) -> dict[str, str]:
        if not self.origins:
            return {}
        if "*" in self.origins:
            allowed = "*"
        elif origin and origin.rstrip("/") in self.origins:
            allowed = origin
        else:
            return {"Vary": "Origin"}
        out = {"Access-Control-Allow-Origin": allowed}
        if allowed != "*":
            out["Vary"] = "Origin"
        if preflight:
            out["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            out["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            out["Access-Control-Max-Age"] = "600"
        return out


class ServerlessApp:
    """Answers Lambda events from a registry of loaded models; what `berthing serve` would answer, minus batching."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.cors = Cors(settings.cors_origins)

    def __call__(self, event: Any, context: Any = None) -> Any:
        """The Lambda handler: an HTTP proxy event gets a proxy answer; any other event is a direct invocation."""
        if is_http_event(event):
            return self.http(event)
        return self.direct(event)

    def http(self, event: Mapping[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        origin = None
        try:
            request = parse_http_event(event)
            origin = request.headers.get("origin")
            response = self.route(request)
        except BerthingError as error:
            response = error_response(error)
        except Exception as exc:
            log.exception("unexpected error")
            response = error_response(BerthingError(f"internal error: {type(exc).__name__}: {exc}"))
        preflight = response.status == 204 and not response.body
        response.headers.update(self.cors.headers(origin, preflight))
        log.debug("%s in %.1f ms", response.status, (time.perf_counter() - started) * 1000)
        return envelope(response)

    def route(self, request: HttpRequest) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        where = f"{request.method} {request.path}"
        if request.method == "OPTIONS":
            return HttpResponse(204)
        if path == "/ping":
            if request.method not in ("GET", "HEAD"):
                return _method_not_allowed(where, "GET")
            return HttpResponse(200, b'{"status":"Healthy"}')
        match = _PREDICTIONS.match(path)
        if match is None:
            error = BerthingError(f"no route for {where} (routes: {', '.join(ROUTES)})")
            error.code, error.type = 404, "NotFound"
            return error_response(error)
        if request.method != "POST":
            return _method_not_allowed(where, "POST")
        if len(request.body) > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"body of {len(request.body)} bytes is over the limit of {self.settings.max_body_bytes} bytes")
        name, version = match.group(1), match.group(2)
        return HttpResponse(200, self.predict(name, version, request.body, request.headers.get("content-type", "")))

    def predict(self, name: str, version: str | None, body: bytes, content_type: str) -> bytes:
        """One request body for one model, as the server's /predictions route answers it."""
        model = self.registry.get(name, version)
        if model.handler is not None:
            return torchserve.dump_result(model.handle(torchserve.decode_body(body, content_type)))
        inputs, single, options = torchserve.parse_request(
            body, content_type, self.settings.max_items, model.task, self.settings.input_field
        )
        return torchserve.encode_result(model.predict_items(inputs, options), single)

    def direct(self, event: Any) -> Any:
        """A plain JSON event: the body itself (with "model"/"version" to pick a model); the answer is the result
        itself, or the error's JSON body ({"code", "type", "message"}) — the same bodies as over HTTP."""
        try:
            if not isinstance(event, Mapping):
                raise BadRequest(
                    "a direct invocation's event must be a JSON object: the request body, with \"model\" naming the "
                    f"model when several are served (models: {', '.join(self.registry.names())})"
                )
            data = dict(event)
            name = data.pop("model", None)
            version = data.pop("version", None)
            if name is None:
                names = self.registry.names()
                if len(names) != 1:
                    raise BadRequest(f"several models are served ({', '.join(names)}): name one with \"model\"")
                name = names[0]
            body = data.pop("body") if set(data) == {"body"} else data  # {"model", "body": ...} works too
            try:
                raw = body.encode("utf-8") if isinstance(body, str) else torchserve.dumps(body)
            except (UnicodeEncodeError, TypeError) as exc:  # lone surrogates; orjson: 64-bit integers, 255 levels
                raise BadRequest(f"the event cannot be read as a request body: {exc}") from None
            content_type = "text/plain" if isinstance(body, str) else JSON
            return orjson.loads(self.predict(str(name), None if version is None else str(version), raw, content_type))
        except BerthingError as error:
            return error.to_dict()


def _method_not_allowed(where: str, allowed: str) -> HttpResponse:
    error = BerthingError(f"method not allowed: {where} (allowed: {allowed})", headers={"Allow": allowed})
    error.code, error.type = 405, "MethodNotAllowed"
    return error_response(error)
