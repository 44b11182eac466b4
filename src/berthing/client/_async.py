"""berthing.AsyncClient: Client's methods as coroutines, one pooled httpx.AsyncClient, chunks under a semaphore."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import httpx
import numpy as np

from berthing.client import _common as common
from berthing.client._errors import error_from, error_from_transport
from berthing.client._results import ModelEntry, Ranked

log = logging.getLogger("berthing.client")


class AsyncClient(common.ClientBase):
    """berthing.Client for asyncio: the same methods, awaited; `await aclose()` or `async with` releases the pool."""

    def __init__(
        self, url: str = common.DEFAULT_URL, *, model: str | None = None, token: str | None = None,
        management_url: str | None = None, management_token: str | None = None, timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0, chunk_size: int = 256,
        max_concurrency: int = 4, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, model, token, management_url, management_token, max_retries, backoff, max_backoff,
                         chunk_size, max_concurrency)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, limits=self._pool)
        self._slots: asyncio.Semaphore | None = None

    # -- inference ------------------------------------------------------------------------------------------------

    async def embed(self, texts: common.Texts, model: str | None = None, *, version: str | None = None,
                    normalize: bool | None = None, truncate: bool | None = None) -> np.ndarray:
        """float32 vectors: shape (dim,) for one text, (n, dim) for a list (sent in chunks of chunk_size)."""
        plan = self._plans.embed(await self._model(model), texts, version, normalize=normalize, truncate=truncate)
        return await self._run(plan)

    async def encode(self, texts: list[str] | list[list[str]], is_tokenized: bool = False, *,
                     model: str | None = None) -> np.ndarray:
        """BertClient.encode's contract: a non-empty list of texts (or of word lists) -> float32 array (n, dim)."""
        common.check_encode_input(texts, is_tokenized)
        return await self._run(self._plans.embed(await self._model(model), texts, None, is_tokenized=is_tokenized or None))

    async def classify(self, texts: common.Texts, model: str | None = None, *, version: str | None = None,
                       top_k: int | None = None, truncate: bool | None = None) -> Any:
        """Label per text or (text, pair) tuple; with top_k a best-first list of Labels; a list in gives a list out."""
        return await self._run(self._plans.classify(await self._model(model), texts, version, top_k=top_k, truncate=truncate))

    async def ner(self, texts: common.Texts, model: str | None = None, *, version: str | None = None,
                  aggregation_strategy: str | None = None, ignore_labels: list[str] | None = None) -> Any:
        """Entities of one text (list[Entity]) or of each text of a list (list[list[Entity]])."""
        plan = self._plans.ner(await self._model(model), texts, version, aggregation_strategy=aggregation_strategy,
                               ignore_labels=ignore_labels)
        return await self._run(plan)

    async def answer(self, question: str | list[Any], context: str | None = None, model: str | None = None, *,
                     version: str | None = None, top_k: int | None = None, **options: Any) -> Any:
        """answer(q, context) -> Answer; answer([(q, context), ...]) -> list; top_k > 1 gives best-first lists.

        Other QA options (max_answer_len, handle_impossible_answer, doc_stride, ...) pass through as keywords."""
        return await self._run(self._plans.answer(await self._model(model), question, context, version, top_k=top_k, **options))

    async def rerank(self, query: str, texts: list[str], model: str | None = None, *, version: str | None = None,
                     top_n: int | None = None, return_text: bool | None = None, truncate: bool | None = None) -> list[Ranked]:
        """The texts ranked by relevance to the query, best first; `index` points into `texts`."""
        plan = self._plans.rerank(await self._model(model), query, texts, version, top_n, return_text=return_text,
                                  truncate=truncate)
        return await self._run(plan)

    async def predict(self, model: str, body: Any, *, version: str | None = None) -> Any:
        """POST /predictions/{model}[/{version}] with `body` as JSON; the answer's JSON as is (no chunking)."""
        return await self._run(self._plans.predict(model, body, version))

    # -- management -----------------------------------------------------------------------------------------------

    async def register(self, url: str, name: str | None = None, *, version: str | None = None,
                       initial_workers: int | None = None, synchronous: bool = True, timeout: float | None = 600.0) -> str:
        """Load a model from the model store (or an allowed source); the server's status sentence. Never retried
        once sent. A synchronous registration waits for the load: hence its own, longer timeout."""
        return common.status(await self._send(common.register(url, name, version, initial_workers, synchronous, timeout)))

    async def scale(self, name: str, workers: int, version: str | None = None) -> str:
        """Set the number of workers of a model's version (default version when None)."""
        return common.status(await self._send(common.scale(name, workers, version)))

    async def set_default(self, name: str, version: str) -> str:
        """Make `version` the one /predictions/{name} serves."""
        return common.status(await self._send(common.set_default(name, version)))

    async def unregister(self, name: str, version: str | None = None) -> str:
        """Unload a version (the default one when None, as TorchServe's DELETE /models/{name})."""
        version = version or common.default_version(await self.describe(name), name)
        return common.status(await self._send(common.unregister(name, version)))

    async def models(self) -> list[ModelEntry]:
        """Every registered model (all pages), with its status while loading or failed."""
        entries: list[ModelEntry] = []
        token: str | None = None
        while True:
            page, token = common.page_entries(await self._send(common.list_page(token)))
            entries += page
            if not token:
                return entries

    async def describe(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """The management API's description of each version of a model (or of one version)."""
        return await self._send(common.describe(name, version))

    # -- plumbing -------------------------------------------------------------------------------------------------

    async def _model(self, model: str | None) -> str:
        """The call's model, else the client's, else the only model the server serves (asked once)."""
        if model or self.model:
            return model or self.model  # type: ignore[return-value]
        if self._discovered is None:
            openapi = await self._send(common.Call("GET", "/openapi.json"))
            self._discovered = common.only_model(common.served_models(openapi))
        return self._discovered

    async def _run(self, plan: common.Plan[Any]) -> Any:
        """Send a plan's calls (chunks: at most max_concurrency in flight per client), combine the answers in order."""
        if len(plan.calls) == 1:
            return plan.combine([await self._send(plan.calls[0])])
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        slots = self._slots

        async def bounded(call: common.Call) -> Any:
            async with slots:
                return await self._send(call)

        tasks = [asyncio.ensure_future(bounded(call)) for call in plan.calls]
        try:
            answers = [await task for task in tasks]  # the first error in input order, as Client raises it
        except BaseException:
            for task in tasks:
                task.cancel()  # chunks still waiting or running are dropped, and their errors collected
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return plan.combine(answers)

    async def _send(self, call: common.Call) -> Any:
        """One call, retried on 503/429 (after Retry-After) and on broken connections, as the RetryPolicy says."""
        url, headers = self._target(call)
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout
        for attempt in itertools.count():
            try:
                response = await self._http.request(call.method, url, json=call.json, params=call.params,
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
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["AsyncClient"]
