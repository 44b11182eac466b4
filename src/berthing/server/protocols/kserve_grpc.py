"""(stub: being written) KServe V2 / Open Inference Protocol over gRPC, on its own port."""

from __future__ import annotations

import asyncio

from berthing.server.gateway import Gateway


class GrpcListener:
    """inference.GRPCInferenceService on grpc_host:grpc_port."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    def start(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> str:
        raise NotImplementedError("KServe V2 gRPC is not written yet")

    def stop(self) -> None:
        return None
