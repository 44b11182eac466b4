"""berthing's Python SDK: `Client` and `AsyncClient` over a server's inference and management APIs (docs/sdk.md).

It imports httpx, numpy and berthing.types only, never the server: `pip install berthing` users call a remote
server without loading a runtime."""

from __future__ import annotations

from berthing.client._async import AsyncClient
from berthing.client._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    TooManyRequests,
    Unauthorized,
)
from berthing.client._results import Answer, Entity, Label, ModelEntry, Ranked
from berthing.client._sync import Client
from berthing.types import TextPair

__all__ = [
    "APIConnectionError", "APIError", "APITimeoutError", "Answer", "AsyncClient", "BadRequest", "Client", "Conflict",
    "Entity", "Forbidden", "InvalidInput", "Label", "ModelEntry", "NotFound", "Overloaded", "PayloadTooLarge", "Ranked",
    "ServerError", "TextPair", "TooManyRequests", "Unauthorized",
]
