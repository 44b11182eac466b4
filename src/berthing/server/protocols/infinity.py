"""(stub: being written) the infinity wire protocol on the gateway."""

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


async def rerank(call: Any, body: dict[str, Any]) -> Any:
    """Answer an Infinity-shaped rerank body ({"query", "documents", ...}); TEI's /rerank hands such bodies here."""
    raise NotImplementedError
