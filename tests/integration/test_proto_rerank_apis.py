"""Cohere's /v1 and /v2 rerank (the real cohere SDK) and Jina's /v1/rerank (llama-index's wire) against a real server:
rankings and scores equal the TorchServe route's, errors in each API's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cohere
import httpx
import pytest

from berthing.config import Settings
from berthing.registry import Registry
from tests.support.http import clone, metric
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer
from tests.support.texts import RERANK_DOCS, RERANK_QUERY

QUERY, DOCS = RERANK_QUERY, RERANK_DOCS
MAX_ITEMS = 6
MODELS = "classifier, ranker"
V1_FIELDS = "model, query, documents, top_n, return_documents, rank_fields, max_chunks_per_doc, max_tokens_per_doc"
V2_FIELDS = "model, query, documents, top_n, return_documents, max_tokens_per_doc, priority"


@pytest.fixture(scope="module")
def server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    """A classifier first (so it is the default model) and the reranker; a small item limit."""
    registry = Registry()
    registry.add(clone(load("classify"), "classifier"))
    registry.add(clone(load("rerank"), "ranker"))
    with ThreadServer(registry, settings.model_copy(update={"max_items": MAX_ITEMS})) as running:
        yield running


def torchserve(url: str, texts: list[str], query: str = QUERY) -> list[tuple[int, float]]:
    """(index, score) best first from POST /predictions/ranker: what every rerank API must answer."""
    response = httpx.post(f"{url}/predictions/ranker", json={"query": query, "texts": texts})
    assert response.status_code == 200, response.text
    return [(entry["index"], entry["score"]) for entry in response.json()]


def pairs(results: Any) -> list[tuple[int, float]]:
    return [(r.index, r.relevance_score) for r in results]


def test_cohere_v2_matches_torchserve_with_langchain_nulls(server: ThreadServer) -> None:
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    # langchain-cohere's call: explicit None is sent as JSON null for top_n and max_tokens_per_doc
    answer = client.rerank(model="ranker", query=QUERY, documents=DOCS, top_n=None, max_tokens_per_doc=None)
    assert pairs(answer.results) == torchserve(server.url, DOCS)
    assert answer.id and answer.meta.api_version.version == "2" and answer.meta.tokens.input_tokens > 0
    top = client.rerank(model="ranker:1.0", query=QUERY, documents=DOCS, top_n=2)
    assert pairs(top.results) == torchserve(server.url, DOCS)[:2]


def test_cohere_v2_max_tokens_per_doc_cuts_documents(server: ThreadServer, load: Any) -> None:
    tokenizer = load("rerank").encoder.tokenizer
    cut = [d[: tokenizer.encode(d, add_special_tokens=False).offsets[:3][-1][1]] for d in DOCS]
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    answer = client.rerank(model="ranker", query=QUERY, documents=DOCS, max_tokens_per_doc=3)
    assert pairs(answer.results) == torchserve(server.url, cut)


def test_cohere_max_tokens_per_doc_on_a_huge_document(server: ThreadServer, load: Any) -> None:
    # 2 MB: only a prefix is tokenized (tasks/prefix.py), and the cut is the one the whole text gives
    tokenizer = load("rerank").encoder.tokenizer
    huge = DOCS[1] + " " + "物流很快 fast delivery, " * 100_000
    cut = [d[: tokenizer.encode(d, add_special_tokens=False).offsets[:5][-1][1]] for d in (DOCS[0], huge)]
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    answer = client.rerank(model="ranker", query=QUERY, documents=[DOCS[0], huge], max_tokens_per_doc=5)
    assert len(cut[1]) < 100 and pairs(answer.results) == torchserve(server.url, cut)


def test_cohere_v1_return_documents_and_objects(server: ThreadServer) -> None:
    client = cohere.Client(api_key="x", base_url=server.url)
    documents: list[Any] = [DOCS[0], *({"text": d, "id": f"doc{i}"} for i, d in enumerate(DOCS[1:], 1))]
    answer = client.rerank(model="ranker", query=QUERY, documents=documents, return_documents=True, top_n=3)
    expected = torchserve(server.url, DOCS)[:3]
    assert pairs(answer.results) == expected
    for result in answer.results:
        assert result.document.text == DOCS[result.index]
        if result.index:  # an object comes back whole, its other fields kept
            assert result.document.dict()["id"] == f"doc{result.index}"
    bare = client.rerank(model="ranker", query=QUERY, documents=DOCS, return_documents=False)
    assert pairs(bare.results) == torchserve(server.url, DOCS)
    assert all(r.document is None for r in bare.results)


def test_cohere_v1_rank_fields(server: ThreadServer) -> None:
    client = cohere.Client(api_key="x", base_url=server.url)
    documents: list[Any] = [{"title": f"t{i}", "body": d} for i, d in enumerate(DOCS)]
    one = client.rerank(model="ranker", query=QUERY, documents=documents, rank_fields=["body"], return_documents=False)
    assert pairs(one.results) == torchserve(server.url, DOCS)
    two = client.rerank(model="ranker", query=QUERY, documents=documents, rank_fields=["title", "body"])
    assert pairs(two.results) == torchserve(server.url, [f"title: t{i}\nbody: {d}" for i, d in enumerate(DOCS)])


def test_jina_llama_index_wire(server: ThreadServer) -> None:
    """llama-index-postprocessor-jinaai-rerank 0.6.0's request: base_url + "/rerank", bearer key, identity encoding."""
    headers = {"Authorization": "Bearer x", "Accept-Encoding": "identity"}
    body = {"query": QUERY, "documents": DOCS, "model": "ranker", "top_n": 2}
    resp = httpx.post(f"{server.url}/v1/rerank", json=body, headers=headers).json()
    assert "results" in resp
    assert [(r["index"], r["relevance_score"]) for r in resp["results"]] == torchserve(server.url, DOCS)[:2]
    assert [r["document"] for r in resp["results"]] == [{"text": DOCS[r["index"]]} for r in resp["results"]]  # Jina default
    assert resp["model"] == "ranker" and resp["usage"]["total_tokens"] == resp["usage"]["prompt_tokens"] > 0
    assert metric(server.url, "berthing_requests_total", protocol="rerank", route="v1/rerank", status="200")


def test_no_model_finds_the_reranker_beside_the_default(server: ThreadServer) -> None:
    resp = httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert [(r["index"], r["relevance_score"]) for r in resp.json()["results"]] == torchserve(server.url, DOCS)


def test_cohere_sdk_raises_typed_errors_with_the_body(server: ThreadServer) -> None:
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    with pytest.raises(cohere.NotFoundError) as missing:
        client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS)
    assert missing.value.body == {"message": f"model 'rerank-english-v3.0' not found (models: {MODELS})"}
    with pytest.raises(cohere.UnprocessableEntityError) as empty:
        client.rerank(model="ranker", query=QUERY, documents=[])
    assert empty.value.body == {"message": "field 'documents' is an empty list"}
    with pytest.raises(cohere.BadRequestError) as many:
        client.rerank(model="ranker", query=QUERY, documents=DOCS * 2)
    assert many.value.body == {"message": f"field 'documents' has 10 items, over the limit of {MAX_ITEMS}"}


ERRORS = [  # (body, status, message); model defaults to the reranker
    ({"query": QUERY, "documents": []}, 422, "field 'documents' is an empty list"),
    ({"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS}, 404,
     f"model 'rerank-english-v3.0' not found (models: {MODELS})"),
    ({"query": QUERY, "documents": ["a"] * (MAX_ITEMS + 1)}, 400,
     f"field 'documents' has {MAX_ITEMS + 1} items, over the limit of {MAX_ITEMS}"),
    ({"model": "classifier", "query": QUERY, "documents": DOCS}, 422,
     "model 'classifier' is a classification model; POST /{v}/rerank needs a reranking model"),
    ({"query": QUERY, "documents": "one text"}, 422, "field 'documents' must be a list, got string"),
    ({"query": QUERY, "documents": [DOCS[0], 7]}, 422, "documents[1] must be a string, got number"),
    ({"query": QUERY, "documents": [{"title": "no text"}]}, 422, "documents[0].text is missing"),
    ({"query": 5, "documents": DOCS}, 422, "field 'query' must be a string, got number"),
    ({"query": " ", "documents": DOCS}, 422, "field 'query' is empty or blank"),
    ({"documents": DOCS}, 422, "field 'query' is missing"),
    ({"query": QUERY, "documents": DOCS, "top_n": "2"}, 422, "field 'top_n' must be an integer, got \"2\""),
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "field 'top_n' must be >= 1, got 0"),
    ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, 422,
     "field 'return_documents' must be true or false, got \"yes\""),
    ({"model": 3, "query": QUERY, "documents": DOCS}, 422, "field 'model' must be a string, got number"),
    ([QUERY], 422, "body must be a JSON object, got array"),
]


@pytest.mark.parametrize(("body", "code", "message"), ERRORS, ids=lambda v: None)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_error_bodies(server: ThreadServer, version: str, body: Any, code: int, message: str) -> None:
    response = httpx.post(f"{server.url}/{version}/rerank", json=body)
    message = message.replace("{v}", version)
    expected = {"message": message, "detail": message} if version == "v1" else {"message": message}
    assert (response.status_code, response.json()) == (code, expected)
    assert response.headers["content-type"] == "application/json"


def test_unknown_fields_are_named(server: ThreadServer) -> None:
    v1 = httpx.post(f"{server.url}/v1/rerank", json={"query": QUERY, "documents": DOCS, "priority": 1})
    message = f"unknown field 'priority' for POST /v1/rerank (fields: {V1_FIELDS})"
    assert (v1.status_code, v1.json()) == (422, {"message": message, "detail": message})
    v2 = httpx.post(f"{server.url}/v2/rerank", json={"query": QUERY, "documents": DOCS, "rank_fields": ["text"]})
    message = f"unknown field 'rank_fields' for POST /v2/rerank (fields: {V2_FIELDS})"
    assert (v2.status_code, v2.json()) == (422, {"message": message})


def test_invalid_json_is_400(server: ThreadServer) -> None:
    response = httpx.post(f"{server.url}/v2/rerank", content=b'{"query": ', headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["message"].startswith("body is not valid JSON: ")


def fill(url: str) -> None:
    httpx.post(f"{url}/predictions/busy", json={"query": QUERY, "texts": [DOCS[0]]}, timeout=60).raise_for_status()


def test_overload_is_429_with_retry_after(load: Any, server_factory: Any) -> None:
    with overloaded(load("rerank"), "busy", server_factory, fill) as busy:
        client = cohere.ClientV2(api_key="x", base_url=busy.url)
        with pytest.raises(cohere.TooManyRequestsError) as shed:
            client.rerank(model="busy", query=QUERY, documents=[DOCS[1]], request_options={"max_retries": 0})
        message = "model 'busy' has 1 item queued (limit 1); retry later"
        assert shed.value.headers["retry-after"] == "1" and shed.value.body == {"message": message}
        jina = httpx.post(f"{busy.url}/v1/rerank", json={"query": QUERY, "documents": [DOCS[1]], "model": "busy"})
        assert (jina.status_code, jina.headers["retry-after"], jina.json()) == (429, "1", {"message": message, "detail": message})
        assert metric(busy.url, "berthing_requests_total", protocol="rerank", route="v2/rerank", status="429") == 1.0


def test_openapi_lists_the_routes(server: ThreadServer) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert paths["/v1/rerank"]["post"]["tags"] == paths["/v2/rerank"]["post"]["tags"] == ["rerank"]

