"""The OpenAPI description served at OPTIONS / and GET /openapi.json, and the pieces protocol modules describe
their routes with: every JSON body, asked and answered (errors too), has a real schema, so a client generator or a
schema-driven fuzzer (schemathesis, in tests/fuzz) can hold the server to it."""

from __future__ import annotations

from typing import Any

import berthing

Schema = dict[str, Any]
JSON = "application/json"

ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERROR = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {"code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}},
}
_TEXT_OR_PAIR = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "required": ["text", "text_pair"],
         "properties": {"text": {"type": "string"}, "text_pair": {"type": "string"}}},
    ]
}
_REQUEST = {
    "type": "object",
    "properties": {
        "input": {"oneOf": [_TEXT_OR_PAIR, {"type": "array", "items": _TEXT_OR_PAIR, "minItems": 1}]},
        "inputs": {"description": "Alias of input."},
        "text": {"description": "Alias of input; with text_pair, one pair."},
        "text_pair": {"type": "string"},
        "truncate": {"type": "boolean", "default": True, "description": "false: over-long texts are a 413"},
        "normalize": {"type": "boolean", "description": "Embeddings: L2-normalize (default: the model's)"},
        "top_k": {"type": "integer", "minimum": 1, "description": "Classification: the k best labels; QA: the k best answers"},
        "is_tokenized": {"type": "boolean", "default": False, "description": "input holds lists of pre-split words"},
        "aggregation_strategy": {"enum": ["none", "simple", "first", "average", "max"], "description": "NER"},
        "ignore_labels": {"type": "array", "items": {"type": "string"}, "description": "NER, default [\"O\"]"},
        "question": {"type": "string", "description": "QA, with context"},
        "context": {"type": "string", "description": "QA, with question"},
        "max_answer_len": {"type": "integer", "minimum": 1, "description": "QA, in tokens (default 15)"},
        "handle_impossible_answer": {"type": "boolean", "description": "QA: the empty answer may win"},
        "doc_stride": {"type": "integer", "minimum": 0, "description": "QA: tokens shared by neighbouring windows"},
        "query": {"type": "string", "description": "Rerank, with texts"},
        "texts": {"type": "array", "items": {"type": "string"}, "description": "Rerank: the candidates"},
        "top_n": {"type": "integer", "minimum": 1, "description": "Rerank: keep the n best"},
        "return_text": {"type": "boolean", "description": "Rerank: echo each text"},
        "timeout_ms": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 3_600_000,
                       "description": "Refuse (503) rather than wait past this many milliseconds"},
    },
}
NUMBERS = {"type": "array", "items": {"type": "number"}}
_LABEL = {"type": "object", "required": ["label", "score"], "properties": {
    "label": {"type": "string"}, "score": {"type": "number"},
    "scores": {"type": "object", "additionalProperties": {"type": "number"}, "description": "every label's score"}}}
_ENTITY = {"type": "object", "required": ["score", "word", "start", "end"], "properties": {
    "entity_group": {"type": "string"}, "entity": {"type": "string"}, "index": {"type": "integer"},
    "score": {"type": "number"}, "word": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}}}
_ANSWER = {"type": "object", "required": ["answer", "score", "start", "end"], "properties": {
    "answer": {"type": "string"}, "score": {"type": "number"}, "start": {"type": "integer"}, "end": {"type": "integer"}}}
_RANKED = {"type": "object", "required": ["index", "score"], "properties": {
    "index": {"type": "integer"}, "score": {"type": "number"}, "logit": {"type": "number"}, "text": {"type": "string"}}}
# One input's result, by task (what berthing.load(...).predict returns for one text)
RESULTS: dict[str, Schema] = {
    "embed": NUMBERS,
    "classify": {"anyOf": [_LABEL, {"type": "array", "items": _LABEL}]},
    "ner": {"type": "array", "items": _ENTITY},
    "qa": {"anyOf": [_ANSWER, {"type": "array", "items": _ANSWER}]},
    "rerank": {"type": "array", "items": _RANKED},
}


def json_body(schema: Schema, description: str = "JSON") -> dict[str, Any]:
    """A response (or request body) whose content is JSON of `schema`."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (OpenAPI 3.0's way)."""
    return {**schema, "nullable": True}


def errors(schema: Schema, *codes: int, description: str = "error") -> dict[str, Any]:
    """The same error body for several statuses."""
    return {str(code): json_body(schema, description) for code in codes}


def not_found(schema: Schema) -> dict[str, Any]:
    """404 on a route with a path parameter: the protocol's own error for an unknown model, or berthing's when the
    parameter makes a path no route has (a '/' in it)."""
    return {"404": json_body({"anyOf": [schema, ERROR_REF]}, "unknown model, or no such route")}


def task_results(tasks: set[str | None], mirror: bool = True) -> Schema:
    """One result of any of `tasks` (or, with `mirror`, a list of them: the answer mirrors the input); any JSON when a
    custom handler (task None) is among them."""
    if not tasks or None in tasks:
        return {}
    one = [RESULTS[t] for t in sorted(t for t in tasks if t) if t in RESULTS]
    return {"anyOf": one + ([{"type": "array", "items": {"anyOf": one}}] if mirror else [])}


def served_versions(registry: Any) -> list[str]:
    """Every version served, of any model (for a {version} parameter's enum)."""
    return sorted({model.version for model in registry.all()})


def served_tasks(registry: Any) -> set[str | None]:
    """The tasks of the models served (None for one run by a custom handler, which answers what it likes)."""
    return {None if model.handler is not None else model.spec.task for model in registry.all()}


def torchserve_paths(model_names: list[str], tasks: set[str | None] | None = None,
                     versions: list[str] | None = None) -> dict[str, Any]:
    """TorchServe's /predictions routes; model names (and versions) are listed so clients can see what is served."""
    predict = {
        "summary": "Run a model on a text, a pair, or a list of them (the answer mirrors the input)",
        "requestBody": {
            "content": {
                JSON: {"schema": {"$ref": "#/components/schemas/PredictionRequest"}, "example": {"input": "a text"}},
                "text/plain": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
        "responses": {
            "200": json_body(task_results(tasks or set()),
                             "embeddings (float lists), labels, entities, answers or a ranking, by the model's task"),
            **errors(ERROR_REF, 400, 401, 413, 422, 500, 503),
            **not_found(ERROR_REF),
        },
    }
    model_schema: dict[str, Any] = {"type": "string"}
    if model_names:
        model_schema["enum"] = model_names
    model_param = {"name": "model", "in": "path", "required": True, "schema": model_schema}
    version_param = {"name": "version", "in": "path", "required": True,
                     "schema": {"type": "string", **({"enum": versions} if versions else {})}}
    return {
        "/predictions/{model}": {"post": {**predict, "parameters": [model_param], "tags": ["torchserve"]}},
        "/predictions/{model}/{version}": {
            "post": {**predict, "parameters": [model_param, version_param], "tags": ["torchserve"]}
        },
    }


def _server_paths() -> dict[str, Any]:
    document = {"type": "object", "required": ["openapi", "info", "paths"]}
    return {
        "/ping": {"get": {"summary": "Health check", "responses": {"200": json_body(
            {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}, "Healthy")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus' text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": json_body(document, "OpenAPI 3")}}},
        "/": {"options": {"summary": "This document (OPTIONS /, as TorchServe answers it)",
                          "responses": {"200": json_body(document, "OpenAPI 3")}}},
    }


# Every protocol route reads the request's deadline from this header; a bad value is the protocol's invalid-input
# error, which KServe and bert-serving answer as 400.
DEADLINE_HEADER = {"name": "X-Berthing-Timeout-Ms", "in": "header", "required": False,
                   "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 3_600_000},
                   "description": "the request's deadline: refused at once (503) when it would wait longer"}
AS_400 = ("kserve", "bert-serving")


def _with_deadline(operation: dict[str, Any]) -> dict[str, Any]:
    """A protocol operation with the deadline header, and the status a bad value gets in the protocol's error shape."""
    tag = (operation.get("tags") or [None])[0]
    responses = operation.get("responses", {})
    shape = next((r for code, r in responses.items() if code.startswith("4") and code != "404"), None)
    if tag is None or shape is None:  # the server's own routes, the probes and the static files read no deadline
        return operation
    code = "400" if tag in AS_400 else "422"
    return {**operation, "parameters": [*operation.get("parameters", []), DEADLINE_HEADER],
            "responses": {**responses, code: responses.get(code, shape)}}


def openapi(model_names: list[str], paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document: the server's own routes and every enabled protocol's `paths` (tagged by protocol)."""
    own = _server_paths()
    merged = {"/ping": own.pop("/ping")}
    for path, operations in (paths or {}).items():
        merged[path] = {verb: _with_deadline(operation) for verb, operation in operations.items()}
    for path, operations in own.items():
        merged[path] = {**operations, **merged.get(path, {})}
    return {
        "openapi": "3.0.3",
        "info": {"title": "berthing inference API", "version": berthing.__version__},
        "paths": merged,
        "components": {"schemas": {"Error": _ERROR, "PredictionRequest": _REQUEST}},
    }
