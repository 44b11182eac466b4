"""TorchServe's inference wire format: JSON or raw-text bodies in, JSON out (shared by the HTTP routes and Lambda)."""

from __future__ import annotations

from typing import Any

import orjson

from berthing.inputs import InputForms, json_type, parse_inputs, parse_object
from berthing.server.protocols.codec import check_value, dumps, parse_json
from berthing.types import BadRequest, TextInput

__all__ = ["EMPTY_BODY", "decode_body", "dump_result", "dumps", "encode_result", "parse_request"]

_BOM = b"\xef\xbb\xbf"
EMPTY_BODY = 'empty body: send JSON {"input": ...} or a UTF-8 text'


_NOT_JSON = object()


def _json_value(content_type: str, body: bytes) -> Any:
    """The body's JSON value when it is JSON, else _NOT_JSON (a text). JSON when declared; also a body that looks like
    a JSON object or list under curl -d's form default, and, when it parses, under no Content-Type (curl -T, seed 003)
    or application/octet-stream, as TorchServe's handlers read it; text/plain is always text."""
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct in ("application/json", "text/json") or ct.endswith("+json"):
        return parse_json(body)
    if ct not in ("", "application/x-www-form-urlencoded", "application/octet-stream") or body.lstrip()[:1] not in (b"{", b"["):
        return _NOT_JSON
    if ct == "application/x-www-form-urlencoded":
        return parse_json(body)
    try:  # undeclared: JSON only when it parses (parsed once), so a text that merely starts with "[" stays a text
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON
    check_value(body, value)  # JSON it is: held to the same depth and integer limits as declared JSON
    return value


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8: {exc}") from None


class _TextForms:
    """The default input forms (texts and text pairs), for callers that have no model's task at hand."""

    parse = staticmethod(parse_inputs)
    parse_object = staticmethod(parse_object)


def decode_body(body: bytes, content_type: str) -> Any:
    """The body as a value: parsed JSON when it is JSON, else the UTF-8 text; an empty body is a 400."""
    body = body.removeprefix(_BOM)  # Windows tools prepend one; RFC 8259 lets a parser ignore it
    if not body.strip():
        raise BadRequest(EMPTY_BODY)
    value = _json_value(content_type, body)
    if value is not _NOT_JSON:
        return value
    text = _decode(body)
    if not text.strip():
        raise BadRequest(EMPTY_BODY)
    return text


def parse_request(
    body: bytes, content_type: str, max_items: int, task: InputForms | None = None, input_field: str | None = None
) -> tuple[list[TextInput], bool, dict[str, Any]]:
    """Body -> (inputs, single, options). A raw body is one text; a JSON object carries options beside the input.

    Which JSON fields hold the input is the task's to say (QA takes question/context, rerank query/texts);
    `input_field` names one more field that holds it, for clients with their own shape (seed 001 sends {"log"}).
    """
    forms: InputForms = task or _TextForms()
    data = decode_body(body, content_type)
    if input_field and isinstance(data, dict) and input_field in data and "input" not in data:
        data = {("input" if key == input_field else key): value for key, value in data.items()}
    if isinstance(data, list | str):
        inputs, single = forms.parse(data, "body", max_items)
        return inputs, single, {}
    if not isinstance(data, dict):
        raise BadRequest(f"JSON body must be an object, an array or a string, got {json_type(data)}")
    return forms.parse_object(data, max_items)


def encode_result(results: list[Any], single: bool) -> bytes:
    """The answer mirrors the input: one result for one input, a list for a list."""
    return dumps(results[0] if single else results)


def dump_result(value: Any) -> bytes:
    """A custom handler's result as JSON; a value JSON cannot hold is the handler's fault (500), said plainly."""
    try:
        return dumps(value)
    except TypeError as exc:
        from berthing.handler import HandlerError

        raise HandlerError(f"custom handler returned a value that is not JSON-serializable: {exc}") from None
