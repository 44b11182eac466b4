"""JSON in and out for every wire format (and Lambda): orjson, numpy values, errors that name the bad byte."""

from __future__ import annotations

import re
from typing import Any

import orjson

from berthing.types import BadRequest

# orjson reads 1024 levels, but Python code does not survive them (repr and recursion stop near 1000, orjson's own
# writer at 255), so deeper bodies are refused here, as serde_json (TEI) refuses past 128.
MAX_DEPTH = 128
INT64 = (-(2**63), 2**63 - 1)  # no field of any protocol holds more; numpy and C code overflow past it
_LONG_NUMBER = re.compile(rb"\d{19}")  # an integer outside INT64 has 19 digits or more


def parse_json(body: bytes) -> Any:
    """JSON bytes -> value (a UTF-8 BOM is skipped); a 400 that names the bad byte (an encoding error is said as one),
    and for JSON nested past MAX_DEPTH or an integer outside the signed 64-bit range."""
    try:
        value = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadRequest(f"body is not valid UTF-8: {bad}") from None
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    check_value(body, value)
    return value


def check_value(body: bytes, value: Any) -> None:
    """The limits parse_json holds a parsed `body` to; the value is walked only when its bytes could pass one."""
    deep = body.count(b"[") + body.count(b"{") > MAX_DEPTH
    long = _LONG_NUMBER.search(body) is not None
    if deep or long:
        _walk(value, long)


def _walk(value: Any, ints: bool) -> None:
    """Depth-first without recursion, so the check itself survives any depth orjson reads; each container's items
    are looked at in C (their types, and the smallest and largest integer when `ints`), so a body of a million token
    ids costs milliseconds, not a Python loop."""
    if type(value) is int:
        _check_ints([value])
    if type(value) not in (list, dict):
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"body is nested deeper than {MAX_DEPTH} levels of arrays and objects")
        children = list(item.values()) if type(item) is dict else item
        kinds = set(map(type, children))
        if ints and int in kinds:
            _check_ints(children if len(kinds) == 1 else [c for c in children if type(c) is int])
        if list in kinds or dict in kinds:
            stack.extend((c, depth + 1) for c in children if type(c) is list or type(c) is dict)


def _check_ints(values: list[int]) -> None:
    low, high = min(values), max(values)
    for bad in (low, high):
        if not INT64[0] <= bad <= INT64[1]:
            raise BadRequest(f"body holds the integer {bad}, outside the signed 64-bit range any field takes")


def dumps(data: Any) -> bytes:
    """JSON bytes (numpy arrays and scalars included)."""
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
