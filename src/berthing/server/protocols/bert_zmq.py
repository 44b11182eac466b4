"""(stub: being written) bert-as-service's ZeroMQ protocol (BertClient), on its own two ports."""

from __future__ import annotations

import asyncio

from berthing.server.gateway import Gateway


class ZmqListener:
    """PULL on bert_serving_port, PUB on bert_serving_port_out."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    def start(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> str:
        raise NotImplementedError("bert-serving ZeroMQ is not written yet")

    def stop(self) -> None:
        return None
