"""The TorchServe body parser, pure: bytes + content type in, (inputs, single, options) or a BerthingError out."""

from __future__ import annotations

from typing import Any

import pytest

from berthing.inputs import json_type, parse_pair
from berthing.server.protocols.torchserve import EMPTY_BODY, encode_result, parse_request
from berthing.types import BadRequest, BerthingError, InvalidInput, PayloadTooLarge, TextPair

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def parse(body: bytes, content_type: str = JSON, max_items: int = 8) -> tuple[list[Any], bool, dict[str, Any]]:
    return parse_request(body, content_type, max_items)


def fails(body: bytes, content_type: str = JSON, max_items: int = 8) -> BerthingError:
    with pytest.raises(BerthingError) as info:
        parse(body, content_type, max_items)
    return info.value


@pytest.mark.parametrize(
    "body,content_type,expected",
    [
        (b'{"input": "hi"}', JSON, (["hi"], True, {})),
        (b'{"input": ["a", "b"]}', JSON, (["a", "b"], False, {})),
        (b'{"inputs": "hi", "top_k": 2}', JSON, (["hi"], True, {"top_k": 2})),
        (b'{"text": ["hi"], "truncate": false}', JSON, (["hi"], False, {"truncate": False})),
        (b'["a", "b"]', JSON, (["a", "b"], False, {})),
        (b'"hi"', JSON, (["hi"], True, {})),
        (b'{"input": "hi"}', "application/json; charset=utf-8", (["hi"], True, {})),
        (b'{"input": "hi"}', "APPLICATION/JSON", (["hi"], True, {})),
        (b'{"input": "hi"}', "application/ld+json", (["hi"], True, {})),
        (b'{"input": "hi"}', "text/json", (["hi"], True, {})),
        (b'{"input": "hi"}', FORM, (["hi"], True, {})),
        (b'\n ["a"]', FORM, (["a"], False, {})),
        (b"input=hi", FORM, (["input=hi"], True, {})),
        (b"hello world", "text/plain", (["hello world"], True, {})),
        (b'{"input": "hi"}', "text/plain", (['{"input": "hi"}'], True, {})),
        ("café 咖啡".encode(), "application/octet-stream", (["café 咖啡"], True, {})),
        (b"hello", "", (["hello"], True, {})),
        (b'\xef\xbb\xbf{"input": "hi"}', JSON, (["hi"], True, {})),
        (b"\xef\xbb\xbfhello", "text/plain", (["hello"], True, {})),
    ],
)
def test_accepted_bodies(body: bytes, content_type: str, expected: tuple[list[Any], bool, dict[str, Any]]) -> None:
    assert parse(body, content_type) == expected


def test_pairs() -> None:
    assert parse(b'{"text": "q", "text_pair": "a", "top_k": 1}') == ([TextPair("q", "a")], True, {"top_k": 1})
    assert parse(b'{"input": {"text": "q", "text_pair": "a"}}') == ([TextPair("q", "a")], True, {})
    assert parse(b'[{"text": "q", "text_pair": "a"}, "plain"]') == ([TextPair("q", "a"), "plain"], False, {})
    assert parse(b'{"input": {"text": "q"}}') == (["q"], True, {})


@pytest.mark.parametrize(
    "body,content_type,error",
    [
        (b"", JSON, BadRequest(EMPTY_BODY)),
        (b"", "", BadRequest(EMPTY_BODY)),
        (b" \n\t", "text/plain", BadRequest(EMPTY_BODY)),
        ("\u3000\u00a0".encode(), "text/plain", BadRequest(EMPTY_BODY)),
        (b"\xef\xbb\xbf", JSON, BadRequest(EMPTY_BODY)),
        (b"1.5", JSON, BadRequest("JSON body must be an object, an array or a string, got number")),
        (b"true", JSON, BadRequest("JSON body must be an object, an array or a string, got boolean")),
        (b"null", JSON, BadRequest("JSON body must be an object, an array or a string, got null")),
        (b'{"query": "x"}', JSON, BadRequest("missing field 'input' (also accepted: 'inputs', 'text')")),
        (b'{"text_pair": "x"}', JSON, BadRequest("missing field 'text' (sent 'text_pair' without it)")),
        (b"\xff", "text/plain",
         BadRequest("body is not valid UTF-8: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")),
        (b'["a", "\xc3"]', JSON,
         BadRequest("body is not valid UTF-8: 'utf-8' codec can't decode byte 0xc3 in position 7: invalid continuation byte")),
        (b'{"input": 1}', JSON,
         InvalidInput("field 'input' must be a string, a {'text', 'text_pair'} object or a list of them, got number")),
        (b'{"text": {"text": "a"}, "inputs": "b"}', JSON, InvalidInput("fields 'inputs', 'text' given together; send one")),
        (b'{"inputs": ["a"], "text_pair": "b"}', JSON,
         InvalidInput("field 'text_pair' goes with 'text', not with 'inputs'; send one form")),
        (b'{"text": ["a"], "text_pair": "b"}', JSON, InvalidInput("field 'text' must be a string, got array")),
        (b'{"text": "a", "text_pair": ""}', JSON, InvalidInput("field 'text_pair' is empty or blank")),
        (b'{"input": [{"text": "a", "text_pair": null}]}', JSON, InvalidInput("input[0].text_pair must be a string, got null")),
        (b'{"input": {"text": "a", "extra": 1}}', JSON,
         InvalidInput("input has unknown field 'extra' (a pair is {'text', 'text_pair'})")),
        (b'""', JSON, InvalidInput("field 'body' is empty or blank")),
        (b"[]", JSON, InvalidInput("field 'body' is an empty list")),
        (b'{"input": ["a", "b", "c"]}', JSON, PayloadTooLarge("field 'input' has 3 items, over the limit of 2")),
        (b'["a", "b", "c"]', FORM, PayloadTooLarge("field 'body' has 3 items, over the limit of 2")),
    ],
)
def test_rejected_bodies(body: bytes, content_type: str, error: BerthingError) -> None:
    got = fails(body, content_type, max_items=2)
    assert type(got) is type(error)
    assert got.to_dict() == error.to_dict()


@pytest.mark.parametrize("body", [b"{", b'{"input": "a",}', b"{'input': 'a'}", b'{"input": NaN}', b'{"input": "\\ud800"}'])
def test_invalid_json_is_a_400_naming_json(body: bytes) -> None:
    got = fails(body)
    assert isinstance(got, BadRequest) and got.code == 400
    assert got.message.startswith("body is not valid JSON: "), got.message


def test_form_body_that_looks_like_json_but_is_not() -> None:
    got = fails(b"{input: 1}", FORM)
    assert isinstance(got, BadRequest) and got.message.startswith("body is not valid JSON: ")


def test_parse_does_not_leak_input_keys_into_options() -> None:
    _, _, options = parse(b'{"text": "a", "text_pair": "b", "normalize": true}')
    assert options == {"normalize": True}
    _, _, options = parse(b'{"inputs": ["a"], "top_k": null}')
    assert options == {"top_k": None}


@pytest.mark.parametrize(
    "value,name",
    [(None, "null"), (True, "boolean"), (0, "number"), (1.5, "number"), ("", "string"), ([], "array"), ({}, "object")],
)
def test_json_type(value: object, name: str) -> None:
    assert json_type(value) == name


def test_parse_pair_names_each_field() -> None:
    assert parse_pair("a", "b") == TextPair("a", "b")
    with pytest.raises(InvalidInput, match=r"^field 'text' must be a string, got number$"):
        parse_pair(1, "b")
    with pytest.raises(InvalidInput, match=r"^field 'text_pair' is empty or blank$"):
        parse_pair("a", " ")


def test_encode_result_mirrors_the_input() -> None:
    assert encode_result([{"label": "x"}], single=True) == b'{"label":"x"}'
    assert encode_result([{"label": "x"}], single=False) == b'[{"label":"x"}]'
