"""The OpenAPI description served at OPTIONS / and GET /openapi.json."""

from __future__ import annotations

from typing import Any

import berthing

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
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for c in codes
    }


def torchserve_paths(model_names: list[str]) -> dict[str, Any]:
    """TorchServe's /predictions routes; model names are listed so clients can see what is served."""
    predict = {
        "summary": "Run a model on a text, a pair, or a list of them (the answer mirrors the input)",
        "requestBody": {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}},
                "text/plain": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        },
        "responses": {
            "200": {"description": "embeddings (float lists), labels, entities, answers or a ranking, by the model's task"},
            **_errors(400, 404, 413, 422, 500, 503),
        },
    }
    model_schema: dict[str, Any] = {"type": "string"}
    if model_names:
        model_schema["enum"] = model_names
    model_param = {"name": "model", "in": "path", "required": True, "schema": model_schema}
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/predictions/{model}": {"post": {**predict, "parameters": [model_param], "tags": ["torchserve"]}},
        "/predictions/{model}/{version}": {
            "post": {**predict, "parameters": [model_param, version_param], "tags": ["torchserve"]}
        },
    }


def openapi(model_names: list[str], paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document: the server's own routes and every enabled protocol's `paths` (tagged by protocol)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "berthing inference API", "version": berthing.__version__},
        "paths": {
            "/ping": {"get": {"summary": "Health check", "responses": {"200": {"description": "Healthy"}}}},
            **(paths or {}),
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "json"}}}},
        },
        "components": {"schemas": {"Error": _ERROR, "PredictionRequest": _REQUEST}},
    }
