"""KServe V2's routes in /openapi.json: the Open Inference Protocol's JSON schemas (inference request and response,
model metadata, readiness) and Triton's model configuration, as berthing answers them."""

from __future__ import annotations

from typing import Any

from berthing.server.openapi import ERROR_REF, errors, json_body, not_found

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}
_PARAMETERS = {"type": "object", "additionalProperties": {"oneOf": [
    {"type": "string"}, {"type": "number"}, {"type": "boolean"}]}}
_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": _SHAPE}}
_DATA = {"type": "array", "description": "the elements, flat or nested by shape, row-major"}
REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"},
    "parameters": _PARAMETERS,
    "inputs": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "datatype", "shape"], "properties": {
            "name": {"enum": ["text", "text_pair", "question", "context", "query"], "description": "by the model's task"},
            "datatype": {"enum": ["BYTES"], "description": "berthing's models read texts"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}}, "parameters": _PARAMETERS,
            "data": {**_DATA, "items": {"type": "string"}}}}},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": _PARAMETERS}}},
}}
RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "parameters": _PARAMETERS,
    "outputs": {"type": "array", "items": {
        "type": "object", "required": ["name", "datatype", "shape"], "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": _SHAPE, "parameters": _PARAMETERS,
            "data": _DATA}}},
}}
EXAMPLE = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a text"]}]}
METADATA = {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
    "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
    "platform": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR_META},
    "outputs": {"type": "array", "items": _TENSOR_META}}}
_CONFIG_TENSOR = {"type": "object", "required": ["name", "data_type", "dims"], "properties": {
    "name": {"type": "string"}, "data_type": {"type": "string"}, "dims": _SHAPE, "optional": {"type": "boolean"}}}
CONFIG = {"type": "object", "required": ["name", "platform", "max_batch_size", "input", "output"], "properties": {
    "name": {"type": "string"}, "platform": {"type": "string"}, "backend": {"type": "string"},
    "max_batch_size": {"type": "integer"}, "input": {"type": "array", "items": _CONFIG_TENSOR},
    "output": {"type": "array", "items": _CONFIG_TENSOR}, "parameters": {"type": "object"}}}
SERVER = {"type": "object", "required": ["name", "version", "extensions"], "properties": {
    "name": {"type": "string"}, "version": {"type": "string"}, "extensions": {"type": "array", "items": {"type": "string"}}}}


def _flag(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: {"type": "boolean"}}}


def _get(summary: str, answer: dict[str, Any], params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A GET: its answer, KServe's {"error"} for a refused one (an unknown model is Triton's 400)."""
    responses = {"200": json_body(answer), **errors(ERROR, 400, 401, 403)}
    if params:
        responses.update(not_found(ERROR_REF))  # a name or version with a '/' makes a path no route has
    return {"get": {"summary": summary, "responses": responses, **({"parameters": params} if params else {})}}


def openapi_paths(names: list[str], versions: list[str]) -> dict[str, Any]:
    """Every KServe V2 route on the inference port; the models and versions served are listed."""
    model = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", **({"enum": names} if names else {})}}
    version = {"name": "version", "in": "path", "required": True,
               "schema": {"type": "string", **({"enum": versions} if versions else {})}}
    header = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
              "schema": {"type": "integer", "minimum": 0},
              "description": "binary tensor extension: the JSON header's length; binary tensors follow it"}
    ready = _get("KServe V2 readiness", _flag("ready"))
    ready["get"]["responses"]["503"] = json_body(_flag("ready"), "no model is served yet")
    paths: dict[str, Any] = {
        "/v2": _get("KServe V2 server metadata", SERVER),
        "/v2/health/live": _get("KServe V2 liveness", _flag("live")),
        "/v2/health/ready": ready,
    }
    model_ready = {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}}
    for base, params in (("/v2/models/{model}", [model]), ("/v2/models/{model}/versions/{version}", [model, version])):
        paths[base] = _get("KServe V2 model metadata", METADATA, params)
        paths[base + "/ready"] = _get("KServe V2 model readiness", model_ready, params)
        paths[base + "/config"] = _get("Triton model configuration", CONFIG, params)
        paths[base + "/infer"] = {"post": {
            "summary": "KServe V2 inference (JSON tensors or the binary tensor extension; BYTES inputs)",
            "parameters": [*params, header],
            "requestBody": {"required": True, "description": "JSON, or a JSON header then binary tensors", "content": {
                "application/json": {"schema": REQUEST, "example": EXAMPLE},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "200": {"description": "the outputs: JSON, or a JSON header and binary tensors where asked",
                        "content": {"application/json": {"schema": RESPONSE},
                                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **errors(ERROR, 400, 401, 403, 500),
                "503": json_body(ERROR, "overloaded; Retry-After says when to retry"),
                **not_found(ERROR_REF),
            },
        }}
    return paths
