"""KServe V2 over HTTP through the real tritonclient.http against a real server: metadata, every task's tensors (binary
and JSON both ways) agreeing with the TorchServe route, and every error as {"error"} with its status."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from berthing.config import Settings
from berthing.engine.model import Model
from berthing.registry import Registry
from tests.support.http import clone, metric, torchserve_answer
from tests.support.kserve import failure, text_array
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer

TEXTS = ["text a", "text b"]
MODELS = ("embed", "classify", "ner", "qa", "rerank")
MAX_ITEMS = 4
LONG = "deploying models to production " * 60  # far past the tiny models' 128 tokens


@pytest.fixture(scope="module")
def server(load: Callable[..., Model], settings: Settings) -> Iterator[ThreadServer]:
    """One server with a model of every task, named by its task; max_items 4."""
    registry = Registry()
    for kind in MODELS:
        registry.add(clone(load(kind), kind))
    with ThreadServer(registry, settings.model_copy(update={"max_items": MAX_ITEMS})) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield c
    c.close()


def text_input(name: str, texts: list[str], binary: bool = True, shape: list[int] | None = None) -> triton.InferInput:
    """A BYTES input as tritonclient users build it: an object array of shape [n, 1]."""
    array = text_array(texts, shape)
    tensor = triton.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def predictions(server: ThreadServer, model: str, body: Any) -> Any:
    return torchserve_answer(server.url, model, body)


# -- health and metadata -----------------------------------------------------------------------------------------------


def test_health_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("embed") and client.is_model_ready("embed", "1.0")
    assert not client.is_model_ready("nope") and not client.is_model_ready("embed", "9")
    assert client.get_server_metadata() == {
        "name": "berthing", "version": client.get_server_metadata()["version"],
        "extensions": ["binary_tensor_data", "model_configuration", "parameters"],
    }


def test_routes_are_in_openapi(server: ThreadServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v2", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/config"} <= set(paths)


def test_model_metadata_per_task(client: triton.InferenceServerClient, load: Callable[..., Model]) -> None:
    dim = load("embed").spec.hidden_size
    assert client.get_model_metadata("embed") == {
        "name": "embed", "versions": ["1.0"], "platform": "berthing",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}],
    }
    assert client.get_model_metadata("classify", "1.0")["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert [i["name"] for i in client.get_model_metadata("classify")["inputs"]] == ["text", "text_pair"]
    assert [i["name"] for i in client.get_model_metadata("qa")["inputs"]] == ["question", "context"]
    assert [i["name"] for i in client.get_model_metadata("rerank")["inputs"]] == ["query", "text"]
    assert client.get_model_metadata("ner")["outputs"] == [{"name": "entities", "datatype": "BYTES", "shape": [-1]}]


def test_model_config_is_tritons_shape(client: triton.InferenceServerClient, load: Callable[..., Model]) -> None:
    assert client.get_model_config("embed") == {
        "name": "embed", "platform": "berthing", "backend": "berthing", "max_batch_size": 0,
        "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [{"name": "embedding", "data_type": "TYPE_FP32", "dims": [-1, load("embed").spec.hidden_size]}],
        "parameters": {"task": {"string_value": "embed"}, "max_items": {"string_value": str(MAX_ITEMS)}},
    }


# -- every task agrees with the TorchServe route ---------------------------------------------------------------------------

MODES = {
    "binary-in-binary-out": (True, None),
    "json-in-json-out": (False, [triton.InferRequestedOutput("embedding", binary_data=False)]),
    "binary-in-json-out": (True, [triton.InferRequestedOutput("embedding", binary_data=False)]),
    "json-in-outputs-none": (False, None),
    "binary-asked-by-name": (True, [triton.InferRequestedOutput("embedding")]),
}


@pytest.mark.parametrize("mode", MODES)
def test_embed_matches_torchserve(mode: str, client: triton.InferenceServerClient, server: ThreadServer) -> None:
    binary_in, outputs = MODES[mode]
    result = client.infer("embed", [text_input("text", TEXTS, binary_in)], outputs=outputs)
    vectors = result.as_numpy("embedding")
    assert vectors.dtype == np.float32 and vectors.shape == (2, len(predictions(server, "embed", TEXTS)[0]))
    assert np.abs(vectors - np.array(predictions(server, "embed", TEXTS), dtype=np.float32)).max() <= 1e-6
    output = result.get_response()["outputs"][0]
    binary_out = outputs is None or outputs[0]._binary
    assert ("binary_data_size" in output.get("parameters", {})) is binary_out and ("data" in output) is not binary_out
    assert result.get_response()["model_name"] == "embed" and result.get_response()["model_version"] == "1.0"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request(algorithm: str, client: triton.InferenceServerClient, server: ThreadServer) -> None:
    result = client.infer("embed", [text_input("text", TEXTS)], request_compression_algorithm=algorithm)
    assert np.abs(result.as_numpy("embedding") - np.array(predictions(server, "embed", TEXTS))).max() <= 1e-6


def test_flat_shape_and_version_route(client: triton.InferenceServerClient, server: ThreadServer) -> None:
    result = client.infer("embed", [text_input("text", TEXTS, shape=[2])], model_version="1.0", request_id="r-1")
    assert np.abs(result.as_numpy("embedding") - np.array(predictions(server, "embed", TEXTS))).max() <= 1e-6
    assert result.get_response()["id"] == "r-1"


def test_classify_matches_torchserve(client: triton.InferenceServerClient, server: ThreadServer, load: Any) -> None:
    expected = predictions(server, "classify", TEXTS)
    result = client.infer("classify", [text_input("text", TEXTS)])
    assert [b.decode() for b in result.as_numpy("label")] == [e["label"] for e in expected]
    assert result.as_numpy("score").tolist() == [e["score"] for e in expected]
    labels = load("classify").spec.labels
    assert result.as_numpy("scores").tolist() == [[e["scores"][label] for label in labels] for e in expected]


def test_classify_pairs_in_json(client: triton.InferenceServerClient, server: ThreadServer) -> None:
    pairs = ["a second text", "another one"]
    expected = predictions(server, "classify", [{"text": a, "text_pair": b} for a, b in zip(TEXTS, pairs, strict=True)])
    inputs = [text_input("text", TEXTS, False), text_input("text_pair", pairs, False)]
    result = client.infer("classify", inputs, outputs=[triton.InferRequestedOutput("score", binary_data=False)])
    assert result.as_numpy("score").tolist() == [e["score"] for e in expected]
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]


def test_ner_matches_torchserve(client: triton.InferenceServerClient, server: ThreadServer) -> None:
    texts = ["Anna Smith moved from Berlin to Paris.", "Acme Corp hired John in London."]
    result = client.infer("ner", [text_input("text", texts)])
    assert [orjson.loads(b) for b in result.as_numpy("entities")] == predictions(server, "ner", texts)


def test_qa_matches_torchserve(client: triton.InferenceServerClient, server: ThreadServer) -> None:
    questions, contexts = ["Where does Anna live?", "Who hired John?"], ["Anna lives in Paris.", "Acme hired John."]
    expected = predictions(server, "qa", [{"question": q, "context": c} for q, c in zip(questions, contexts, strict=True)])
    result = client.infer("qa", [text_input("question", questions), text_input("context", contexts)])
    assert [b.decode() for b in result.as_numpy("answer")] == [e["answer"] for e in expected]
    assert result.as_numpy("score").tolist() == [e["score"] for e in expected]
    assert result.as_numpy("start").tolist() == [e["start"] for e in expected]
    assert result.as_numpy("end").tolist() == [e["end"] for e in expected]


def test_rerank_matches_torchserve(client: triton.InferenceServerClient, server: ThreadServer) -> None:
    query, texts = "how are requests batched", ["batching groups requests", "a recipe for bread", "queues and batches"]
    expected = predictions(server, "rerank", {"query": query, "texts": texts})
    result = client.infer("rerank", [text_input("query", [query], shape=[1]), text_input("text", texts)])
    assert result.as_numpy("ranking").tolist() == [e["index"] for e in expected]
    scores = result.as_numpy("score")
    assert [scores[e["index"]] for e in expected] == [e["score"] for e in expected]


# -- the wire itself ---------------------------------------------------------------------------------------------------


def test_raw_binary_request_and_response(server: ThreadServer) -> None:
    """The binary extension byte for byte: a JSON header, then BYTES as 4-byte little-endian lengths and bytes."""
    raw = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in TEXTS)
    header = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}]})
    response = httpx.post(f"{server.url}/v2/models/embed/infer", content=header + raw,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200
    size = int(response.headers["inference-header-content-length"])
    head = orjson.loads(response.content[:size])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(response.content) - size
    vectors = np.frombuffer(response.content[size:], dtype="<f4").reshape(head["outputs"][0]["shape"])
    assert np.abs(vectors - np.array(predictions(server, "embed", TEXTS))).max() <= 1e-6
    assert metric(server.url, "berthing_requests_total", protocol="kserve", route="infer", status="200")


# -- errors --------------------------------------------------------------------------------------------------------


def test_unknown_model_is_400_as_triton(client: triton.InferenceServerClient) -> None:
    models = ", ".join(sorted(MODELS))
    assert failure(lambda: client.infer("nope", [text_input("text", TEXTS)])) == (
        "400", f"model 'nope' not found (models: {models})"
    )
    assert failure(lambda: client.get_model_metadata("nope")) == ("400", f"model 'nope' not found (models: {models})")
    assert failure(lambda: client.get_model_config("embed", "9")) == (
        "400", "version '9' of model 'embed' not found (versions: 1.0)"
    )


def numeric_input() -> triton.InferInput:
    tensor = triton.InferInput("text", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    return tensor


BAD: dict[str, tuple[str, Callable[[], list[triton.InferInput]], dict[str, Any], str]] = {
    "empty": ("embed", lambda: [text_input("text", [], shape=[0, 1])], {}, "input 'text' is empty (shape [0, 1])"),
    "blank-text": ("embed", lambda: [text_input("text", ["a", " "])], {}, "text[1] is empty or blank"),
    "wrong-datatype": ("embed", lambda: [numeric_input()], {}, "input 'text' must have datatype BYTES, got FP32"),
    "too-many": ("embed", lambda: [text_input("text", ["t"] * (MAX_ITEMS + 1))], {},
                 f"input 'text' has {MAX_ITEMS + 1} elements, over the limit of {MAX_ITEMS}"),
    "too-long": ("embed", lambda: [text_input("text", [LONG])], {"truncate": False},
                 "input[0] is longer than the model's max length of 128 tokens and truncate is false"),
    "bad-parameter": ("embed", lambda: [text_input("text", TEXTS)], {"truncate": "no"},
                      "field 'truncate' must be true or false, got \"no\""),
    "unknown-parameter": ("embed", lambda: [text_input("text", TEXTS)], {"top_k": 2},
                          "unknown parameter 'top_k' for model 'embed' (parameters: truncate, normalize)"),
    "unknown-input": ("embed", lambda: [text_input("texts", TEXTS)], {}, "unexpected input 'texts' (inputs: text)"),
    "missing-input": ("qa", lambda: [text_input("question", TEXTS)], {}, "missing input 'context' (inputs: question, context)"),
    "count-mismatch": ("classify", lambda: [text_input("text", TEXTS), text_input("text_pair", ["x"])], {},
                       "input 'text_pair' has 1 elements; input 'text' has 2"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_400_with_its_message(case: str, client: triton.InferenceServerClient) -> None:
    model, inputs, parameters, message = BAD[case]
    assert failure(lambda: client.infer(model, inputs(), parameters=parameters or None)) == ("400", message)


def test_unknown_output_is_400(client: triton.InferenceServerClient) -> None:
    outputs = [triton.InferRequestedOutput("vector")]
    assert failure(lambda: client.infer("embed", [text_input("text", TEXTS)], outputs=outputs)) == (
        "400", "unknown output 'vector' (outputs: embedding)"
    )


RAW_BAD = {
    "not-json": (b"{", None, "body is not valid JSON: unexpected end of data: line 1 column 2 (char 1)"),
    "empty-body": (b"", None, "empty body: send a KServe V2 inference request"),
    "no-inputs": (b"{}", None, "field 'inputs' must be a list of tensors"),
    "header-too-long": (b"{}", "99", "Inference-Header-Content-Length '99' does not fit a body of 2 bytes"),
    "truncated-bytes": (
        b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":6}}]}'
        + (9).to_bytes(4, "little") + b"ab", "95", "input 'text': BYTES element of 9 bytes runs past the end of its data",
    ),
}


@pytest.mark.parametrize("case", RAW_BAD)
def test_malformed_bodies(case: str, server: ThreadServer) -> None:
    body, header, message = RAW_BAD[case]
    headers = {"Inference-Header-Content-Length": header} if header else {}
    response = httpx.post(f"{server.url}/v2/models/embed/infer", content=body, headers=headers)
    assert (response.status_code, response.json()) == (400, {"error": message})
    assert response.headers["content-type"] == "application/json"


def test_overload_is_503_with_retry_after(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    def fill(url: str) -> None:
        httpx.post(f"{url}/predictions/busy", json=["one"], timeout=60).raise_for_status()

    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["shed me"]}]}
    with overloaded(load("embed"), "busy", server_factory, fill) as server:
        response = httpx.post(f"{server.url}/v2/models/busy/infer", content=orjson.dumps(body))
        assert (response.status_code, response.headers["retry-after"]) == (503, "1")
        assert response.json() == {"error": "model 'busy' has 1 item queued (limit 1); retry later"}
        c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            assert failure(lambda: c.infer("busy", [text_input("text", ["shed me"])])) == (
                "503", "model 'busy' has 1 item queued (limit 1); retry later"
            )
        finally:
            c.close()
        assert metric(server.url, "berthing_requests_total", protocol="kserve", route="infer", status="503") == 2.0


def test_inference_token_is_401(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"embed": load("embed")}, inference_token="s3cret") as server:
        c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            assert failure(lambda: c.infer("embed", [text_input("text", TEXTS)])) == (
                "401", "the inference API needs the header 'Authorization: Bearer <token>' (see the key file)"
            )
            result = c.infer("embed", [text_input("text", TEXTS)], headers={"Authorization": "Bearer s3cret"})
            assert result.as_numpy("embedding").shape[0] == 2
        finally:
            c.close()
