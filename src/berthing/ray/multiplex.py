"""Many small models on few replicas: Ray Serve's model multiplexing over berthing's registry.

One application serves every listed model. A replica loads a model the first time a request names it, keeps at most
N, and unloads the least recently used (Ray's `@serve.multiplexed` does the bookkeeping and tells its router which
replica holds what). Ray's router reads the model from the `serve_multiplexed_model_id` header only; inside the
replica the model may also come from the path (/predictions/NAME, /models/NAME, /v2/models/NAME), berthing's
X-Berthing-Model header or a JSON body's "model" field, so every client works, and the header adds locality.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import orjson

from berthing.server.gateway import MODEL_HEADER

MODEL_ID_HEADER = "serve_multiplexed_model_id"  # Ray's; its router prefers a replica that holds this model
_PATH = re.compile(r"^/(?:predictions|explanations|models|v2/models)/([^/]+)")
_BODY_PEEK_BYTES = 1 << 20  # a body larger than this is not parsed for "model": name it in the path or a header
RELEASE_TIMEOUT_S = 60.0  # an evicted model's requests in flight finish first; this bounds the wait


class Loaded:
    """A model held for Ray's multiplexer; Ray calls `__del__` when it evicts it, which unregisters and frees it."""

    def __init__(self, model: Any, registry: Any, metrics: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.model, self.registry, self.metrics, self.loop = model, registry, metrics, loop
        self.loop_thread = threading.get_ident()  # made on the loop's thread
        self.released = False

    async def release(self) -> None:
        """Unroute the model (new requests reload it), let requests in flight finish, free its runtimes."""
        if self.released:
            return
        self.released = True
        self.registry.remove(self.model.name, self.model.version)
        await self.model.retire()
        self.metrics.forget(self.model)

    def __del__(self) -> None:  # Ray runs a sync __del__ in a thread on eviction; garbage collection may call it again
        if self.released or self.loop.is_closed():
            return
        done = asyncio.run_coroutine_threadsafe(self.release(), self.loop)
        if threading.get_ident() != self.loop_thread:  # Ray's eviction: finish unloading before the next model loads
            done.result(timeout=RELEASE_TIMEOUT_S)


class Multiplexer:
    """One replica's loader: the allowed models by name, loaded into the app's registry on first use."""

    def __init__(self, sources: dict[str, str], settings: Any, registry: Any, metrics: Any) -> None:
        self.sources, self.settings, self.registry, self.metrics = sources, settings, registry, metrics
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self, name: str) -> Loaded:
        """Load `name` in a worker thread (the replica keeps serving its other models) and start its batcher."""
        from berthing.loading import load_model
        from berthing.packaging.sources import resolve

        async with self._locks.setdefault(name, asyncio.Lock()):
            source = await asyncio.to_thread(resolve, self.sources[name], self.settings.cache_dir)
            options = self.settings.load_options(source.name)
            options.registry = self.registry
            model = await asyncio.to_thread(load_model, source, options)
            self.registry.add(model)
            model.start(self.metrics.watch(model))
            return Loaded(model, self.registry, self.metrics, asyncio.get_running_loop())


class MultiplexApp:
    """ASGI in front of berthing's app: finds the model a request names and has it loaded before the app runs."""

    def __init__(self, app: Any, allowed: set[str], get_model: Any, max_body_bytes: int) -> None:
        self.app, self.allowed, self.get_model, self.limit = app, allowed, get_model, max_body_bytes
        self.state = app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))  # ASGI header names are lower-case bytes: only two are looked up
        name = _header(headers, _RAY_KEY) or _path_model(scope.get("path", "")) or _header(headers, _BERTHING_KEY)
        if name is None and scope.get("method") == "POST":
            body, receive = await _buffered(receive, min(self.limit, _BODY_PEEK_BYTES))
            name = _body_model(body)
        if name in self.allowed:
            await self.get_model(name)  # loads, or marks it recently used
        await self.app(scope, receive, send)


_RAY_KEY, _BERTHING_KEY = MODEL_ID_HEADER.encode(), MODEL_HEADER.lower().encode()


def _header(headers: dict[bytes, bytes], key: bytes) -> str | None:
    value = headers.get(key)
    return value.decode("latin-1") if value else None


def _path_model(path: str) -> str | None:
    found = _PATH.match(path)
    return found.group(1).split(":", 1)[0] if found else None


def _body_model(body: bytes) -> str | None:
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # the app answers the bad body in its protocol's shape
    model = value.get("model") if isinstance(value, dict) else None
    return model if isinstance(model, str) else None


async def _buffered(receive: Any, limit: int) -> tuple[bytes, Any]:
    """Read the body (up to `limit` bytes), then hand the app a receive that replays what was read and goes on from
    there, so the app still sees every byte and still answers an oversized body with its 413."""
    messages: list[dict[str, Any]] = []
    size = 0
    while size <= limit:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    complete = bool(messages) and messages[-1]["type"] == "http.request" and not messages[-1].get("more_body", False)
    body = b"".join(m.get("body", b"") for m in messages) if complete else b""

    async def replay() -> dict[str, Any]:
        return messages.pop(0) if messages else await receive()

    return body, replay
