"""HuggingFace text-embeddings-inference (TEI 1.9.3)'s HTTP API on the gateway: its routes, fields, shapes and errors.

Every route also exists under /models/{name}/... to pick a model by name; without it the model is X-Berthing-Model,
else --default-model, else the first model served. Inference routes are in tei_routes.py, wire rules in tei_wire.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from berthing.inputs import json_type
from berthing.server.gateway import Call, Gateway
from berthing.server.protocols import tei_openapi, tei_routes
from berthing.server.protocols.tei_wire import (
    TeiError,
    answer,
    check_prompt,
    count_check,
    empty,
    error,
    flag,
    pick,
    read_object,
    required,
    untruncated,
    validation,
)
from berthing.version import __version__

if TYPE_CHECKING:
    from berthing.engine.model import Model

PREFIX = "/models/{name}"
INLINE_CHARS = 32_768  # /tokenize input longer than this is tokenized in a thread (as Model does for inference)


def _model_type(model: Model) -> dict[str, Any]:
    """TEI's ModelType (lowercase variant names); NER and QA models, which TEI lacks, get their own names."""
    spec = model.spec
    labels = {"id2label": {str(i): label for i, label in enumerate(spec.labels)},
              "label2id": {label: i for i, label in enumerate(spec.labels)}}
    kind = {"embed": "embedding", "classify": "classifier", "rerank": "reranker", "ner": "token_classifier"}
    if spec.task == "embed":
        return {"embedding": {"pooling": spec.pooling}}
    if spec.task == "qa":
        return {"question_answering": {}}
    return {kind[spec.task]: labels}


async def info(request: Request, call: Call) -> Response:
    """GET /info: TEI's Info for the model the request picks."""
    model = pick(call, request)
    settings = call.settings
    return answer({
        "model_id": model.name,
        "model_sha": None,
        "model_dtype": "float32",
        "served_model_name": model.name,
        "model_type": _model_type(model),
        "max_concurrent_requests": model.limits.max_queue,
        "max_input_length": model.spec.max_length,
        "max_batch_tokens": model.limits.max_batch_tokens,
        "max_batch_requests": model.limits.max_batch_size,
        "max_client_batch_size": settings.max_items,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "berthing_version": model.version,
    })


async def health(request: Request, call: Call) -> Response:
    """GET /health and GET /: 200 with {"unix": time} (Infinity's clients read it; TEI's read the status only)."""
    if request.path_params.get("name"):
        pick(call, request)  # an unknown name is a 404
    elif not call.gateway.registry.names():
        raise TeiError("unhealthy", 503, "Unhealthy")
    if call.gateway.registry.crashed():  # a model stopped on an error: only a restart helps
        raise TeiError("unhealthy", 503, "Unhealthy")
    return answer({"unix": time.time()})


def _byte_offsets(text: str) -> list[int]:
    """Byte offset of every character index (TEI's start/stop count UTF-8 bytes; tokenizers' Python offsets count characters)."""
    out, position = [0], 0
    for char in text:
        position += len(char.encode("utf-8"))
        out.append(position)
    return out


async def tokenize(request: Request, call: Call) -> Response:
    """POST /tokenize: [[{"id", "text", "special", "start", "stop"}]] per input, untruncated."""
    body = await read_object(call)
    value = required(body, "inputs")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise validation(f"`inputs` must be a string or a list of strings, got {json_type(value)}")
    if not texts:
        raise empty()
    count_check(call, len(texts))
    if not all(texts):
        raise empty("Input validation error: `inputs` cannot be empty")
    special_tokens = flag(body, "add_special_tokens", True)
    check_prompt(body)
    model = pick(call, request)
    encode = untruncated(model).encode_batch
    if sum(map(len, texts)) > INLINE_CHARS:  # untruncated, so as long as the body: off the event loop
        encodings = await asyncio.to_thread(encode, texts, add_special_tokens=special_tokens)
    else:
        encodings = encode(texts, add_special_tokens=special_tokens)
    out = []
    for text, enc in zip(texts, encodings, strict=True):
        at = _byte_offsets(text)
        out.append([
            {"id": i, "text": token, "special": True, "start": None, "stop": None} if special
            else {"id": i, "text": text[s:e], "special": False, "start": at[s], "stop": at[e]}
            for i, token, special, (s, e) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets, strict=True)
        ])
    return answer(out)


async def decode(request: Request, call: Call) -> Response:
    """POST /decode: {"ids": [..] or [[..], ..]} -> ["text", ...]; skip_special_tokens defaults to true."""
    body = await read_object(call)
    ids = required(body, "ids")
    if not isinstance(ids, list):
        raise validation(f"`ids` must be a list of token ids or a list of them, got {json_type(ids)}")
    batch = ids if ids and all(isinstance(x, list) for x in ids) else [ids]
    if batch is ids:
        count_check(call, len(batch))
    skip = flag(body, "skip_special_tokens", True)
    model = pick(call, request)
    tok = untruncated(model)
    size = tok.get_vocab_size(with_added_tokens=True)
    for row in batch:
        if not row:
            raise empty("Input validation error: `input_ids` cannot be empty")
        for value in row:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise validation(f"`ids` must hold token ids (non-negative integers), got {json_type(value)}")
            if value >= size:
                raise TeiError(f"tokenizer error: token id {value} is not in the vocabulary (0 to {size - 1})", 422, "Tokenizer")
    return answer(tok.decode_batch(batch, skip_special_tokens=skip))


ROUTES = {  # path -> (route name, handler, method)
    "/embed": ("embed", tei_routes.embed_route, "POST"),
    "/embed_all": ("embed_all", tei_routes.embed_all_route, "POST"),
    "/predict": ("predict", tei_routes.predict_route, "POST"),
    "/rerank": ("rerank", tei_routes.rerank_route, "POST"),
    "/similarity": ("similarity", tei_routes.similarity_route, "POST"),
    "/tokenize": ("tokenize", tokenize, "POST"),
    "/decode": ("decode", decode, "POST"),
    "/info": ("info", info, "GET"),
    "/health": ("health", health, "GET"),
}


def routes(gateway: Gateway) -> list[Route]:
    """TEI's routes, each also under /models/{name}; GET / is health and POST / dispatches by the model's task."""
    out: list[Route] = []
    for path, (name, handler, method) in ROUTES.items():
        endpoint = gateway.endpoint("tei", name, handler, error)
        out += [Route(path, endpoint, methods=[method]), Route(PREFIX + path, endpoint, methods=[method])]
    root = gateway.endpoint("tei", "root", tei_routes.root, error)
    root_health = gateway.endpoint("tei", "health", health, error)
    for path in ("/", PREFIX):
        out += [Route(path, root, methods=["POST"]), Route(path, root_health, methods=["GET"])]
    return out


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes, tagged 'tei' (schemas in tei_openapi.py)."""
    return tei_openapi.openapi_paths(gateway, ROUTES, PREFIX)
