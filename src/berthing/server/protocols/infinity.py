"""Infinity's routes (GET /models, POST /classify, /rerank; /embeddings when the OpenAI adapter is off) as
infinity-client 0.0.78 calls them, so Infinity's users can point their client at berthing unchanged."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.inputs import json_type, parse_inputs
from berthing.server.gateway import Call, Gateway, WrongTask, json_response
from berthing.server.openapi import errors, json_body
from berthing.server.protocols.rerank_apis import candidates, check_fields, pick_model, ranking
from berthing.tasks.base import option_bool
from berthing.types import BerthingError, InvalidInput, ModelNotFound, Overloaded, PayloadTooLarge

PLACEHOLDER = "default/not-specified"  # the model infinity-client sends when the caller names none
CAPABILITIES = {"embed": "embed", "classify": "classify", "rerank": "rerank"}  # berthing task -> Infinity capability
RERANK_FIELDS = ("query", "documents", "return_documents", "raw_scores", "model", "top_n")
CLASSIFY_FIELDS = ("input", "model", "raw_scores")


def status(error: BerthingError) -> int:
    """Infinity's statuses: unknown model or wrong task 400, invalid values 422 (pydantic's), overload 429."""
    if isinstance(error, Overloaded):
        return 429
    if isinstance(error, ModelNotFound | WrongTask):
        return 400
    if isinstance(error, PayloadTooLarge):
        return 422  # Infinity's item limit is a pydantic max_length: 422
    return error.code


def error(error: BerthingError) -> Response:
    """{"error": {message, type, param, code}} as Infinity's OpenAIException; a 422 also carries FastAPI's "detail",
    which infinity-client parses into HTTPValidationError."""
    code = status(error)
    param = getattr(error, "param", None)  # the OpenAI adapter's embeddings errors name their field
    body: dict[str, Any] = {"error": {"message": error.message, "type": error.type, "param": param, "code": code}}
    if code == 422:
        body["detail"] = [{"loc": ["body", param] if param else ["body"], "msg": error.message, "type": "value_error"}]
    return json_response(body, code, error.headers)


def answer(kind: str, model: str, tokens: int, **data: Any) -> Response:
    """Infinity's envelope: object, model, usage, id, created."""
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response({"object": kind, **data, "model": model, "usage": usage,
                          "id": f"infinity-{uuid.uuid4()}", "created": int(time.time())})


async def rerank(call: Any, body: dict[str, Any]) -> Response:
    """Answer an Infinity-shaped rerank body ({"query", "documents", ...}); TEI's /rerank hands such bodies here."""
    body = check_fields(body, RERANK_FIELDS, "POST /rerank")
    model = pick_model(call, body.get("model"), "rerank", "POST /rerank", PLACEHOLDER)
    return_documents = option_bool(body, "return_documents", False)
    raw = option_bool(body, "raw_scores", False)
    inputs, _ = candidates(call, model, body)
    ranked, tokens = await ranking(call, model, inputs, body.get("top_n"))
    results = []
    for entry in ranked:
        result: dict[str, Any] = {"relevance_score": entry["logit" if raw else "score"], "index": entry["index"]}
        if return_documents:
            result["document"] = inputs[entry["index"]].text_pair  # a plain string, unlike Cohere's {"text"}
        results.append(result)
    return answer("rerank", model.name, tokens, results=results)


async def rerank_route(request: Request, call: Call) -> Response:
    """POST /rerank."""
    return await rerank(call, await call.json())


async def classify(request: Request, call: Call) -> Response:
    """POST /classify: every label of each input, best first (raw_scores is accepted and, as in Infinity, unused)."""
    body = check_fields(await call.json(), CLASSIFY_FIELDS, "POST /classify")
    model = pick_model(call, body.get("model"), "classify", "POST /classify", PLACEHOLDER)
    option_bool(body, "raw_scores", False)
    if "input" not in body:
        raise InvalidInput("field 'input' is missing")
    texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    if not isinstance(texts, list):
        raise InvalidInput(f"field 'input' must be a list of strings, got {json_type(texts)}")
    inputs, _ = parse_inputs(texts, "input", call.settings.max_items)  # {"text", "text_pair"} pairs work too
    usage: dict[str, int] = {}
    results = await call.infer(model, inputs, {"top_k": len(model.spec.labels)}, usage)
    return answer("classify", model.name, usage.get("tokens", 0), data=results)


async def models(request: Request, call: Call) -> Response:
    """GET /models: one entry per served name; infinity-client insists on object "model" and owned_by "infinity"."""
    registry = call.gateway.registry
    now = int(time.time())
    data = []
    for name in registry.names():
        task = registry.get(name).spec.task
        data.append({
            "id": name, "stats": {}, "object": "model", "owned_by": "infinity", "created": now, "backend": "berthing",
            "capabilities": [CAPABILITIES[task]] if task in CAPABILITIES else [],
        })
    return json_response({"object": "list", "data": data})


def routes(gateway: Gateway) -> list[Route]:
    """This protocol's routes; /embeddings is the OpenAI adapter's handler, registered here only when that one is off."""
    endpoint = gateway.endpoint
    found = [
        Route("/models", endpoint("infinity", "models", models, error), methods=["GET"]),
        Route("/classify", endpoint("infinity", "classify", classify, error), methods=["POST"]),
        Route("/rerank", endpoint("infinity", "rerank", rerank_route, error), methods=["POST"]),
    ]
    if "openai" not in gateway.settings.enabled_protocols():
        from berthing.server.protocols.openai import embeddings

        found.append(Route("/embeddings", endpoint("infinity", "embeddings", embeddings, error), methods=["POST"]))
    return found


ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"nullable": True}, "code": {"type": "integer"}}},
    "detail": {"type": "array", "items": {"type": "object"}, "description": "FastAPI's, on a 422"},
}}
_USAGE = {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}


def envelope(kind: str, **fields: Any) -> dict[str, Any]:
    """Infinity's answer: object, the fields, model, usage, id, created."""
    return {"type": "object", "required": ["object", *fields, "model", "usage"], "properties": {
        "object": {"enum": [kind]}, **fields, "model": {"type": "string"}, "usage": _USAGE,
        "id": {"type": "string"}, "created": {"type": "integer"}}}


LABELS = {"type": "array", "items": {"type": "object", "required": ["label", "score"], "properties": {
    "label": {"type": "string"}, "score": {"type": "number"}}}}
RERANKED = envelope("rerank", results={"type": "array", "items": {
    "type": "object", "required": ["relevance_score", "index"], "properties": {
        "relevance_score": {"type": "number"}, "index": {"type": "integer"}, "document": {"type": "string"}}}})
EMBEDDINGS = envelope("list", data={"type": "array", "items": {"type": "object"}})


def _post(summary: str, fields: dict[str, Any], required: list[str], answer: dict[str, Any],
          example: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "tags": ["infinity"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "properties": fields}, "example": example}}},
        "responses": {"200": json_body(answer, "Infinity's answer"), **errors(ERROR, 400, 401, 422, 429, 500)},
    }}


def rerank_request() -> dict[str, Any]:
    """Infinity's rerank body (POST /rerank: TEI's route takes it too when both are on)."""
    model = {"type": "string", "default": PLACEHOLDER, "description": "a model name; the placeholder = the default model"}
    return {"type": "object", "required": ["query", "documents"], "properties": {
        "query": {"type": "string"}, "documents": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "return_documents": {"type": "boolean", "default": False}, "raw_scores": {"type": "boolean", "default": False},
        "model": model, "top_n": {"type": "integer", "minimum": 1, "nullable": True},
    }}


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes."""
    model = {"type": "string", "default": PLACEHOLDER, "description": "a model name; the placeholder = the default model"}
    strings = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    entry = {"type": "object", "required": ["id", "object", "owned_by", "capabilities"], "properties": {
        "id": {"type": "string"}, "object": {"enum": ["model"]}, "owned_by": {"type": "string"},
        "created": {"type": "integer"}, "backend": {"type": "string"}, "stats": {"type": "object"},
        "capabilities": {"type": "array", "items": {"type": "string"}}}}
    listing = {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"enum": ["list"]}, "data": {"type": "array", "items": entry}}}
    classified = envelope("classify", data={"type": "array", "items": LABELS})
    paths: dict[str, Any] = {
        "/models": {"get": {"summary": "Infinity's model list", "tags": ["infinity"],
                            "responses": {"200": json_body(listing, "the models"), **errors(ERROR, 401)}}},
        "/classify": _post("Infinity classify: every label per input, best first", {
            "input": {"oneOf": [{"type": "string"}, strings]}, "model": model,
            "raw_scores": {"type": "boolean", "default": False}}, ["input"], classified, {"input": ["a text"]}),
        "/rerank": _post("Infinity rerank", rerank_request()["properties"], ["query", "documents"], RERANKED,
                         {"query": "a question", "documents": ["a text", "another"]}),
    }
    if "openai" not in gateway.settings.enabled_protocols():
        paths["/embeddings"] = _post("Infinity embeddings (the OpenAI adapter's handler)",
                                     {"input": strings, "model": model}, ["input"], EMBEDDINGS, {"input": ["a text"]})
    return paths
