"""Cohere's POST /v1/rerank and /v2/rerank and Jina's POST /v1/rerank (the same path), on the gateway.

One handler answers /v1/rerank for both camps: the answer carries what each client reads (Cohere's `results` and
`meta`, Jina's `model` and `usage`), and its errors carry Cohere's `message` and the `detail` Jina's clients read.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.inputs import json_type, text_value
from berthing.server.gateway import Call, Gateway, json_response
from berthing.server.openapi import errors, json_body
from berthing.tasks.base import as_json, option_bool, option_int
from berthing.tasks.rerank import Candidate
from berthing.types import BerthingError, InvalidInput, Overloaded, PayloadTooLarge

if TYPE_CHECKING:
    from berthing.engine.model import Model

V1_FIELDS = ("model", "query", "documents", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc",
             "max_tokens_per_doc")
V2_FIELDS = ("model", "query", "documents", "top_n", "return_documents", "max_tokens_per_doc", "priority")


def status(error: BerthingError) -> int:
    """Cohere's statuses: load shedding is its 429 (retried by its SDK), too many documents its 400."""
    if isinstance(error, Overloaded):
        return 429
    if isinstance(error, PayloadTooLarge):
        return 400
    return error.code


def error_v1(error: BerthingError) -> Response:
    """/v1/rerank: Cohere's {"message"} with Jina's {"detail"} (llama-index's JinaRerank raises resp["detail"])."""
    return json_response({"message": error.message, "detail": error.message}, status(error), error.headers)


def error_v2(error: BerthingError) -> Response:
    """/v2/rerank: Cohere's {"message"}."""
    return json_response({"message": error.message}, status(error), error.headers)


def pick_model(call: Call, name: Any, task: str, route: str, placeholder: str | None = None) -> Model:
    """The named model; with none (or the protocol's placeholder name), the gateway's choice for the task."""
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"field 'model' must be a string, got {json_type(name)}")
    return call.model(None if name == placeholder else name, task=task, route=route)


def check_fields(body: Any, allowed: tuple[str, ...], route: str) -> dict[str, Any]:
    """The body as a JSON object with only the fields this route knows (a misspelt option is an error, not ignored)."""
    if not isinstance(body, dict):
        raise InvalidInput(f"body must be a JSON object, got {json_type(body)}")
    extra = [key for key in body if key not in allowed]
    if extra:
        raise InvalidInput(f"unknown field '{extra[0]}' for {route} (fields: {', '.join(allowed)})")
    return body


def document_text(doc: Any, i: int, rank_fields: list[str] | None) -> str:
    """A document's text: a string, an object's "text", or (Cohere v1 rank_fields) the named fields, one per line."""
    where = f"documents[{i}]"
    if not isinstance(doc, dict):
        return text_value(doc, where)
    fields = rank_fields or ["text"]
    for field in fields:
        if field not in doc:
            suffix = f" (rank_fields: {', '.join(fields)})" if rank_fields else ""
            raise InvalidInput(f"{where}.{field} is missing{suffix}")
    if len(fields) == 1:
        return text_value(doc[fields[0]], f"{where}.{fields[0]}")
    return "\n".join(f"{field}: {text_value(doc[field], f'{where}.{field}')}" for field in fields)


def cut(model: Model, text: str, tokens: int | None) -> str:
    """Cohere's max_tokens_per_doc: the text up to its first `tokens` tokens; whole from the model's max length on
    (the model truncates the pair). Only a bounded prefix is tokenized, whatever the document's size."""
    if tokens is None or tokens >= model.encoder.max_length:
        return text
    text = model.encoder.prefixes([text], tokens)[0]  # a prefix whose first `tokens` tokens are the whole text's
    offsets = model.encoder.tokenizer.encode(text, add_special_tokens=False).offsets
    return text[: offsets[tokens - 1][1]] if len(offsets) > tokens else text


def candidates(call: Call, model: Model, body: dict[str, Any], rank_fields: list[str] | None = None,
               max_tokens: int | None = None) -> tuple[list[Candidate], list[Any]]:
    """The (query, document) pairs to score and the documents as sent, validated and named as the client wrote them."""
    for key in ("query", "documents"):
        if key not in body:
            raise InvalidInput(f"field '{key}' is missing")
    query = text_value(body["query"], "field 'query'")
    documents = body["documents"]
    if not isinstance(documents, list):
        raise InvalidInput(f"field 'documents' must be a list, got {json_type(documents)}")
    if not documents:
        raise InvalidInput("field 'documents' is an empty list")
    call.check_items(len(documents), "documents")
    texts = [cut(model, document_text(doc, i, rank_fields), max_tokens) for i, doc in enumerate(documents)]
    return [Candidate(query, text, 0, i, f"documents[{i}]") for i, text in enumerate(texts)], documents


async def ranking(call: Call, model: Model, inputs: list[Candidate], top_n: Any) -> tuple[list[dict[str, Any]], int]:
    """The ranking (best first, as the TorchServe route gives it) and the tokens it ran."""
    usage: dict[str, int] = {}
    results = await call.infer(model, list(inputs), {"top_n": top_n}, usage)
    return results[0], usage.get("tokens", 0)


def string_list(body: dict[str, Any], key: str) -> list[str] | None:
    """An optional list of strings."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"field '{key}' must be a non-empty list of field names, got {as_json(value)}")
    return value


def as_document(doc: Any, text: str) -> dict[str, Any]:
    """A result's document: an object as sent (Cohere keeps its other fields), a string as {"text"}."""
    return doc if isinstance(doc, dict) else {"text": text}


async def rerank(call: Call, body: dict[str, Any], version: str) -> Response:
    """Both routes: validate, rank through the batcher, answer in the route's shape."""
    route = f"POST /{version}/rerank"
    body = check_fields(body, V1_FIELDS if version == "v1" else V2_FIELDS, route)
    model = pick_model(call, body.get("model"), "rerank", route)
    max_tokens = option_int(body, "max_tokens_per_doc", 1)
    option_int(body, "max_chunks_per_doc", 1)  # accepted; documents are not chunked (see docs/protocols/rerank.md)
    option_int(body, "priority", 0)
    # Jina's default (true) on v1: Cohere's clients accept the extra field; Cohere v2 has no documents to return.
    return_documents = option_bool(body, "return_documents", version == "v1")
    inputs, documents = candidates(call, model, body, string_list(body, "rank_fields"), max_tokens)
    ranked, tokens = await ranking(call, model, inputs, body.get("top_n"))
    results = []
    for entry in ranked:
        result: dict[str, Any] = {"index": entry["index"], "relevance_score": entry["score"]}
        if return_documents:
            result["document"] = as_document(documents[entry["index"]], inputs[entry["index"]].text_pair)
        results.append(result)
    meta = {"api_version": {"version": version[1:]}, "tokens": {"input_tokens": tokens, "output_tokens": 0}}
    answer: dict[str, Any] = {"id": str(uuid.uuid4()), "results": results, "meta": meta}
    if version == "v1":
        answer.update(model=model.name, usage={"total_tokens": tokens, "prompt_tokens": tokens})
    return json_response(answer)


async def rerank_v1(request: Request, call: Call) -> Response:
    """POST /v1/rerank: Cohere v1 and Jina."""
    return await rerank(call, await call.json(), "v1")


async def rerank_v2(request: Request, call: Call) -> Response:
    """POST /v2/rerank: Cohere v2."""
    return await rerank(call, await call.json(), "v2")


def routes(gateway: Gateway) -> list[Route]:
    """This protocol's routes on the inference port."""
    return [
        Route("/v1/rerank", gateway.endpoint("rerank", "v1/rerank", rerank_v1, error_v1), methods=["POST"]),
        Route("/v2/rerank", gateway.endpoint("rerank", "v2/rerank", rerank_v2, error_v2), methods=["POST"]),
    ]


_DOCUMENTS = {"type": "array", "minItems": 1, "items": {"oneOf": [
    {"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}},
]}}


def _answer(version: str) -> dict[str, Any]:
    """The answer: Cohere's results and meta; on v1, Jina's model and usage too."""
    result = {"type": "object", "required": ["index", "relevance_score"], "properties": {
        "index": {"type": "integer"}, "relevance_score": {"type": "number"},
        "document": {"type": "object", "description": "the document as sent (a string as {text})"}}}
    tokens = {"type": "object", "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}}}
    properties: dict[str, Any] = {
        "id": {"type": "string"}, "results": {"type": "array", "items": result},
        "meta": {"type": "object", "properties": {"api_version": {"type": "object"}, "tokens": tokens}},
    }
    if version == "v1":
        properties["model"] = {"type": "string"}
        properties["usage"] = {"type": "object", "properties": {
            "total_tokens": {"type": "integer"}, "prompt_tokens": {"type": "integer"}}}
    return {"type": "object", "required": ["id", "results", "meta"], "properties": properties}


def _path(summary: str, fields: tuple[str, ...], error: dict[str, Any], version: str) -> dict[str, Any]:
    schema = {
        "type": "object", "required": ["query", "documents"],
        "properties": {
            "model": {"type": "string", "description": "A reranking model ('name' or 'name:version'; default: the first)"},
            "query": {"type": "string"}, "documents": _DOCUMENTS,
            "top_n": {"type": "integer", "minimum": 1, "nullable": True},
            "return_documents": {"type": "boolean", "nullable": True},
            "rank_fields": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "max_tokens_per_doc": {"type": "integer", "minimum": 1, "nullable": True},
            "max_chunks_per_doc": {"type": "integer", "minimum": 1, "nullable": True, "description": "accepted, unused"},
            "priority": {"type": "integer", "nullable": True, "description": "accepted, unused"},
        },
    }
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k in fields}
    return {"post": {
        "summary": summary, "tags": ["rerank"],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": schema, "example": {"query": "a question", "documents": ["a text", "another"]}}}},
        "responses": {"200": json_body(_answer(version), "results [{index, relevance_score, document?}] best first"),
                      **errors(error, 400, 401, 404, 422, 429, 500)},
    }}


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes."""
    message = {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
    both = {"type": "object", "required": ["message", "detail"],
            "properties": {"message": {"type": "string"}, "detail": {"type": "string"}}}
    return {
        "/v1/rerank": _path("Cohere v1 and Jina rerank", V1_FIELDS, both, "v1"),
        "/v2/rerank": _path("Cohere v2 rerank", V2_FIELDS, message, "v2"),
    }
