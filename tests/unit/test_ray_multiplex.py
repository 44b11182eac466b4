"""How a multiplexed replica finds the model a request names, checked on plain ASGI messages (no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from berthing.ray.multiplex import _body_model, _buffered, _path_model
from berthing.ray.options import ServeArgs


@pytest.mark.parametrize(
    ("path", "name"),
    [("/predictions/sentiment", "sentiment"), ("/predictions/sentiment/2.0", "sentiment"), ("/v2/models/bge/infer", "bge"),
     ("/models/ner:1.0/embed", "ner"), ("/v1/embeddings", None), ("/models", None), ("/embed", None)],
)
def test_model_from_the_path(path: str, name: str | None) -> None:
    assert _path_model(path) == name


@pytest.mark.parametrize(
    ("body", "name"),
    [(b'{"model": "bge", "input": "x"}', "bge"), (b'  {"input": "x"}', None), (b'{"model": 3}', None), (b"[1]", None),
     (b'{"model": ', None), (b"plain text", None)],
)
def test_model_from_a_json_body(body: bytes, name: str | None) -> None:
    assert _body_model(body) == name


def _receiver(chunks: list[bytes]) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def _replayed(receive: Any) -> bytes:
    out = b""
    while True:
        message = await receive()
        out += message.get("body", b"")
        if not message.get("more_body"):
            return out


def test_the_app_still_reads_every_byte_after_the_peek() -> None:
    body, receive = asyncio.run(_buffered(_receiver([b'{"model":', b' "a"}']), limit=1024))
    assert body == b'{"model": "a"}'
    assert asyncio.run(_replayed(receive)) == b'{"model": "a"}'


def test_a_body_over_the_limit_is_not_buffered_whole_but_still_reaches_the_app() -> None:
    chunks = [b"x" * 600, b"y" * 600, b"z" * 600]

    async def run() -> tuple[bytes, bytes]:
        body, receive = await _buffered(_receiver(chunks), limit=1000)
        return body, await _replayed(receive)

    body, replayed = asyncio.run(run())
    assert body == b""  # not peeked: the app answers it (413 past max_body_bytes)
    assert replayed == b"".join(chunks)


def test_multiplex_args() -> None:
    assert ServeArgs(models=["a=/x", "b=/y"], multiplex=2).name() == "berthing"
    assert ServeArgs(models=["a=/x"], multiplex=1).sources() == {"a": "a=/x"}
    with pytest.raises(ValidationError, match="multiplex serves"):
        ServeArgs(model="a=/x", multiplex=2)
    with pytest.raises(ValidationError, match="is for multiplex"):
        ServeArgs(models=["a=/x"])
    with pytest.raises(ValidationError, match="share a name"):
        ServeArgs(models=["a=/x", "a=/y"], multiplex=2)


def test_the_sdk_names_the_model_in_rays_header() -> None:
    from berthing.client._common import Call, ClientBase

    base = ClientBase("http://h:1", None, "tok", None, None, 0, 0.1, 1.0, 64, 4)
    url, headers = base._target(Call("POST", "/predictions/bge/2.0", {}))
    assert url == "http://h:1/predictions/bge/2.0"
    assert headers == {"authorization": "Bearer tok", "serve_multiplexed_model_id": "bge"}
    assert base._target(Call("POST", "/v1/embeddings", {}))[1] == {"authorization": "Bearer tok"}
