"""The SDK's errors: one class per HTTP status the server answers, carrying its {"code", "type", "message"} body."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx


class APIError(Exception):
    """Any failed call: `status` (None when no answer came), the server's error `type` and `message`."""

    status: int | None = None
    offset: int | None = None  # in a chunked call: the failing request's first item (the message counts from it)

    def __init__(
        self, message: str, *, status: int | None = None, type: str = "APIError", headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message, self.type, self.body = message, type, body
        self.headers = headers or {}
        if status is not None:
            self.status = status

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date); None when it said nothing."""
        raw = self.headers.get("retry-after") or self.headers.get("Retry-After")
        if not raw:
            return None
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

    def __str__(self) -> str:
        if self.offset is None:
            return self.message
        return f"{self.message} (in the chunk that starts at item {self.offset}: indexes count from there)"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, type={self.type!r}, message={self.message!r})"


class BadRequest(APIError):
    """400: the body could not be read (invalid JSON, missing input)."""

    status = 400


class Unauthorized(APIError):
    """401: no token, or the wrong one (token= / management_token=)."""

    status = 401


class Forbidden(APIError):
    """403: the management API refused a model source outside the model store."""

    status = 403


class NotFound(APIError):
    """404: unknown model, version or route."""

    status = 404


class Conflict(APIError):
    """409: the model version is already registered, or still loading."""

    status = 409


class PayloadTooLarge(APIError):
    """413: too many items, too large a body, or a text too long with truncate=False."""

    status = 413


class InvalidInput(APIError):
    """422: a well-formed request with wrong values (empty text, wrong type, bad option, wrong task)."""

    status = 422


class Overloaded(APIError):
    """503: the model's queue is full; retried after Retry-After up to max_retries, then raised."""

    status = 503


class TooManyRequests(Overloaded):
    """429: rate limited (by a proxy in front of berthing); retried like 503."""

    status = 429


class ServerError(APIError):
    """500 and other 5xx: inference or loading failed on the server."""

    status = 500


class APIConnectionError(APIError):
    """No answer: the connection failed or broke. `sent` says whether the request may have reached the server."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message, type="ConnectionError")
        self.sent = sent


class APITimeoutError(APIConnectionError):
    """No answer within the timeout; not retried once sent, since the server may still be working on it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message, sent=sent)
        self.type = "Timeout"


BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: InvalidInput, 429: TooManyRequests, 503: Overloaded,
}


def error_from(response: httpx.Response) -> APIError:
    """The error an answer of status >= 400 stands for, with the server's own type and message when it sent them."""
    status = response.status_code
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message, kind = body["message"], str(body.get("type") or cls.__name__)
    else:  # a proxy's HTML page, or another protocol's shape
        message, kind = response.text.strip() or response.reason_phrase, cls.__name__
    return cls(message, status=status, type=kind, headers=dict(response.headers), body=body)


def error_from_transport(exc: httpx.TransportError, what: str) -> APIConnectionError:
    """httpx's transport failures as SDK errors; connect-phase ones never reached the server (safe to retry)."""
    before = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    message = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(message, sent=not before)
    return APIConnectionError(message, sent=not before)
