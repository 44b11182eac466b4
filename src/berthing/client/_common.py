"""What Client and AsyncClient share, free of I/O: each method as a Plan of HTTP calls, chunking, the retry policy.

A Plan is the calls one method makes (one per chunk of a long list) and how their JSON answers combine into the
method's result; the sync and async clients only send the calls (bounded concurrency, retries) and combine."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import numpy as np

from berthing.client import _results as results
from berthing.client._errors import APIConnectionError, APIError, APITimeoutError
from berthing.types import TextPair

R = TypeVar("R")
DEFAULT_URL = "http://127.0.0.1:8080"
MANAGEMENT_PORT = 8081  # berthing's (and TorchServe's) default management port
RETRY_STATUSES = (429, 503)  # the server did not run the request: always safe to send again
GATEWAY_STATUSES = (502, 504)  # a proxy's: retried for idempotent calls only
RAY_MODEL_HEADER = "serve_multiplexed_model_id"  # on Ray Serve with --multiplex: routes to a replica holding the model

Texts = str | TextPair | dict[str, str] | Sequence[str | tuple[str, str] | TextPair | dict[str, str]]


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request: on the inference or the management API; `idempotent` allows retries after a broken send."""

    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    management: bool = False
    idempotent: bool = True
    timeout: float | None = None
    offset: int | None = None  # a chunk's first item in the caller's list, for errors


@dataclass(slots=True)
class Plan(Generic[R]):
    """The calls of one method (sent concurrently, answers kept in call order) and how their answers combine."""

    calls: list[Call]
    combine: Callable[[list[Any]], R]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped; Retry-After honoured when it fits under the cap, else raised at once."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, attempt: int, error: APIError, idempotent: bool) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to raise `error` now."""
        if attempt >= self.max_retries:
            return None
        if isinstance(error, APIConnectionError):
            if error.sent and (isinstance(error, APITimeoutError) or not idempotent):
                return None  # a slow server is not helped by more load; a POST may have run already
            return self._backoff(attempt)
        if error.status in RETRY_STATUSES:
            wait = error.retry_after
            if wait is None:
                return self._backoff(attempt)
            return wait if wait <= self.max_backoff else None  # never sleep longer than max_backoff unasked
        if error.status in GATEWAY_STATUSES and idempotent:
            return self._backoff(attempt)
        return None

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)


class ClientBase:
    """What Client and AsyncClient set up alike: both addresses, each API's headers (built once), the planner and
    the retry policy; the subclasses add their own httpx client and concurrency."""

    def __init__(self, url: str, model: str | None, token: str | None, management_url: str | None,
                 management_token: str | None, max_retries: int, backoff: float, max_backoff: float, chunk_size: int,
                 max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.url, self.model = url.rstrip("/"), model
        self.management_url = management_base(url, management_url)
        self.max_concurrency = max_concurrency
        self._headers = tuple({"authorization": f"Bearer {t}"} if t else {} for t in (token, management_token))
        self._plans = Planner(chunk_size)
        self._retry = RetryPolicy(max_retries, backoff, max_backoff)
        self._pool = httpx.Limits(max_connections=max_concurrency + 16, max_keepalive_connections=max_concurrency + 4)
        self._discovered: str | None = None

    def _target(self, call: Call) -> tuple[str, dict[str, str]]:
        """The call's full URL and headers: the management API's or the inference API's."""
        if call.management:
            return self.management_url + call.path, self._headers[1]
        if call.path.startswith("/predictions/"):  # a plain berthing server ignores the header; Ray's router reads it
            return self.url + call.path, {**self._headers[0], RAY_MODEL_HEADER: unquote(call.path.split("/")[2])}
        return self.url + call.path, self._headers[0]


def management_base(url: str, management_url: str | None) -> str:
    """The management API's address: given, else the inference host on port 8081."""
    if management_url:
        return management_url.rstrip("/")
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme or "http", f"{host}:{MANAGEMENT_PORT}", "", "", "")).rstrip("/")


def served_models(openapi: dict[str, Any]) -> list[str]:
    """The model names /openapi.json lists for /predictions/{model}."""
    route = openapi.get("paths", {}).get("/predictions/{model}", {}).get("post", {})
    for param in route.get("parameters", []):
        if param.get("name") == "model":
            return list(param.get("schema", {}).get("enum", []))
    return []


def only_model(names: list[str]) -> str:
    """The model to use when none was named: the one the server serves, else a clear ValueError."""
    if len(names) == 1:
        return names[0]
    served = ", ".join(names) if names else "none"
    raise ValueError(f"name a model: pass model= to the Client or the call (the server serves: {served})")


def _path(model: str, version: str | None) -> str:
    if version is None and ":" in model:
        model, _, version = model.partition(":")
    parts = [quote(model, safe="")] + ([quote(version, safe="")] if version else [])
    return "/predictions/" + "/".join(parts)


def _item(value: Any) -> Any:
    """A batch item as the route reads it: (text, pair) tuples and TextPair become {"text", "text_pair"}."""
    if isinstance(value, TextPair):
        return {"text": value.text, "text_pair": value.text_pair}
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"a text pair is a tuple of two texts, got {len(value)} items")
        return {"text": value[0], "text_pair": value[1]}
    return value


def _options(**given: Any) -> dict[str, Any]:
    return {key: value for key, value in given.items() if value is not None}


def _batch(texts: Any) -> list[Any] | None:
    """A list (or tuple of lists) as a batch; None for one input (a text, a TextPair, a dict)."""
    if isinstance(texts, str | TextPair | dict):
        return None
    if isinstance(texts, Sequence):
        return list(texts)
    raise TypeError(f"texts must be a string, a TextPair or a sequence of them, got {type(texts).__name__}")


class Planner:
    """Builds each method's Plan; `chunk_size` items per request for long lists."""

    def __init__(self, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def _each(self, path: str, texts: Any, options: dict[str, Any], key: str, one: Callable[[Any], Any],
              item: Callable[[Any], Any] = _item) -> Plan[Any]:
        """One request for one input; for a list, one per chunk, answers joined in input order."""
        batch = _batch(texts)
        if batch is None:
            return Plan([Call("POST", path, {key: item(texts), **options})], lambda answers: one(answers[0]))
        size = self.chunk_size
        starts = range(0, max(len(batch), 1), size)
        chunked = len(starts) > 1
        calls = [Call("POST", path, {key: [item(v) for v in batch[s : s + size]], **options}, offset=s if chunked else None)
                 for s in starts]
        return Plan(calls, lambda answers: [one(a) for answer in answers for a in answer])

    def embed(self, model: str, texts: Any, version: str | None, **options: Any) -> Plan[np.ndarray]:
        plan = self._each(_path(model, version), texts, _options(**options), "input", lambda v: v)
        join = plan.combine
        if _batch(texts) is None:
            plan.combine = lambda answers: np.asarray(join(answers), dtype=np.float32)
        else:
            plan.combine = lambda answers: np.asarray(join(answers), dtype=np.float32).reshape(len(texts), -1)
        return plan

    def classify(self, model: str, texts: Any, version: str | None, **options: Any) -> Plan[Any]:
        return self._each(_path(model, version), texts, _options(**options), "input", results.labels)

    def ner(self, model: str, texts: Any, version: str | None, **options: Any) -> Plan[Any]:
        return self._each(_path(model, version), texts, _options(**options), "input", results.entities)

    def answer(self, model: str, question: Any, context: str | None, version: str | None, **options: Any) -> Plan[Any]:
        path, opts = _path(model, version), _options(**options)
        if isinstance(question, str):
            if context is None:
                raise TypeError("answer(question, context): give the context, or a list of (question, context) pairs")
            return Plan([Call("POST", path, {"question": question, "context": context, **opts})],
                        lambda answers: results.answers(answers[0]))
        if context is not None:
            raise TypeError("answer(pairs) takes no context: each pair carries its own")

        def pair(value: Any) -> Any:
            if isinstance(value, tuple | TextPair):
                q, c = (value.text, value.text_pair) if isinstance(value, TextPair) else value
                return {"question": q, "context": c}
            return value

        return self._each(path, list(question), opts, "input", results.answers, pair)

    def rerank(self, model: str, query: str, texts: Sequence[str], version: str | None, top_n: int | None,
               **options: Any) -> Plan[list[results.Ranked]]:
        """Texts past chunk_size go in several requests; per-text scores do not depend on the others, so the
        rankings merge exactly (each chunk's top_n holds the overall top_n)."""
        if isinstance(texts, str):
            raise TypeError("rerank(query, texts): texts must be a list of strings, not one string")
        texts, path, opts = list(texts), _path(model, version), _options(top_n=top_n, **options)
        offsets = list(range(0, max(len(texts), 1), self.chunk_size))
        chunked = len(offsets) > 1
        calls = [Call("POST", path, {"query": query, "texts": texts[o : o + self.chunk_size], **opts},
                      offset=o if chunked else None) for o in offsets]
        return Plan(calls, lambda answers: results.merge_rankings(answers, offsets, top_n))

    def predict(self, model: str, body: Any, version: str | None) -> Plan[Any]:
        return Plan([Call("POST", _path(model, version), body)], lambda answers: answers[0])


def check_encode_input(texts: Any, is_tokenized: bool) -> None:
    """BertClient.encode's own checks, so code migrating from it fails the same way before any request."""
    rows = texts if is_tokenized else [texts]
    if not isinstance(texts, list):
        raise TypeError(f'"texts" must be {list}, but received {type(texts)}')
    if not texts:
        raise ValueError(f'"texts" must be a non-empty list, but received {type(texts)} with 0 elements')
    for row in rows:
        if not isinstance(row, list) or not row:
            raise TypeError(f"each tokenized text must be a non-empty list of str, got {row!r}")
        for index, text in enumerate(row):
            if not isinstance(text, str):
                raise TypeError(f"all elements in the list must be {str}, but element {index} is {type(text)}")
            if not text.strip():
                raise ValueError(f"all elements in the list must be non-empty string, but element {index} is {text!r}")


# -- the management API (TorchServe's shapes) -----------------------------------------------------------------------


def register(url: str, name: str | None, version: str | None, initial_workers: int | None, synchronous: bool,
             timeout: float | None) -> Call:
    params = _options(url=url, model_name=name, model_version=version, initial_workers=initial_workers)
    params["synchronous"] = "true" if synchronous else "false"
    return Call("POST", "/models", params={k: str(v) for k, v in params.items()}, management=True, idempotent=False,
                timeout=timeout)


def _model_path(name: str, version: str | None = None) -> str:
    return "/models/" + quote(name, safe="") + (f"/{quote(version, safe='')}" if version else "")


def scale(name: str, workers: int, version: str | None) -> Call:
    return Call("PUT", _model_path(name, version), params={"min_worker": str(workers)}, management=True)


def set_default(name: str, version: str) -> Call:
    return Call("PUT", _model_path(name, version) + "/set-default", management=True)


def unregister(name: str, version: str) -> Call:
    return Call("DELETE", _model_path(name, version), management=True, idempotent=False)


def describe(name: str, version: str | None) -> Call:
    return Call("GET", _model_path(name, version), management=True)


def list_page(token: str | None) -> Call:
    return Call("GET", "/models", params=_options(limit="100", next_page_token=token), management=True)


def page_entries(body: dict[str, Any]) -> tuple[list[results.ModelEntry], str | None]:
    """One page of GET /models and the next page's token."""
    entries = [results.ModelEntry(m["modelName"], m["modelUrl"], m.get("status")) for m in body.get("models", [])]
    return entries, body.get("nextPageToken")


def default_version(descriptions: list[dict[str, Any]], name: str) -> str:
    """The version DELETE /models/{name} means in TorchServe: the default one."""
    for entry in descriptions:
        if entry.get("isDefault"):
            return str(entry["modelVersion"])
    if len(descriptions) == 1:
        return str(descriptions[0]["modelVersion"])
    raise ValueError(f"model {name!r} has several versions and no default: pass version=")


def status(body: Any) -> str:
    """The management API's {"status": "..."} answer as its sentence."""
    return body.get("status", "") if isinstance(body, dict) else str(body)


def retry_message(call: Call, error: APIError, attempt: int, wait: float, max_retries: int) -> str:
    """The log line of one retry (logger 'berthing.client', INFO): what failed and how long we wait."""
    what = f"{error.status} {error.type}" if error.status else error.type
    return f"{call.method} {call.path}: {what}: {error.message}; retry {attempt + 1} of {max_retries} in {wait:.2f}s"
