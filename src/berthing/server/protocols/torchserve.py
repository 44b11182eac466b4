"""TorchServe-compatible inference protocol: JSON or raw-text bodies in, JSON out."""

from __future__ import annotations

from typing import Any

import orjson

from berthing.engine.inputs import parse_inputs
from berthing.types import BadRequest, InvalidInput, TextInput

INPUT_KEYS = ("input", "inputs", "text")
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _is_json(content_type: str, body: bytes) -> bool:
    """JSON when declared; also curl -d's form default when the body looks like a JSON object or list."""
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "application/json" or ct.endswith("+json"):
        return True
    return ct == "application/x-www-form-urlencoded" and body.lstrip()[:1] in (b"{", b"[")


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError) or "utf-8" in str(exc).lower():
            raise BadRequest(f"body is not valid UTF-8: {exc}") from None
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def parse_request(body: bytes, content_type: str, max_items: int) -> tuple[list[TextInput], bool, dict[str, Any]]:
    """Body -> (inputs, single, options). A raw body is one text; JSON may carry options beside the input."""
    if not body.strip():
        raise BadRequest("empty body: send JSON {\"input\": ...} or a UTF-8 text")
    if not _is_json(content_type, body):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"body is not valid UTF-8 text: {exc}") from None
        inputs, single = parse_inputs(text, "body")
        return inputs, single, {}
    data = _parse_json(body)
    if isinstance(data, list | str):
        inputs, single = parse_inputs(data, "body", max_items)
        return inputs, single, {}
    if not isinstance(data, dict):
        raise BadRequest(f"JSON body must be an object, a list or a string, got {type(data).__name__}")
    if "text_pair" in data:
        pair = {"text": data.get("text"), "text_pair": data.pop("text_pair")}
        data.pop("text", None)
        inputs, single = parse_inputs(pair, "body")
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
