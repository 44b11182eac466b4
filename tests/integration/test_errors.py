"""Every error of the HTTP API against a real server on loopback: exact status, exact JSON body."""

from __future__ import annotations

import concurrent.futures as cf
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from berthing.engine.batcher import BatchLimits
from berthing.engine.model import Model
from berthing.runtime.base import Runtime
from berthing.tasks.tokenize import Features
from tests.support.http import WAIT_S, clone, metric, wait_for
from tests.support.overload import GatedRuntime
from tests.support.servers import ThreadServer

JSON_CT = {"content-type": "application/json"}
TEXT_CT = {"content-type": "text/plain"}
ROUTES = "protocols: torchserve, openai, tei, rerank, infinity, kserve, bert-serving; GET /openapi.json lists every route"


def json_error(body: bytes) -> str:
    """The server's message for a JSON syntax error, with orjson's own wording of it."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"body is not valid JSON: {exc}"
    raise AssertionError(f"{body!r} is valid JSON")


def error(code: int, kind: str, message: str) -> dict[str, Any]:
    return {"code": code, "type": kind, "message": message}


def assert_error(response: httpx.Response, code: int, kind: str, message: str) -> None:
    assert response.headers["content-type"] == "application/json", response.text
    assert (response.status_code, response.json()) == (code, error(code, kind, message))




@dataclass(frozen=True)
class Case:
    id: str
    code: int
    kind: str
    message: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/predictions/sentiment"

    def send(self, url: str) -> httpx.Response:
        if self.content is not None:
            return httpx.post(url + self.path, content=self.content, headers=self.headers)
        return httpx.post(url + self.path, json=self.json)


def bad_request(case_id: str, message: str, **kw: Any) -> Case:
    return Case(case_id, 400, "BadRequest", message, **kw)


def invalid(case_id: str, message: str, **kw: Any) -> Case:
    return Case(case_id, 422, "InvalidInput", message, **kw)


BAD_JSON = b'{"input": "unterminated'
NOT_UTF8 = b'{"input": "caf\xe9"}'
ONE_OF = "a {'text', 'text_pair'} object or a list of them"
EMPTY = 'empty body: send JSON {"input": ...} or a UTF-8 text'
CASES = [
    bad_request("invalid-json", json_error(BAD_JSON), content=BAD_JSON, headers=JSON_CT),
    bad_request("invalid-json-trailing", json_error(b'{"input": "a"} x'), content=b'{"input": "a"} x', headers=JSON_CT),
    bad_request(
        "invalid-utf8-json",
        "body is not valid UTF-8: 'utf-8' codec can't decode byte 0xe9 in position 14: invalid continuation byte",
        content=NOT_UTF8, headers=JSON_CT,
    ),
    bad_request(
        "invalid-utf8-text",
        "body is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 5: invalid start byte",
        content=b"hello\xff world", headers=TEXT_CT,
    ),
    bad_request("empty-json", EMPTY, content=b"", headers=JSON_CT),
    bad_request("empty-no-type", EMPTY, content=b""),
    bad_request("blank-json", EMPTY, content=b" \r\n", headers=JSON_CT),
    bad_request("blank-text", EMPTY, content=" \n\u3000".encode(), headers=TEXT_CT),
    bad_request("json-number", "JSON body must be an object, an array or a string, got number", content=b"42", headers=JSON_CT),
    bad_request("json-null", "JSON body must be an object, an array or a string, got null", content=b"null", headers=JSON_CT),
    bad_request("missing-input", "missing field 'input' (also accepted: 'inputs', 'text')", json={"texts": ["a"], "top_k": 1}),
    bad_request("empty-object", "missing field 'input' (also accepted: 'inputs', 'text')", json={}),
    bad_request("pair-without-text", "missing field 'text' (sent 'text_pair' without it)", json={"text_pair": "b"}),
    invalid("input-number", f"field 'input' must be a string, {ONE_OF}, got number", json={"input": 7}),
    invalid("input-null", f"field 'input' must be a string, {ONE_OF}, got null", json={"input": None}),
    invalid("inputs-alias-bool", f"field 'inputs' must be a string, {ONE_OF}, got boolean", json={"inputs": True}),
    invalid("list-with-number", "input[1] must be a string, got number", json={"input": ["fine", 7]}),
    invalid("list-with-list", "input[0] must be a string, got array", json={"input": [["nested"]]}),
    invalid("dict-without-text", "input.text is missing", json={"input": {"text_pair": "b"}}),
    invalid("dict-unknown-key", "input has unknown field 'txt' (a pair is {'text', 'text_pair'})", json={"input": {"txt": "a"}}),
    invalid("list-dict-text-number", "input[1].text must be a string, got number", json={"input": ["a", {"text": 1}]}),
    invalid("empty-list", "field 'input' is an empty list", json={"input": []}),
    invalid("empty-string", "field 'input' is empty or blank", json={"input": ""}),
    invalid("blank-string", "field 'input' is empty or blank", json={"input": "   "}),
    invalid("blank-text-alias", "field 'text' is empty or blank", json={"text": "\t\n"}),
    invalid("empty-item", "input[1] is empty or blank", json={"input": ["ok", ""]}),
    invalid("blank-item", "input[1] is empty or blank", json={"input": ["ok", "   "]}),
    invalid("blank-item-top-level-list", "body[1] is empty or blank", json=["ok", " "]),
    invalid(
        "unknown-option", "unknown field 'temperature' for a classification model (fields: input, is_tokenized, top_k, truncate)",
        json={"input": "ok", "temperature": 0.5},
    ),
    invalid(
        "unknown-option-embed", "unknown field 'top_k' for an embedding model (fields: input, is_tokenized, normalize, truncate)",
        json={"input": "ok", "top_k": 1}, path="/predictions/embedder",
    ),
    invalid(
        "normalize-yes", "field 'normalize' must be true or false, got \"yes\"",
        json={"input": "ok", "normalize": "yes"}, path="/predictions/embedder",
    ),
    invalid("truncate-string", "field 'truncate' must be true or false, got \"no\"", json={"input": "ok", "truncate": "no"}),
    invalid("top-k-zero", "field 'top_k' must be >= 1, got 0", json={"input": "ok", "top_k": 0}),
    invalid("top-k-string", "field 'top_k' must be an integer, got \"2\"", json={"input": "ok", "top_k": "2"}),
    invalid("top-k-float", "field 'top_k' must be an integer, got 2.5", json={"input": "ok", "top_k": 2.5}),
    invalid("top-k-over-labels", "field 'top_k' must be <= 3 (the number of labels), got 4", json={"input": "ok", "top_k": 4}),
    invalid(
        "pair-to-embedder", "input[0]: an embedding model takes texts, not text pairs",
        json={"input": {"text": "a", "text_pair": "b"}}, path="/predictions/embedder",
    ),
    invalid(
        "pair-in-list-to-embedder", "input[1]: an embedding model takes texts, not text pairs",
        json={"input": ["a", {"text": "b", "text_pair": "c"}]}, path="/predictions/embedder",
    ),
    invalid(
        "flat-pair-to-embedder", "input[0]: an embedding model takes texts, not text pairs",
        json={"text": "a", "text_pair": "b"}, path="/predictions/embedder",
    ),
    invalid("two-input-keys", "fields 'input', 'text' given together; send one", json={"input": "a", "text": "b"}),
    invalid(
        "three-input-keys", "fields 'input', 'inputs', 'text' given together; send one",
        json={"input": "a", "inputs": "b", "text": "c"},
    ),
    invalid(
        "text-pair-with-input", "field 'text_pair' goes with 'text', not with 'input'; send one form",
        json={"input": "a", "text_pair": "b"},
    ),
    invalid("text-pair-number", "field 'text_pair' must be a string, got number", json={"text": "a", "text_pair": 3}),
    invalid("flat-pair-blank-text", "field 'text' is empty or blank", json={"text": " ", "text_pair": "b"}),
    Case("unknown-model", 404, "ModelNotFound", "model 'nope' not found (models: embedder, sentiment)", json={"input": "a"},
         path="/predictions/nope"),
    Case("unknown-model-version", 404, "ModelNotFound", "model 'nope' not found (models: embedder, sentiment)",
         json={"input": "a"}, path="/predictions/nope/1.0"),
    Case("unknown-version", 404, "ModelNotFound", "version '9.9' of model 'sentiment' not found (versions: 1.0)",
         json={"input": "a"}, path="/predictions/sentiment/9.9"),
    Case("unknown-version-before-body", 404, "ModelNotFound", "version '2' of model 'embedder' not found (versions: 1.0)",
         content=b"{not json", headers=JSON_CT, path="/predictions/embedder/2"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_body(api: str, case: Case) -> None:
    assert_error(case.send(api), case.code, case.kind, case.message)


def test_known_version_is_served(api: str) -> None:
    versioned = httpx.post(f"{api}/predictions/sentiment/1.0", json={"input": "a fine day"})
    default = httpx.post(f"{api}/predictions/sentiment", json={"input": "a fine day"})
    assert versioned.status_code == default.status_code == 200
    assert versioned.json()["label"] == default.json()["label"]


def test_unknown_route_is_json_404(api: str) -> None:
    assert_error(httpx.get(f"{api}/nope"), 404, "NotFound", f"no route for GET /nope ({ROUTES})")
    assert_error(httpx.post(f"{api}/predict/sentiment", json={"input": "a"}), 404, "NotFound",
                 f"no route for POST /predict/sentiment ({ROUTES})")


def test_wrong_method_is_json_405_with_allow(api: str) -> None:
    response = httpx.get(f"{api}/predictions/x")
    assert_error(response, 405, "MethodNotAllowed", "method not allowed: GET /predictions/x (allowed: POST)")
    assert response.headers["allow"] == "POST"
    put = httpx.put(f"{api}/ping")
    assert put.status_code == 405 and put.json()["type"] == "MethodNotAllowed"
    assert sorted(put.headers["allow"].split(", ")) == ["GET", "HEAD"]


# -- limits: body size, item count, text length ----------------------------------------------------------------------

def test_body_over_limit_with_content_length(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"small": load("classify")}, max_body_bytes=2048) as server:
        url = f"{server.url}/predictions/small"
        def body(size: int) -> bytes:
            return b'{"input": "' + (b"a " * size)[: size - 13] + b'"}'

        at_limit, over = body(2048), body(2049)
        assert (len(at_limit), len(over)) == (2048, 2049)
        assert httpx.post(url, content=at_limit, headers=JSON_CT).status_code == 200
        assert_error(httpx.post(url, content=over, headers=JSON_CT), 413, "PayloadTooLarge",
                     "body of 2049 bytes is over the limit of 2048 bytes")
        assert httpx.post(url, content=b"still serving", headers=TEXT_CT).status_code == 200


def test_chunked_body_over_limit(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"word " * 100  # 500 bytes a chunk

    with server_factory({"small": load("classify")}, max_body_bytes=2048) as server:
        url = f"{server.url}/predictions/small"
        response = httpx.post(url, content=chunks(5), headers=TEXT_CT)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_error(response, 413, "PayloadTooLarge", "body is over the limit of 2048 bytes")
        under = httpx.post(url, content=chunks(4), headers=TEXT_CT)  # 2000 bytes, streamed the same way
        assert under.status_code == 200 and "label" in under.json()


def test_too_many_items(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"small": load("embed")}, max_items=3) as server:
        url = f"{server.url}/predictions/small"
        assert len(httpx.post(url, json={"input": ["a", "b", "c"]}).json()) == 3
        assert_error(httpx.post(url, json={"input": ["a", "b", "c", "d"]}), 413, "PayloadTooLarge",
                     "field 'input' has 4 items, over the limit of 3")
        assert_error(httpx.post(url, json={"inputs": ["a"] * 10}), 413, "PayloadTooLarge",
                     "field 'inputs' has 10 items, over the limit of 3")
        assert_error(httpx.post(url, json=["a"] * 4), 413, "PayloadTooLarge", "field 'body' has 4 items, over the limit of 3")


def test_text_over_max_length(api: str, load: Callable[..., Model]) -> None:
    max_length = load("classify").encoder.max_length
    long_text = " ".join(["word"] * (max_length + 10))
    url = f"{api}/predictions/sentiment"
    message = f"input[{{}}] is longer than the model's max length of {max_length} tokens and truncate is false"
    assert_error(httpx.post(url, json={"input": long_text, "truncate": False}), 413, "PayloadTooLarge", message.format(0))
    assert_error(httpx.post(url, json={"input": ["short", long_text], "truncate": False}), 413, "PayloadTooLarge",
                 message.format(1))
    fits = " ".join(["word"] * (max_length - 2))  # + [CLS] and [SEP] = exactly max_length tokens
    assert httpx.post(url, json={"input": fits, "truncate": False}).status_code == 200
    truncated = httpx.post(url, json={"input": long_text})
    assert truncated.status_code == 200 and truncated.json()["label"] in {"negative", "neutral", "positive"}
    assert httpx.post(url, json={"input": long_text, "truncate": True}).json() == truncated.json()


# -- overload and failing batches -------------------------------------------------------------------------------------

class PoisonedRuntime:
    """Fails every batch that contains token `poison`; runs the others normally."""

    def __init__(self, inner: Runtime, poison: int) -> None:
        self.inner, self.name, self.threads, self.poison = inner, inner.name, inner.threads, poison

    def run(self, features: Features) -> np.ndarray:
        if (features.input_ids == self.poison).any():
            raise RuntimeError("poisoned batch")
        return self.inner.run(features)


def test_queue_full_is_503_with_retry_after(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    base = load("classify")
    gate = GatedRuntime(base.runtimes[0])
    model = clone(base, "gated", [gate])
    with server_factory({"gated": model}, limits=BatchLimits(max_queue=1)) as server, cf.ThreadPoolExecutor(2) as pool:
        url = f"{server.url}/predictions/gated"
        try:
            running = pool.submit(httpx.post, url, json={"input": "first"}, timeout=WAIT_S * 2)
            assert gate.entered.wait(WAIT_S), "first request never reached the runtime"
            queued = pool.submit(httpx.post, url, json={"input": "second"}, timeout=WAIT_S * 2)
            wait_for(lambda: metric(server.url, "berthing_queue_depth", model="gated:1.0") == 1.0, "one queued item")
            shed = httpx.post(url, json={"input": "third"})
            assert_error(shed, 503, "ServiceUnavailable", "model 'gated' has 1 item queued (limit 1); retry later")
            assert shed.headers["retry-after"] == "1"
            # more items than the queue can ever hold: retrying cannot help, so 413 rather than 503
            assert_error(httpx.post(url, json={"input": ["x", "y"]}), 413, "PayloadTooLarge",
                         "the request makes 2 model passes (inputs and the windows of long inputs), "
                         "over the queue limit of 1; send fewer or shorter inputs")
        finally:
            gate.release.set()
        assert running.result().status_code == 200
        assert queued.result().status_code == 200
        assert httpx.post(url, json={"input": "after the storm"}).status_code == 200
        assert metric(server.url, "berthing_requests_total", model="gated:1.0", status="503") == 1.0
        assert metric(server.url, "berthing_requests_total", model="gated:1.0", status="413") == 1.0


def test_failing_batch_fails_only_its_request(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    base = load("classify")
    poison = base.encoder.tokenizer.token_to_id("explode")
    assert poison is not None
    model = clone(base, "fragile", [PoisonedRuntime(base.runtimes[0], poison)])
    with server_factory({"fragile": model}) as server:
        url = f"{server.url}/predictions/fragile"
        assert httpx.post(url, json={"input": "a calm sentence"}).status_code == 200
        assert_error(httpx.post(url, json={"input": "this will explode"}), 500, "InferenceFailed",
                     "inference failed on a batch of 1 item: RuntimeError: poisoned batch")
        assert_error(httpx.post(url, json={"input": ["calm", "explode", "calm"]}), 500, "InferenceFailed",
                     "inference failed on a batch of 3 items: RuntimeError: poisoned batch")
        good = httpx.post(url, json={"input": ["still", "serving"]})
        assert good.status_code == 200 and len(good.json()) == 2
        assert metric(server.url, "berthing_requests_total", model="fragile:1.0", status="500") == 2.0


def test_client_gone_mid_body_is_not_a_500(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"m": load("embed")}) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            sock.sendall(b"POST /predictions/m HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b'Content-Length: 100\r\n\r\n{"input": "only part')
        wait_for(lambda: metric(server.url, "berthing_requests_total", model="m:1.0", status="499") == 1.0,
                 "the disconnect to be counted")
        assert metric(server.url, "berthing_requests_total", model="m:1.0", status="500") is None
        assert httpx.post(f"{server.url}/predictions/m", json={"input": "next"}).status_code == 200
