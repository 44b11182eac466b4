"""Infinity's routes driven by the real infinity-client 0.0.78 against a real server: answers equal the TorchServe
route's, errors in Infinity's {"error": ...} shape with its statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from infinity_client import Client
from infinity_client.api.default import classify, embeddings, models, rerank
from infinity_client.models import ClassifyInput, HTTPValidationError, OpenAIEmbeddingInputText, RerankInput

from berthing.config import Settings
from berthing.registry import Registry
from tests.support.http import clone, metric, torchserve_answer
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer
from tests.support.texts import RERANK_DOCS, RERANK_QUERY

QUERY, DOCS = RERANK_QUERY, RERANK_DOCS
TEXTS = ["I love this.", "This is terrible.", "教练, 我想打篮球."]
MAX_ITEMS = 6
MODELS = "classifier, embedder, ranker"
# Without TEI, whose /rerank would take the path first and answer Infinity's bodies in TEI's error shape.
PROTOCOLS = ["torchserve", "openai", "infinity"]


@pytest.fixture(scope="module")
def server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    """A classifier first (the default model), an embedder and a reranker; a small item limit."""
    registry = Registry()
    for kind, name in (("classify", "classifier"), ("embed", "embedder"), ("rerank", "ranker")):
        registry.add(clone(load(kind), name))
    update = {"max_items": MAX_ITEMS, "protocols": PROTOCOLS}
    with ThreadServer(registry, settings.model_copy(update=update)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Client:
    return Client(base_url=server.url)


predictions = torchserve_answer


def test_models_parse_in_the_strict_client(client: Client) -> None:
    listing = models.sync(client=client)
    assert [(m.id, m.owned_by.value, m.object_.value, m.capabilities) for m in listing.data] == [
        ("classifier", "infinity", "model", ["classify"]), ("embedder", "infinity", "model", ["embed"]),
        ("ranker", "infinity", "model", ["rerank"]),
    ]
    assert all(m.backend == "berthing" and m.created > 0 for m in listing.data)


def test_rerank_matches_torchserve(client: Client, server: ThreadServer) -> None:
    expected = predictions(server.url, "ranker", {"query": QUERY, "texts": DOCS})
    answer = rerank.sync(client=client, body=RerankInput(query=QUERY, documents=DOCS, model="ranker"))
    assert [(r.index, r.relevance_score) for r in answer.results] == [(e["index"], e["score"]) for e in expected]
    assert answer.object_.value == "rerank" and answer.model == "ranker" and answer.usage.total_tokens > 0
    assert answer.id.startswith("infinity-") and all(not r.document for r in answer.results)

    full = rerank.sync(client=client, body=RerankInput(query=QUERY, documents=DOCS, return_documents=True, raw_scores=True,
                                                       top_n=2))  # the placeholder model: the reranker beside the default
    assert [(r.index, r.relevance_score, r.document) for r in full.results] == [
        (e["index"], e["logit"], DOCS[e["index"]]) for e in expected[:2]
    ]


def test_classify_matches_torchserve(client: Client, server: ThreadServer) -> None:
    expected = predictions(server.url, "classifier", {"input": TEXTS})
    answer = classify.sync(client=client, body=ClassifyInput(input_=TEXTS))  # the placeholder: the default model
    assert answer.object_.value == "classify" and answer.model == "classifier" and answer.usage.prompt_tokens > 0
    for got, want in zip(answer.data, expected, strict=True):
        ranked = sorted(want["scores"].items(), key=lambda kv: -kv[1])
        assert [(c.label, c.score) for c in got] == ranked and got[0].label == want["label"]
    raw = classify.sync(client=client, body=ClassifyInput(input_=TEXTS, model="classifier", raw_scores=True))
    assert [[(c.label, c.score) for c in row] for row in raw.data] == [[(c.label, c.score) for c in row] for row in answer.data]


def infinity_error(code: int, kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if code == 422:
        body["detail"] = [{"loc": ["body", param] if param else ["body"], "msg": message, "type": "value_error"}]
    return body


ERRORS = [  # (route, body, status, type, message)
    ("rerank", {"query": QUERY, "documents": [], "model": "ranker"}, 422, "InvalidInput", "field 'documents' is an empty list"),
    ("rerank", {"query": QUERY, "documents": DOCS, "model": "nope"}, 400, "ModelNotFound",
     f"model 'nope' not found (models: {MODELS})"),
    ("rerank", {"query": QUERY, "documents": ["a"] * (MAX_ITEMS + 1)}, 422, "PayloadTooLarge",
     f"field 'documents' has {MAX_ITEMS + 1} items, over the limit of {MAX_ITEMS}"),
    ("rerank", {"query": QUERY, "documents": DOCS, "model": "classifier"}, 400, "WrongTask",
     "model 'classifier' is a classification model; POST /rerank needs a reranking model"),
    ("rerank", {"query": QUERY, "documents": [1]}, 422, "InvalidInput", "documents[0] must be a string, got number"),
    ("rerank", {"query": None, "documents": DOCS}, 422, "InvalidInput", "field 'query' must be a string, got null"),
    ("rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "InvalidInput", "field 'top_n' must be >= 1, got 0"),
    ("rerank", {"query": QUERY, "documents": DOCS, "raw_scores": 1}, 422, "InvalidInput",
     "field 'raw_scores' must be true or false, got 1"),
    ("rerank", {"query": QUERY, "documents": DOCS, "texts": DOCS}, 422, "InvalidInput",
     "unknown field 'texts' for POST /rerank (fields: query, documents, return_documents, raw_scores, model, top_n)"),
    ("classify", {"input": []}, 422, "InvalidInput", "field 'input' is an empty list"),
    ("classify", {"input": TEXTS, "model": "nope"}, 400, "ModelNotFound", f"model 'nope' not found (models: {MODELS})"),
    ("classify", {"input": ["a"] * (MAX_ITEMS + 1)}, 422, "PayloadTooLarge",
     f"field 'input' has {MAX_ITEMS + 1} items, over the limit of {MAX_ITEMS}"),
    ("classify", {"input": TEXTS, "model": "ranker"}, 400, "WrongTask",
     "model 'ranker' is a reranking model; POST /classify needs a classification model"),
    ("classify", {"input": 5}, 422, "InvalidInput", "field 'input' must be a list of strings, got number"),
    ("classify", {"input": ["ok", 5]}, 422, "InvalidInput", "input[1] must be a string, got number"),
    ("classify", {"text": "x"}, 422, "InvalidInput",
     "unknown field 'text' for POST /classify (fields: input, model, raw_scores)"),
]


@pytest.mark.parametrize(("route", "body", "code", "kind", "message"), ERRORS, ids=lambda v: None)
def test_error_bodies(server: ThreadServer, route: str, body: Any, code: int, kind: str, message: str) -> None:
    response = httpx.post(f"{server.url}/{route}", json=body)
    assert (response.status_code, response.json()) == (code, infinity_error(code, kind, message))


def test_client_parses_422_as_validation_error(client: Client) -> None:
    answer = rerank.sync_detailed(client=client, body=RerankInput(query=QUERY, documents=[]))
    assert answer.status_code == 422 and isinstance(answer.parsed, HTTPValidationError)
    assert [d.msg for d in answer.parsed.detail] == ["field 'documents' is an empty list"]
    unknown = classify.sync_detailed(client=client, body=ClassifyInput(input_=TEXTS, model="nope"))
    assert unknown.status_code == 400 and unknown.parsed is None  # infinity-client parses only 200 and 422
    assert json.loads(unknown.content)["error"]["message"] == f"model 'nope' not found (models: {MODELS})"


def fill(url: str) -> None:
    httpx.post(f"{url}/predictions/busy", json={"query": QUERY, "texts": [DOCS[0]]}, timeout=60).raise_for_status()


def test_overload_is_429_with_retry_after(load: Any, server_factory: Any) -> None:
    with overloaded(load("rerank"), "busy", server_factory, fill, protocols=PROTOCOLS) as busy:
        shed = rerank.sync_detailed(client=Client(base_url=busy.url), body=RerankInput(query=QUERY, documents=[DOCS[1]]))
        message = "model 'busy' has 1 item queued (limit 1); retry later"
        assert (shed.status_code, shed.headers["retry-after"]) == (429, "1")
        assert json.loads(shed.content) == infinity_error(429, "ServiceUnavailable", message)
        assert metric(busy.url, "berthing_requests_total", protocol="infinity", route="rerank", status="429") == 1.0


def test_rerank_with_every_protocol_on(load: Any, server_factory: Any) -> None:
    """With TEI on, its /rerank takes the path and hands Infinity's bodies to this adapter: the same answers and errors."""
    with server_factory({"ranker": load("rerank")}) as running:
        expected = predictions(running.url, "ranker", {"query": QUERY, "texts": DOCS})
        answer = rerank.sync(client=Client(base_url=running.url), body=RerankInput(query=QUERY, documents=DOCS))
        assert [(r.index, r.relevance_score) for r in answer.results] == [(e["index"], e["score"]) for e in expected]
        empty = httpx.post(f"{running.url}/rerank", json={"query": QUERY, "documents": []})
        expected_error = infinity_error(422, "InvalidInput", "field 'documents' is an empty list")
        assert (empty.status_code, empty.json()) == (422, expected_error)


def embed_and_compare(url: str, body: OpenAIEmbeddingInputText, name: str) -> None:
    answer = embeddings.sync(client=Client(base_url=url), body=body)
    expected = np.asarray(predictions(url, name, {"input": TEXTS}), dtype=np.float32)
    got = np.asarray([item.embedding for item in answer.data], dtype=np.float32)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6
    assert [item.index for item in answer.data] == list(range(len(TEXTS))) and answer.usage.total_tokens > 0


def test_embeddings_through_the_openai_route(server: ThreadServer) -> None:
    """infinity-client always sends dimensions 0 and modality "text"; /embeddings is the OpenAI adapter's."""
    embed_and_compare(server.url, OpenAIEmbeddingInputText(input_=TEXTS, model="embedder"), "embedder")


def test_embeddings_with_openai_off_and_the_placeholder_model(load: Any, server_factory: Any) -> None:
    with server_factory({"embedder": load("embed")}, protocols=["torchserve", "infinity"]) as running:
        embed_and_compare(running.url, OpenAIEmbeddingInputText(input_=TEXTS), "embedder")
        assert httpx.post(f"{running.url}/v1/embeddings", json={"input": "x"}).status_code == 404  # OpenAI's route is off
        paths = httpx.get(f"{running.url}/openapi.json").json()["paths"]
        assert {"/models", "/classify", "/rerank", "/embeddings"} <= set(paths) and "/v1/embeddings" not in paths
