"""Validate user-supplied inputs (from JSON or Python) into texts and text pairs, naming the bad field."""

from __future__ import annotations

from typing import Any, Protocol

from berthing.types import BadRequest, InvalidInput, PayloadTooLarge, TextInput, TextPair, Tokens

INPUT_KEYS = ("input", "inputs", "text")


class InputForms(Protocol):
    """What a task accepts: a bare value (raw text, JSON list or string) and a JSON object with options."""

    def parse(self, value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[TextInput], bool]: ...

    def parse_object(self, data: dict[str, Any], max_items: int | None) -> tuple[list[TextInput], bool, dict[str, Any]]: ...


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages (a client sent null, not NoneType)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def text_value(value: Any, where: str) -> str:
    """A non-blank string, or a 422 naming where it was (every task's text fields go through here)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {json_type(value)}")
    if not value.strip():
        raise InvalidInput(f"{where} is empty or blank")
    return value


def _words(value: Any, where: str) -> Tokens:
    """One pre-split text: a non-empty list of non-blank word strings (a Tokens from Python)."""
    if isinstance(value, Tokens):
        value = value.words
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{where} must be a list of words, got {json_type(value)}")
    if not value:
        raise InvalidInput(f"{where} is an empty list of words")
    return Tokens(tuple(text_value(word, f"{where}[{j}]") for j, word in enumerate(value)))


def _item(value: Any, where: str) -> TextInput | Tokens:
    if isinstance(value, Tokens):
        return _words(value, where)
    if isinstance(value, TextPair):
        return TextPair(text_value(value.text, f"{where}.text"), text_value(value.text_pair, f"{where}.text_pair"))
    if isinstance(value, dict):
        extra = set(value) - {"text", "text_pair"}
        if extra:
            raise InvalidInput(f"{where} has unknown field '{sorted(extra)[0]}' (a pair is {{'text', 'text_pair'}})")
        if "text" not in value:
            raise InvalidInput(f"{where}.text is missing")
        if "text_pair" not in value:
            return text_value(value["text"], f"{where}.text")
        return TextPair(text_value(value["text"], f"{where}.text"), text_value(value["text_pair"], f"{where}.text_pair"))
    return text_value(value, where)


def check_list(value: list[Any], field: str, max_items: int | None) -> None:
    """A list input must be non-empty (422) and within the item limit (413)."""
    if not value:
        raise InvalidInput(f"field '{field}' is an empty list")
    if max_items is not None and len(value) > max_items:
        raise PayloadTooLarge(f"field '{field}' has {len(value)} items, over the limit of {max_items}")


def parse_inputs(value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[TextInput], bool]:
    """A text, a pair or a list of them -> (items, single); `single` makes the answer mirror the input."""
    if isinstance(value, list):
        check_list(value, field, max_items)
        return [_item(v, f"{field}[{i}]") for i, v in enumerate(value)], False
    if isinstance(value, (str, dict, TextPair, Tokens)):
        return [_item(value, f"field '{field}'" if isinstance(value, str) else field)], True
    raise InvalidInput(
        f"field '{field}' must be a string, a {{'text', 'text_pair'}} object or a list of them, "
        f"got {json_type(value)}"
    )


def parse_tokenized(value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[Tokens], bool]:
    """is_tokenized input: a list of words (one text) or a list of such lists -> (Tokens items, single)."""
    if isinstance(value, Tokens):
        return [_words(value, field)], True
    if not isinstance(value, list):
        raise InvalidInput(
            f"field '{field}' must be a list of words or a list of lists of words when is_tokenized is true, "
            f"got {json_type(value)}"
        )
    if not value:
        raise InvalidInput(f"field '{field}' is an empty list")
    if not any(isinstance(v, list | Tokens) for v in value):
        return [_words(value, field)], True  # one pre-split text, as tokenizer(words, is_split_into_words=True)
    if max_items is not None and len(value) > max_items:
        raise PayloadTooLarge(f"field '{field}' has {len(value)} items, over the limit of {max_items}")
    return [_words(v, f"{field}[{i}]") for i, v in enumerate(value)], False


def parse_pair(text: Any, text_pair: Any) -> TextPair:
    """The flat {"text": ..., "text_pair": ...} form: two strings, each named by its own field."""
    return TextPair(text_value(text, "field 'text'"), text_value(text_pair, "field 'text_pair'"))


def _parse_flat_pair(data: dict[str, Any]) -> tuple[list[TextInput], bool]:
    """The top-level {"text": ..., "text_pair": ...} form: one pair, options beside it."""
    others = [k for k in INPUT_KEYS if k != "text" and k in data]
    if others:
        raise InvalidInput(f"field 'text_pair' goes with 'text', not with {others[0]!r}; send one form")
    if "text" not in data:
        raise BadRequest("missing field 'text' (sent 'text_pair' without it)")
    return [parse_pair(data.pop("text"), data.pop("text_pair"))], True


def parse_object(data: dict[str, Any], max_items: int | None) -> tuple[list[TextInput], bool, dict[str, Any]]:
    """A JSON object: the input under 'input' (or 'inputs', 'text', or a flat text/text_pair); the rest are options."""
    data = dict(data)
    if "text_pair" in data:
        inputs, single = _parse_flat_pair(data)
        return inputs, single, data
    present = [k for k in INPUT_KEYS if k in data]
    if not present:
        raise BadRequest("missing field 'input' (also accepted: 'inputs', 'text')")
    if len(present) > 1:
        raise InvalidInput(f"fields {', '.join(repr(k) for k in present)} given together; send one")
    key = present[0]
    if data.get("is_tokenized") is True:
        inputs, single = parse_tokenized(data.pop(key), key, max_items)
        return inputs, single, data
    inputs, single = parse_inputs(data.pop(key), key, max_items)
    return inputs, single, data
