"""TEI's wire rules shared by its routes: {error, error_type} errors, typed request fields, inputs, truncation, models.

TEI (text-embeddings-inference 1.9.3) deserializes with serde: plain-bool fields refuse null, `/embed`'s inputs are a
string, token ids or a list of them, `/predict`'s `["a", "b"]` is ONE pair. Its statuses: Validation 422, Empty 400,
Overloaded 429, Backend 424, Tokenizer 422; 413 only for the body size.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from tokenizers import Tokenizer

from berthing.inputs import json_type
from berthing.server.gateway import MODEL_HEADER, Call, WrongTask, json_response
from berthing.server.security import Unauthorized
from berthing.tasks.prefix import READ_CHARS_PER_TOKEN
from berthing.types import (
    BadRequest,
    BerthingError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    TextInput,
    TextPair,
    TokenIds,
)

if TYPE_CHECKING:
    from berthing.engine.model import Model

PREDICT_SHAPE = (
    "a string, a pair of strings [string, string] or a batch of mixed strings and pairs [[string], [string, string], ...]"
)
NOT_EMBEDDING = "Model is not an embedding model"
NOT_CLASSIFIER = "Model is not a classifier model"
NOT_RERANKER = "model is not a re-ranker model"
DIRECTIONS = {"Left": "left", "left": "left", "Right": "right", "right": "right"}
Item = TextInput | TokenIds


class TeiError(BerthingError):
    """An error already in TEI's terms: its status, its `error_type` variant and its exact message."""

    def __init__(self, message: str, code: int, error_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.code, self.type = code, error_type


def validation(message: str) -> TeiError:
    """TEI's TextEmbeddingsError::Validation, as it prints: 422 with the 'Input validation error: ' prefix."""
    return TeiError(f"Input validation error: {message}", 422, "Validation")


def empty(message: str = "`inputs` cannot be empty") -> TeiError:
    """TEI's Empty: 400 (server.rs builds these without the prefix)."""
    return TeiError(message, 400, "Empty")


def backend(message: str) -> TeiError:
    """TEI's Backend: 424, for a model of the wrong type and failed inference."""
    return TeiError(f"Backend error: {message}", 424, "Backend")


def batch_size(count: int, limit: int) -> TeiError:
    """TEI's exact batch-size refusal: 422 Validation (its OpenAPI says 413; its code answers 422)."""
    return TeiError(f"batch size {count} > maximum allowed batch size {limit}", 422, "Validation")


def error(err: BerthingError) -> Response:
    """Every berthing error as TEI's {"error", "error_type"} with TEI's status (Overloaded keeps Retry-After)."""
    headers = dict(err.headers)
    if isinstance(err, TeiError):
        code, kind, message = err.code, err.type, err.message
    elif isinstance(err, Overloaded):
        code, kind, message = 429, "Overloaded", "Model is overloaded"
    elif isinstance(err, ModelNotFound):
        code, kind, message = 404, "NotFound", err.message
    elif isinstance(err, Unauthorized):  # TEI's --api-key answers 401 too
        code, kind, message = 401, "Unauthorized", err.message
    elif isinstance(err, WrongTask):
        code, kind, message = 424, "Backend", f"Backend error: {err.message}"
    elif isinstance(err, PayloadTooLarge):  # only the body size gets here: item counts and lengths are 422 below
        code, kind, message = 413, "Validation", err.message
    elif isinstance(err, BadRequest):
        code, kind, message = 400, "Validation", err.message
    elif isinstance(err, InvalidInput):
        code, kind, message = 422, "Validation", f"Input validation error: {err.message}"
    else:
        code, kind, message = 424, "Backend", f"Backend error: {err.message}"
    return json_response({"error": message, "error_type": kind}, code, headers)


def answer(data: Any) -> Response:
    """A JSON success body."""
    return json_response(data)


# -- request fields ------------------------------------------------------------------------------------------------


async def read_object(call: Call) -> dict[str, Any]:
    """The body as a JSON object (TEI's requests are all objects)."""
    body = await call.json()
    if not isinstance(body, dict):
        raise validation(f"the body must be a JSON object, got {json_type(body)}")
    return body


def required(body: dict[str, Any], key: str) -> Any:
    """A field serde requires (missing or null is a 422, as axum's data error)."""
    if body.get(key) is None:
        raise validation(f"missing field `{key}`")
    return body[key]


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    """A plain `bool` field: absent = default, null or a non-boolean is a 422 (serde refuses both)."""
    if key not in body:
        return default
    value = body[key]
    if not isinstance(value, bool):
        raise validation(f"`{key}` must be true or false, got {json_type(value)}")
    return value


def truncate_of(body: dict[str, Any]) -> bool:
    """`truncate`: bool or null; null (or absent) = the server's auto_truncate, true as in TEI 1.9.3."""
    value = body.get("truncate")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise validation(f"`truncate` must be true, false or null, got {json_type(value)}")
    return value


def left_of(body: dict[str, Any]) -> bool:
    """`truncation_direction`: Left/left/Right/right (default Right); True when it is left."""
    if "truncation_direction" not in body:
        return False
    value = body["truncation_direction"]
    if value not in DIRECTIONS:
        raise validation(f"`truncation_direction` must be one of Left, left, Right, right, got {json_type(value)}")
    return DIRECTIONS[value] == "left"


def check_prompt(body: dict[str, Any]) -> None:
    """`prompt_name` names a sentence-transformers prompt; berthing's models carry none, so any name is refused."""
    name = body.get("prompt_name")
    if name is None:
        return
    raise validation(
        f"`prompt_name` is set to `{name}` but no prompts were found in the Sentence Transformers configuration "
        "(berthing serves no prompts: prepend the prompt's text to your inputs)"
    )


def count_check(call: Call, count: int) -> None:
    """The server's max_items as TEI's max_client_batch_size."""
    if count > call.settings.max_items:
        raise batch_size(count, call.settings.max_items)


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _one(value: Any, where: str) -> Item:
    if isinstance(value, str):
        if not value:
            raise empty("Input validation error: `inputs` cannot be empty")
        return value
    if _is_ids(value):
        return TokenIds(tuple(value))
    raise validation(f"{where} must be a string or a list of token ids, got {json_type(value)}")


def embed_inputs(call: Call, value: Any) -> tuple[list[Item], bool]:
    """TEI's Input: "a" (one text), [101, 2023, 102] (one input of token ids), or a list of strings and id lists."""
    if isinstance(value, str):
        return [_one(value, "`inputs`")], True
    if not isinstance(value, list):
        raise validation(f"`inputs` must be a string, a list of token ids or a list of them, got {json_type(value)}")
    if not value:
        raise empty()
    if _is_ids(value):
        return [TokenIds(tuple(value))], True
    count_check(call, len(value))
    return [_one(v, f"`inputs[{i}]`") for i, v in enumerate(value)], False


def _sequence(value: Any) -> TextInput:
    """One /predict sequence: [text] or [text, text_pair]."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise validation(f"invalid type: {json_type(value)}, expected {PREDICT_SHAPE}")
    if len(value) not in (1, 2):
        raise validation(f"invalid length {len(value)}, expected {PREDICT_SHAPE}")
    if not all(value):
        raise empty("Input validation error: `inputs` cannot be empty")
    return value[0] if len(value) == 1 else TextPair(value[0], value[1])


def predict_inputs(call: Call, value: Any) -> tuple[list[TextInput], bool]:
    """TEI's PredictInput: "a" is one text, ["a", "b"] ONE pair, [["a"], ["a", "b"], ...] a batch."""
    if isinstance(value, str):
        if not value:
            raise empty("Input validation error: `inputs` cannot be empty")
        return [value], True
    if not isinstance(value, list):
        raise validation(f"invalid type: {json_type(value)}, expected {PREDICT_SHAPE}")
    if not value:
        raise empty()
    if isinstance(value[0], str):
        return [_sequence(value)], True
    count_check(call, len(value))
    return [_sequence(v) for v in value], False


# -- models and truncation -----------------------------------------------------------------------------------------


def pick(call: Call, request: Request, tasks: tuple[str, ...] = (), refusal: str = "") -> Model:
    """The model: /models/{name}/... names it, else X-Berthing-Model, else the gateway's default for the route's
    tasks; one of the wrong task is TEI's 424 Backend error (its own wording)."""
    named = request.path_params.get("name") or request.headers.get(MODEL_HEADER)
    model = call.model(named or call.gateway.default_name(tasks or None))
    if tasks and model.spec.task not in tasks:
        raise backend(refusal)
    return model


_UNTRUNCATED: weakref.WeakKeyDictionary[Any, Tokenizer] = weakref.WeakKeyDictionary()


def untruncated(model: Model) -> Tokenizer:
    """The model's tokenizer without truncation or padding (one per encoder), for /tokenize and length checks."""
    encoder = model.encoder
    tok = _UNTRUNCATED.get(encoder)
    if tok is None:
        tok = Tokenizer.from_str(encoder.tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        _UNTRUNCATED[encoder] = tok
    return tok


def _cut_left(tok: Tokenizer, text: str, budget: int) -> str:
    """The end of `text` that keeps at most `budget` tokens, cut where a word starts (so it re-tokenizes alike)."""
    enc = tok.encode(text, add_special_tokens=False)
    first = max(0, len(enc.ids) - budget)
    words = enc.word_ids
    k = first
    while 0 < k < len(words) and words[k] is not None and words[k] == words[k - 1]:
        k += 1
    if k >= len(words):
        k = first
    return text[enc.offsets[k][0]:] if k < len(words) else text


def prepare(model: Model, items: list[Item], truncate: bool, left: bool) -> list[Item]:
    """TEI's length rules before inference: with truncate off, a too-long input is its 422; with Left truncation,
    the start of a too-long text is cut off here (the engine then sees a text that fits)."""
    if truncate and not left:
        return items
    limit = model.spec.max_length
    if not truncate:  # refused before tokenizing, as every other route does (tasks/prefix.py has the rule)
        over = model.encoder.first_over(items)
        if over is not None:
            raise validation(model.encoder.over_limit(items[over], f"inputs[{over}]").message)
    else:  # Left truncation keeps the end: what lies before the last READ_CHARS_PER_TOKEN a token is never read
        tail = READ_CHARS_PER_TOKEN * limit
        items = [x[-tail:] if isinstance(x, str) and len(x) > tail else x for x in items]
    tok = untruncated(model)
    texts = [i for i, x in enumerate(items) if not isinstance(x, TokenIds)]
    batch = [(x.text, x.text_pair) if isinstance(x, TextPair) else x for x in (items[i] for i in texts)]
    lengths = {i: len(e.ids) for i, e in zip(texts, tok.encode_batch(batch, add_special_tokens=True), strict=True)}
    out = list(items)
    for i, item in enumerate(items):
        size = len(item.ids) if isinstance(item, TokenIds) else lengths[i]
        if size <= limit:
            continue
        if not truncate:
            raise validation(f"`inputs` must have less than {limit} tokens. Given: {size}")
        if isinstance(item, TokenIds):
            out[i] = TokenIds(item.ids[-limit:])
        elif isinstance(item, TextPair):
            raise validation("truncation_direction `Left` is not supported for text pairs by berthing; use Right")
        else:
            specials = size - len(tok.encode(item, add_special_tokens=False).ids)
            out[i] = _cut_left(tok, item, limit - specials)
    return out


async def infer(call: Call, model: Model, inputs: list[Any], options: dict[str, Any]) -> list[Any]:
    """Inference through the shared batcher; berthing's length and count refusals become TEI's 422 Validation."""
    try:
        return await call.infer(model, inputs, options)
    except PayloadTooLarge as exc:
        raise validation(exc.message) from None
