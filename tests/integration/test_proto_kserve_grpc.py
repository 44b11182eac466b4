"""KServe V2 over gRPC through the real tritonclient.grpc against a real server's own gRPC port: readiness, metadata,
config, every task's raw_output_contents agreeing with the TorchServe route, and errors as gRPC statuses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

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
SHED = "model 'busy' has 1 item queued (limit 1); retry later"


@pytest.fixture(scope="module")
def server(load: Callable[..., Model], settings: Settings) -> Iterator[ThreadServer]:
    """One server with a model of every task, named by its task; max_items 4; gRPC on a free port."""
    registry = Registry()
    for kind in MODELS:
        registry.add(clone(load(kind), kind))
    with ThreadServer(registry, settings.model_copy(update={"max_items": MAX_ITEMS})) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{server.listener_port('kserve-grpc', 'grpc')}")
    yield c
    c.close()


def text_input(name: str, texts: list[str], shape: list[int] | None = None) -> triton.InferInput:
    """A BYTES input as tritonclient users build it: an object array of shape [n, 1]."""
    array = text_array(texts, shape)
    tensor = triton.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def predictions(server: ThreadServer, model: str, body: Any) -> Any:
    return torchserve_answer(server.url, model, body)


def test_readiness_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("embed") and client.is_model_ready("qa", "1.0")
    assert not client.is_model_ready("nope") and not client.is_model_ready("embed", "9")
    assert client.get_server_metadata(as_json=True)["extensions"] == ["binary_tensor_data", "model_configuration", "parameters"]


def test_model_metadata_and_config(client: triton.InferenceServerClient, load: Callable[..., Model]) -> None:
    dim = str(load("embed").spec.hidden_size)  # MessageToJson writes int64 as strings
    assert client.get_model_metadata("embed", as_json=True) == {
        "name": "embed", "versions": ["1.0"], "platform": "berthing",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": ["-1", dim]}],
    }
    assert client.get_model_config("classify", as_json=True) == {"config": {
        "name": "classify", "platform": "berthing", "backend": "berthing",
        "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": ["-1"]},
                  {"name": "text_pair", "data_type": "TYPE_STRING", "dims": ["-1"], "optional": True}],
        "output": [{"name": "label", "data_type": "TYPE_STRING", "dims": ["-1"]},
                   {"name": "score", "data_type": "TYPE_FP32", "dims": ["-1"]},
                   {"name": "scores", "data_type": "TYPE_FP32", "dims": ["-1", "3"]}],
        "parameters": {"task": {"string_value": "classify"}, "max_items": {"string_value": str(MAX_ITEMS)}},
    }}


@pytest.mark.parametrize("outputs", [None, ["embedding"]], ids=["all-outputs", "named-output"])
def test_embed_matches_torchserve(outputs: list[str] | None, client: triton.InferenceServerClient, server: ThreadServer) -> None:
    asked = [triton.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client.infer("embed", [text_input("text", TEXTS)], outputs=asked, request_id="r-7")
    vectors = result.as_numpy("embedding")
    expected = np.array(predictions(server, "embed", TEXTS), dtype=np.float32)
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    assert np.abs(vectors - expected).max() <= 1e-6
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("embed", "1.0", "r-7")


def test_classify_matches_torchserve(client: triton.InferenceServerClient, server: ThreadServer, load: Any) -> None:
    expected = predictions(server, "classify", TEXTS)
    result = client.infer("classify", [text_input("text", TEXTS)])
    assert [b.decode() for b in result.as_numpy("label")] == [e["label"] for e in expected]
    assert result.as_numpy("score").tolist() == [e["score"] for e in expected]
    labels = load("classify").spec.labels
    assert result.as_numpy("scores").tolist() == [[e["scores"][label] for label in labels] for e in expected]


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


def test_requests_are_counted_by_protocol(client: triton.InferenceServerClient, server: ThreadServer) -> None:
    before = metric(server.url, "berthing_requests_total", protocol="kserve-grpc", route="ModelInfer", status="200") or 0.0
    client.infer("embed", [text_input("text", TEXTS)])
    after = metric(server.url, "berthing_requests_total", model="embed:1.0", protocol="kserve-grpc", route="ModelInfer",
                   status="200")
    assert after is not None and after >= before + 1


# -- errors as gRPC statuses ------------------------------------------------------------------------------------------

INVALID = "StatusCode.INVALID_ARGUMENT"


def numeric_input() -> triton.InferInput:
    tensor = triton.InferInput("text", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    return tensor


BAD: dict[str, tuple[str, Callable[[], list[triton.InferInput]], dict[str, Any], str, str]] = {
    "unknown-model": ("nope", lambda: [text_input("text", TEXTS)], {}, "StatusCode.NOT_FOUND",
                      f"model 'nope' not found (models: {', '.join(sorted(MODELS))})"),
    "empty": ("embed", lambda: [text_input("text", [], shape=[0, 1])], {}, INVALID, "input 'text' is empty (shape [0, 1])"),
    "wrong-datatype": ("embed", lambda: [numeric_input()], {}, INVALID, "input 'text' must have datatype BYTES, got FP32"),
    "too-many": ("embed", lambda: [text_input("text", ["t"] * (MAX_ITEMS + 1))], {}, INVALID,
                 f"input 'text' has {MAX_ITEMS + 1} elements, over the limit of {MAX_ITEMS}"),
    "too-long": ("embed", lambda: [text_input("text", [LONG])], {"truncate": False}, INVALID,
                 "input[0] is longer than the model's max length of 128 tokens and truncate is false"),
    "bad-parameter": ("embed", lambda: [text_input("text", TEXTS)], {"truncate": "no"}, INVALID,
                      "field 'truncate' must be true or false, got \"no\""),
    "unknown-input": ("rerank", lambda: [text_input("text", TEXTS)], {}, INVALID, "missing input 'query' (inputs: query, text)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_status_and_message(case: str, client: triton.InferenceServerClient) -> None:
    model, inputs, parameters, status, message = BAD[case]
    assert failure(lambda: client.infer(model, inputs(), parameters=parameters or None)) == (status, message)


def test_unknown_model_metadata_is_not_found(client: triton.InferenceServerClient) -> None:
    assert failure(lambda: client.get_model_metadata("embed", "9")) == (
        "StatusCode.NOT_FOUND", "version '9' of model 'embed' not found (versions: 1.0)"
    )


def test_overload_is_unavailable_with_retry_after(
    load: Callable[..., Model], server_factory: Callable[..., ThreadServer]
) -> None:
    def fill(url: str) -> None:
        httpx.post(f"{url}/predictions/busy", json=["one"], timeout=60).raise_for_status()

    with overloaded(load("embed"), "busy", server_factory, fill) as server:
        address = f"127.0.0.1:{server.listener_port('kserve-grpc', 'grpc')}"
        c = triton.InferenceServerClient(address)
        try:
            assert failure(lambda: c.infer("busy", [text_input("text", ["shed me"])])) == ("StatusCode.UNAVAILABLE", SHED)
        finally:
            c.close()
        with grpc.insecure_channel(address) as channel:  # the retry hint rides in the trailing metadata
            request = service_pb2.ModelInferRequest(model_name="busy")
            request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"shed me")
            with pytest.raises(grpc.RpcError) as info:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ("retry-after", "1") in [(m.key, m.value) for m in info.value.trailing_metadata()]


def test_inference_token_is_checked(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"embed": load("embed")}, inference_token="s3cret") as server:
        c = triton.InferenceServerClient(f"127.0.0.1:{server.listener_port('kserve-grpc', 'grpc')}")
        try:
            assert failure(lambda: c.infer("embed", [text_input("text", TEXTS)])) == (
                "StatusCode.UNAUTHENTICATED",
                "the inference API needs the header 'Authorization: Bearer <token>' (see the key file)",
            )
            result = c.infer("embed", [text_input("text", TEXTS)], headers={"authorization": "Bearer s3cret"})
            assert result.as_numpy("embedding").shape[0] == 2
        finally:
            c.close()
