"""TEI's routes in /openapi.json: text-embeddings-inference 1.9.3's request and answer schemas (and the HF Inference
API bodies POST / also takes), each route once bare (the model from X-Berthing-Model or the default) and once under
/models/{name}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berthing.server.openapi import RESULTS, errors, json_body, not_found, nullable
from berthing.server.protocols import infinity

if TYPE_CHECKING:
    from berthing.server.gateway import Gateway

ERROR = {"type": "object", "required": ["error", "error_type"],
         "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}}
_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_INPUT = {"oneOf": [{"type": "string"}, _IDS, {"type": "array", "minItems": 1, "items": {"oneOf": [{"type": "string"}, _IDS]}}],
          "description": "a text, one input of token ids, or a list of texts and token id lists"}
_SEQUENCE = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}
_COMMON = {
    "truncate": nullable({"type": "boolean", "description": "null: the server's auto_truncate (true)"}),
    "truncation_direction": {"enum": ["Left", "left", "Right", "right"], "default": "Right"},
    "prompt_name": nullable({"type": "string", "description": "refused: berthing's models carry no prompts"}),
}
_PARAMETERS = nullable({"type": "object", "properties": {**_COMMON, "top_k": {"type": "integer", "minimum": 1}}})


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


EMBED = _object(["inputs"], inputs=_INPUT, normalize={"type": "boolean", "default": True},
                dimensions=nullable({"type": "integer", "minimum": 1}), **_COMMON)
EMBED_ALL = _object(["inputs"], inputs=_INPUT, **_COMMON)
PREDICT = _object(["inputs"], inputs={"oneOf": [{"type": "string"}, _SEQUENCE, {"type": "array", "items": _SEQUENCE}],
                                      "description": '"a" is one text, ["a", "b"] ONE pair, [["a"], ["a", "b"]] a batch'},
                  raw_scores={"type": "boolean", "default": False}, **_COMMON)
_TEXTS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
RERANK = _object(["query", "texts"], query={"type": "string"}, texts=_TEXTS,
                 raw_scores={"type": "boolean", "default": False}, return_text={"type": "boolean", "default": False},
                 **_COMMON)
SIMILARITY = _object(["inputs"], inputs=_object(
    ["source_sentence", "sentences"], source_sentence={"type": "string"},
    sentences=_TEXTS), parameters=_PARAMETERS)
TOKENIZE = _object(["inputs"], inputs={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                   add_special_tokens={"type": "boolean", "default": True}, prompt_name=_COMMON["prompt_name"])
DECODE = _object(["ids"], ids={"oneOf": [_IDS, {"type": "array", "items": _IDS}]},
                 skip_special_tokens={"type": "boolean", "default": True})
HF_TASK = _object(["inputs"], inputs={"description": "a text or a list (NER), {question, context} or a list (QA)"},
                  parameters=nullable({"type": "object"}))

_VECTORS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
_SCORED = {"type": "array", "items": _object(["score", "label"], score={"type": "number"}, label={"type": "string"})}
_RANKED = {"type": "array", "items": _object(["index", "score"], index={"type": "integer"}, score={"type": "number"},
                                             text={"type": "string"})}
_TOKEN = _object(["id", "text", "special", "start", "stop"], id={"type": "integer"}, text={"type": "string"},
                 special={"type": "boolean"}, start=nullable({"type": "integer"}), stop=nullable({"type": "integer"}))
_INFO = _object(["model_id", "model_type", "max_input_length", "max_client_batch_size", "version"],
                model_id={"type": "string"}, model_sha=nullable({"type": "string"}), model_dtype={"type": "string"},
                model_type={"type": "object"}, max_concurrent_requests={"type": "integer"},
                max_input_length={"type": "integer"}, max_batch_tokens={"type": "integer"},
                max_batch_requests=nullable({"type": "integer"}), max_client_batch_size={"type": "integer"},
                auto_truncate={"type": "boolean"}, tokenization_workers={"type": "integer"}, version={"type": "string"})
_HEALTH = _object(["unix"], unix={"type": "number"})
_ROOT_ANSWER = {"anyOf": [
    {"type": "array", "items": {"type": "number"}}, _VECTORS, _SCORED, {"type": "array", "items": _SCORED}, _RANKED,
    RESULTS["ner"], {"type": "array", "items": RESULTS["ner"]}, RESULTS["qa"], {"type": "array", "items": RESULTS["qa"]},
]}

# route name -> (request, answer); GET routes have no request
SCHEMAS: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    "embed": (EMBED, _VECTORS), "embed_all": (EMBED_ALL, {"type": "array", "items": _VECTORS}),
    "predict": (PREDICT, {"anyOf": [_SCORED, {"type": "array", "items": _SCORED}]}),
    "rerank": (RERANK, _RANKED), "similarity": (SIMILARITY, {"type": "array", "items": {"type": "number"}}),
    "tokenize": (TOKENIZE, {"type": "array", "items": {"type": "array", "items": _TOKEN}}),
    "decode": (DECODE, {"type": "array", "items": {"type": "string"}}),
    "info": (None, _INFO), "health": (None, _HEALTH),
    "root": ({"anyOf": [SIMILARITY, EMBED, PREDICT, RERANK, HF_TASK]}, _ROOT_ANSWER),
}
EXAMPLES = {
    "embed": {"inputs": "a text"}, "embed_all": {"inputs": "a text"}, "predict": {"inputs": "a text"},
    "rerank": {"query": "a question", "texts": ["a text", "another"]}, "tokenize": {"inputs": "a text"},
    "similarity": {"inputs": {"source_sentence": "a text", "sentences": ["another"]}}, "decode": {"ids": [1037, 3793]},
    "root": {"inputs": "a text"},
}
SUMMARIES = {
    "embed": "Pooled embeddings (TEI)", "embed_all": "Every token's embedding (TEI)", "predict": "Classification (TEI)",
    "rerank": "Rerank texts against a query (TEI; an Infinity body with 'documents' too)",
    "similarity": "Cosine similarity to a source sentence (TEI)", "tokenize": "Tokenize (TEI)", "decode": "Decode ids (TEI)",
    "info": "Model info (TEI)", "health": "Health (TEI)",
    "root": "Inference dispatched by the model's task (TEI; HF InferenceClient bodies)",
}


def _operation(name: str, method: str, gateway: Gateway) -> dict[str, Any]:
    request, answer = SCHEMAS[name]
    error = ERROR
    if name == "rerank" and "infinity" in gateway.settings.enabled_protocols():  # Infinity's body, answer and errors
        request, answer = {"anyOf": [request, infinity.rerank_request()]}, {"anyOf": [answer, infinity.RERANKED]}
        error = {"anyOf": [ERROR, infinity.ERROR]}
    ok = json_body(answer, "TEI's answer")
    if name == "health" and gateway.settings.ui:  # GET / with Accept: text/html is the playground page
        ok["content"]["text/html"] = {"schema": {"type": "string"}}
    codes = (401, 503) if name == "health" else (401,) if method == "get" else (400, 401, 413, 422, 424, 429)
    operation: dict[str, Any] = {"tags": ["tei"], "summary": SUMMARIES[name],
                                 "responses": {"200": ok, **errors(error, *codes), **not_found(error)}}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": request, "example": EXAMPLES[name]}}}
    return operation


def openapi_paths(gateway: Gateway, routes: dict[str, tuple[str, Any, str]], prefix: str) -> dict[str, Any]:
    """Each route bare (X-Berthing-Model names the model, else the default) and under `prefix` (/models/{name})."""
    names = {"type": "string", "enum": gateway.registry.names()}
    by_header = [{"name": "X-Berthing-Model", "in": "header", "required": False, "schema": names}]
    by_path = [{"name": "name", "in": "path", "required": True, "schema": names}]
    paths: dict[str, Any] = {}
    entries = [(p, n, m.lower()) for p, (n, _, m) in routes.items()] + [("/", "root", "post"), ("/", "health", "get")]
    for path, name, method in entries:
        operation = _operation(name, method, gateway)
        paths.setdefault(path, {})[method] = {**operation, "parameters": by_header}
        prefixed = prefix if path == "/" else prefix + path
        paths.setdefault(prefixed, {})[method] = {**operation, "parameters": by_path}
    return paths
