"""bert-as-service through the real, unmodified clients: bert-serving-client 1.10's BertClient and bert-base 0.0.9's
BertClient(mode=CLASS|NER) over ZeroMQ, and the HTTP proxy's /encode; every answer checked against the TorchServe route."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import zmq
from bert_base.client import BertClient as BaseClient
from bert_serving.client import BertClient

from berthing.config import Settings
from berthing.registry import Registry
from tests.support.http import clone, metric
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer

TIMEOUT_MS = 20_000  # every client call fails the test after this instead of hanging it
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "berthing speaks bert-as-service"]
CHINESE = ["小明在北京上学", "总的来说这款手机性价比是特别高的"]
MAX_LEN = 128  # the tiny models' max length in tokens


def serve(load: Any, settings: Settings, default: str, kinds: tuple[str, ...] = ("embed", "classify", "ner", "qa"),
          **overrides: Any) -> ThreadServer:
    """A server with every model bert-serving answers for (or `kinds`), the ZeroMQ port serving `default`."""
    registry = Registry()
    for kind in kinds:
        registry.add(clone(load(kind), kind))
    return ThreadServer(registry, settings.model_copy(update={"default_model": default, **overrides}))


@pytest.fixture(scope="module")
def embed_server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    with serve(load, settings, "embed", max_items=8) as server:
        yield server


@pytest.fixture(scope="module")
def classify_server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    with serve(load, settings, "classify") as server:
        yield server


@pytest.fixture(scope="module")
def ner_server(load: Any, settings: Settings) -> Iterator[ThreadServer]:
    with serve(load, settings, "ner") as server:
        yield server


def ports(server: ThreadServer) -> dict[str, Any]:
    return {"ip": "127.0.0.1", "port": server.listener_port("bert-serving", "in"),
            "port_out": server.listener_port("bert-serving", "out"), "timeout": TIMEOUT_MS}


def torchserve(server: ThreadServer, model: str, payload: dict[str, Any]) -> Any:
    response = httpx.post(f"{server.url}/predictions/{model}", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def vectors(server: ThreadServer, texts: list[Any], **options: Any) -> np.ndarray:
    """The TorchServe route's vectors, in chunks under the server's max_items."""
    rows = [torchserve(server, "embed", {"input": texts[i : i + 8], **options}) for i in range(0, len(texts), 8)]
    return np.array([row for chunk in rows for row in chunk], dtype=np.float32)


def ner_labels(server: ThreadServer, text: str) -> list[str]:
    tokens = torchserve(server, "ner", {"input": text, "aggregation_strategy": "none", "ignore_labels": []})
    return [t["entity"] for t in tokens]


# bert-serving-client 1.10 (embeddings) ---------------------------------------------------------------------------


def test_default_handshake_and_encode_match_torchserve(embed_server: ThreadServer) -> None:
    with BertClient(**ports(embed_server)) as bc:
        config = bc.server_config
        assert config["server_version"] == "1.10.0" and config["max_seq_len"] == MAX_LEN and config["mode"] == "BERT"
        assert config["show_tokens_to_client"] is True and config["pooling_strategy"] == "REDUCE_MEAN"
        got = bc.encode(TEXTS)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (3, 32)
    np.testing.assert_allclose(got, vectors(embed_server, TEXTS), atol=1e-6)


def test_ignore_all_checks_and_list_output(embed_server: ThreadServer) -> None:
    with BertClient(**ports(embed_server), ignore_all_checks=True, output_fmt="list") as bc:
        got = bc.encode(TEXTS[:2])
    assert isinstance(got, list) and isinstance(got[0], list) and isinstance(got[0][0], float)
    np.testing.assert_allclose(np.array(got, dtype=np.float32), vectors(embed_server, TEXTS[:2]), atol=1e-6)


def test_tokenized_input_is_words(embed_server: ThreadServer) -> None:
    words = [text.split() for text in TEXTS]
    with BertClient(**ports(embed_server), check_length=False) as bc:
        got = bc.encode(words, is_tokenized=True)
    np.testing.assert_allclose(got, vectors(embed_server, words, is_tokenized=True), atol=1e-6)


def test_show_tokens(embed_server: ThreadServer) -> None:
    with BertClient(**ports(embed_server)) as bc:
        got, tokens = bc.encode(["hello world", "the lazy dog"], show_tokens=True)
    assert got.shape == (2, 32)
    assert tokens == [["[CLS]", "hello", "world", "[SEP]"], ["[CLS]", "the", "lazy", "dog", "[SEP]"]]


def test_non_blocking_encode_and_fetch_all(embed_server: ThreadServer) -> None:
    with BertClient(**ports(embed_server)) as bc:
        for text in TEXTS:
            assert bc.encode([text, text.upper()], blocking=False) is None
        got = bc.fetch_all(concat=True)
    expected = vectors(embed_server, [t for text in TEXTS for t in (text, text.upper())])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_more_texts_than_max_batch_size_and_max_items(embed_server: ThreadServer) -> None:
    texts = [f"sentence number {i} of a long job" for i in range(300)]  # > 256 (bert-serving's batch), > max_items 8
    with BertClient(**ports(embed_server)) as bc:
        got = bc.encode(texts)
    assert got.shape == (300, 32)
    np.testing.assert_allclose(got, vectors(embed_server, texts), atol=1e-6)


def test_server_status_and_metrics(embed_server: ThreadServer) -> None:
    with BertClient(**ports(embed_server)) as bc:
        bc.encode(["count me"])
        status = bc.server_status
    assert status["statistic"]["num_data_request"] >= 1 and status["model"] == "embed"
    count = metric(embed_server.url, "berthing_requests_total", protocol="bert-serving", route="zmq_encode", status="200")
    assert count is not None and count >= 1


def test_an_error_reaches_the_client_at_once(load: Any, settings: Settings) -> None:
    """The ZeroMQ wire has no error frame: the reply's dtype carries the message, so the client raises with it."""
    # only a QA model: a default of the wrong task beside a fitting model gives way to it (docs/protocols.md)
    with serve(load, settings, "qa", ("qa",)) as server, BertClient(**ports(server), ignore_all_checks=True) as bc:
        with pytest.raises(TypeError, match="berthing error 422 WrongTask: model 'qa' is a question answering model"):
            bc.encode(["a text"])
        with pytest.raises(TypeError, match="berthing error"):  # the client stays usable
            bc.encode(["another"])


def test_raw_frames_bad_json_answers_an_error_header(embed_server: ThreadServer) -> None:
    context = zmq.Context()
    push, sub = context.socket(zmq.PUSH), context.socket(zmq.SUB)
    try:
        identity = str(uuid.uuid4()).encode("ascii")
        for sock in (push, sub):
            sock.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, identity)
        sub.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
        p = ports(embed_server)
        push.connect(f"tcp://127.0.0.1:{p['port']}")
        sub.connect(f"tcp://127.0.0.1:{p['port_out']}")
        push.send_multipart([identity, b"[not json", b"7", b"1"])
        frames = sub.recv_multipart()
    finally:
        push.close()
        sub.close()
        context.term()
    assert frames[0] == identity and frames[-1] == b"7" and len(frames) == 4
    header = zmq.utils.jsonapi.loads(frames[1])
    assert header["dtype"].startswith("berthing error 400 BadRequest: body is not valid JSON")
    assert header["error"]["code"] == 400


def test_overload_reaches_the_client(load: Any, server_factory: Any) -> None:
    def fill(url: str) -> object:
        return httpx.post(f"{url}/predictions/busy", json={"input": "x"}, timeout=30)

    with overloaded(load("embed"), "busy", server_factory, fill) as server, \
            BertClient(**ports(server), ignore_all_checks=True) as bc:
        with pytest.raises(TypeError, match="berthing error 503 ServiceUnavailable"):
            bc.encode(["shed me"])


# bert-base 0.0.9 (CLASS and NER) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("handshake", [
    {"check_version": False, "check_length": False, "show_server_config": False},  # seed 004's exact arguments
    {},  # the default handshake: version 1.7.8 and mode CLASS
])
def test_bert_base_class_mode(classify_server: ThreadServer, handshake: dict[str, bool]) -> None:
    texts = ["I love this phone", "terrible service, never again", "it is fine"]
    with BaseClient(**ports(classify_server), mode="CLASS", **handshake) as bc:
        rst = bc.encode(texts)
    expected = torchserve(classify_server, "classify", {"input": texts})
    assert isinstance(rst, list) and len(rst) == 1 and set(rst[0]) == {"pred_label", "score"}
    assert rst[0]["pred_label"] == [r["label"] for r in expected]
    assert rst[0]["score"] == pytest.approx([r["score"] for r in expected], abs=1e-6)


@pytest.mark.parametrize("handshake", [{"check_version": False, "check_length": False}, {}])
def test_bert_base_ner_mode_labels_per_character(ner_server: ThreadServer, handshake: dict[str, bool]) -> None:
    with BaseClient(**ports(ner_server), mode="NER", **handshake) as bc:
        rst = bc.encode(CHINESE)
    assert len(rst) == 2
    for text, labels in zip(CHINESE, rst, strict=True):
        labels = list(labels)
        assert len(labels) == len(text)  # seed 004 zips them with list(text)
        assert labels == ner_labels(ner_server, text)


def test_bert_base_bert_mode_gets_vectors(embed_server: ThreadServer) -> None:
    with BaseClient(**ports(embed_server), mode="BERT") as bc:
        got = bc.encode(TEXTS)
    np.testing.assert_allclose(got, vectors(embed_server, TEXTS), atol=1e-6)


def test_bert_base_mode_mismatch_is_the_clients_own_error(ner_server: ThreadServer) -> None:
    with pytest.raises(ArithmeticError, match="server mode is:NER, but client mode is :CLASS"):
        BaseClient(**ports(ner_server), mode="CLASS")


# HTTP /encode -------------------------------------------------------------------------------------------------------


def post(server: ThreadServer, body: Any, model: str | None = None) -> httpx.Response:
    headers = {"X-Berthing-Model": model} if model else {}
    return httpx.post(f"{server.url}/encode", json=body, headers=headers, timeout=30)


def test_http_encode_embed_classify_ner(embed_server: ThreadServer) -> None:
    response = post(embed_server, {"id": 111, "texts": TEXTS, "is_tokenized": False})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == 111 and body["status"] == 200
    np.testing.assert_allclose(np.array(body["result"], dtype=np.float32), vectors(embed_server, TEXTS), atol=1e-6)

    body = post(embed_server, {"id": "a", "texts": TEXTS}, model="classify").json()
    expected = torchserve(embed_server, "classify", {"input": TEXTS})
    assert body["result"] == [{"pred_label": [r["label"] for r in expected], "score": [r["score"] for r in expected]}]

    body = post(embed_server, {"id": None, "texts": CHINESE, "model": "ner"}).json()
    assert body == {"id": None, "result": [ner_labels(embed_server, t) for t in CHINESE], "status": 200}

    words = [t.split() for t in TEXTS]
    body = post(embed_server, {"id": 1, "texts": words, "is_tokenized": True}).json()
    np.testing.assert_allclose(body["result"], vectors(embed_server, words, is_tokenized=True), atol=1e-6)


def test_http_status_server(embed_server: ThreadServer) -> None:
    body = httpx.get(f"{embed_server.url}/status/server", timeout=30).json()
    assert body["status"] == 200 and body["server_version"] == "1.10.0" and body["model"] == "embed"


@pytest.mark.parametrize(("body", "model", "description", "kind"), [
    ({"id": 1, "texts": []}, None, "field 'texts' is an empty list", "InvalidInput"),
    ({"id": 1, "texts": ["ok", "  "]}, None, "texts[1] is empty or blank", "InvalidInput"),
    ({"id": 1, "texts": "one text"}, None, "field 'texts' must be a list of strings, got string", "InvalidInput"),
    ({"id": 1, "texts": [1]}, None, "texts[0] must be a string, got number", "InvalidInput"),
    ({"id": 1, "texts": ["a b"], "is_tokenized": True}, None,
     "texts[0] must be a list of words when is_tokenized is true, got string", "InvalidInput"),
    ({"id": 1}, None, "missing field 'texts'", "BadRequest"),
    ({"id": 1, "texts": ["x"] * 9}, None, "field 'texts' has 9 items, over the limit of 8", "PayloadTooLarge"),
    ({"id": 1, "texts": ["word " * 200], "truncate": False}, None,
     f"input[0] is longer than the model's max length of {MAX_LEN} tokens and truncate is false", "PayloadTooLarge"),
    ({"id": 1, "texts": ["x"]}, "nope", "model 'nope' not found (models: classify, embed, ner, qa)", "ModelNotFound"),
    ({"id": 1, "texts": ["x"]}, "qa",
     "model 'qa' is a question answering model; /encode needs an embedding model or a classification model or a "
     "token classification (NER) model", "WrongTask"),
])
def test_http_errors_in_the_proxys_shape(embed_server: ThreadServer, body: Any, model: str | None,
                                         description: str, kind: str) -> None:
    response = post(embed_server, body, model)
    assert response.status_code == 400
    assert response.json() == {"description": description, "type": kind, "status": 400}


def test_http_bad_json(embed_server: ThreadServer) -> None:
    response = httpx.post(f"{embed_server.url}/encode", content=b"{", timeout=30)
    assert response.status_code == 400
    assert response.json()["type"] == "BadRequest"


def test_http_overload_is_503_with_retry_after(load: Any, server_factory: Any) -> None:
    def fill(url: str) -> object:
        return httpx.post(f"{url}/encode", json={"texts": ["x"]}, timeout=30)

    with overloaded(load("embed"), "busy", server_factory, fill) as server:
        response = post(server, {"id": 2, "texts": ["shed me"]})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["type"] == "ServiceUnavailable" and response.json()["status"] == 503
