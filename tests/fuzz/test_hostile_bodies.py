"""Hostile bodies on every POST route of a live server (issue 18): invalid UTF-8, lone surrogates, NaN/Infinity,
1e999, huge integers, 10^5 levels of nesting, wrong content types, gigantic single tokens. Each is answered below 500
in the route's own JSON error shape (or served), and the server still serves every model afterwards."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    CONTENT_TYPES,
    FRAGMENTS,
    HEADER_VALUES,
    HEADERS,
    dump,
    fuzz_settings,
    replace,
    with_fragment,
)
from tests.fuzz.targets import Target, check_answer, one_per_handler, walk

# Whole bodies that fail before any field is read, whatever the route
RAW_BODIES = {
    "empty": b"", "blank": b" \r\n\t", "bom only": b"\xef\xbb\xbf", "invalid utf-8": b"\xff\xfe\x00{",
    "utf-16": '{"input": "a"}'.encode("utf-16"), "raw surrogate": b'{"input": "\xed\xa0\x80"}',
    "escaped surrogate": b'{"input": "\\ud800", "inputs": "\\udfff", "query": "\\ud800"}',
    "NaN": b'{"input": NaN, "inputs": NaN}', "Infinity": b"[Infinity]", "1e999": b'{"inputs": 1e999}',
    "nested 10^5": b"[" * 100_000 + b"]" * 100_000, "objects 10^5": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "truncated": b'{"input": "a', "trailing": b'{"input": "a"} {}', "comment": b'{"input": "a" /* c */}',
    "single quotes": b"{'input': 'a'}", "NUL": b"\x00" * 64, "number": b"1e999999", "html": b"<html></html>",
}
DEEP_FRAGMENTS = ("u64 max", "max float", "nested 1000", "objects 1000")
SETTINGS = fuzz_settings(200)


def send(client: httpx.Client, path: str, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return client.post(path, content=body, headers=headers)


def test_every_route_serves_its_valid_body(client: httpx.Client, found: list[Target]) -> None:
    """The baseline the fuzzing departs from: each target's body is answered 200 (or a 4xx for a model whose task
    the route does not serve)."""
    for target in found:
        response = send(client, target.path, dump(target.body))
        check_answer(target.path, response)
        assert response.status_code == 200 or not target.fits, (target.path, response.text)


@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_malformed_bodies(client: httpx.Client, found: list[Target], name: str) -> None:
    """Each malformed body on every route; TorchServe's, which read the Content-Type, also as text and undeclared."""
    for target in one_per_handler(found):
        for content_type in ("application/json", "text/plain", None)[: 3 if "/predictions/" in target.path else 1]:
            check_answer(target.path, send(client, target.path, RAW_BODIES[name], content_type))


@pytest.mark.parametrize("name", DEEP_FRAGMENTS)
def test_hostile_values_in_every_position(client: httpx.Client, found: list[Target], name: str) -> None:
    """A value no parser refuses but Python code may choke on (2^64, 1.8e308, 1000 levels of lists or objects) in
    place of each value of each route's valid body."""
    for target in one_per_handler(found):
        for where in walk(target.body):
            if where:
                check_answer(target.path, send(client, target.path, with_fragment(target.body, where, FRAGMENTS[name])))


@fuzz_settings(400)
@given(data=st.data())
def test_any_fragment_anywhere(client: httpx.Client, found: list[Target], data: st.DataObject) -> None:
    """Any raw fragment (NaN, 1e999, lone surrogates, invalid UTF-8, 10^5 levels, 5000 items...) at any position of
    any route's valid body."""
    target = data.draw(st.sampled_from(found), label="target")
    where = data.draw(st.sampled_from(list(walk(target.body))), label="position")
    fragment = data.draw(st.sampled_from(list(FRAGMENTS)), label="fragment")
    check_answer(target.path, send(client, target.path, with_fragment(target.body, where, FRAGMENTS[fragment])))


def test_gigantic_single_token(client: httpx.Client, found: list[Target]) -> None:
    """One word of 128 KB (no space: a single pre-token, far past any model's length) as the first text of each body,
    and 1 MB as a raw text body: truncated or refused, never a 500."""
    giant = "a" * (1 << 17)
    for target in one_per_handler(found):
        first = next((w for w in walk(target.body) if isinstance(_at(target.body, w), str) and w[-1] != "model"), None)
        if first is not None:
            check_answer(target.path, send(client, target.path, dump(replace(target.body, first, giant))))
    check_answer("/predictions/embed", send(client, "/predictions/embed", b"a" * (1 << 20), "text/plain"))


def _at(value: object, where: tuple[object, ...]) -> object:
    for key in where:
        value = value[key]  # type: ignore[index]
    return value


@SETTINGS
@given(data=st.data())
def test_valid_bodies_under_any_content_type(client: httpx.Client, found: list[Target], data: st.DataObject) -> None:
    """A valid body declared as anything (form, multipart, image, UTF-16, a malformed media type) or as nothing."""
    target = data.draw(st.sampled_from(found), label="target")
    content_type = data.draw(st.sampled_from(CONTENT_TYPES), label="content type")
    check_answer(target.path, send(client, target.path, dump(target.body), content_type))


@SETTINGS
@given(data=st.data())
def test_hostile_headers(client: httpx.Client, found: list[Target], data: st.DataObject) -> None:
    """The headers routes read (the model, the deadline, KServe's binary header length, a compressed body, a
    100-continue the client does not wait for) set to nonsense on a valid body or on random bytes."""
    target = data.draw(st.sampled_from(found), label="target")
    names = data.draw(st.lists(st.sampled_from(HEADERS), min_size=1, max_size=3, unique=True), label="headers")
    values = st.sampled_from(HEADER_VALUES) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
    headers = {name: data.draw(values, label=name) for name in names}
    body = dump(target.body) if data.draw(st.booleans(), label="valid body") else data.draw(st.binary(max_size=64))
    try:
        response = client.post(target.path, content=body, headers={"content-type": "application/json", **headers})
    except httpx.LocalProtocolError:  # a header value the client itself will not send (h11 checks them)
        return
    check_answer(target.path, response)


def test_the_parsers_own_limits(client: httpx.Client) -> None:
    """128 levels of nesting and the signed 64-bit integers parse (then the fields say what is wrong); one level
    more, or one integer past the range, is the parser's 400, on declared and undeclared JSON alike."""
    def message(body: bytes, content_type: str | None = "application/json") -> tuple[int, str]:
        response = send(client, "/predictions/embed", body, content_type)
        return response.status_code, response.json()["message"]

    deep = b'{"input": ' + b"[" * 127 + b'"a"' + b"]" * 127 + b"}"
    assert message(deep)[0] == 422
    for content_type in ("application/json", None):
        assert message(deep.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1), content_type) == (
            400, "body is nested deeper than 128 levels of arrays and objects")
    assert message(b'{"input": "a", "top_k": 9223372036854775807}')[0] == 422  # an embedder takes no top_k
    status, text = message(b'{"input": "a", "top_k": 9223372036854775808}')
    assert status == 400 and "9223372036854775808" in text and "64-bit" in text
