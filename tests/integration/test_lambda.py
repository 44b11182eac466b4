"""The Lambda handler on API Gateway v1, v2 and function URL events: every task answers as the HTTP server does,
errors carry the same bodies, base64 bodies and CORS work; direct invocations take the body itself."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berthing.config import Settings
from berthing.registry import Registry
from berthing.serverless.app import ServerlessApp
from tests.support.http import clone
from tests.support.servers import ThreadServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lambda"
KINDS = ("apigw-rest-v1", "apigw-http-v2", "function-url")

# One request body per task, as curl would send it to `berthing serve` (QA is seed 002's {"context", "question"}).
BODIES: dict[str, Any] = {
    "sentiment": {"input": "a clear and friendly answer"},
    "embedder": {"input": ["over http", "over lambda"]},
    "tagger": {"input": "Sarah lives in London"},
    "reader": {"question": "Who lives in London?", "context": "Sarah lives in London with her cat."},
    "ranker": {"query": "where is London", "texts": ["London is in England", "a cake recipe"]},
}
KIND_OF = {"sentiment": "classify", "embedder": "embed", "tagger": "ner", "reader": "qa", "ranker": "rerank"}


def event(kind: str, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None,
          b64: bool = False) -> dict[str, Any]:
    """A fixture event of `kind` re-pointed at method + path, with this body and these extra headers."""
    data = copy.deepcopy(json.loads((FIXTURES / f"{kind}.json").read_text("utf-8")))
    raw = body.encode("utf-8") if isinstance(body, str) else body
    data["body"] = None if raw is None else (base64.b64encode(raw).decode() if b64 else raw.decode("utf-8"))
    data["isBase64Encoded"] = b64
    extra = headers or {}
    if kind == "apigw-rest-v1":
        data["httpMethod"] = data["requestContext"]["httpMethod"] = method
        data["path"] = path
        data["requestContext"]["path"] = f"/{data['requestContext']['stage']}{path}"
        data["headers"].update(extra)
        data["multiValueHeaders"].update({k: [v] for k, v in extra.items()})
    else:
        stage = data["requestContext"]["stage"]
        data["rawPath"] = path if stage == "$default" else f"/{stage}{path}"
        data["requestContext"]["http"]["method"] = method
        data["requestContext"]["http"]["path"] = data["rawPath"]
        data["headers"].update({k.lower(): v for k, v in extra.items()})
    return data


@pytest.fixture(scope="module")
def registry(load) -> Registry:
    registry = Registry()
    for name, kind in KIND_OF.items():
        registry.add(clone(load(kind), name))
    return registry


@pytest.fixture(scope="module")
def app(registry: Registry, settings: Settings) -> ServerlessApp:
    return ServerlessApp(registry, settings)


@pytest.fixture(scope="module")
def server_answers(registry: Registry, settings: Settings) -> Iterator[dict[str, Any]]:
    """What `berthing serve` answers for each BODIES entry, from a real server over the same models."""
    served = Registry()
    for name in KIND_OF:
        served.add(clone(registry.get(name), name))
    with ThreadServer(served, settings) as server:
        yield {name: httpx.post(f"{server.url}/predictions/{name}", json=body, timeout=60).json()
               for name, body in BODIES.items()}


def close(a: Any, b: Any) -> bool:
    """Same JSON up to float rounding (one path batches, the other runs each request alone)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, abs=1e-4)
    return a == b


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_task_answers_as_the_server_does(kind: str, name: str, app: ServerlessApp, server_answers) -> None:
    answer = app(event(kind, "POST", f"/predictions/{name}", json.dumps(BODIES[name]), {"Content-Type": "application/json"}))
    assert answer["statusCode"] == 200 and answer["isBase64Encoded"] is False
    assert answer["headers"] == {"Content-Type": "application/json"}
    assert close(json.loads(answer["body"]), server_answers[name])


@pytest.mark.parametrize("kind", KINDS)
def test_base64_bodies_raw_text_and_versions(kind: str, app: ServerlessApp, server_answers) -> None:
    body = json.dumps(BODIES["reader"]).encode()
    answer = app(event(kind, "POST", "/predictions/reader", body, {"Content-Type": "application/json"}, b64=True))
    assert answer["statusCode"] == 200 and close(json.loads(answer["body"]), server_answers["reader"])
    text = b"a clear and friendly answer"  # a raw UTF-8 body is one text, as with curl --data-binary
    answer = app(event(kind, "POST", "/predictions/sentiment/1.0", text, {"Content-Type": "text/plain"}, b64=True))
    assert answer["statusCode"] == 200 and close(json.loads(answer["body"]), server_answers["sentiment"])


@pytest.mark.parametrize("kind", KINDS)
def test_ping_and_errors_carry_the_servers_bodies(kind: str, app: ServerlessApp) -> None:
    def call(method: str, path: str, body: str | None = None, b64: bool = False, **headers: str) -> tuple[int, dict, Any]:
        answer = app(event(kind, method, path, body, {"Content-Type": "application/json", **headers}, b64))
        return answer["statusCode"], answer["headers"], json.loads(answer["body"])

    assert call("GET", "/ping") == (200, {"Content-Type": "application/json"}, {"status": "Healthy"})
    models = "embedder, ranker, reader, sentiment, tagger"
    assert call("POST", "/predictions/nope", '{"input": "x"}')[::2] == (
        404, {"code": 404, "type": "ModelNotFound", "message": f"model 'nope' not found (models: {models})"})
    assert call("POST", "/predictions/sentiment/9.9", '{"input": "x"}')[::2] == (
        404, {"code": 404, "type": "ModelNotFound", "message": "version '9.9' of model 'sentiment' not found (versions: 1.0)"})
    status, _, body = call("POST", "/predictions/sentiment", '{"input": ')
    assert status == 400 and body["type"] == "BadRequest" and body["message"].startswith("body is not valid JSON: ")
    assert call("POST", "/predictions/sentiment", "")[::2] == (
        400, {"code": 400, "type": "BadRequest", "message": 'empty body: send JSON {"input": ...} or a UTF-8 text'})
    broken = event(kind, "POST", "/predictions/sentiment", "{}", b64=True)
    broken["body"] = "not base64!"
    answer = app(broken)
    assert (answer["statusCode"], json.loads(answer["body"])) == (400, {
        "code": 400, "type": "BadRequest", "message": "body is marked base64 but does not decode: Only base64 data is allowed"})
    assert call("POST", "/predictions/reader", '{"question": "who?"}')[::2] == (
        400, {"code": 400, "type": "BadRequest", "message": "missing field 'context' (sent 'question' without it)"})
    assert call("POST", "/predictions/reader", '{"question": "who?", "context": 5}')[::2] == (
        422, {"code": 422, "type": "InvalidInput", "message": "field 'context' must be a string, got number"})
    assert call("GET", "/predictions/sentiment") == (
        405, {"Content-Type": "application/json", "Allow": "POST"},
        {"code": 405, "type": "MethodNotAllowed", "message": "method not allowed: GET /predictions/sentiment (allowed: POST)"})
    assert call("POST", "/models")[::2] == (404, {
        "code": 404, "type": "NotFound",
        "message": "no route for POST /models (routes: /ping, /predictions/{model}, /predictions/{model}/{version})"})


@pytest.mark.parametrize("kind", KINDS)
def test_seed_001s_body_with_input_field(kind: str, registry: Registry, settings: Settings, server_answers) -> None:
    """Seed 001's function reads {"log": "..."}; --input-field log lets such clients keep their body."""
    body = json.dumps({"log": BODIES["sentiment"]["input"]})
    app = ServerlessApp(registry, settings.model_copy(update={"input_field": "log"}))
    answer = app(event(kind, "POST", "/predictions/sentiment", body, {"Content-Type": "application/json"}))
    assert answer["statusCode"] == 200 and close(json.loads(answer["body"]), server_answers["sentiment"])
    plain = ServerlessApp(registry, settings)(event(kind, "POST", "/predictions/sentiment", body))
    assert (plain["statusCode"], json.loads(plain["body"])) == (400, {
        "code": 400, "type": "BadRequest", "message": "missing field 'input' (also accepted: 'inputs', 'text')"})


def test_a_body_over_the_limit_is_413(registry: Registry, settings: Settings) -> None:
    app = ServerlessApp(registry, settings.model_copy(update={"max_body_bytes": 1024}))
    answer = app(event("apigw-http-v2", "POST", "/predictions/sentiment", json.dumps({"input": "x" * 2000})))
    assert (answer["statusCode"], json.loads(answer["body"])) == (413, {
        "code": 413, "type": "PayloadTooLarge", "message": "body of 2013 bytes is over the limit of 1024 bytes"})


@pytest.mark.parametrize("kind", KINDS)
def test_cors_headers_follow_the_configured_origins(kind: str, registry: Registry, settings: Settings) -> None:
    app = ServerlessApp(registry, settings.model_copy(update={"cors_origins": ["https://app.example"]}))
    body = json.dumps(BODIES["sentiment"])
    ok = app(event(kind, "POST", "/predictions/sentiment", body, {"Origin": "https://app.example"}))
    assert ok["statusCode"] == 200
    assert ok["headers"] == {
        "Content-Type": "application/json", "Access-Control-Allow-Origin": "https://app.example", "Vary": "Origin"}
    preflight = app(event(kind, "OPTIONS", "/predictions/sentiment", None, {
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"}))
    assert (preflight["statusCode"], preflight["body"]) == (204, "")
    assert preflight["headers"] == {
        "Content-Type": "application/json", "Access-Control-Allow-Origin": "https://app.example", "Vary": "Origin",
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": "Content-Type, Authorization",
        "Access-Control-Max-Age": "600"}
    other = app(event(kind, "POST", "/predictions/sentiment", body, {"Origin": "https://evil.example"}))
    assert other["statusCode"] == 200 and "Access-Control-Allow-Origin" not in other["headers"]
    anyone = ServerlessApp(registry, settings.model_copy(update={"cors_origins": ["*"]}))
    error = anyone(event(kind, "POST", "/predictions/nope", body, {"Origin": "https://evil.example"}))
    assert error["statusCode"] == 404 and error["headers"]["Access-Control-Allow-Origin"] == "*"
    none = ServerlessApp(registry, settings)(event(kind, "POST", "/predictions/sentiment", body, {"Origin": "https://app.example"}))
    assert none["headers"] == {"Content-Type": "application/json"}


def test_direct_invocations_take_the_body_and_answer_the_result(app: ServerlessApp, server_answers) -> None:
    for name, body in BODIES.items():
        assert close(app({"model": name, **body}), server_answers[name])
    assert close(app({"model": "sentiment", "body": "a clear and friendly answer"}), server_answers["sentiment"])
    assert close(app({"model": "sentiment", "version": "1.0", "body": BODIES["sentiment"]}), server_answers["sentiment"])
    assert app({"input": "which model?"}) == {
        "code": 400, "type": "BadRequest",
        "message": 'several models are served (embedder, ranker, reader, sentiment, tagger): name one with "model"'}
    assert app({"model": "nope", "input": "x"}) == {
        "code": 404, "type": "ModelNotFound",
        "message": "model 'nope' not found (models: embedder, ranker, reader, sentiment, tagger)"}
    assert app(["not", "an", "object"])["code"] == 400


def test_direct_invocation_needs_no_model_name_when_one_model_is_served(registry: Registry, settings: Settings,
                                                                       server_answers) -> None:
    single = Registry()
    single.add(registry.get("reader"))
    assert close(ServerlessApp(single, settings)(BODIES["reader"]), server_answers["reader"])


def test_the_http_server_sends_cors_headers_when_configured(registry: Registry, settings: Settings) -> None:
    served = Registry()
    served.add(clone(registry.get("sentiment"), "sentiment"))
    with ThreadServer(served, settings.model_copy(update={"cors_origins": ["https://app.example"]})) as server:
        preflight = httpx.options(f"{server.url}/predictions/sentiment", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        post = httpx.post(f"{server.url}/predictions/sentiment", json=BODIES["sentiment"],
                          headers={"Origin": "https://app.example"})
        other = httpx.post(f"{server.url}/predictions/sentiment", json=BODIES["sentiment"],
                           headers={"Origin": "https://evil.example"})
    with ThreadServer(served, settings.model_copy(update={"input_field": "log"})) as server:
        seed = httpx.post(f"{server.url}/predictions/sentiment", json={"log": BODIES["sentiment"]["input"]})
    assert seed.status_code == 200 and seed.json()["label"] == post.json()["label"]
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert post.status_code == 200 and post.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
