"""Property-based fuzzing of every body parser (issue 18): random JSON of every shape, bodies a few mutations away
from valid ones (where parsers are deepest), and random bytes, on every POST route of a live server. Each answer is
below 500, a 4xx is in the route's own JSON error shape, and every model still serves afterwards."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import CONTENT_TYPES, FIELDS, dump, fuzz_settings, json_objects, json_values, keys, replace
from tests.fuzz.targets import Target, check_answer, walk

SETTINGS = fuzz_settings(500)


def post(client: httpx.Client, target: Target, body: bytes, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    check_answer(target.path, client.post(target.path, content=body, headers=headers))


@SETTINGS
@given(data=st.data())
def test_random_json(client: httpx.Client, found: list[Target], data: st.DataObject) -> None:
    """Any JSON value (NaN, Infinity, huge integers and lone surrogates included) under any Content-Type."""
    target = data.draw(st.sampled_from(found), label="target")
    value = data.draw(json_values | json_objects, label="body")
    post(client, target, dump(value), data.draw(st.sampled_from(CONTENT_TYPES), label="content type"))


def _mutate(data: st.DataObject, body: Any) -> Any:
    """One change to a JSON value: a value replaced, a key removed or added, a value wrapped in a list."""
    where = data.draw(st.sampled_from(list(walk(body))), label="position")
    current: Any = body
    for key in where:
        current = current[key]
    kind = data.draw(st.sampled_from(["replace", "drop", "add", "wrap", "unwrap"]), label="mutation")
    if kind == "drop" and where:
        parent = body
        for key in where[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            smaller = {k: v for k, v in parent.items() if k != where[-1]}
        else:
            smaller = [v for i, v in enumerate(parent) if i != where[-1]]
        return replace(body, where[:-1], smaller)
    if kind == "add" and isinstance(current, dict):
        key = data.draw(st.sampled_from(FIELDS) | keys, label="key")
        return replace(body, where, {**current, key: data.draw(json_values, label="value")})
    if kind == "wrap":
        return replace(body, where, [current])
    if kind == "unwrap" and isinstance(current, list) and current:
        return replace(body, where, current[0])
    return replace(body, where, data.draw(json_values, label="value"))


@fuzz_settings(1200)
@given(data=st.data())
def test_mutated_valid_bodies(client: httpx.Client, found: list[Target], data: st.DataObject) -> None:
    """A route's valid body changed in one to three places: past the JSON parser, into each field's own checks."""
    target = data.draw(st.sampled_from(found), label="target")
    body = target.body
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        body = _mutate(data, body)
    post(client, target, dump(body), "application/json")


@fuzz_settings(300)
@given(data=st.data())
def test_random_bytes(client: httpx.Client, found: list[Target], data: st.DataObject) -> None:
    """Bytes that are mostly not JSON, nor UTF-8, under any Content-Type."""
    target = data.draw(st.sampled_from(found), label="target")
    body = data.draw(st.binary(max_size=256) | st.sampled_from([b"{", b"[", b'"']).map(lambda b: b + b"\xff"), label="body")
    post(client, target, body, data.draw(st.sampled_from(CONTENT_TYPES), label="content type"))
