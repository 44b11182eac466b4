"""Hostile texts through a live server: bounded answers, 413 before tokenizing, and no request held up by another.

Each body is under the 8 MiB default limit: 8 MB with no space, 2 million CJK characters (6 MB of UTF-8), 2 million
emoji (8 MB). With truncation they are answered 200, as the text of their first tokens; with truncate false, or
beyond what NER/QA windows hold, 413 before their tokens are made. No timing is asserted (benchmarks/hostile_texts.py
measures it); the last test checks order: a one-word request is answered while a huge one is still tokenizing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from berthing.config import Settings
from berthing.registry import Registry
from berthing.tasks.qa import QaTask
from berthing.types import TextPair
from tests.support.http import clone
from tests.support.servers import ThreadServer

NOSPACE = "abcdefghij" * 800_000
CJK = "中文字符测试" * 333_334
EMOJI = "😀" * 2_000_000
# The same first tokens, short: what each hostile text must be embedded as.
HOSTILE = {"nospace": (NOSPACE, "abcdefghij" * 20), "cjk": (CJK, "中文字符测试" * 100), "emoji": (EMOJI, "😀" * 200)}


def post(url: str, body: dict[str, Any], timeout: float = 120) -> httpx.Response:
    """A JSON body as raw UTF-8 (orjson), so the CJK and emoji cost 3 and 4 bytes, not a 6-byte escape each."""
    return httpx.post(url, content=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(load, settings: Settings) -> Iterator[str]:
    """A server with the tiny NER, QA and reranking models (max length 128)."""
    registry = Registry()
    for kind in ("ner", "qa", "rerank"):
        registry.add(clone(load(kind), kind))
    with ThreadServer(registry, settings) as server:
        yield server.url


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_texts_are_embedded_as_their_first_tokens(name: str, minilm_server: ThreadServer) -> None:
    text, short = HOSTILE[name]
    url = f"{minilm_server.url}/predictions/minilm"
    body = orjson.dumps({"input": text})
    assert len(body) <= Settings().max_body_bytes
    response = post(url, {"input": text})
    assert response.status_code == 200, response.text
    expected = post(url, {"input": short}).json()
    np.testing.assert_allclose(response.json(), expected, atol=1e-5)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_texts_with_truncate_false_are_refused(name: str, minilm_server: ThreadServer) -> None:
    text, _ = HOSTILE[name]
    response = post(f"{minilm_server.url}/predictions/minilm", {"input": text, "truncate": False})
    assert response.status_code == 413, response.text
    assert response.json() == {
        "code": 413, "type": "PayloadTooLarge",
        "message": f"input[0] has {len(text)} characters, over the 4096 allowed with truncate false (16 per token of "
                   "the model's max length of 256 tokens); send a shorter text or set truncate to true",
    }


def test_ner_and_qa_refuse_what_their_windows_cannot_hold(tiny: str) -> None:
    """NER: 8 MB over the characters 2048 windows can hold (refused unread), 2M CJK over their tokens (refused
    after a prefix is read); QA the same for a context. Text that fits is still answered."""
    refused = post(f"{tiny}/predictions/ner", {"input": NOSPACE})
    assert refused.status_code == 413
    assert refused.json()["message"] == (
        "input[0] has 8000000 characters, over the 3080704 that 2048 windows of 128 tokens (stride 32) can hold at "
        "16 characters per token; send shorter texts"
    )
    refused = post(f"{tiny}/predictions/ner", {"input": CJK})
    assert refused.status_code == 413
    assert refused.json()["message"] == (
        "input[0] has more than 192544 tokens, more than 2048 windows of 128 tokens (stride 32) can hold; send "
        "shorter texts"
    )
    refused = post(f"{tiny}/predictions/qa", {"question": "what?", "context": CJK[:1_000_000]})
    assert refused.status_code == 413
    assert refused.json()["message"].startswith(
        "the contexts need more than 2048 windows of 128 tokens (input[0] alone needs more than 2048)"
    )
    refused = post(f"{tiny}/predictions/qa", {"question": "what?", "context": NOSPACE})
    assert refused.status_code == 413 and "input[0].context has 8000000 characters" in refused.json()["message"]
    refused = post(f"{tiny}/predictions/qa", {"question": CJK[:10_000], "context": "paris"})
    assert refused.status_code == 413 and "set max_question_len (under 128) to cut it" in refused.json()["message"]
    answered = post(f"{tiny}/predictions/qa", {"question": CJK, "context": "paris", "max_question_len": 8})
    assert answered.status_code == 200, answered.text
    assert post(f"{tiny}/predictions/ner", {"input": "john smith lives in paris"}).status_code == 200


def test_rerank_cuts_hostile_texts_and_refuses_them_without_truncation(tiny: str) -> None:
    body = {"query": CJK[:1_000_000], "texts": ["paris", EMOJI[:1_000_000]]}
    answered = post(f"{tiny}/predictions/rerank", body)
    assert answered.status_code == 200, answered.text
    assert sorted(r["index"] for r in answered.json()) == [0, 1]
    refused = post(f"{tiny}/predictions/rerank", {**body, "truncate": False})
    assert refused.status_code == 413
    assert refused.json()["message"].startswith("texts[0] has 1000005 characters (both texts together), over")


def test_max_question_len_cuts_a_long_question_as_before(load) -> None:
    """The question is read only as far as its first max_question_len+1 tokens, and cut where the whole one was."""
    model = load("qa")
    question = " ".join(f"where does alice{i % 7} live" for i in range(4000))  # 20,000 words
    context = "alice lives in paris and bob lives in berlin . " * 30
    options = model.task.check([TextPair(question, context)], {"max_question_len": 9})
    [expected] = QaTask._cut_questions(model.encoder, [TextPair(question, context)], 9)  # the whole question tokenized
    assert len(expected.text) < 60
    got = model.task.encode(model.encoder, [TextPair(question, context)], options)
    ref = model.task.encode(model.encoder, [expected], options)
    assert [(i.ids, i.encoding.offsets) for i in got] == [(i.ids, i.encoding.offsets) for i in ref]
    assert len(got) > 1  # windows over the context


class Gate:
    """A Rust tokenizer whose calls on a long text wait until released: a huge request held mid-tokenizing."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode_batch(self, batch: list[Any], **kwargs: Any) -> Any:
        if any(isinstance(x, str) and len(x) > 1000 for x in batch):
            self.entered.set()
            self.release.wait(120)
        return self.tokenizer.encode_batch(batch, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def test_small_request_is_answered_while_a_huge_one_is_tokenizing(load, server_factory, monkeypatch) -> None:
    """Order, not time: the huge request is held inside its tokenizing until the one-word request has its answer.
    Were the tokenizing on the event loop, the one-word request would never be answered (and time out)."""
    model = load("minilm", "minilm")
    gate = Gate(model.encoder._counter)
    monkeypatch.setattr(model.encoder, "_counter", gate)
    with server_factory({"minilm": model}) as server:
        url = f"{server.url}/predictions/minilm"
        order: list[str] = []
        huge: dict[str, Any] = {}

        def send_huge() -> None:
            huge["response"] = post(url, {"input": CJK})
            order.append("huge")

        thread = threading.Thread(target=send_huge)
        thread.start()
        try:
            assert gate.entered.wait(60), "the huge request never reached the tokenizer"
            small = post(url, {"input": "hello"}, timeout=60)
            order.append("small")
            assert small.status_code == 200
        finally:
            gate.release.set()
            thread.join(120)
        assert order == ["small", "huge"]
        assert huge["response"].status_code == 200


def test_tei_routes_bound_hostile_texts_too(minilm_server: ThreadServer) -> None:
    """TEI's truncate false is refused before tokenizing (its 422); Left truncation reads only the end of a text;
    /tokenize (untruncated by design) answers a long text from a thread."""
    url = minilm_server.url
    refused = post(f"{url}/embed", {"inputs": CJK, "truncate": False})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error_type"] == "Validation"
    assert refused.json()["error"].startswith(f"Input validation error: inputs[0] has {len(CJK)} characters, over the 4096")
    left = post(f"{url}/embed", {"inputs": NOSPACE + " the end of it", "truncate": True, "truncation_direction": "Left"})
    expected = post(f"{url}/embed", {"inputs": "abcdefghij" * 20 + " the end of it", "truncate": True,
                                     "truncation_direction": "Left"})
    assert left.status_code == 200, left.text
    assert np.asarray(left.json()).shape == np.asarray(expected.json()).shape
    tokens = post(f"{url}/tokenize", {"inputs": "中文" * 50_000, "add_special_tokens": False})
    assert tokens.status_code == 200 and len(tokens.json()[0]) == 100_000
