"""TEI's HTTP API against a real server on loopback: huggingface_hub.InferenceClient unchanged, every route with httpx,
answers equal to the TorchServe route's, and TEI's {error, error_type} errors with TEI's statuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from berthing.config import Settings
from berthing.registry import Registry
from tests.support.http import clone
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer

KINDS = ("embed", "classify", "ner", "qa", "rerank")
TEXTS = ["the cat sat on the mat", "berthing serves models", "hello world"]


@pytest.fixture(scope="module")
def url(load, settings: Settings) -> Iterator[str]:
    """One server with a model of every task, named by task; the embedding model is the default."""
    registry = Registry()
    for kind in KINDS:
        registry.add(clone(load(kind), kind))
    with ThreadServer(registry, settings.model_copy(update={"default_model": "embed"})) as server:
        yield server.url


def post(url: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30, **kwargs)


def ok(url: str, path: str, body: Any, **kwargs: Any) -> Any:
    response = post(url, path, body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def torchserve(url: str, model: str, body: Any) -> Any:
    return ok(url, f"/predictions/{model}", body)


def tei_error(response: httpx.Response, status: int, kind: str, message: str) -> None:
    assert (response.status_code, response.json()) == (status, {"error": message, "error_type": kind})


# -- embeddings ----------------------------------------------------------------------------------------------------


def test_embed_is_two_dimensional_and_matches_the_torchserve_route(url: str) -> None:
    single = ok(url, "/embed", {"inputs": TEXTS[0]})
    assert np.asarray(single).shape == (1, 32)
    expected = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": True}))
    np.testing.assert_allclose(ok(url, "/embed", {"inputs": TEXTS}), expected, atol=1e-6)
    np.testing.assert_allclose(single[0], expected[0], atol=1e-6)
    raw = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": False}))
    np.testing.assert_allclose(ok(url, "/embed", {"inputs": TEXTS, "normalize": False}), raw, atol=1e-6)


def test_embed_takes_token_ids_and_matryoshka_dimensions(url: str) -> None:
    ids = [t["id"] for t in ok(url, "/tokenize", {"inputs": TEXTS[0]})[0]]
    from_ids = ok(url, "/embed", {"inputs": ids})
    np.testing.assert_allclose(from_ids, ok(url, "/embed", {"inputs": TEXTS[0]}), atol=1e-6)
    both = ok(url, "/embed", {"inputs": [ids, TEXTS[0]]})
    np.testing.assert_allclose(both[0], both[1], atol=1e-6)
    raw = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": False}))[:, :8]
    cut = ok(url, "/embed", {"inputs": TEXTS, "dimensions": 8})
    np.testing.assert_allclose(cut, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_embed_all_returns_every_token_and_pools_to_the_embedding(url: str) -> None:
    tokens = ok(url, "/embed_all", {"inputs": TEXTS})
    lengths = [len(t) for t in ok(url, "/tokenize", {"inputs": TEXTS})]
    assert [len(t) for t in tokens] == lengths and all(len(row) == 32 for t in tokens for row in t)
    pooled = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": False}))
    np.testing.assert_allclose([np.mean(t, axis=0) for t in tokens], pooled, atol=1e-5)  # the model pools by mean
    assert np.asarray(ok(url, "/embed_all", {"inputs": TEXTS[0]})).shape == (1, lengths[0], 32)


def test_left_truncation_keeps_the_end_of_a_long_text(url: str) -> None:
    words = [f"w{i % 7}" for i in range(300)]
    text = " ".join(["start", *words])
    per_word = len(ok(url, "/tokenize", {"inputs": "w1", "add_special_tokens": False})[0])
    tail = " ".join(words[-(126 // per_word):])
    left = ok(url, "/embed", {"inputs": text, "truncation_direction": "Left"})
    np.testing.assert_allclose(left, ok(url, "/embed", {"inputs": tail}), atol=1e-6)
    right = ok(url, "/embed", {"inputs": text, "truncation_direction": "right"})
    assert not np.allclose(left, right)


def test_similarity_is_the_cosine_of_the_embeddings(url: str) -> None:
    vectors = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": True}))
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "parameters": None}
    np.testing.assert_allclose(ok(url, "/similarity", body), vectors[1:] @ vectors[0], atol=1e-6)


# -- classification and reranking ----------------------------------------------------------------------------------


def labels_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A TorchServe-route classification as TEI's list: every label, best first."""
    return [{"score": s, "label": label} for label, s in sorted(answer["scores"].items(), key=lambda kv: -kv[1])]


def assert_labels(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-6)


def test_predict_single_pair_and_batch_match_the_torchserve_route(url: str) -> None:
    assert_labels(ok(url, "/models/classify/predict", {"inputs": TEXTS[0]}),
                  labels_of(torchserve(url, "classify", {"input": TEXTS[0]})))
    pair = ok(url, "/models/classify/predict", {"inputs": TEXTS[:2]})  # ["a", "b"] is ONE pair
    assert_labels(pair, labels_of(torchserve(url, "classify", {"input": {"text": TEXTS[0], "text_pair": TEXTS[1]}})))
    batch = ok(url, "/models/classify/predict", {"inputs": [[TEXTS[0]], TEXTS[:2]]})
    expected = torchserve(url, "classify", {"input": [TEXTS[0], {"text": TEXTS[0], "text_pair": TEXTS[1]}]})
    assert len(batch) == 2
    for got, want in zip(batch, expected, strict=True):
        assert_labels(got, labels_of(want))


def test_rerank_matches_the_torchserve_route(url: str) -> None:
    expected = torchserve(url, "rerank", {"query": TEXTS[0], "texts": TEXTS})
    got = ok(url, "/models/rerank/rerank", {"query": TEXTS[0], "texts": TEXTS, "return_text": True})
    assert [g["index"] for g in got] == [e["index"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-6)
    assert [g["text"] for g in got] == [TEXTS[e["index"]] for e in expected]
    raw = ok(url, "/models/rerank/rerank", {"query": TEXTS[0], "texts": TEXTS, "raw_scores": True})
    assert set(raw[0]) == {"index", "score"}
    np.testing.assert_allclose([g["score"] for g in raw], [e["logit"] for e in expected], atol=1e-6)
    one = ok(url, "/models/rerank/predict", {"inputs": TEXTS[:2]})  # a re-ranker on /predict scores the pair
    pair = torchserve(url, "rerank", {"query": TEXTS[0], "texts": [TEXTS[1]]})
    assert one[0]["label"] == "LABEL_0" and abs(one[0]["score"] - pair[0]["score"]) < 1e-6


def test_rerank_hands_an_infinity_body_to_the_infinity_adapter(url: str) -> None:
    body = ok(url, "/models/rerank/rerank", {"query": TEXTS[0], "documents": TEXTS}, headers={"x-berthing-model": "rerank"})
    assert isinstance(body, dict) and "results" in body


# -- tokenizer, info, health, model choice -------------------------------------------------------------------------


def test_tokenize_and_decode(url: str) -> None:
    text = "héllo world"
    tokens = ok(url, "/tokenize", {"inputs": text})[0]
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[1] == {"id": 7592, "text": "héllo", "special": False, "start": 0, "stop": 6}  # UTF-8 byte offsets
    assert ok(url, "/tokenize", {"inputs": [text], "add_special_tokens": False})[0] == tokens[1:-1]
    ids = [t["id"] for t in tokens]
    assert ok(url, "/decode", {"ids": ids}) == ["hello world"]  # the uncased tokenizer strips accents
    assert ok(url, "/decode", {"ids": [ids, ids[1:2]], "skip_special_tokens": False}) == ["[CLS] hello world [SEP]", "hello"]


def test_info_health_and_the_model_prefix(url: str) -> None:
    info = httpx.get(f"{url}/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert (info["max_input_length"], info["max_client_batch_size"], info["auto_truncate"]) == (128, 1024, True)
    classifier = httpx.get(f"{url}/models/classify/info").json()["model_type"]
    assert classifier["classifier"]["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert "reranker" in httpx.get(f"{url}/models/rerank/info").json()["model_type"]
    for path in ("/health", "/", "/models/ner/health"):
        response = httpx.get(f"{url}{path}")
        assert response.status_code == 200 and isinstance(response.json()["unix"], float)
    by_header = ok(url, "/predict", {"inputs": TEXTS[0]}, headers={"x-berthing-model": "classify"})
    assert by_header == ok(url, "/models/classify/predict", {"inputs": TEXTS[0]})


def test_root_dispatches_by_task_and_body(url: str) -> None:
    np.testing.assert_allclose(ok(url, "/", {"inputs": TEXTS}), ok(url, "/embed", {"inputs": TEXTS}), atol=1e-6)
    assert ok(url, "/models/rerank", {"query": "a", "texts": ["b"]})[0]["index"] == 0
    classified = ok(url, "/models/classify", {"inputs": TEXTS[0], "parameters": {"top_k": 2}})
    assert len(classified) == 1 and len(classified[0]) == 2  # HF's nesting: [[...]] for one text
    qa = {"question": "who sat?", "context": TEXTS[0]}
    assert ok(url, "/", {"inputs": qa}) == torchserve(url, "qa", qa)  # QA body found the QA model
    assert ok(url, "/models/ner", {"inputs": TEXTS[0]}) == torchserve(url, "ner", {"input": TEXTS[0]})


def test_openapi_lists_the_tei_routes(url: str) -> None:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    routes = ("/embed", "/embed_all", "/predict", "/similarity", "/tokenize", "/decode", "/models/{name}/embed",
              "/models/{name}/rerank")
    for path in routes:  # /rerank is shared with Infinity, whose entry describes both bodies
        assert "tei" in paths[path]["post"]["tags"]
    assert "tei" in paths["/info"]["get"]["tags"]


# -- huggingface_hub.InferenceClient, unchanged ---------------------------------------------------------------------


def test_inference_client_feature_extraction(url: str) -> None:
    expected = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": True}))
    got = InferenceClient(model=url).feature_extraction(TEXTS[0])
    assert got.shape == (1, 32)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)
    many = InferenceClient(model=f"{url}/embed").feature_extraction(TEXTS, normalize=True, truncate=True)
    np.testing.assert_allclose(many, expected, atol=1e-6)


def test_inference_client_sentence_similarity(url: str) -> None:
    vectors = np.asarray(torchserve(url, "embed", {"input": TEXTS, "normalize": True}))
    for model in (url, f"{url}/similarity"):
        got = InferenceClient(model=model).sentence_similarity(TEXTS[0], TEXTS[1:])
        np.testing.assert_allclose(got, vectors[1:] @ vectors[0], atol=1e-6)


def test_inference_client_text_classification(url: str) -> None:
    expected = labels_of(torchserve(url, "classify", {"input": TEXTS[0]}))
    got = InferenceClient(model=f"{url}/models/classify").text_classification(TEXTS[0])
    assert_labels([{"label": g.label, "score": g.score} for g in got], expected)
    top = InferenceClient(model=f"{url}/models/classify").text_classification(TEXTS[0], top_k=1)
    assert [g.label for g in top] == [expected[0]["label"]]


def test_inference_client_token_classification(url: str) -> None:
    expected = torchserve(url, "ner", {"input": TEXTS[0], "aggregation_strategy": "none"})
    got = InferenceClient(model=f"{url}/models/ner").token_classification(TEXTS[0], aggregation_strategy="none")
    assert [(g.entity, g.word, g.start, g.end) for g in got] == [(e["entity"], e["word"], e["start"], e["end"]) for e in expected]
    np.testing.assert_allclose([g.score for g in got], [e["score"] for e in expected], atol=1e-6)


def test_inference_client_question_answering(url: str) -> None:
    question, context = "who sat on the mat?", TEXTS[0]
    expected = torchserve(url, "qa", {"question": question, "context": context})
    got = InferenceClient(model=url).question_answering(question=question, context=context)
    assert (got.answer, got.start, got.end) == (expected["answer"], expected["start"], expected["end"])
    assert abs(got.score - expected["score"]) < 1e-6


def test_inference_client_sees_tei_errors(url: str) -> None:
    with pytest.raises(HfHubHTTPError) as caught:
        InferenceClient(model=f"{url}/models/classify/embed").feature_extraction(TEXTS[0])
    assert caught.value.response.status_code == 424
    assert "Model is not an embedding model" in str(caught.value)


# -- errors --------------------------------------------------------------------------------------------------------


def test_errors_in_tei_shape(url: str) -> None:
    tei_error(post(url, "/embed", {"inputs": []}), 400, "Empty", "`inputs` cannot be empty")
    tei_error(post(url, "/embed", {"inputs": ""}), 400, "Empty", "Input validation error: `inputs` cannot be empty")
    tei_error(post(url, "/models/rerank/rerank", {"query": "a", "texts": []}), 400, "Empty", "`texts` cannot be empty")
    tei_error(post(url, "/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}), 400, "Empty",
              "`inputs.sentences` cannot be empty")
    tei_error(post(url, "/models/nope/embed", {"inputs": "a"}), 404, "NotFound",
              "model 'nope' not found (models: classify, embed, ner, qa, rerank)")
    tei_error(post(url, "/embed", {"inputs": "word " * 200, "truncate": False}), 422, "Validation",
              "Input validation error: `inputs` must have less than 128 tokens. Given: 202")
    tei_error(post(url, "/models/rerank/rerank", {"query": "q", "texts": ["word " * 200], "truncate": False}), 422,
              "Validation", "Input validation error: `inputs` must have less than 128 tokens. Given: 204")
    tei_error(post(url, "/embed", {"inputs": 5}), 422, "Validation",
              "Input validation error: `inputs` must be a string, a list of token ids or a list of them, got number")
    tei_error(post(url, "/embed", {"inputs": "a", "normalize": None}), 422, "Validation",
              "Input validation error: `normalize` must be true or false, got null")
    tei_error(post(url, "/embed", {"inputs": "a", "dimensions": 0}), 422, "Validation",
              "Input validation error: `dimensions` should be positive")
    tei_error(post(url, "/embed", {"inputs": "a", "prompt_name": "query"}), 422, "Validation",
              "Input validation error: `prompt_name` is set to `query` but no prompts were found in the Sentence Transformers "
              "configuration (berthing serves no prompts: prepend the prompt's text to your inputs)")
    tei_error(post(url, "/models/classify/predict", {"inputs": ["a", "b", "c"]}), 422, "Validation",
              "Input validation error: invalid length 3, expected a string, a pair of strings [string, string] or a batch "
              "of mixed strings and pairs [[string], [string, string], ...]")
    backend = "Backend error: "
    tei_error(post(url, "/models/embed/rerank", {"query": "a", "texts": ["b"]}), 424, "Backend",
              backend + "model is not a re-ranker model")
    tei_error(post(url, "/models/embed/predict", {"inputs": "a"}), 424, "Backend", backend + "Model is not a classifier model")
    # named by nothing, a route finds the model of its task beside the default (an embedder here)
    ranking = {"query": "a", "texts": ["b"]}
    assert post(url, "/rerank", ranking).json() == post(url, "/models/rerank/rerank", ranking).json()
    assert post(url, "/predict", {"inputs": "a"}).json() == post(url, "/models/classify/predict", {"inputs": "a"}).json()
    tei_error(post(url, "/models/classify/embed", {"inputs": "a"}), 424, "Backend", backend + "Model is not an embedding model")
    response = httpx.post(f"{url}/embed", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error_type"] == "Validation"
    tei_error(post(url, "/decode", {"ids": []}), 400, "Empty", "Input validation error: `input_ids` cannot be empty")


def test_batch_size_and_body_limits(load, server_factory) -> None:
    with server_factory({"embed": load("embed")}, max_items=2, max_body_bytes=2048) as server:
        tei_error(post(server.url, "/embed", {"inputs": TEXTS}), 422, "Validation", "batch size 3 > maximum allowed batch size 2")
        tei_error(post(server.url, "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}), 422,
                  "Validation", "batch size 3 > maximum allowed batch size 2")
        too_big = post(server.url, "/embed", {"inputs": "a" * 4096})
        assert too_big.status_code == 413 and too_big.json()["error_type"] == "Validation"


def test_overload_is_429_with_retry_after(load, server_factory) -> None:
    def fill(server_url: str) -> None:
        assert post(server_url, "/embed", {"inputs": "fill"}).status_code == 200

    with overloaded(load("embed"), "embed", server_factory, fill) as server:
        response = post(server.url, "/embed", {"inputs": "one more"})
        tei_error(response, 429, "Overloaded", "Model is overloaded")
        assert int(response.headers["retry-after"]) >= 1
