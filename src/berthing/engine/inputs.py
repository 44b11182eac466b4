"""Validate user-supplied inputs (from JSON or Python) into texts and text pairs, naming the bad field."""

from __future__ import annotations

from typing import Any

from berthing.types import InvalidInput, PayloadTooLarge, TextInput, TextPair


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages (a client sent null, not NoneType)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {json_type(value)}")
    if not value.strip():
        raise InvalidInput(f"{where} is empty or blank")
    return value


def _item(value: Any, where: str) -> TextInput:
    if isinstance(value, TextPair):
        return TextPair(_text(value.text, f"{where}.text"), _text(value.text_pair, f"{where}.text_pair"))
    if isinstance(value, dict):
        extra = set(value) - {"text", "text_pair"}
        if extra:
            raise InvalidInput(f"{where} has unknown field '{sorted(extra)[0]}' (a pair is {{'text', 'text_pair'}})")
        if "text" not in value:
            raise InvalidInput(f"{where}.text is missing")
        if "text_pair" not in value:
            return _text(value["text"], f"{where}.text")
        return TextPair(_text(value["text"], f"{where}.text"), _text(value["text_pair"], f"{where}.text_pair"))
    return _text(value, where)


def parse_inputs(value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[TextInput], bool]:
    """A text, a pair or a list of them -> (items, single); `single` makes the answer mirror the input."""
    if isinstance(value, list):
        if not value:
            raise InvalidInput(f"field '{field}' is an empty list")
        if max_items is not None and len(value) > max_items:
            raise PayloadTooLarge(f"field '{field}' has {len(value)} items, over the limit of {max_items}")
        return [_item(v, f"{field}[{i}]") for i, v in enumerate(value)], False
    if isinstance(value, (str, dict, TextPair)):
        return [_item(value, f"field '{field}'" if isinstance(value, str) else field)], True
    raise InvalidInput(
        f"field '{field}' must be a string, a {{'text', 'text_pair'}} object or a list of them, "
        f"got {json_type(value)}"
    )


def parse_pair(text: Any, text_pair: Any) -> TextPair:
    """The flat {"text": ..., "text_pair": ...} form: two strings, each named by its own field."""
    return TextPair(_text(text, "field 'text'"), _text(text_pair, "field 'text_pair'"))
