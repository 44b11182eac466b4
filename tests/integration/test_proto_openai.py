"""OpenAI's embeddings API through the real openai SDK against a real server on loopback: answers equal the
TorchServe route's, errors in OpenAI's shape, overload and the SDK's own retries bounded."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from berthing.config import Settings
from berthing.engine.model import Model
from berthing.registry import Registry
from tests.support.http import clone, metric
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer

TEXTS = ["The cat sat on the mat.", "Berthing speaks OpenAI now.", "教练, 我想打篮球."]
MAX_ITEMS = 4
LONG = "word " * 400  # over the tiny model's 128 tokens
UNKNOWN = "model 'nope' not found (models: embedder, sentiment, unit)"


def normalizing(model: Model, name: str) -> Model:
    """The same weights with normalize on, so `dimensions` must re-normalize what it cuts."""
    spec = dataclasses.replace(model.spec, normalize=True)
    return Model(name, model.version, spec, model.encoder, model.runtimes, model.limits, model.source, model.load_seconds)


@pytest.fixture(scope="module")
def server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    registry = Registry()
    registry.add(clone(load("embed"), "embedder"))
    registry.add(normalizing(load("embed"), "unit"))
    registry.add(clone(load("classify"), "sentiment"))
    with ThreadServer(registry, settings.model_copy(update={"max_items": MAX_ITEMS})) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def predictions(url: str, name: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{url}/predictions/{name}", json={"input": texts})
    assert response.status_code == 200, response.text
    return np.asarray(response.json(), dtype=np.float32)


def vectors(result: Any) -> np.ndarray:
    return np.asarray([d.embedding for d in result.data], dtype=np.float32)


def oai_error(message: str, param: str | None, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"message": message, "type": kind, "param": param, "code": code}


def test_default_base64_path_matches_predictions(server: ThreadServer, client: openai.OpenAI, load: Any) -> None:
    raw = client.embeddings.with_raw_response.create(model="embedder", input=TEXTS)
    sent = raw.http_response.json()
    assert all(isinstance(d["embedding"], str) for d in sent["data"])  # the SDK asked base64 and got it
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1, 2] and result.object == "list" and result.model == "embedder"
    np.testing.assert_allclose(vectors(result), predictions(server.url, "embedder", TEXTS), atol=1e-6)
    tokens = sum(len(load("embed").encoder.tokenizer.encode(t).ids) for t in TEXTS)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (tokens, tokens)
    assert sent["id"].startswith("embd-") and isinstance(sent["created"], int)


def test_float_format_and_single_string(server: ThreadServer, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embedder", input=TEXTS[0], encoding_format="float")
    assert len(result.data) == 1 and all(isinstance(x, float) for x in result.data[0].embedding)
    np.testing.assert_allclose(vectors(result), predictions(server.url, "embedder", TEXTS[:1]), atol=1e-6)
    by_version = client.embeddings.create(model="embedder:1.0", input=TEXTS, encoding_format="float")
    assert by_version.model == "embedder:1.0"
    np.testing.assert_allclose(vectors(by_version), predictions(server.url, "embedder", TEXTS), atol=1e-6)


def test_token_ids_are_the_models_own(server: ThreadServer, client: openai.OpenAI, load: Any) -> None:
    ids = [load("embed").encoder.tokenizer.encode(t).ids for t in TEXTS]
    batch = client.embeddings.create(model="embedder", input=ids)
    np.testing.assert_allclose(vectors(batch), predictions(server.url, "embedder", TEXTS), atol=1e-6)
    assert batch.usage.prompt_tokens == sum(len(i) for i in ids)
    one = client.embeddings.create(model="embedder", input=ids[1], encoding_format="float")
    np.testing.assert_allclose(vectors(one), predictions(server.url, "embedder", TEXTS[1:2]), atol=1e-6)


def test_long_input_is_truncated_as_on_the_torchserve_route(server: ThreadServer, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embedder", input=[LONG])
    assert result.usage.prompt_tokens == 128
    np.testing.assert_allclose(vectors(result), predictions(server.url, "embedder", [LONG]), atol=1e-6)


def test_dimensions_cut_and_renormalize_when_the_model_normalizes(server: ThreadServer, client: openai.OpenAI) -> None:
    full = predictions(server.url, "embedder", TEXTS)
    cut = client.embeddings.create(model="embedder", input=TEXTS, dimensions=8)
    np.testing.assert_allclose(vectors(cut), full[:, :8], atol=1e-6)  # this model does not normalize: a plain cut
    unit = client.embeddings.create(model="unit", input=TEXTS, dimensions=8, encoding_format="float")
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors(unit), expected, atol=1e-6)
    whole = client.embeddings.create(model="unit", input=TEXTS, dimensions=32)
    np.testing.assert_allclose(vectors(whole), predictions(server.url, "unit", TEXTS), atol=1e-6)


def test_infinity_style_body_on_the_unprefixed_route(server: ThreadServer) -> None:
    body = {"input": TEXTS, "model": "default/not-specified", "encoding_format": "float", "user": None,
            "dimensions": 0, "modality": "text"}
    response = httpx.post(server.url + "/embeddings", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == "embedder:1.0" and data["object"] == "list"  # the default model: the first by name
    got = np.asarray([d["embedding"] for d in data["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, predictions(server.url, "embedder", TEXTS), atol=1e-6)
    bare = httpx.post(server.url + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(bare["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, got[0], atol=1e-6)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["embedder", "sentiment", "unit"]
    assert all(m.object == "model" and m.owned_by == "berthing" and isinstance(m.created, int) for m in listed.data)
    assert client.models.retrieve("embedder:1.0").id == "embedder:1.0"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.body == oai_error(UNKNOWN, "model", "model_not_found")


TOKEN_ID_RANGE = "input[0][1] is 999999, not a token id of this model (0 to 30521)"
ERRORS = [
    ("empty-string", {"input": ""}, 422, oai_error("field 'input' is empty or blank", "input", "invalid_input")),
    ("empty-list", {"input": []}, 422, oai_error("field 'input' is an empty list", "input", "invalid_input")),
    ("blank-item", {"input": ["a", " "]}, 422, oai_error("input[1] is empty or blank", "input", "invalid_input")),
    ("unknown-model", {"model": "nope"}, 404, oai_error(UNKNOWN, "model", "model_not_found")),
    ("wrong-task", {"model": "sentiment"}, 422, oai_error(
        "model 'sentiment' is a classification model; POST /v1/embeddings needs an embedding model", "model", "wrong_task")),
    ("too-many-items", {"input": ["a"] * (MAX_ITEMS + 1)}, 413,
     oai_error(f"field 'input' has {MAX_ITEMS + 1} items, over the limit of {MAX_ITEMS}", "input", "payload_too_large")),
    ("too-long-truncate-off", {"input": [LONG], "extra_body": {"truncate": False}}, 413, oai_error(
        "input[0] is longer than the model's max length of 128 tokens and truncate is false", "input", "payload_too_large")),
    ("too-long-ids-truncate-off", {"input": [[101] * 129], "extra_body": {"truncate": False}}, 413, oai_error(
        "input[0] has 129 token ids, over the model's max length of 128 and truncate is false", "input",
        "payload_too_large")),
    ("input-number", {"input": 5}, 422, oai_error(
        "field 'input' must be a string, a list of strings, a list of token ids or a list of lists of token ids, "
        "got number", "input", "invalid_input")),
    ("ids-then-text", {"input": [1, "a"]}, 422,
     oai_error("input[1] must be a token id (an integer), got string", "input", "invalid_input")),
    ("text-then-id", {"input": ["a", 1]}, 422, oai_error("input[1] must be a string, got number", "input", "invalid_input")),
    ("id-out-of-range", {"input": [[101, 999999]]}, 422, oai_error(TOKEN_ID_RANGE, "input", "invalid_input")),
    ("negative-id", {"input": [101, -1]}, 422,
     oai_error("input[1] is -1, not a token id of this model (0 to 30521)", "input", "invalid_input")),
    ("dimensions-too-large", {"dimensions": 33}, 422, oai_error(
        "field 'dimensions' is 33, over the 32 dimensions of model 'embedder'", "dimensions", "invalid_input")),
    ("dimensions-negative", {"dimensions": -1}, 422, oai_error(
        "field 'dimensions' must be >= 1 (0 or absent: full size), got -1", "dimensions", "invalid_input")),
    ("bad-format", {"encoding_format": "hex"}, 422, oai_error(
        "field 'encoding_format' must be \"float\" or \"base64\", got \"hex\"", "encoding_format", "invalid_input")),
    ("model-not-string", {"model": 7}, 422, oai_error("field 'model' must be a string, got number", "model", "invalid_input")),
]


@pytest.mark.parametrize(("args", "status", "body"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_in_openai_shape(client: openai.OpenAI, args: dict[str, Any], status: int, body: dict[str, Any]) -> None:
    call = {"model": "embedder", "input": TEXTS, **args}
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(**call)
    assert (caught.value.status_code, caught.value.body) == (status, body)
    assert caught.value.response.headers["content-type"] == "application/json"


def test_malformed_bodies(server: ThreadServer) -> None:
    url = server.url + "/v1/embeddings"
    missing = httpx.post(url, json={"model": "embedder"})
    assert (missing.status_code, missing.json()) == (400, {"error": oai_error("missing field 'input'", "input", "bad_request")})
    array = httpx.post(url, json=["a"])
    assert (array.status_code, array.json()) == (400, {"error": oai_error(
        "body must be a JSON object with 'model' and 'input', got array", None, "bad_request")})
    empty = httpx.post(url, content=b"", headers={"content-type": "application/json"})
    assert (empty.status_code, empty.json()) == (400, {"error": oai_error(
        "empty body: send a JSON object with 'model' and 'input'", None, "bad_request")})


def fill(url: str) -> None:
    """One single-item request through the TorchServe route, so openai's counters see only the SDK's requests."""
    httpx.post(f"{url}/predictions/busy", json={"input": "fill"}, timeout=60).raise_for_status()


def test_overload_is_503_with_retry_after_and_sdk_retries_are_bounded(load: Any, server_factory: Any) -> None:
    with overloaded(load("embed"), "busy", server_factory, fill) as busy:
        once = openai.OpenAI(base_url=busy.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            once.embeddings.create(model="busy", input="shed")
        assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["type"] == "server_error" and caught.value.body["code"] == "service_unavailable"
        assert caught.value.body["param"] is None and caught.value.body["message"]
        assert metric(busy.url, "berthing_requests_total", protocol="openai", status="503") == 1.0

        retrying = openai.OpenAI(base_url=busy.url + "/v1", api_key="x", max_retries=2)
        with pytest.raises(openai.InternalServerError):
            retrying.embeddings.create(model="busy", input="shed")
        assert metric(busy.url, "berthing_requests_total", protocol="openai", status="503") == 1.0 + 3  # 1 + max_retries


def test_openapi_lists_the_routes(server: ThreadServer) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path, verb in [("/v1/embeddings", "post"), ("/embeddings", "post"), ("/v1/models", "get"), ("/v1/models/{model}", "get")]:
        assert paths[path][verb]["tags"] == ["openai"]


def test_inference_token_is_the_sdk_api_key(load: Any, server_factory: Any) -> None:
    with server_factory({"embedder": load("embed")}, inference_token="sekret") as guarded:
        good = openai.OpenAI(base_url=guarded.url + "/v1", api_key="sekret", max_retries=0)
        assert len(good.embeddings.create(model="embedder", input=TEXTS).data) == 3
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=guarded.url + "/v1", api_key="x", max_retries=0).models.list()
        assert caught.value.body == oai_error("wrong token for the inference API", None, "unauthorized")
