"""JSON in and out for every wire format (and Lambda): orjson, numpy values, errors that name the bad byte."""

from __future__ import annotations

from typing import Any

import orjson

from berthing.types import BadRequest


def parse_json(body: bytes) -> Any:
    """JSON bytes -> value (a UTF-8 BOM is skipped); a 400 that names the bad byte (an encoding error is said as one)."""
    try:
        return orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadRequest(f"body is not valid UTF-8: {bad}") from None
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def dumps(data: Any) -> bytes:
    """JSON bytes (numpy arrays and scalars included)."""
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
