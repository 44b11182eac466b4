"""TorchServe-compatible inference protocol: JSON or raw-text bodies in, JSON out."""

from __future__ import annotations

from typing import Any

import orjson

from berthing.engine.inputs import json_type, parse_inputs, parse_pair
from berthing.types import BadRequest, InvalidInput, TextInput

INPUT_KEYS = ("input", "inputs", "text")
_BOM = b"\xef\xbb\xbf"
EMPTY_BODY = 'empty body: send JSON {"input": ...} or a UTF-8 text'
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _is_json(content_type: str, body: bytes) -> bool:
    """JSON when declared; also curl -d's form default when the body looks like a JSON object or list."""
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct in ("application/json", "text/json") or ct.endswith("+json"):
        return True
    return ct == "application/x-www-form-urlencoded" and body.lstrip()[:1] in (b"{", b"[")


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8: {exc}") from None


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        _decode(body)  # name the bad byte when the JSON error is really an encoding error
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def _parse_pair(data: dict[str, Any]) -> tuple[list[TextInput], bool]:
    """The top-level {"text": ..., "text_pair": ...} form: one pair, options beside it."""
    others = [k for k in INPUT_KEYS if k != "text" and k in data]
    if others:
        raise InvalidInput(f"field 'text_pair' goes with 'text', not with {others[0]!r}; send one form")
    if "text" not in data:
        raise BadRequest("missing field 'text' (sent 'text_pair' without it)")
    return [parse_pair(data.pop("text"), data.pop("text_pair"))], True


def parse_request(body: bytes, content_type: str, max_items: int) -> tuple[list[TextInput], bool, dict[str, Any]]:
    """Body -> (inputs, single, options). A raw body is one text; JSON may carry options beside the input."""
    body = body.removeprefix(_BOM)  # Windows tools prepend one; RFC 8259 lets a parser ignore it
    if not _is_json(content_type, body):
        text = _decode(body)
        if not text.strip():
            raise BadRequest(EMPTY_BODY)
        inputs, single = parse_inputs(text, "body")
        return inputs, single, {}
    if not body.strip():
        raise BadRequest(EMPTY_BODY)
    data = _parse_json(body)
    if isinstance(data, list | str):
        inputs, single = parse_inputs(data, "body", max_items)
        return inputs, single, {}
    if not isinstance(data, dict):
        raise BadRequest(f"JSON body must be an object, an array or a string, got {json_type(data)}")
    if "text_pair" in data:
        inputs, single = _parse_pair(data)
        return inputs, single, data
    present = [k for k in INPUT_KEYS if k in data]
    if not present:
        raise BadRequest("missing field 'input' (also accepted: 'inputs', 'text')")
    if len(present) > 1:
        raise InvalidInput(f"fields {', '.join(repr(k) for k in present)} given together; send one")
    key = present[0]
    value = data.pop(key)
    inputs, single = parse_inputs(value, key, max_items)
    return inputs, single, data


def encode_result(results: list[Any], single: bool) -> bytes:
    """The answer mirrors the input: one result for one input, a list for a list."""
    return orjson.dumps(results[0] if single else results, option=_DUMP_OPTIONS)


def dumps(data: Any) -> bytes:
    """JSON bytes for any other answer."""
    return orjson.dumps(data, option=_DUMP_OPTIONS)
