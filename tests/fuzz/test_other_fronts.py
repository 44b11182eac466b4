"""Property-based fuzzing of the management API (issue 18): its query strings (huge, negative, NaN, Unicode-digit
numbers; '../', NUL, newlines, invalid UTF-8, 5000 characters; repeated and unknown keys), path segments, bodies,
Content-Types and tokens, against a live server with a model store. Each answer is below 500 in berthing's
{"code", "type", "message"}, the fuzzer registers nothing (no source outside the store, none fetched from a
network), and every model still serves afterwards. gRPC and ZeroMQ: test_grpc_zmq_fronts.py; Lambda:
test_lambda_events.py."""

from __future__ import annotations

import functools
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from berthing.config import Settings
from tests.fuzz.strategies import CONTENT_TYPES, FRAGMENTS, fuzz_settings
from tests.fuzz.targets import PREDICTION, SHAPES, TASKS
from tests.support.http import WAIT_S
from tests.support.servers import DualServer

MODELS = ("served", *TASKS)  # "served" is registered from the store through the API; the others are loaded clones
# What a query value or a path segment may hold: numbers past every range, Unicode digits int() refuses, a value past
# int()'s 4300 digits; path tricks, NUL, a newline, invalid UTF-8 (a lone surrogate's bytes), 5000 characters
INTS = ("", "0", "-1", "1", "2", "65", "1000000", "1e3", "NaN", "inf", "-0", "0x10", "1_000", " 1", "²", "١", "１",
        "18446744073709551616", "9" * 5000, "true")
TEXTS = ("", " ", "true", "false", "TRUE", ".", "..", "../", "../../etc/passwd", "\x00", "a\x00b", "%00", "%", "😀",
         "\ud800", "a\nb", "served\n", "x" * 5000, "served", "embed", "1.0", "2.0")
VALUES = INTS + TEXTS
# Sources to register: outside the store, links out of it, and entries it holds that are not models
URLS = ("http://169.254.169.254/latest/meta-data", "https://example.com/m.berth", "s3://bucket/m.berth",
        "file:///etc/passwd", "hf://org/model", "org/model", "/etc", "/", "~", "..", "../..", ".", "escape", "sneaky",
        "loop", "loop/x", "missing", "garbage.berth", "bare.berth", "partial", "odd=entry.berth", "a\x00b", "x" * 5000)
PARAMS = ("url", "model_name", "model_version", "initial_workers", "synchronous", "min_worker", "max_worker", "limit",
          "next_page_token")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # docs: letters, digits, '_', '-', '.', at most 64
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}")


def _quote(value: str | bytes) -> str:
    """Percent-encoded, lone surrogates as their (invalid UTF-8) bytes."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return quote_from_bytes(raw, safe="")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Any) -> Path:
    """A model store with one checkpoint, packages refused for what they hold, and links that lead out or loop."""
    root = tmp_path_factory.mktemp("store")
    shutil.copytree(tiny_model_dir("embed"), root / "served")
    (root / "garbage.berth").write_bytes(b"not a zip archive at all")
    (root / "odd=entry.berth").write_bytes(b"not a zip either")
    with zipfile.ZipFile(root / "bare.berth", "w") as archive:
        archive.writestr("model.onnx", b"x")
    (root / "partial").mkdir()
    (root / "partial" / "MANIFEST.json").write_text('{"format": 1, "name": "partial"}')
    outside = tmp_path_factory.mktemp("outside")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "sneaky").mkdir()
    (root / "sneaky" / "vocab.txt").symlink_to("/etc/passwd")
    (root / "loop").symlink_to(root / "loop")
    return root


@pytest.fixture(scope="module")
def front(store: Path, settings: Settings, load: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DualServer]:
    """A server with its management port: a model of every task, and "served" registered from the store through
    the API (so it can scale: clones cannot add workers)."""
    key = tmp_path_factory.mktemp("key") / "key.json"
    update = {"model_store": store, "management_port": 0, "port": 0, "management_token_file": key,
              "protocols": ["all", "-kserve-grpc", "-bert-serving"]}  # their own ports: test_grpc_zmq_fronts.py
    with DualServer(settings.model_copy(update=update), {task: load(task) for task in TASKS}) as server:
        registered = manage(server, "POST", "/models?url=served&model_name=served")
        assert registered.status_code == 200, registered.text
        yield server
        _client(server.admin).close()


@pytest.fixture(autouse=True)
def still_serving(front: DualServer) -> Iterator[None]:
    """After each test (instead of conftest's, for another server): every model answers, none was registered or
    removed, and "served" is READY."""
    yield
    for name in MODELS:
        body = PREDICTION["embed"] if name == "served" else PREDICTION[name]
        response = httpx.post(f"{front.url}/predictions/{name}", json=body, timeout=WAIT_S)
        assert response.status_code == 200, (name, response.text)
    assert front.registry.names() == sorted(MODELS)
    assert manage(front, "GET", "/models/served").json()[0]["status"] == "READY"


def manage(front: DualServer, method: str, target: str, auth: str | bytes | None = "", body: bytes = b"",
           content_type: str | None = None) -> httpx.Response:
    """One request to the management port; `target` is sent as written (already percent-encoded)."""
    headers: dict[str, str | bytes] = {"content-type": content_type} if content_type else {}
    if auth is not None:
        headers["authorization"] = f"Bearer {front.token}" if auth == "" else auth
    return _client(front.admin).request(method, target, headers=headers, content=body)


@functools.cache
def _client(admin: str) -> httpx.Client:
    """One client per server (a fresh one per request cost more than the request); a connection per request, as
    the fuzz conftest's client, for the same reason."""
    return httpx.Client(base_url=admin, timeout=WAIT_S * 4, limits=httpx.Limits(max_keepalive_connections=0))


def check_management(method: str, response: httpx.Response) -> None:
    """Never a 5xx; a 4xx is berthing's {"code", "type", "message"} with the status as its code (a 307 is
    Starlette's redirect of a trailing slash)."""
    assert response.status_code < 500, f"{method} {str(response.url)[:300]}: {response.status_code} {response.text[:500]}"
    if method == "HEAD" or response.status_code == 307:
        return
    assert response.headers.get("content-type", "").startswith("application/json"), response.text[:300]
    body = response.json()
    if response.status_code >= 400:
        assert SHAPES["berthing"](body) and body["code"] == response.status_code, body


# The routes with the parameters each reads; then a method no route takes, and paths no route has
ROUTES = (
    ("GET", "/models", ("limit", "next_page_token")), ("POST", "/models", PARAMS[:5]),
    ("GET", "/models/{n}", ()), ("PUT", "/models/{n}", PARAMS[5:7]), ("GET", "/models/{n}/{v}", ()),
    ("PUT", "/models/{n}/{v}", PARAMS[5:7]), ("DELETE", "/models/{n}/{v}", ()), ("PUT", "/models/{n}/{v}/set-default", ()),
    ("PATCH", "/models", ()), ("OPTIONS", "/models/{n}", ()), ("HEAD", "/models", ()), ("POST", "/models/{n}/{v}", ()),
    ("GET", "/models/{n}/{v}/x", ()), ("GET", "/", ()), ("GET", "/ping", ()),
)
AUTH = ("Bearer", "Bearer wrong", "Basic eA==", "Bearer " + "x" * 5000, b"Bearer \xff\xfe", None)


@st.composite
def queries(draw: st.DrawFn, keys: tuple[str, ...]) -> str:
    """A query string: one of the route's parameters (if it reads any) with a hostile value, maybe the others, then
    more (repeated, unknown, another route's)."""
    chosen = [draw(st.sampled_from(keys), label="parameter")] if keys else []
    chosen += [k for k in keys if draw(st.booleans())]
    chosen += draw(st.lists(st.sampled_from(PARAMS) | st.text(max_size=4), max_size=2))
    values = {"url": URLS, "model_name": TEXTS, "model_version": TEXTS, "synchronous": TEXTS}
    pairs = [(k, draw(st.sampled_from(values.get(k, INTS)) | st.text(max_size=8), label=k)) for k in chosen]
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)


def _request(data: st.DataObject, routes: tuple[tuple[str, str, tuple[str, ...]], ...]) -> tuple[str, str]:
    """A method and target: a route of `routes` on a served model (or a hostile name), with a query for it."""
    method, route, keys = data.draw(st.sampled_from(routes), label="route")
    name = data.draw(st.sampled_from(MODELS) | st.sampled_from(MODELS) | st.sampled_from(TEXTS), label="name")
    version = data.draw(st.just("1.0") | st.sampled_from(TEXTS), label="version")
    assume(not (method == "DELETE" and name in MODELS))  # the fuzzer must not unregister what the server serves
    path = route.format(n=_quote(name), v=_quote(version))
    return method, f"{path}?{data.draw(queries(keys), label='query')}"


@fuzz_settings(400)
@given(data=st.data())
def test_management_parameters(front: DualServer, data: st.DataObject) -> None:
    """Each route's own parameters (and others) with hostile values: huge, negative, NaN, Unicode digits, '../',
    NUL, 5000 characters, sources outside the store or in it but no model. Below 500 in berthing's shape, and
    nothing gets registered."""
    method, target = _request(data, ROUTES[:8])
    check_management(method, manage(front, method, target))
    assert front.registry.names() == sorted(MODELS)


@fuzz_settings(200)
@given(data=st.data())
def test_management_any_request(front: DualServer, data: st.DataObject) -> None:
    """Any route or none, any method, any body and Content-Type (the routes read none), a token or a wrong one."""
    method, target = _request(data, ROUTES)
    auth = data.draw(st.just("") | st.sampled_from(AUTH), label="auth")  # "": the right token
    body = data.draw(st.sampled_from([b"", b"{}", b"\xff", FRAGMENTS["nested 1000"]]) | st.binary(max_size=32), label="body")
    content_type = data.draw(st.sampled_from(CONTENT_TYPES), label="content type")
    check_management(method, manage(front, method, target, auth, body, content_type))
    assert front.registry.names() == sorted(MODELS)


@fuzz_settings(100)
@given(data=st.data())
def test_register_refuses_names_and_versions_outside_their_alphabet(front: DualServer, data: st.DataObject) -> None:
    """A model in the store, with a name or a version the docs' alphabet does not allow (a trailing newline, '/',
    NUL, 65 characters): a 400 before anything loads, and nothing registered."""
    invalid = (st.sampled_from(VALUES) | st.text(max_size=70)).filter(lambda s: s != "")
    name = data.draw(invalid.filter(lambda s: not NAME.fullmatch(s)) | st.just("fz"), label="model_name")
    version = data.draw(invalid.filter(lambda s: not VERSION.fullmatch(s)) | st.just("9.0"), label="model_version")
    assume(name != "fz" or version != "9.0")
    query = f"url=served&model_name={_quote(name)}&model_version={_quote(version)}"
    response = manage(front, "POST", f"/models?{query}&synchronous={data.draw(st.sampled_from(['true', 'false']))}")
    check_management("POST", response)
    assert response.status_code == 400, response.text
    assert front.registry.names() == sorted(MODELS)


# (method, target, status) for inputs answered 500, or worse, before the fixes
MANAGEMENT_REGRESSIONS = {
    "unicode digit": ("PUT", "/models/served?min_worker=%C2%B2", 400),  # "²".isdigit(), int("²") raises
    "past int's digit limit": ("PUT", f"/models/served?max_worker={'9' * 5000}", 400),
    "more workers than a model takes": ("PUT", "/models/served?min_worker=1000000", 400),  # started workers until OOM
    "initial workers": ("POST", "/models?url=served&model_name=fz&initial_workers=100000", 400),
    "NUL in the source": ("POST", "/models?url=a%00b", 400),  # ValueError: embedded null byte
    "source name too long": ("POST", f"/models?url={'x' * 5000}", 400),  # OSError: File name too long
    "link loop": ("POST", "/models?url=loop", 400),  # RuntimeError: Symlink loop
    "'=' in a store entry": ("POST", "/models?url=odd%3Dentry.berth", 422),  # split at '=': 500, 'entry.berth' not found
    "name with a newline": ("POST", "/models?url=served&model_name=fz%0A", 400),  # registered "fz\n"
    "version with a slash": ("POST", "/models?url=served&model_name=fz&model_version=..%2Fx", 400),  # registered
}


@pytest.mark.parametrize("case", MANAGEMENT_REGRESSIONS)
def test_management_regressions(front: DualServer, case: str) -> None:
    method, target, status = MANAGEMENT_REGRESSIONS[case]
    response = manage(front, method, target)
    check_management(method, response)
    assert response.status_code == status, response.text
