"""The HTTP API's happy paths on a real server: every body form, /ping, the OpenAPI document, /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from berthing.engine.model import Model
from tests.support.http import metric
from tests.support.servers import ThreadServer

LABELS = {"negative", "neutral", "positive"}
TEXT = "the quick brown fox jumps over the lazy dog"




def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def is_classification(result: Any) -> bool:
    return isinstance(result, dict) and result["label"] in LABELS and set(result["scores"]) == LABELS


def embed_json(url: str, payload: object) -> np.ndarray:
    return np.array(ok(httpx.post(f"{url}/predictions/embedder", json=payload)), dtype=np.float32)


def test_single_string_gives_one_result_not_a_list(api: str) -> None:
    result = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": TEXT}))
    assert is_classification(result)
    assert result["score"] == max(result["scores"].values())
    vector = embed_json(api, {"input": TEXT})
    assert vector.shape == (32,)


def test_list_gives_a_list_in_order(api: str) -> None:
    texts = ["short", TEXT, "a third one"]
    results = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": texts}))
    assert isinstance(results, list) and len(results) == 3 and all(map(is_classification, results))
    one = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": [TEXT]}))
    assert isinstance(one, list) and len(one) == 1
    vectors = embed_json(api, {"input": texts})
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(vectors[1], embed_json(api, {"input": TEXT}), atol=1e-5)


@pytest.mark.parametrize("key", ["inputs", "text"])
def test_input_aliases(api: str, key: str) -> None:
    reference = embed_json(api, {"input": TEXT})
    np.testing.assert_allclose(embed_json(api, {key: TEXT}), reference, atol=1e-6)
    assert embed_json(api, {key: [TEXT, "x"]}).shape == (2, 32)


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {"content-type": "text/plain; charset=utf-8"},
     {"content-type": "application/octet-stream"}, {}],
    ids=["text-plain", "text-plain-charset", "octet-stream", "no-content-type"],
)
def test_raw_body_is_one_text(api: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{api}/predictions/embedder", content=TEXT.encode(), headers=headers)
    assert response.request.headers.get("content-type") == headers.get("content-type")
    raw = np.array(ok(response), dtype=np.float32)
    np.testing.assert_allclose(raw, embed_json(api, {"input": TEXT}), atol=1e-6)


def test_raw_json_looking_text_is_still_text(api: str) -> None:
    """text/plain means 'this is the text', even when the text looks like JSON."""
    body = b'["one", "two"]'
    raw = ok(httpx.post(f"{api}/predictions/embedder", content=body, headers={"content-type": "text/plain"}))
    assert np.array(raw).shape == (32,)
    np.testing.assert_allclose(np.array(raw), embed_json(api, {"input": body.decode()}), atol=1e-6)


def test_curl_form_default_with_json_body_is_json(api: str) -> None:
    """curl -d '{"input": [...]}' sends application/x-www-form-urlencoded: still JSON, options included."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    got = ok(httpx.post(f"{api}/predictions/sentiment", content=b'{"input": ["a", "b"], "top_k": 2}', headers=form))
    assert isinstance(got, list) and len(got) == 2 and all(len(r) == 2 for r in got)
    listed = ok(httpx.post(f"{api}/predictions/sentiment", content=b'  ["a", "b", "c"]', headers=form))
    assert isinstance(listed, list) and len(listed) == 3
    text = ok(httpx.post(f"{api}/predictions/sentiment", content=TEXT.encode(), headers=form))
    assert is_classification(text)


@pytest.mark.parametrize("content_type", ["text/json", "application/vnd.api+json", "Application/JSON; charset=UTF-8"])
def test_other_json_content_types(api: str, content_type: str) -> None:
    got = ok(httpx.post(f"{api}/predictions/embedder", content=b'{"input": ["a", "b"]}', headers={"content-type": content_type}))
    assert np.array(got).shape == (2, 32)


def test_top_level_json_list_and_string(api: str) -> None:
    listed = ok(httpx.post(f"{api}/predictions/sentiment", json=[TEXT, "another"]))
    assert isinstance(listed, list) and len(listed) == 2 and all(map(is_classification, listed))
    assert is_classification(ok(httpx.post(f"{api}/predictions/sentiment", json=TEXT)))
    np.testing.assert_allclose(embed_json(api, [TEXT])[0], embed_json(api, TEXT), atol=1e-6)


def test_json_with_utf8_bom(api: str) -> None:
    body = b'\xef\xbb\xbf{"input": "' + TEXT.encode() + b'"}'
    got = ok(httpx.post(f"{api}/predictions/embedder", content=body, headers={"content-type": "application/json"}))
    np.testing.assert_allclose(np.array(got), embed_json(api, {"input": TEXT}), atol=1e-6)


def test_text_pairs(api: str) -> None:
    flat = ok(httpx.post(f"{api}/predictions/sentiment", json={"text": "a question", "text_pair": "an answer", "top_k": 1}))
    assert isinstance(flat, list) and len(flat) == 1 and flat[0]["label"] in LABELS
    nested = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": {"text": "a question", "text_pair": "an answer"}}))
    assert is_classification(nested) and nested["label"] == flat[0]["label"]
    listed = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": [{"text": "a question", "text_pair": "an answer"}]}))
    assert listed == [nested]
    text_only = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": {"text": "a question"}}))
    assert text_only == ok(httpx.post(f"{api}/predictions/sentiment", json={"input": "a question"}))


def test_options(api: str) -> None:
    top = ok(httpx.post(f"{api}/predictions/sentiment", json={"input": TEXT, "top_k": 3}))
    assert len(top) == 3 and {r["label"] for r in top} == LABELS
    assert [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)
    normalized = embed_json(api, {"input": TEXT, "normalize": True})
    assert abs(float(np.linalg.norm(normalized)) - 1.0) < 1e-5
    plain = embed_json(api, {"input": TEXT, "normalize": False})
    assert abs(float(np.linalg.norm(plain)) - 1.0) > 1e-3  # the tiny model's mean pooling is not unit length
    assert embed_json(api, {"input": TEXT, "normalize": None, "truncate": None}).shape == (32,)


def test_ping(api: str) -> None:
    assert ok(httpx.get(f"{api}/ping")) == {"status": "Healthy"}


@pytest.mark.parametrize("method,path", [("OPTIONS", "/"), ("GET", "/openapi.json")])
def test_openapi_document(api: str, method: str, path: str) -> None:
    doc = ok(httpx.request(method, f"{api}{path}"))
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/predictions/{model}"]
    assert "post" in doc["paths"]["/predictions/{model}/{version}"]
    model_param = doc["paths"]["/predictions/{model}"]["post"]["parameters"][0]
    assert model_param["schema"]["enum"] == ["embedder", "sentiment"]
    assert set(doc["components"]["schemas"]["Error"]["required"]) == {"code", "type", "message"}


def test_metrics(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"watched": load("classify")}) as server:
        url = f"{server.url}/predictions/watched"
        for text in ("one", "two"):
            ok(httpx.post(url, json={"input": text}))
        ok(httpx.post(url, json={"input": ["three", "four", "five"]}))
        assert httpx.post(url, json={"input": ""}).status_code == 422
        assert httpx.post(f"{server.url}/predictions/ghost", json={"input": "x"}).status_code == 404
        response = httpx.get(f"{server.url}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        for name in ("berthing_requests_total", "berthing_batch_size", "berthing_batch_tokens", "berthing_queue_depth",
                     "berthing_model_load_seconds"):
            assert name in response.text
        label = "watched:1.0"
        assert metric(server.url, "berthing_requests_total", model=label, route="predictions", status="200") == 3.0
        assert metric(server.url, "berthing_requests_total", model=label, route="predictions", status="422") == 1.0
        assert metric(server.url, "berthing_requests_total", model="unknown", route="predictions", status="404") == 1.0
        assert metric(server.url, "berthing_batch_size_count", model=label) == 3.0
        assert metric(server.url, "berthing_batch_size_sum", model=label) == 5.0
        assert metric(server.url, "berthing_batch_size_bucket", model=label, le="1.0") == 2.0
        assert metric(server.url, "berthing_batch_tokens_count", model=label) == 3.0
        assert (metric(server.url, "berthing_batch_tokens_sum", model=label) or 0) >= 3 * 3  # [CLS] word [SEP]
        assert metric(server.url, "berthing_queue_depth", model=label) == 0.0
        load_seconds = metric(server.url, "berthing_model_load_seconds", model="watched", version="1.0")
        assert load_seconds is not None and load_seconds > 0
