"""(stub: being written) the openai wire protocol on the gateway."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from berthing.server.gateway import Gateway


def routes(gateway: Gateway) -> list[Route]:
    """This protocol's routes on the inference port."""
    return []


def openapi_paths(gateway: Gateway) -> dict[str, Any]:
    """/openapi.json's entries for these routes."""
    return {}


async def embeddings(request: Any, call: Any) -> Any:
    """POST /v1/embeddings (and /embeddings, which Infinity's clients call with the same shape)."""
    raise NotImplementedError
