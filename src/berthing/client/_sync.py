"""berthing.Client: the blocking SDK, one pooled httpx.Client, long lists sent in chunks on a few threads."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from berthing.client import _common as common
from berthing.client._errors import error_from, error_from_transport
from berthing.client._results import ModelEntry, Ranked

log = logging.getLogger("berthing.client")


class Client(common.ClientBase):
    """A berthing server's inference API (TorchServe routes) and management API, from Python.

    One connection pool per client: make one and reuse it (it is thread-safe); `close()` or `with` releases it."""

    def __init__(
        self, url: str = common.DEFAULT_URL, *, model: str | None = None, token: str | None = None,
        management_url: str | None = None, management_token: str | None = None, timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0, chunk_size: int = 256,
        max_concurrency: int = 4, transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, model, token, management_url, management_token, max_retries, backoff, max_backoff,
                         chunk_size, max_concurrency)
        self._http = httpx.Client(timeout=timeout, transport=transport, limits=self._pool)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- inference ------------------------------------------------------------------------------------------------

    def embed(self, texts: common.Texts, model: str | None = None, *, version: str | None = None,
              normalize: bool | None = None, truncate: bool | None = None) -> np.ndarray:
        """float32 vectors: shape (dim,) for one text, (n, dim) for a list (sent in chunks of chunk_size)."""
        return self._run(self._plans.embed(self._model(model), texts, version, normalize=normalize, truncate=truncate))

    def encode(self, texts: list[str] | list[list[str]], is_tokenized: bool = False, *, model: str | None = None) -> np.ndarray:
        """BertClient.encode's contract: a non-empty list of texts (or of word lists) -> float32 array (n, dim)."""
        common.check_encode_input(texts, is_tokenized)
        return self._run(self._plans.embed(self._model(model), texts, None, is_tokenized=is_tokenized or None))

    def classify(self, texts: common.Texts, model: str | None = None, *, version: str | None = None,
                 top_k: int | None = None, truncate: bool | None = None) -> Any:
        """Label per text or (text, pair) tuple; with top_k a best-first list of Labels; a list in gives a list out."""
        return self._run(self._plans.classify(self._model(model), texts, version, top_k=top_k, truncate=truncate))

    def ner(self, texts: common.Texts, model: str | None = None, *, version: str | None = None,
            aggregation_strategy: str | None = None, ignore_labels: list[str] | None = None) -> Any:
        """Entities of one text (list[Entity]) or of each text of a list (list[list[Entity]])."""
        plan = self._plans.ner(self._model(model), texts, version, aggregation_strategy=aggregation_strategy,
                               ignore_labels=ignore_labels)
        return self._run(plan)

    def answer(self, question: str | list[Any], context: str | None = None, model: str | None = None, *,
               version: str | None = None, top_k: int | None = None, **options: Any) -> Any:
        """answer(q, context) -> Answer; answer([(q, context), ...]) -> list; top_k > 1 gives best-first lists.

        Other QA options (max_answer_len, handle_impossible_answer, doc_stride, ...) pass through as keywords."""
        return self._run(self._plans.answer(self._model(model), question, context, version, top_k=top_k, **options))

    def rerank(self, query: str, texts: list[str], model: str | None = None, *, version: str | None = None,
               top_n: int | None = None, return_text: bool | None = None, truncate: bool | None = None) -> list[Ranked]:
        """The texts ranked by relevance to the query, best first; `index` points into `texts`."""
        plan = self._plans.rerank(self._model(model), query, texts, version, top_n, return_text=return_text,
                                  truncate=truncate)
        return self._run(plan)

    def predict(self, model: str, body: Any, *, version: str | None = None) -> Any:
        """POST /predictions/{model}[/{version}] with `body` as JSON; the answer's JSON as is (no chunking)."""
        return self._run(self._plans.predict(model, body, version))

    # -- management -----------------------------------------------------------------------------------------------

    def register(self, url: str, name: str | None = None, *, version: str | None = None,
                 initial_workers: int | None = None, synchronous: bool = True, timeout: float | None = 600.0) -> str:
        """Load a model from the model store (or an allowed source); the server's status sentence. Never retried
        once sent. A synchronous registration waits for the load: hence its own, longer timeout."""
        return common.status(self._send(common.register(url, name, version, initial_workers, synchronous, timeout)))

    def scale(self, name: str, workers: int, version: str | None = None) -> str:
        """Set the number of workers of a model's version (default version when None)."""
        return common.status(self._send(common.scale(name, workers, version)))

    def set_default(self, name: str, version: str) -> str:
        """Make `version` the one /predictions/{name} serves."""
        return common.status(self._send(common.set_default(name, version)))

    def unregister(self, name: str, version: str | None = None) -> str:
        """Unload a version (the default one when None, as TorchServe's DELETE /models/{name})."""
        version = version or common.default_version(self.describe(name), name)
        return common.status(self._send(common.unregister(name, version)))

    def models(self) -> list[ModelEntry]:
        """Every registered model (all pages), with its status while loading or failed."""
        entries: list[ModelEntry] = []
        token: str | None = None
        while True:
            page, token = common.page_entries(self._send(common.list_page(token)))
            entries += page
            if not token:
                return entries

    def describe(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """The management API's description of each version of a model (or of one version)."""
        return self._send(common.describe(name, version))

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _model(self, model: str | None) -> str:
        """The call's model, else the client's, else the only model the server serves (asked once)."""
        if model or self.model:
            return model or self.model  # type: ignore[return-value]
        with self._lock:
            if self._discovered is None:
                self._discovered = common.only_model(common.served_models(self._send(common.Call("GET", "/openapi.json"))))
            return self._discovered

    def _run(self, plan: common.Plan[Any]) -> Any:
        """Send a plan's calls (chunks on at most max_concurrency threads), combine the answers in order."""
        if len(plan.calls) == 1:
            return plan.combine([self._send(plan.calls[0])])
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="berthing-client")
        futures: list[Future[Any]] = [self._executor.submit(self._send, call) for call in plan.calls]
        try:
            return plan.combine([future.result() for future in futures])
        finally:
            for future in futures:
                future.cancel()  # after an error, chunks not started yet are not sent

    def _send(self, call: common.Call) -> Any:
        """One call, retried on 503/429 (after Retry-After) and on broken connections, as the RetryPolicy says."""
        url, headers = self._target(call)
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout
        for attempt in itertools.count():
            try:
                response = self._http.request(call.method, url, json=call.json, params=call.params,
                                              headers=headers, timeout=timeout)
                if response.status_code < 400:
                    return response.json()
                error = error_from(response)
            except httpx.TransportError as exc:
                error = error_from_transport(exc, f"{call.method} {url}")
            wait = self._retry.delay(attempt, error, call.idempotent)
            if wait is None:
                error.offset = call.offset
                raise error
            log.info(common.retry_message(call, error, attempt, wait, self._retry.max_retries))
            time.sleep(wait)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection pool and the chunk threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client"]
