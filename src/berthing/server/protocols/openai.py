"""OpenAI's embeddings API (/v1/embeddings, /v1/models) on the gateway, so the openai SDK and RAG stacks work unchanged.

The wire facts (base64 by default, token-id input, `dimensions`, Infinity's placeholder model and `dimensions: 0`)
are in docs/protocols/openai.md; vectors are the embed task's, only cut and re-normalized for `dimensions`.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.inputs import json_type, text_value
from berthing.server.gateway import Call, Gateway, json_response
from berthing.server.openapi import errors, json_body, not_found, nullable
from berthing.tasks.embed import normalize
from berthing.tasks.tokenize import check_token_ids
from berthing.types import BadRequest, BerthingError, InvalidInput, TextInput, TokenIds

if TYPE_CHECKING:
    from berthing.engine.model import Model

PLACEHOLDER_MODELS = ("", "default/not-specified")  # Infinity's clients send the latter when the caller names none
INPUT_FORMS = "a string, a list of strings, a list of token ids or a list of lists of token ids"
ROUTE = "POST /v1/embeddings"


@contextmanager
def about(param: str) -> Iterator[None]:
    """Errors raised inside name `param` as OpenAI's error.param (the field the client should fix)."""
    try:
        yield
    except BerthingError as error:
        if getattr(error, "param", None) is None:
            error.param = param  # type: ignore[attr-defined]
        raise


def invalid(message: str, param: str) -> InvalidInput:
    """A 422 that names its field."""
    error = InvalidInput(message)
    error.param = param  # type: ignore[attr-defined]
    return error


def snake(name: str) -> str:
    """ModelNotFound -> model_not_found: berthing's error type as an OpenAI-style code."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def error(error: BerthingError) -> Response:
    """OpenAI's error shape {"error": {message, type, param, code}}, the error's status and headers (Retry-After)."""
    kind = "invalid_request_error" if error.code < 500 else "server_error"
    param = getattr(error, "param", None) if error.code < 500 else None
    body = {"error": {"message": error.message, "type": kind, "param": param, "code": snake(error.type)}}
    return json_response(body, error.code, headers=error.headers)


def parse_input(value: Any, call: Call, vocab_size: int) -> list[TextInput | TokenIds]:
    """OpenAI's four input forms -> texts or TokenIds; the first item of a list decides which form it is."""
    if isinstance(value, str):
        return [text_value(value, "field 'input'")]
    if not isinstance(value, list):
        raise invalid(f"field 'input' must be {INPUT_FORMS}, got {json_type(value)}", "input")
    if not value:
        raise invalid("field 'input' is an empty list", "input")
    first = value[0]
    if isinstance(first, int) and not isinstance(first, bool):  # one input of token ids: not an item count
        return [TokenIds(check_token_ids(value, vocab_size, "input"))]
    call.check_items(len(value), "input")
    if isinstance(first, str):
        return [text_value(v, f"input[{i}]") for i, v in enumerate(value)]
    if isinstance(first, list):
        return [TokenIds(check_token_ids(v, vocab_size, f"input[{i}]")) for i, v in enumerate(value)]
    raise invalid(f"input[0] must be a string, a token id or a list of token ids, got {json_type(first)}", "input")


def parse_dimensions(value: Any, model: Model) -> int | None:
    """`dimensions`: None (absent, null or 0, which infinity-client always sends) = the model's full size."""
    if value is None or (type(value) is int and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"field 'dimensions' must be an integer, got {json_type(value)}", "dimensions")
    if value < 0:
        raise invalid(f"field 'dimensions' must be >= 1 (0 or absent: full size), got {value}", "dimensions")
    check_dimensions(value, model.spec.hidden_size, model)
    return value


def check_dimensions(wanted: int, size: int, model: Model) -> None:
    """A 422 when `dimensions` asks for more than the model makes (size 0 = not known before running it)."""
    if size and wanted > size:
        raise invalid(f"field 'dimensions' is {wanted}, over the {size} dimensions of model '{model.name}'", "dimensions")


def option(data: dict[str, Any], key: str, allowed: tuple[Any, ...], default: Any) -> Any:
    """An enumerated field (null = default), or a 422 naming it and its values."""
    value = data.get(key)
    if value is None:
        return default
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        shown = " or ".join(f'"{a}"' if isinstance(a, str) else str(a).lower() for a in allowed)
        got = f'"{value}"' if isinstance(value, str) else json_type(value)
        raise invalid(f"field '{key}' must be {shown}, got {got}", key)
    return value


def encode(vector: np.ndarray, fmt: str) -> Any:
    """float: the float32 values; base64: their little-endian bytes, as the openai SDK decodes them."""
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def embeddings(request: Request, call: Call) -> Response:
    """POST /v1/embeddings (and /embeddings, which Infinity's clients call with the same shape)."""
    data = await call.json("empty body: send a JSON object with 'model' and 'input'")
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object with 'model' and 'input', got {json_type(data)}")
    asked = data.get("model")
    if asked is not None and not isinstance(asked, str):
        raise invalid(f"field 'model' must be a string, got {json_type(asked)}", "model")
    asked = None if asked in PLACEHOLDER_MODELS else asked
    with about("model"):
        model = call.model(asked, task="embed", route=ROUTE)
    if "input" not in data:
        error = BadRequest("missing field 'input'")
        error.param = "input"  # type: ignore[attr-defined]
        raise error
    fmt = option(data, "encoding_format", ("float", "base64"), "float")
    truncate = option(data, "truncate", (True, False), True)  # berthing's extension: OpenAI has no such field
    option(data, "modality", ("text",), "text")  # infinity-client sends it
    dimensions = parse_dimensions(data.get("dimensions"), model)
    usage: dict[str, int] = {}
    with about("input"):
        inputs = parse_input(data["input"], call, model.encoder.vocab_size)
        vectors = await call.infer(model, inputs, {"truncate": truncate}, usage)  # type: ignore[arg-type]
    if dimensions is not None:
        check_dimensions(dimensions, len(vectors[0]), model)
        vectors = [v[:dimensions] for v in vectors]
        if model.spec.normalize:
            vectors = list(normalize(np.stack(vectors)))
    tokens = usage.get("tokens", 0)
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v, fmt)} for i, v in enumerate(vectors)],
        "model": asked or f"{model.name}:{model.version}",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "id": f"embd-{uuid.uuid4().hex}",
        "created": int(time.time()),
    })


def model_entry(name: str, created: int) -> dict[str, Any]:
    """One /v1/models entry, in the shape the openai SDK's Model reads."""
    return {"id": name, "object": "model", "created": created, "owned_by": "berthing"}


def routes(gateway: Gateway) -> list[Route]:
    """This protocol's routes on the inference port."""
    started = int(time.time())  # `created` of every model: when this server started serving

    async def models(request: Request, call: Call) -> Response:
        return json_response({"object": "list", "data": [model_entry(n, started) for n in gateway.registry.names()]})

    async def retrieve(request: Request, call: Call) -> Response:
        name = request.path_params["model"]
        with about("model"):
            call.model(name)
        return json_response(model_entry(name, started))

    embed = gateway.endpoint("openai", "embeddings", embeddings, error)
    listing = gateway.endpoint("openai", "models", models, error)
    one = gateway.endpoint("openai", "model", retrieve, error)
    return [
        Route("/v1/embeddings", embed, methods=["POST"]),
        Route("/embeddings", embed, methods=["POST"]),
        Route("/v1/models", listing, methods=["GET"]),
        Route("/v1/models/{model}", one, methods=["GET"]),
    ]


_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": nullable({"type": "string"}),
                   "code": nullable({"type": "string"})}}}}
_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_EMBED_REQUEST = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": {"type": "string", "description": "A served model, 'name:version' too; absent, '' or "
                  "'default/not-specified': the default model"},
        "input": {"oneOf": [
            {"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string"}, "minItems": 1},
            _TOKENS, {"type": "array", "items": _TOKENS, "minItems": 1},
        ], "description": "Texts, or the model's own token ids (used as the whole sequence)"},
        "encoding_format": {"enum": ["float", "base64"], "default": "float"},
        "dimensions": {"type": "integer", "minimum": 0, "description": "Keep the first d values (re-normalized when "
                       "the model normalizes); 0: full size"},
        "truncate": {"type": "boolean", "default": True, "description": "berthing's extension; false: over-long input is a 413"},
        "modality": {"enum": ["text"], "description": "infinity-client sends it"},
        "user": {"type": "string", "description": "Ignored"},
    },
}
_EMBEDDINGS = {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
    "object": {"enum": ["list"]},
    "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"], "properties": {
        "object": {"enum": ["embedding"]}, "index": {"type": "integer"},
        "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string", "format": "byte"}]}}}},
    "model": {"type": "string"},
    "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
        "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}},
    "id": {"type": "string"}, "created": {"type": "integer"},
}}
_MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
    "id": {"type": "string"}, "object": {"enum": ["model"]}, "created": {"type": "integer"}, "owned_by": {"type": "string"}}}


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes."""
    names = {"type": "string", **({"enum": gateway.registry.names()} if gateway.registry.names() else {})}
    post = {"post": {
        "tags": ["openai"], "summary": "OpenAI embeddings",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _EMBED_REQUEST, "example": {"input": "a text"}}}},
        "responses": {"200": json_body(_EMBEDDINGS, "the embeddings, in input order"),
                      **errors(_ERROR, 400, 401, 404, 413, 422, 500, 503)},
    }}
    listing = {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"enum": ["list"]}, "data": {"type": "array", "items": _MODEL}}}
    listing_op = {"get": {"tags": ["openai"], "summary": "The served models, OpenAI's shape",
                          "responses": {"200": json_body(listing, "the models"), **errors(_ERROR, 401)}}}
    one = {"get": {"tags": ["openai"], "summary": "One served model, OpenAI's shape",
                   "parameters": [{"name": "model", "in": "path", "required": True, "schema": names}],
                   "responses": {"200": json_body(_MODEL, "the model"), **errors(_ERROR, 401), **not_found(_ERROR)}}}
    return {"/v1/embeddings": post, "/embeddings": post, "/v1/models": listing_op, "/v1/models/{model}": one}
