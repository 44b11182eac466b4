"""TEI's inference routes (/embed, /embed_all, /predict, /rerank, /similarity) and POST / dispatched by the model's task.

POST / also answers huggingface_hub.InferenceClient's task bodies: token classification and question answering
(which TEI lacks) in the HF Inference API's shapes, and a single text's classification nested as [[...]].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from berthing.inputs import json_type
from berthing.server.gateway import Call
from berthing.server.protocols import infinity
from berthing.server.protocols.tei_wire import (
    NOT_CLASSIFIER,
    NOT_EMBEDDING,
    NOT_RERANKER,
    answer,
    backend,
    check_prompt,
    count_check,
    embed_inputs,
    empty,
    flag,
    infer,
    left_of,
    pick,
    predict_inputs,
    prepare,
    read_object,
    required,
    truncate_of,
    validation,
)
from berthing.tasks.embed import normalize as unit
from berthing.types import BerthingError, TextInput, TextPair

if TYPE_CHECKING:
    from berthing.engine.model import Model

QA_PARAMETERS = ("top_k", "max_answer_len", "handle_impossible_answer", "doc_stride", "max_question_len", "align_to_words")


def _dimensions(body: dict[str, Any], model: Model) -> int | None:
    """`dimensions` (Matryoshka): keep the first d values, then normalize; TEI's own refusals and wording."""
    value = body.get("dimensions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise validation(f"`dimensions` must be a positive integer, got {json_type(value)} {value}")
    if value == 0:
        raise validation("`dimensions` should be positive")
    if model.spec.hidden_size and value > model.spec.hidden_size:
        raise validation("`dimensions` should be smaller than the maximum embedding dimension.")
    return value


async def embed(call: Call, body: dict[str, Any], model: Model) -> list[Any]:
    """/embed: one vector per input, always a list of vectors; normalize defaults to true."""
    inputs, _ = embed_inputs(call, required(body, "inputs"))
    truncate, left = truncate_of(body), left_of(body)
    normalize = flag(body, "normalize", True)
    dims = _dimensions(body, model)
    check_prompt(body)
    items = prepare(model, inputs, truncate, left)
    if dims is None:
        return await infer(call, model, items, {"truncate": truncate, "normalize": normalize})
    vectors = np.stack(await infer(call, model, items, {"truncate": truncate, "normalize": False}))[:, :dims]
    return list(unit(vectors) if normalize else vectors)


async def embed_all(call: Call, body: dict[str, Any], model: Model) -> list[Any]:
    """/embed_all: every token's vector (special tokens included), unpooled and unnormalized."""
    inputs, _ = embed_inputs(call, required(body, "inputs"))
    truncate, left = truncate_of(body), left_of(body)
    check_prompt(body)
    items = prepare(model, inputs, truncate, left)
    return await infer(call, model, items, {"truncate": truncate, "all_tokens": True})


async def classify(call: Call, model: Model, items: list[TextInput], truncate: bool, raw: bool) -> list[list[dict[str, Any]]]:
    """Every label's score, best first, per input; a re-ranker scores [text, text_pair] pairs (its one label)."""
    if model.spec.task == "rerank":
        for i, item in enumerate(items):
            if not isinstance(item, TextPair):
                raise validation(f"`inputs[{i}]`: a re-ranker model scores pairs: send [text, text_pair]")
        pairs = [{"query": p.text, "texts": [p.text_pair]} for p in items if isinstance(p, TextPair)]
        candidates, _ = model.task.parse(pairs, "inputs")
        rankings = await infer(call, model, candidates, {"truncate": truncate})
        label = model.spec.labels[0] if model.spec.labels else "LABEL_0"
        return [[{"score": r[0]["logit" if raw else "score"], "label": label}] for r in rankings]
    if raw:
        raise validation(
            "`raw_scores` is not supported by berthing for classification models: scores are probabilities "
            "(softmax, or sigmoid for multi-label models)"
        )
    ranked = await infer(call, model, items, {"truncate": truncate, "top_k": len(model.spec.labels)})
    return [[{"score": e["score"], "label": e["label"]} for e in labels] for labels in ranked]


async def predict(call: Call, body: dict[str, Any], model: Model, nested: bool = False) -> list[Any]:
    """/predict: ["a", "b"] is one pair; a single input answers a flat list (`nested`: [[...]], as HF's API does)."""
    inputs, single = predict_inputs(call, required(body, "inputs"))
    truncate, left, raw = truncate_of(body), left_of(body), flag(body, "raw_scores", False)
    items = prepare(model, list(inputs), truncate, left)
    results = await classify(call, model, [x for x in items if isinstance(x, str | TextPair)], truncate, raw)
    return results[0] if single and not nested else results


async def rerank(call: Call, body: dict[str, Any], model: Model) -> list[dict[str, Any]]:
    """/rerank: {"query", "texts"} -> [{"index", "score", "text"?}] best first; raw_scores gives the logits."""
    query, texts = required(body, "query"), required(body, "texts")
    if not isinstance(query, str):
        raise validation(f"`query` must be a string, got {json_type(query)}")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise validation(f"`texts` must be a list of strings, got {json_type(texts)}")
    if not texts:
        raise empty("`texts` cannot be empty")
    if model.spec.task != "rerank":
        raise backend(NOT_RERANKER)
    count_check(call, len(texts))
    truncate, left = truncate_of(body), left_of(body)
    raw, return_text = flag(body, "raw_scores", False), flag(body, "return_text", False)
    prepare(model, [TextPair(query, t) for t in texts], truncate, left)  # TEI's length refusals; pairs are never cut left
    candidates, _ = model.task.parse({"query": query, "texts": texts})
    ranking = (await infer(call, model, candidates, {"truncate": truncate, "return_text": return_text}))[0]
    return [
        {"index": r["index"], "score": r["logit" if raw else "score"], **({"text": r["text"]} if return_text else {})}
        for r in ranking
    ]


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    """`parameters`: an object or null."""
    value = body.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation(f"`parameters` must be an object or null, got {json_type(value)}")
    return value


async def similarity(call: Call, body: dict[str, Any], model: Model) -> list[float]:
    """/similarity: the cosine of each sentence's embedding to the source sentence's."""
    inputs = required(body, "inputs")
    if not isinstance(inputs, dict):
        raise validation(f"`inputs` must be an object {{source_sentence, sentences}}, got {json_type(inputs)}")
    source, sentences = required(inputs, "source_sentence"), required(inputs, "sentences")
    if not isinstance(source, str) or not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise validation("`inputs.source_sentence` must be a string and `inputs.sentences` a list of strings")
    if not sentences:
        raise empty("`inputs.sentences` cannot be empty")
    count_check(call, len(sentences) + 1)
    parameters = _parameters(body)
    truncate, left = truncate_of(parameters), left_of(parameters)
    check_prompt(parameters)
    if model.spec.task != "embed":
        raise backend(NOT_EMBEDDING)
    items = prepare(model, [source, *sentences], truncate, left)
    if not all(items):
        raise empty("Input validation error: `inputs` cannot be empty")
    vectors = await infer(call, model, items, {"truncate": truncate, "normalize": True})
    return [float(np.dot(vectors[0], v)) for v in vectors[1:]]


def _hf_body(call: Call, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """An HF Inference API body: its non-empty `inputs` (a list within max_items) and its `parameters` object."""
    inputs = required(body, "inputs")
    if inputs == []:
        raise empty()
    if isinstance(inputs, list):
        count_check(call, len(inputs))
    return inputs, _parameters(body)


async def token_classification(call: Call, body: dict[str, Any], model: Model) -> list[Any]:
    """HF's token-classification body {"inputs": text, "parameters": {aggregation_strategy, ignore_labels}}."""
    inputs, parameters = _hf_body(call, body)
    options = {k: parameters[k] for k in ("aggregation_strategy", "ignore_labels") if parameters.get(k) is not None}
    items, single = model.task.parse(inputs, "inputs")
    results = await infer(call, model, items, options)
    return results[0] if single else results


async def question_answering(call: Call, body: dict[str, Any], model: Model) -> Any:
    """HF's question-answering body {"inputs": {"question", "context"}, "parameters": {...}}."""
    inputs, parameters = _hf_body(call, body)
    if parameters.get("max_seq_len") is not None:
        raise validation("`max_seq_len` is not supported by berthing: contexts are windowed at min(model max length, 384)")
    options = {k: parameters[k] for k in QA_PARAMETERS if parameters.get(k) is not None}
    items, single = model.task.parse(inputs, "inputs")
    results = await infer(call, model, items, options)
    return results[0] if single else results


def _hf_classification(body: dict[str, Any], model: Model, results: list[Any]) -> list[Any]:
    """HF's text-classification `parameters`: top_k cuts each list; function_to_apply must be the model's own."""
    parameters = _parameters(body)
    function = parameters.get("function_to_apply")
    own = "sigmoid" if model.spec.multi_label or model.spec.task == "rerank" else "softmax"
    if function is not None and function != own:
        raise validation(f"`function_to_apply` {function!r} is not supported by berthing: this model applies {own!r}")
    top_k = parameters.get("top_k")
    if top_k is None:
        return results
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise validation(f"`top_k` must be a positive integer, got {json_type(top_k)}")
    return [labels[:top_k] for labels in results]


async def root(request: Request, call: Call) -> Response:
    """POST /: TEI dispatches by the model's type; berthing also reads the body (source_sentence, question+context)."""
    body = await read_object(call)
    inputs = body.get("inputs")
    wanted = None
    if isinstance(inputs, dict):
        wanted = "embed" if "source_sentence" in inputs else "qa" if {"question", "context"} & set(inputs) else None
    model = pick(call, request, (wanted,) if wanted else ())  # a named model as named, whatever the body asks
    task = model.spec.task
    if wanted == "embed":
        if task != "embed":
            raise backend(NOT_EMBEDDING)
        return answer(await similarity(call, body, model))
    if task == "embed":
        return answer(await embed(call, body, model))
    if task == "classify":
        return answer(_hf_classification(body, model, await predict(call, body, model, nested=True)))
    if task == "rerank":
        return answer(await rerank(call, body, model))
    if task == "ner":
        return answer(await token_classification(call, body, model))
    return answer(await question_answering(call, body, model))


# -- route handlers ------------------------------------------------------------------------------------------------


async def embed_route(request: Request, call: Call) -> Response:
    body = await read_object(call)
    return answer(await embed(call, body, pick(call, request, ("embed",), NOT_EMBEDDING)))


async def embed_all_route(request: Request, call: Call) -> Response:
    body = await read_object(call)
    return answer(await embed_all(call, body, pick(call, request, ("embed",), NOT_EMBEDDING)))


async def predict_route(request: Request, call: Call) -> Response:
    body = await read_object(call)
    return answer(await predict(call, body, pick(call, request, ("classify", "rerank"), NOT_CLASSIFIER)))


async def rerank_route(request: Request, call: Call) -> Response:
    """POST /rerank: TEI's body; an Infinity body ("documents", no "texts") goes to the Infinity adapter when it is on."""
    body = await read_object(call)
    if "documents" in body and "texts" not in body and "infinity" in call.settings.enabled_protocols():
        try:
            return await infinity.rerank(call, body)
        except BerthingError as err:
            return infinity.error(err)  # Infinity's own error shape for Infinity's clients
    return answer(await rerank(call, body, pick(call, request, ("rerank",), NOT_RERANKER)))


async def similarity_route(request: Request, call: Call) -> Response:
    body = await read_object(call)
    return answer(await similarity(call, body, pick(call, request, ("embed",), NOT_EMBEDDING)))
