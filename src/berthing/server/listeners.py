"""Protocols on ports of their own (KServe V2 gRPC, bert-as-service's ZeroMQ pair), started beside the HTTP server.

They start after the HTTP app is up, in a thread (their imports and binds cost ~0.1 s that a cold start should not
wait for), and stop before the models do. A port that cannot be bound turns that protocol off with a warning; the
HTTP server keeps serving.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from berthing.server.gateway import Gateway

log = logging.getLogger("berthing.server")

# protocol name -> "module:class" of its listener; imported only when the protocol is on.
LISTENERS = {
    "kserve-grpc": "berthing.server.protocols.kserve_grpc:GrpcListener",
    "bert-serving": "berthing.server.protocols.bert_zmq:ZmqListener",
}


class Listener(Protocol):
    """A server of one protocol on its own port(s), calling models through the gateway on the app's event loop."""

    ports: dict[str, int]  # what it bound, by role ("grpc"; "in", "out"), once started

    def start(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> str:
        """Import, bind and start serving (called in a thread); return a line saying where it listens."""
        ...

    def stop(self) -> None:
        """Stop accepting, answer or drop what is in flight, free the ports (called in a thread)."""
        ...


class Listeners:
    """The app's own-port listeners: started in the background at startup, stopped at shutdown."""

    def __init__(self, gateway: Gateway, say: Callable[[str], None] | None = None, enabled: bool = True) -> None:
        self.gateway = gateway
        self.enabled = enabled
        self.say = say or log.info
        self.started: dict[str, Listener] = {}
        self.ready = threading.Event()  # set once every listener started or failed (tests wait on it)
        self._task: asyncio.Task[None] | None = None

    def wanted(self) -> list[str]:
        if not self.enabled:
            return []
        return [p for p in self.gateway.settings.enabled_protocols() if p in LISTENERS]

    def start(self) -> None:
        """Schedule every enabled listener's start on the running loop; returns at once."""
        names = self.wanted()
        if not names:
            self.ready.set()
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._start_all(names, loop))

    async def _start_all(self, names: list[str], loop: asyncio.AbstractEventLoop) -> None:
        try:
            for name in names:
                try:
                    listener = await asyncio.to_thread(_make, LISTENERS[name])
                    line = await asyncio.to_thread(listener.start, self.gateway, loop)
                except Exception as exc:  # noqa: BLE001 - one protocol off is better than no server
                    self.say(f"{name}: off ({type(exc).__name__}: {exc}); see --protocols and its port settings")
                    log.warning("%s listener did not start: %s", name, exc)
                    continue
                self.started[name] = listener
                self.say(line)
        finally:
            self.ready.set()

    async def stop(self) -> None:
        """Stop every started listener (waiting for starts still under way)."""
        if self._task is not None and not self._task.done():
            await self._task
        for listener in self.started.values():
            await asyncio.to_thread(listener.stop)
        self.started.clear()


def _make(path: str) -> Any:
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)()
