"""bert-as-service (and bert-base) on the gateway: the HTTP proxy's /encode and /status/server, and the mapping
both wires share (texts -> task inputs, results -> what bert-serving-client and bert-base's client read back).

A model's task picks the answer: an embedding model answers vectors (bert-as-service), a classifier bert-base's
CLASS `[{"pred_label", "score"}]`, a token classifier bert-base's NER label lists.
"""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import berthing
from berthing.inputs import json_type, parse_tokenized, text_value
from berthing.server.gateway import Call, Gateway, json_response
from berthing.server.openapi import errors, json_body, nullable
from berthing.types import BadRequest, BerthingError, InvalidInput, TextInput, TextPair

if TYPE_CHECKING:
    from berthing.engine.model import Model

PROTOCOL = "bert-serving"
TASKS = ("embed", "classify", "ner")
MODES = {"embed": "BERT", "classify": "CLASS", "ner": "NER"}  # bert-base's -mode for each task
SERVER_VERSION = "1.10.0"  # what bert-serving-client 1.10 checks
BERT_BASE_VERSION = "1.7.8"  # what bert-base 0.0.9's client checks
PAIR_SEPARATOR = " ||| "  # bert-as-service's "first ||| second" sentence pairs
POOLING = {"mean": "REDUCE_MEAN", "max": "REDUCE_MAX", "cls": "CLS_TOKEN", "lasttoken": "LAST_TOKEN"}
_STARTED = time.strftime("%Y-%m-%d %H:%M:%S")


def parse_texts(value: Any, field: str = "texts", tokenized: bool | None = None) -> list[TextInput]:
    """bert-as-service's texts: a non-empty list of strings ("a ||| b" is a pair) or, tokenized, of word lists.

    `tokenized` None decides as the server does (every item a list); the HTTP proxy passes its is_tokenized."""
    if not isinstance(value, list):
        raise InvalidInput(f"field '{field}' must be a list of strings, got {json_type(value)}")
    if not value:
        raise InvalidInput(f"field '{field}' is an empty list")
    if tokenized is None:
        tokenized = all(isinstance(item, list) for item in value)
    if tokenized:
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise InvalidInput(f"{field}[{i}] must be a list of words when is_tokenized is true, got {json_type(item)}")
        return list(parse_tokenized(value, field)[0])
    inputs: list[TextInput] = []
    for i, item in enumerate(value):
        text = text_value(item, f"{field}[{i}]")
        first, sep, second = text.partition(PAIR_SEPARATOR)
        inputs.append(TextPair(first, second) if sep and first.strip() and second.strip() else text)
    return inputs


def options_for(model: Model, truncate: bool = True) -> dict[str, Any]:
    """The task options that give bert-base's answers: NER labels for every token, 'O' included."""
    if model.spec.task == "ner":
        return {"aggregation_strategy": "none", "ignore_labels": [], "truncate": truncate}
    return {"truncate": truncate}


def shape_result(model: Model, results: list[Any]) -> Any:
    """berthing's results as the client reads them: a [n, dim] float32 array, CLASS's one dict, NER's label lists."""
    task = model.spec.task
    if task == "classify":
        return [{"pred_label": [r["label"] for r in results], "score": [float(r["score"]) for r in results]}]
    if task == "ner":
        return [[str(token["entity"]) for token in tokens] for tokens in results]
    return np.ascontiguousarray(np.stack(results), dtype=np.float32)


def server_config(gateway: Gateway, extra: dict[str, Any] | None = None, version: str = SERVER_VERSION) -> dict[str, Any]:
    """SHOW_CONFIG's answer: the keys the clients read (server_version, max_seq_len, show_tokens_to_client, mode)
    and bert-serving-start's arguments as berthing has them, for the default model."""
    try:
        model: Model | None = gateway.lookup(None)
    except BerthingError:
        model = None
    task = model.spec.task if model else "embed"
    pooling = model.spec.pooling if model and task == "embed" else None
    return {
        "model": model.name if model else None, "model_version": model.version if model else None, "task": task,
        "mode": MODES.get(task, task.upper()), "max_seq_len": model.encoder.max_length if model else None,
        "max_batch_size": gateway.settings.max_batch_size, "pooling_strategy": POOLING.get(pooling or "", pooling),
        "pooling_layer": [-1], "normalize": bool(model.spec.normalize) if model and task == "embed" else None,
        "mask_cls_sep": False, "show_tokens_to_client": task == "embed", "num_worker": 1, "cpu": True,
        "server_version": version, "berthing_version": berthing.__version__, "python_version": platform.python_version(),
        "server_start_time": _STARTED, "server_current_time": time.strftime("%Y-%m-%d %H:%M:%S"),
        **(extra or {}),
    }


def error(error: BerthingError) -> Response:
    """The proxy's Flask-JSON errors: {"description", "type", "status"}; every client error is a 400 as there,
    overload keeps its 503 and Retry-After."""
    status = 400 if error.code < 500 and error.code != 401 else error.code  # a missing token stays 401
    body = {"description": error.message, "type": error.type, "status": status}
    return json_response(body, status, error.headers)


async def encode(request: Request, call: Call) -> Response:
    """POST /encode {"id", "texts", "is_tokenized"} -> {"id", "result", "status": 200}."""
    data = await call.json('empty body: send {"id": ..., "texts": [...]}')
    if not isinstance(data, dict):
        raise BadRequest(f'body must be a JSON object {{"id", "texts", "is_tokenized"}}, got {json_type(data)}')
    name, tokenized, truncate = data.get("model"), data.get("is_tokenized"), data.get("truncate", True)
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"field 'model' must be a string, got {json_type(name)}")
    for key, value in (("is_tokenized", tokenized), ("truncate", truncate)):
        if value is not None and not isinstance(value, bool):
            raise InvalidInput(f"field '{key}' must be true or false, got {json_type(value)}")
    model = call.model(name, task=TASKS, route="/encode")
    if "texts" not in data:
        raise BadRequest("missing field 'texts'")
    if isinstance(data["texts"], list):
        call.check_items(len(data["texts"]), "texts")
    inputs = parse_texts(data["texts"], "texts", bool(tokenized))
    results = await call.infer(model, inputs, options_for(model, truncate is not False))
    result = shape_result(model, results)
    return json_response({"id": data.get("id"), "result": result, "status": 200})


async def status(request: Request, call: Call) -> Response:
    """GET /status/server: the server's configuration, as SHOW_STATUS has it."""
    return json_response({**server_config(call.gateway), "status": 200})


def routes(gateway: Gateway) -> list[Route]:
    """The HTTP proxy's routes (bert-serving-start -http_port) on the inference port."""
    return [
        Route("/encode", gateway.endpoint(PROTOCOL, "encode", encode, error), methods=["POST"]),
        Route("/status/server", gateway.endpoint(PROTOCOL, "status", status, error), methods=["GET"]),
    ]


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes."""
    failure = {"type": "object", "required": ["description", "type", "status"], "properties": {
        "description": {"type": "string"}, "type": {"type": "string"}, "status": {"type": "integer"}}}
    result = {"anyOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "description": "vectors (BERT)"},
        {"type": "array", "items": {"type": "object", "required": ["pred_label", "score"], "properties": {
            "pred_label": {"type": "array", "items": {"type": "string"}},
            "score": {"type": "array", "items": {"type": "number"}}}}, "description": "bert-base's CLASS"},
        {"type": "array", "items": {"type": "array", "items": {"type": "string"}}, "description": "NER labels per token"},
    ]}
    encoded = {"type": "object", "required": ["id", "result", "status"], "properties": {
        "id": {"description": "the request's id"}, "result": result, "status": {"enum": [200]}}}
    config = {"type": "object", "required": ["server_version", "max_seq_len", "show_tokens_to_client", "status"],
              "properties": {"server_version": {"type": "string"}, "max_seq_len": nullable({"type": "integer"}),
                             "show_tokens_to_client": {"type": "boolean"}, "mode": {"type": "string"},
                             "status": {"enum": [200]}}}
    request = {"type": "object", "required": ["texts"], "properties": {
        "id": {"description": "echoed back"},
        "texts": {"type": "array", "minItems": 1, "items": {"oneOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
        "is_tokenized": {"type": "boolean", "default": False},
        "model": {"type": "string", "description": "berthing: the model (else the header, else the default)"},
        "truncate": {"type": "boolean", "default": True, "description": "berthing: false refuses over-long texts"},
    }}
    return {
        "/encode": {"post": {
            "summary": "bert-as-service / bert-base: vectors (embedding model), CLASS labels or NER label lists",
            "parameters": [{"name": "X-Berthing-Model", "in": "header", "required": False, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": request, "example": {"id": 1, "texts": ["a text", "another"]}}}},
            "responses": {"200": json_body(encoded, "{id, result, status}"), **errors(failure, 400, 401, 500, 503)},
        }},
        "/status/server": {"get": {"summary": "bert-as-service's server status/configuration",
                                   "responses": {"200": json_body(config, "configuration"), **errors(failure, 401)}}},
    }
