"""berthing.Client and AsyncClient against real servers on loopback: parity with direct calls to the TorchServe route,
chunking, retries after Retry-After on a really overloaded model, exact errors, and the management API."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import logging
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import berthing
from berthing.client import (
    Answer,
    APIConnectionError,
    AsyncClient,
    Client,
    Conflict,
    Entity,
    InvalidInput,
    Label,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Ranked,
    Unauthorized,
)
from berthing.config import Settings
from berthing.engine.model import Model
from berthing.registry import Registry
from tests.support.http import WAIT_S, clone, metric, wait_for
from tests.support.overload import overloaded
from tests.support.servers import ThreadServer, cli_server

TEXTS = ["a fine day", "this is terrible", "ok", "the cat sat on the mat", "rain again, sadly"]
CONTEXT = "Berthing serves BERT models. It was written in Paris in 2024 by a small team."
KINDS = {"embedder": "embed", "sentiment": "classify", "ner": "ner", "qa": "qa", "rerank": "rerank"}


@pytest.fixture(scope="module")
def url(load: Callable[..., Model], settings: Settings) -> Iterator[str]:
    """One server with a model of every task, shared by the tests that only read from it."""
    registry = Registry()
    for name, kind in KINDS.items():
        registry.add(clone(load(kind), name))
    with ThreadServer(registry, settings) as server:
        yield server.url


def direct(url: str, model: str, body: Any) -> Any:
    response = httpx.post(f"{url}/predictions/{model}", json=body, timeout=WAIT_S)
    assert response.status_code == 200, response.text
    return response.json()


def served(url: str, model: str, status: str = "200") -> float:
    return metric(url, "berthing_requests_total", model=f"{model}:1.0", protocol="torchserve", status=status) or 0.0


def assert_rankings(got: list[Ranked], want: list[dict[str, Any]]) -> None:
    assert [r.index for r in got] == [w["index"] for w in want]
    for r, w in zip(got, want, strict=True):
        assert r.score == pytest.approx(w["score"], abs=1e-6) and r.logit == pytest.approx(w["logit"], abs=1e-6)
        assert r.text == w.get("text")


# -- parity with the TorchServe route ---------------------------------------------------------------------------------


def test_embed_matches_the_route(url: str) -> None:
    with Client(url, model="embedder") as client:
        vectors = client.embed(TEXTS)
        one = client.embed(TEXTS[0])
        raw = client.embed(TEXTS, normalize=False)
    assert vectors.dtype == np.float32 and vectors.shape[0] == len(TEXTS) and one.shape == (vectors.shape[1],)
    np.testing.assert_allclose(vectors, np.asarray(direct(url, "embedder", {"input": TEXTS})), atol=1e-6)
    np.testing.assert_allclose(one, np.asarray(direct(url, "embedder", TEXTS[0])), atol=1e-6)
    np.testing.assert_allclose(raw, np.asarray(direct(url, "embedder", {"input": TEXTS, "normalize": False})), atol=1e-6)


def test_chunks_keep_order_and_values(url: str) -> None:
    texts = [f"sentence {i}: {TEXTS[i % len(TEXTS)]} {'and more ' * (i % 7)}" for i in range(1000)]
    with Client(url, model="embedder", chunk_size=1000) as whole, Client(url, model="embedder", chunk_size=64) as chunked:
        expected = whole.embed(texts)
        before = served(url, "embedder")
        got = chunked.embed(texts)
        assert served(url, "embedder") - before == 16  # ceil(1000 / 64) requests
    assert got.shape == expected.shape == (1000, expected.shape[1])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_encode_behaves_like_bertclient(url: str) -> None:
    with Client(url, model="embedder", chunk_size=2) as client:
        encoded = client.encode(TEXTS)
        np.testing.assert_allclose(encoded, client.embed(TEXTS), atol=1e-6)
        words = [text.split() for text in TEXTS[:3]]
        tokenized = client.encode(words, is_tokenized=True)
        with pytest.raises(TypeError, match="must be <class 'list'>"):
            client.encode("one text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must be a non-empty list"):
            client.encode([])
        with pytest.raises(ValueError, match="element 1 is ' '"):
            client.encode(["a", " "])
    assert encoded.dtype == np.float32 and encoded.shape == (len(TEXTS), encoded.shape[1])
    np.testing.assert_allclose(tokenized, direct(url, "embedder", {"input": words, "is_tokenized": True}), atol=1e-6)


def test_classify_matches_the_route(url: str) -> None:
    pairs = [("a question", "an answer"), ("is it good?", "it is great")]
    with Client(url, model="sentiment", chunk_size=2) as client:
        labels = client.classify(TEXTS)
        one = client.classify(TEXTS[0])
        top = client.classify(TEXTS, top_k=2)
        paired = client.classify(pairs)
        single_pair = client.classify(berthing.client.TextPair(*pairs[0]))
    assert labels == [Label(d["label"], d["score"], d["scores"]) for d in direct(url, "sentiment", TEXTS)]
    assert one == labels[0]
    assert top == [[Label(d["label"], d["score"]) for d in row] for row in direct(url, "sentiment", {"input": TEXTS, "top_k": 2})]
    want = direct(url, "sentiment", [{"text": a, "text_pair": b} for a, b in pairs])
    assert paired == [Label(d["label"], d["score"], d["scores"]) for d in want] and single_pair == paired[0]


def test_ner_matches_the_route(url: str) -> None:
    texts = ["John lives in Paris", "Mary works at Acme in Berlin"]
    with Client(url, model="ner") as client:
        found = client.ner(texts)
        none = client.ner(texts[0], aggregation_strategy="none")
    expected = direct(url, "ner", texts)
    assert found == [[Entity(e["entity_group"], e["score"], e["word"], e["start"], e["end"]) for e in row] for row in expected]
    tokens = direct(url, "ner", {"input": texts[0], "aggregation_strategy": "none"})
    assert none == [Entity(e["entity"], e["score"], e["word"], e["start"], e["end"], e["index"]) for e in tokens]
    assert all(isinstance(e, Entity) for row in found for e in row)


def test_answer_matches_the_route(url: str) -> None:
    questions = ["Where was it written?", "Who wrote it?", "What does it serve?"]
    with Client(url, model="qa", chunk_size=2) as client:
        one = client.answer(questions[0], CONTEXT)
        listed = client.answer([(q, CONTEXT) for q in questions])
        top = client.answer(questions[0], CONTEXT, top_k=2)
    assert one == Answer(**direct(url, "qa", {"question": questions[0], "context": CONTEXT}))
    want = direct(url, "qa", {"input": [{"question": q, "context": CONTEXT} for q in questions]})
    assert listed == [Answer(**a) for a in want] and listed[0] == one
    assert top == [Answer(**a) for a in direct(url, "qa", {"question": questions[0], "context": CONTEXT, "top_k": 2})]


def test_rerank_matches_the_route_also_in_chunks(url: str) -> None:
    query, texts = "what is the weather like?", [*TEXTS, "sunny and warm", "cold", "a storm is coming", "what?", "weather"]
    with Client(url, model="rerank") as whole, Client(url, model="rerank", chunk_size=3) as chunked:
        ranking = whole.rerank(query, texts)
        before = served(url, "rerank")
        merged = chunked.rerank(query, texts)
        assert served(url, "rerank") - before == 4  # 10 texts in chunks of 3
        top = chunked.rerank(query, texts, top_n=3, return_text=True)
    assert_rankings(ranking, direct(url, "rerank", {"query": query, "texts": texts}))
    assert_rankings(merged, direct(url, "rerank", {"query": query, "texts": texts}))
    assert_rankings(top, direct(url, "rerank", {"query": query, "texts": texts, "top_n": 3, "return_text": True}))


def test_predict_is_the_raw_route(url: str) -> None:
    with Client(url) as client:
        assert client.predict("sentiment", {"input": TEXTS, "top_k": 1}) == direct(url, "sentiment", {"input": TEXTS, "top_k": 1})
        assert client.predict("embedder", TEXTS[0], version="1.0") == direct(url, "embedder", TEXTS[0])


def test_the_model_is_found_when_one_is_served(load: Callable[..., Model], server_factory: Callable[..., ThreadServer],
                                               url: str) -> None:
    with server_factory({"only": load("embed")}) as server, Client(server.url) as client:
        np.testing.assert_allclose(client.embed(TEXTS), direct(server.url, "only", TEXTS), atol=1e-6)
    with Client(url) as client, pytest.raises(ValueError) as caught:
        client.embed(TEXTS)
    served_names = "embedder, ner, qa, rerank, sentiment"
    assert str(caught.value) == f"name a model: pass model= to the Client or the call (the server serves: {served_names})"


# -- errors -----------------------------------------------------------------------------------------------------------


def test_errors_carry_the_servers_status_type_and_message(load: Callable[..., Model],
                                                          server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"embedder": load("embed"), "sentiment": load("classify")}, max_items=4) as server:
        with Client(server.url, model="embedder", max_retries=0, chunk_size=10) as client:
            cases: list[tuple[Callable[[], Any], type[Exception], int, str, str]] = [
                (lambda: client.embed([]), InvalidInput, 422, "InvalidInput", "field 'input' is an empty list"),
                (lambda: client.embed(["a", 1]), InvalidInput, 422, "InvalidInput", "input[1] must be a string, got number"),
                (lambda: client.embed(TEXTS), PayloadTooLarge, 413, "PayloadTooLarge",
                 "field 'input' has 5 items, over the limit of 4"),
                (lambda: client.embed("word " * 300, truncate=False), PayloadTooLarge, 413, "PayloadTooLarge", None),
                (lambda: client.embed("a", model="nope"), NotFound, 404, "ModelNotFound",
                 "model 'nope' not found (models: embedder, sentiment)"),
                (lambda: client.classify("a", model="sentiment", top_k=9), InvalidInput, 422, "InvalidInput",
                 "field 'top_k' must be <= 3 (the number of labels), got 9"),
            ]
            for call, cls, status, kind, message in cases:
                with pytest.raises(cls) as caught:
                    call()
                error = caught.value
                assert (error.status, error.type) == (status, kind)
                if message is not None:
                    assert error.message == str(error) == message
            too_long = httpx.post(f"{server.url}/predictions/embedder", json={"input": "word " * 300, "truncate": False})
            with pytest.raises(PayloadTooLarge) as caught:
                client.embed("word " * 300, truncate=False)
            assert caught.value.body == too_long.json()
        with Client(server.url, model="embedder", chunk_size=2, max_retries=0) as client:
            assert client.embed(TEXTS).shape[0] == 5  # chunks stay under the server's max_items


def test_an_error_in_a_chunk_says_where_the_chunk_starts(url: str) -> None:
    texts: list[Any] = ["a", "b", "c", "d", "e", 7]
    with Client(url, model="embedder", chunk_size=4) as client, pytest.raises(InvalidInput) as caught:
        client.embed(texts)
    assert (caught.value.message, caught.value.offset) == ("input[1] must be a string, got number", 4)
    note = "(in the chunk that starts at item 4: indexes count from there)"
    assert str(caught.value) == f"input[1] must be a string, got number {note}"

    async def chunked() -> Any:
        async with AsyncClient(url, model="embedder", chunk_size=2) as client:
            return await client.embed([1, "b", "c", ""])

    with pytest.raises(InvalidInput) as first:
        asyncio.run(chunked())
    assert (first.value.message, first.value.offset) == ("input[0] must be a string, got number", 0)  # input order


def test_inference_token(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"embedder": load("embed")}, inference_token="s3cret") as server:
        with Client(server.url, model="embedder") as anonymous, pytest.raises(Unauthorized) as caught:
            anonymous.embed("a")
        assert caught.value.message == "the inference API needs the header 'Authorization: Bearer <token>' (see the key file)"
        with Client(server.url, model="embedder", token="s3cret") as client:
            np.testing.assert_allclose(client.embed("a"), httpx.post(
                f"{server.url}/predictions/embedder", json="a", headers={"authorization": "Bearer s3cret"}).json(), atol=1e-6)


def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    with Client(f"http://127.0.0.1:{port}", model="m", max_retries=2, backoff=0.01) as client:
        with pytest.raises(APIConnectionError) as caught:
            client.embed("a")
    assert caught.value.status is None and caught.value.sent is False and "ConnectError" in caught.value.message


# -- retries on a really overloaded model ------------------------------------------------------------------------------


def fill(model: str) -> Callable[[str], object]:
    return lambda base: httpx.post(f"{base}/predictions/{model}", json="held", timeout=WAIT_S)


def test_overload_is_retried_after_retry_after_then_raised(load: Callable[..., Model],
                                                            server_factory: Callable[..., ThreadServer],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="berthing.client")
    with overloaded(load("embed"), "busy", server_factory, fill("busy")) as server:
        with Client(server.url, model="busy", max_retries=2, backoff=0.01) as client, pytest.raises(Overloaded) as caught:
            client.embed("a")
        assert served(server.url, "busy", "503") == 3  # one try and two retries, no more
        assert (caught.value.status, caught.value.retry_after) == (503, 1.0)
        waits = re.findall(r"retry (\d) of 2 in ([\d.]+)s", caplog.text)
        assert waits == [("1", "1.00"), ("2", "1.00")]  # Retry-After: 1, not the 0.01 s backoff
        with Client(server.url, model="busy", max_retries=3, max_backoff=0.5) as impatient, pytest.raises(Overloaded):
            impatient.embed("a")  # Retry-After over max_backoff: raised at once
        assert served(server.url, "busy", "503") == 4


def test_a_retry_succeeds_once_the_queue_drains(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with overloaded(load("embed"), "busy", server_factory, fill("busy")) as server:
        gate = server.app.state.registry.get("busy").runtimes[0]
        with Client(server.url, model="busy", max_retries=5) as client, cf.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.embed, TEXTS[0])  # one item: max_queue is 1
            wait_for(lambda: served(server.url, "busy", "503") >= 1, "a shed request")
            gate.release.set()
            vectors = pending.result(timeout=WAIT_S)
        np.testing.assert_allclose(vectors, direct(server.url, "busy", TEXTS[0]), atol=1e-6)
        assert 1 <= served(server.url, "busy", "503") <= 5


# -- AsyncClient ------------------------------------------------------------------------------------------------------


def test_async_client_matches_the_sync_one(url: str) -> None:
    texts = [f"{t} {i}" for i in range(40) for t in TEXTS[:2]]
    query = "what is the weather like?"

    async def main() -> tuple[Any, ...]:
        async with AsyncClient(url, chunk_size=7, max_concurrency=3) as client:
            return await asyncio.gather(
                client.embed(texts, "embedder"), client.embed(TEXTS[0], "embedder"), client.encode(TEXTS, model="embedder"),
                client.classify(TEXTS, "sentiment"), client.ner(["John lives in Paris"], "ner"),
                client.answer("Who wrote it?", CONTEXT, "qa"), client.rerank(query, texts[:20], "rerank", top_n=5),
                client.predict("sentiment", TEXTS),
            )

    vectors, one, encoded, labels, entities, answer, ranking, raw = asyncio.run(main())
    with Client(url) as client:
        np.testing.assert_allclose(vectors, client.embed(texts, "embedder"), atol=1e-6)
        np.testing.assert_allclose(one, client.embed(TEXTS[0], "embedder"), atol=1e-6)
        np.testing.assert_allclose(encoded, client.encode(TEXTS, model="embedder"), atol=1e-6)
        assert labels == client.classify(TEXTS, "sentiment") and raw == direct(url, "sentiment", TEXTS)
        assert entities == client.ner(["John lives in Paris"], "ner")
        assert answer == client.answer("Who wrote it?", CONTEXT, "qa")
    assert_rankings(ranking, direct(url, "rerank", {"query": query, "texts": texts[:20], "top_n": 5}))
    assert vectors.shape == (80, one.shape[0])


def test_async_errors_and_overload(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    async def call(base: str, model: str, texts: Any, **options: Any) -> Any:
        async with AsyncClient(base, model=model, max_retries=1, backoff=0.01, **options) as client:
            return await client.embed(texts)

    with overloaded(load("embed"), "busy", server_factory, fill("busy")) as server:
        with pytest.raises(Overloaded) as caught:
            asyncio.run(call(server.url, "busy", "a"))
        assert caught.value.retry_after == 1.0 and served(server.url, "busy", "503") == 2
        with pytest.raises(NotFound) as missing:
            asyncio.run(call(server.url, "nope", "a"))
        assert missing.value.message == "model 'nope' not found (models: busy)"
        with pytest.raises(InvalidInput) as empty:
            asyncio.run(call(server.url, "busy", []))
        assert empty.value.message == "field 'input' is an empty list"


# -- the management API, on a real `berthing serve` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve(settings: Settings, tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`berthing serve` over a store of tiny models and no models loaded; yields (inference URL, management URL)."""
    store = tmp_path_factory.mktemp("store")
    for kind in ("classify", "embed"):
        shutil.copytree(tiny_model_dir(kind), store / kind)
    env = {"BERTHING_CACHE_DIR": str(settings.cache_dir), "BERTHING_MODEL_STORE": str(store),
           "BERTHING_MANAGEMENT_TOKEN": "admin-token"}
    with cli_server([], env) as (proc, url):
        found = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output)
        assert found, proc.startup_output
        assert json.loads((store / "key_file.json").read_text())["management"]["key"] == "admin-token"
        yield url, found.group(1)


def test_management_lifecycle(serve: tuple[str, str]) -> None:
    url, admin = serve
    with Client(url, management_url=admin, management_token="admin-token") as client:
        assert client.models() == []
        assert client.register("classify", "s", initial_workers=1) == 'Model "s" Version: 1.0 registered with 1 initial workers'
        assert client.register("classify", "s", version="2.0") == 'Model "s" Version: 2.0 registered with 1 initial workers'
        entries = client.models()
        assert [(e.name, e.url, e.status) for e in entries] == [("s", "classify", None)]
        described = client.describe("s")
        assert [(d["modelVersion"], d["isDefault"]) for d in described] == [("1.0", True), ("2.0", False)]
        assert client.scale("s", 2, version="2.0") == 'Workers of model "s" version 2.0 scaled to 2'
        assert client.describe("s", "2.0")[0]["workers"] == 2
        assert client.set_default("s", "2.0") == 'Default version of model "s" set to 2.0'
        assert client.classify(TEXTS, "s") == client.classify(TEXTS, "s", version="2.0")
        assert client.classify(TEXTS, "s:1.0") == client.classify(TEXTS, "s", version="1.0")
        with pytest.raises(Conflict) as twice:
            client.register("classify", "s", version="2.0")
        assert twice.value.message == "model 's' version '2.0' is already registered"
        with pytest.raises(Conflict) as default:
            client.unregister("s")  # the default version, while another remains
        assert default.value.message == "version '2.0' is the default of model 's'; set another default first (versions: 1.0)"
        assert client.unregister("s", "1.0") == 'Model "s" version 1.0 unregistered'
        assert client.unregister("s") == 'Model "s" version 2.0 unregistered'
        with pytest.raises(NotFound):
            client.describe("s")
        assert client.models() == []


def test_management_errors_and_async(serve: tuple[str, str]) -> None:
    url, admin = serve
    with Client(url, management_url=admin) as anonymous, pytest.raises(Unauthorized) as caught:
        anonymous.models()
    assert caught.value.message == "the management API needs the header 'Authorization: Bearer <token>' (see the key file)"

    async def lifecycle() -> tuple[Any, ...]:
        async with AsyncClient(url, management_url=admin, management_token="admin-token") as client:
            registered = await client.register("embed", "e")
            vectors = await client.embed(TEXTS, "e")
            listed = await client.models()
            gone = await client.unregister("e")
            return registered, vectors, listed, gone

    registered, vectors, listed, gone = asyncio.run(lifecycle())
    assert registered == 'Model "e" Version: 1.0 registered with 1 initial workers'
    assert vectors.shape[0] == len(TEXTS) and [e.name for e in listed] == ["e"]
    assert gone == 'Model "e" version 1.0 unregistered'


def test_management_url_defaults_to_port_8081() -> None:
    with Client("http://10.0.0.5:8080") as remote, Client("https://[::1]:9000/") as six:
        assert (remote.management_url, six.management_url) == ("http://10.0.0.5:8081", "https://[::1]:8081")
    assert AsyncClient(management_url="http://127.0.0.1:7/").management_url == "http://127.0.0.1:7"


def test_import_berthing_does_not_import_the_client() -> None:
    import subprocess
    import sys

    code = "import sys, berthing; assert 'httpx' not in sys.modules and 'berthing.client' not in sys.modules; berthing.Client"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).returncode == 0

