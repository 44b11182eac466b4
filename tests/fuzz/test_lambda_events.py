"""Property-based fuzzing of the AWS Lambda handler (issue 18): API Gateway v1/v2 and function URL events with
hostile bodies, base64 that does not decode, fields of the wrong type; and direct invocations of random JSON. The
handler never raises: an HTTP event gets a 4xx proxy answer with berthing's JSON error body (never a 500), a direct
invocation the result or the error body {"code", "type", "message"} (docs/serverless.md)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st

from berthing.config import Settings
from berthing.registry import Registry
from berthing.serverless.app import ServerlessApp
from tests.fuzz.strategies import (
    CONTENT_TYPES,
    FRAGMENTS,
    WORDS,
    dump,
    fuzz_settings,
    json_objects,
    json_values,
    keys,
    with_fragment,
)
from tests.fuzz.targets import PREDICTION, SHAPES, TASKS, walk
from tests.support.http import clone

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lambda"
KINDS = ("apigw-rest-v1", "apigw-http-v2", "function-url")
EVENTS = {kind: json.loads((FIXTURES / f"{kind}.json").read_text("utf-8")) for kind in KINDS}
PATHS = ("/predictions/{task}", "/predictions/{task}/1.0", "/prod/predictions/{task}", "/ping", "/", "//predictions/embed",
         "/predictions/{task}/1.0/x", "/predictions/%00", "/predictions/ghost", "/../ping", "/predictions/" + "x" * 5000,
         "/predictions/\ud800", "/\udcff")
# What any field of an event may be instead of what AWS sends: every JSON type, and strings AWS would not send
ODD = st.one_of(json_values, st.sampled_from(["", "$default", "predictions", "2.0", "\ud800", "GET", "OPTIONS", "post"]))
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def app(load: Any, settings: Settings) -> ServerlessApp:
    """The handler's app over a model of every task, named after its task, as lambda_handler builds it."""
    registry = Registry()
    for task in TASKS:
        registry.add(clone(load(task), task))
    return ServerlessApp(registry, settings.model_copy(update={"lanes": False, "max_body_bytes": MAX_BODY}))


@pytest.fixture(autouse=True)
def still_serving(app: ServerlessApp) -> Iterator[None]:
    """After each test (instead of the HTTP server's check in conftest): every model answers a valid event."""
    yield
    for task in TASKS:
        answer = app(http_event("function-url", "POST", f"/predictions/{task}", dump(PREDICTION[task]).decode()))
        assert answer["statusCode"] == 200, answer
        assert not is_error(app({"model": task, **PREDICTION[task]}))


def http_event(kind: str, method: str, path: str, body: Any, b64: Any = False) -> dict[str, Any]:
    """A fixture event of `kind` pointed at method + path (the v2 ones keep their stage in rawPath)."""
    data = copy.deepcopy(EVENTS[kind])
    data["body"], data["isBase64Encoded"] = body, b64
    if kind == "apigw-rest-v1":
        data["httpMethod"] = data["requestContext"]["httpMethod"] = method
        data["path"] = path
    else:
        stage = data["requestContext"]["stage"]
        data["rawPath"] = path if stage == "$default" else f"/{stage}{path}"
        data["requestContext"]["http"]["method"] = method
    return data


def seen(what: str) -> None:
    """What an answer was, for --hypothesis-show-statistics (how deep the fuzz got); nothing outside a fuzz test."""
    if currently_in_test_context():
        event(what.encode("utf-8", "backslashreplace").decode())  # hypothesis's report is UTF-8: no lone surrogate


def is_error(result: Any) -> bool:
    return isinstance(result, dict) and set(result) == {"code", "type", "message"}


def check_http(answer: Any) -> None:
    """A proxy answer Lambda can send: below 500, a JSON body (berthing's error shape for a 4xx)."""
    assert isinstance(answer, dict) and isinstance(answer["statusCode"], int), answer
    json.dumps(answer)  # what the Lambda runtime does with it
    status, body = answer["statusCode"], answer["body"]
    seen(str(status))
    assert status < 500, body[:500]
    if status == 204:
        assert body == ""
        return
    if status >= 400:
        error = json.loads(body)
        assert SHAPES["berthing"](error) and error["code"] == status, error
        seen(error["message"][:40])
    else:
        json.loads(body)


def check_direct(result: Any) -> None:
    """The result itself, or the error body with a 4xx code; JSON the runtime can send back."""
    json.dumps(result)
    if is_error(result):
        assert 400 <= result["code"] < 500, result
        seen(result["message"][:40])
    else:
        seen("result")


def _body(data: st.DataObject, task: str) -> tuple[Any, Any]:
    """An event body and its isBase64Encoded: hostile JSON text (lone surrogates stand for invalid UTF-8, as Python
    decodes it), base64 that does not decode, or a body of another JSON type."""
    valid = PREDICTION[task]
    kind = data.draw(st.sampled_from(["fragment"] * 3 + ["random json", "text", "base64", "bad base64", "not a string"]))
    if kind == "fragment":
        where = data.draw(st.sampled_from(list(walk(valid))), label="position")
        raw = with_fragment(valid, where, FRAGMENTS[data.draw(st.sampled_from(list(FRAGMENTS)), label="fragment")])
        return raw.decode("utf-8", "surrogateescape"), False
    if kind == "random json":
        return dump(data.draw(json_values | json_objects, label="json")).decode(), False
    if kind == "text":
        return data.draw(st.sampled_from(WORDS) | st.text() | st.just("a" * (1 << 17)), label="text"), False
    if kind == "base64":
        raw = data.draw(st.binary(max_size=32) | st.just(dump(valid)), label="bytes")
        return base64.b64encode(raw).decode(), data.draw(st.sampled_from([True, "true", 1]), label="flag")
    if kind == "bad base64":
        return data.draw(st.sampled_from(["not base64!", "YQ", "====", "é", "\ud800"]) | st.text(max_size=8)), True
    return data.draw(ODD, label="body"), data.draw(st.just(False) | ODD, label="flag")


@fuzz_settings(300)
@given(data=st.data())
def test_http_events_with_hostile_bodies(app: ServerlessApp, data: st.DataObject) -> None:
    """Each event shape, a route of the handler's (or none), any body: a 4xx at worst."""
    task = data.draw(st.sampled_from(TASKS), label="task")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    method = data.draw(st.sampled_from(["POST"] * 16 + ["GET", "OPTIONS", "PUT", "HEAD"]), label="method")
    path = data.draw(st.sampled_from(PATHS[:1] * 20 + PATHS), label="path").format(task=task)
    body, b64 = _body(data, task)
    built = http_event(kind, method, path, body, b64)
    content_type = data.draw(st.sampled_from(CONTENT_TYPES), label="content type")
    built["headers"] = {**built["headers"], "content-type": content_type}
    check_http(app(built))


# Fields of each event shape the handler reads, as paths into the event
FIELDS = (("requestContext",), ("requestContext", "http"), ("requestContext", "http", "method"),
          ("requestContext", "stage"), ("headers",), ("headers", "content-type"), ("headers", "origin"),
          ("multiValueHeaders",), ("multiValueHeaders", "Content-Type"), ("body",), ("isBase64Encoded",), ("version",),
          ("rawPath",), ("path",), ("httpMethod",))


@fuzz_settings(300)
@given(data=st.data())
def test_http_events_with_fields_of_the_wrong_type(app: ServerlessApp, data: st.DataObject) -> None:
    """One to three fields an event shape carries (or lacks) set to another JSON type or an odd string."""
    task = data.draw(st.sampled_from(TASKS), label="task")
    built = http_event(data.draw(st.sampled_from(KINDS), label="kind"), "POST", f"/predictions/{task}",
                       dump(PREDICTION[task]).decode())
    for where in data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True), label="fields"):
        parent = built
        for key in where[:-1]:
            parent = parent.get(key) if isinstance(parent.get(key), dict) else parent.setdefault(key, {})
            if not isinstance(parent, dict):
                break
        else:
            parent[where[-1]] = data.draw(ODD, label=".".join(where))
    check_http(app(built))


def _python(raw: bytes) -> Any:
    """A JSON text as the Lambda runtime decodes an event (Python's json: NaN, 1e999, lone surrogates, big ints);
    None for what it refuses before the handler runs (invalid UTF-8, nesting past Python's recursion limit)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


@fuzz_settings(400)
@given(data=st.data())
def test_direct_invocations(app: ServerlessApp, data: st.DataObject) -> None:
    """Any JSON event that is not an HTTP one: random values, a model's body with a hostile value anywhere, with
    "model", "version" and "body" of any type."""
    task = data.draw(st.sampled_from(TASKS), label="task")
    kind = data.draw(st.sampled_from(["random", "fragment", "wrapped"]), label="kind")
    if kind == "random":
        built: Any = data.draw(json_values | json_objects, label="event")
    else:
        valid = PREDICTION[task]
        where = data.draw(st.sampled_from(list(walk(valid))), label="position")
        fragment = data.draw(st.sampled_from(list(FRAGMENTS)), label="fragment")
        body = _python(with_fragment(valid, where, FRAGMENTS[fragment]))
        built = {"model": task, "body": body} if kind == "wrapped" else body
        if isinstance(built, dict) and kind != "wrapped":
            built = {"model": task, **built}
    if isinstance(built, dict):
        for key in data.draw(st.lists(st.sampled_from(["model", "version", "body"]) | keys, max_size=2), label="odd keys"):
            built[key] = data.draw(ODD | st.sampled_from(TASKS), label=key)
    check_direct(app(built))


LAMBDA_REGRESSIONS: dict[str, tuple[dict[str, Any], int]] = {
    # (the event's changes, the status) for inputs that answered 500 or raised before the fixes
    "requestContext a string": ({"requestContext": "x", "rawPath": "/predictions/embed"}, 400),
    "headers a list": ({"headers": ["content-type"]}, 400),
    "multiValueHeaders of numbers": ({"multiValueHeaders": {"Accept": 1}}, 400),
    "body with a lone surrogate": ({"body": '{"input": "\ud800"}'}, 400),
    "path with a lone surrogate": ({"path": "/predictions/\ud800"}, 400),  # raised out of the handler: 404's message
    "method with a lone surrogate": ({"httpMethod": "P\udcffST"}, 400),  # 500: the 405's message
}


@pytest.mark.parametrize("case", LAMBDA_REGRESSIONS)
def test_lambda_regressions(app: ServerlessApp, case: str) -> None:
    changes, status = LAMBDA_REGRESSIONS[case]
    built = {**http_event("apigw-rest-v1", "POST", "/predictions/embed", '{"input": "a"}'), **changes}
    answer = app(built)
    check_http(answer)
    assert answer["statusCode"] == status, answer


def _nested(depth: int) -> Any:
    value: Any = "a"
    for _ in range(depth):
        value = [value]
    return value


DIRECT_REGRESSIONS = {  # bodies whose encoding raised out of the handler before the fix (a Lambda error)
    "text with a lone surrogate": "\ud800", "lone surrogate in a field": {"input": "a\udc00"},
    "integer past 64 bits": {"input": "a", "top_k": 2**64}, "300 levels": {"input": _nested(300)},
}


@pytest.mark.parametrize("case", DIRECT_REGRESSIONS)
def test_direct_regressions(app: ServerlessApp, case: str) -> None:
    result = app({"model": "embed", "body": DIRECT_REGRESSIONS[case]})
    check_direct(result)
    assert is_error(result) and result["code"] == 400, result
