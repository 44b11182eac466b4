"""What every task shares: option checking and the contract the engine calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import orjson

from berthing.inputs import parse_inputs, parse_object
from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Encoded, Encoder, Features
from berthing.types import InvalidInput, TextInput, TextPair, Tokens

COMMON_OPTIONS = {"truncate": True, "is_tokenized": False}


def as_json(value: Any) -> str:
    """Show a bad value as the client wrote it (true, "yes", 2.5), not as Python's repr."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def option_bool(options: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean option, or a 422 naming it."""
    value = options.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"field '{key}' must be true or false, got {as_json(value)}")
    return value


def option_int(options: dict[str, Any], key: str, minimum: int = 1) -> int | None:
    """An optional integer option >= minimum, or a 422 naming it."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"field '{key}' must be an integer, got {as_json(value)}")
    if value < minimum:
        raise InvalidInput(f"field '{key}' must be >= {minimum}, got {value}")
    return value


class Task:
    """Base task: per request check() then encode(); per batch split() (worker thread); per request finish().

    encode() may turn one input into several items (windows over a long text); finish() gets every item's
    row together with the items themselves, in order, and returns one result per input.
    """

    name: ClassVar[str] = ""
    noun: ClassVar[str] = "a model"  # how messages name the model: "an embedding model"
    options: ClassVar[dict[str, Any]] = {}
    accepts_pairs: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def parse(self, value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[TextInput], bool]:
        """A bare input value (raw text body, JSON list or string, a Python argument) -> (inputs, single)."""
        return parse_inputs(value, field, max_items)

    def parse_object(
        self, data: dict[str, Any], max_items: int | None
    ) -> tuple[list[TextInput], bool, dict[str, Any]]:
        """A JSON object body -> (inputs, single, options); tasks with other input fields override this."""
        return parse_object(data, max_items)

    def check(self, inputs: list[TextInput], options: dict[str, Any]) -> dict[str, Any]:
        """Validate inputs and options; return the options with defaults filled in."""
        allowed = COMMON_OPTIONS | self.options
        for key in options:
            if key not in allowed:
                raise InvalidInput(
                    f"unknown field '{key}' for {self.noun} (fields: input, {', '.join(sorted(allowed))})"
                )
        if not self.accepts_pairs:
            for i, item in enumerate(inputs):
                if isinstance(item, TextPair):
                    raise InvalidInput(f"input[{i}]: {self.noun} takes texts, not text pairs")
        checked = {"truncate": option_bool(options, "truncate", True)}
        if option_bool(options, "is_tokenized", False):  # JSON words are Tokens by now; Python callers wrap them
            for i, item in enumerate(inputs):
                if not isinstance(item, Tokens):
                    raise InvalidInput(f"input[{i}] must be a list of words (berthing.types.Tokens) when is_tokenized is true")
        checked.update(self.check_options(options))
        return checked

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Task-specific options, validated."""
        return {}

    def encode(self, encoder: Encoder, inputs: list[TextInput], options: dict[str, Any]) -> list[Encoded]:
        """Tokenize the inputs into batchable items (default: one item per input, truncated)."""
        return encoder.encode(inputs, options["truncate"])

    def split(self, output: np.ndarray, features: Features) -> Sequence[np.ndarray]:
        """Turn a batch's raw runtime output into one row per item (runs in the worker thread)."""
        raise NotImplementedError

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        """Turn one request's rows (one per item, in order) into one JSON-ready result per input."""
        raise NotImplementedError
