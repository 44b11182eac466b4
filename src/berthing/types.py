"""The one internal request/result vocabulary and the one error hierarchy of berthing.

Protocol adapters turn HTTP (or Lambda events, or CLI input) into an InferenceRequest; every error
raised anywhere below them is a BerthingError whose `code` is the HTTP status it maps to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class BerthingError(Exception):
    """Base of every error a user can see; `code` is its HTTP status, `type` a stable name."""

    code: int = 500
    type: str = "InternalServerError"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body every protocol sends for this error."""
        return {"code": self.code, "type": self.type, "message": self.message}


class BadRequest(BerthingError):
    """Malformed body: invalid JSON, invalid UTF-8, missing input."""

    code = 400
    type = "BadRequest"


class InvalidInput(BerthingError):
    """Well-formed body whose values are wrong (types, empty texts, bad options)."""

    code = 422
    type = "InvalidInput"


class ModelNotFound(BerthingError):
    """Unknown model name or version."""

    code = 404
    type = "ModelNotFound"


class PayloadTooLarge(BerthingError):
    """Body, item count or (with truncate=false) text length over a configured limit."""

    code = 413
    type = "PayloadTooLarge"


class Overloaded(BerthingError):
    """The model's queue is full; the client should retry later."""

    code = 503
    type = "ServiceUnavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class DeadlineExceeded(Overloaded):
    """The request's deadline (timeout_ms) passed while its items were queued: they were dropped, not computed."""


class InferenceFailed(BerthingError):
    """A batch failed inside the runtime; only the requests in that batch see it."""

    code = 500
    type = "InferenceFailed"


class ModelLoadError(BerthingError):
    """A model could not be loaded (missing files, failed export, offline hub id)."""

    code = 500
    type = "ModelLoadError"


class InvalidPackage(ModelLoadError):
    """A package or archive refused for what it contains (its manifest, a checksum, an unsafe entry): the sender's
    error, so a 4xx that names it; a ModelLoadError still, for callers that catch any failed load."""

    code = 422
    type = "InvalidPackage"


@dataclass(frozen=True, slots=True)
class TextPair:
    """Two texts scored together (classification of pairs, later reranking)."""

    text: str
    text_pair: str


@dataclass(frozen=True, slots=True)
class Tokens:
    """A text already split into words (bert-serving's is_tokenized); each word is still cut into word pieces."""

    words: tuple[str, ...]

    @property
    def text(self) -> str:
        """The words joined by spaces: the text HF's NER pipeline shows and slices for is_split_into_words input."""
        return " ".join(self.words)


@dataclass(frozen=True, slots=True)
class TokenIds:
    """An input given as the model's own token ids (OpenAI's and TEI's integer input): used as the whole sequence."""

    ids: tuple[int, ...]


TextInput = str | TextPair


@dataclass(slots=True)
class InferenceRequest:
    """One request as every entry point sees it: which model, which inputs, which options."""

    model: str
    inputs: list[TextInput]
    version: str | None = None
    single: bool = False
    options: dict[str, Any] = field(default_factory=dict)
