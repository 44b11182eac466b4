"""Reranking: parity with sentence-transformers' CrossEncoder (Python API and a real server) and every input error."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from berthing.config import Settings
from berthing.engine.model import Model
from berthing.loading import load_model
from berthing.packaging.sources import ModelSource
from berthing.registry import Registry
from berthing.types import PayloadTooLarge
from tests.support.http import clone
from tests.support.servers import ThreadServer
from tests.support.texts import mixed_sentences

QUERY = "how does the model server batch requests"
TEXTS = mixed_sentences(24, seed=11)
LONG_QUERY = " ".join(["deploying bert to production used to mean writing a custom handler"] * 8)  # ~90 tokens
TOLERANCE = 1e-4


def _sharpened(tiny: Path, target: Path) -> Path:
    """The tiny cross-encoder with a louder head: its raw logits differ by ~1e-5, too little to test an order.

    The classifier weights are scaled so logits spread over a few tenths; larger scales would also scale the
    ONNX/torch float error past the 1e-4 tolerance.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (target / "config.json").exists():
        return target
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny)).eval()
    sample = AutoTokenizer.from_pretrained(str(tiny))([QUERY] * len(TEXTS), TEXTS, padding=True, truncation=True,
                                                      return_tensors="pt")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        model.classifier.weight.copy_(torch.randn(1, model.config.hidden_size, generator=generator) * 40)
        model.classifier.bias.fill_(0.0)
        model.classifier.bias.fill_(-float(model(**sample).logits.mean()))  # centred: scores spread around 0.5
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(tiny / name, tmp / name)
    tmp.rename(target)
    return target


@pytest.fixture(scope="module")
def sharp(tiny_model_dir: Callable[[str], Path], cache_dir: Path, settings: Settings) -> tuple[Path, Model]:
    """(folder, loaded model) of the sharpened cross-encoder."""
    folder = _sharpened(tiny_model_dir("rerank"), cache_dir / "tiny" / "rerank-sharp-v2")
    return folder, load_model(ModelSource("sharp", folder), settings.load_options())


@pytest.fixture(scope="module")
def reference(sharp: tuple[Path, Model]) -> Callable[[str, list[str]], tuple[np.ndarray, np.ndarray]]:
    """(activated scores, raw logits) from CrossEncoder for a query and its texts."""
    import torch
    from sentence_transformers import CrossEncoder

    encoder = CrossEncoder(str(sharp[0]), device="cpu")
    assert isinstance(encoder.activation_fn, torch.nn.Sigmoid)  # the default for a 1-label model

    def score(query: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(query, t) for t in texts]
        activated = encoder.predict(pairs, batch_size=8)
        raw = encoder.predict(pairs, batch_size=8, activation_fn=torch.nn.Identity())
        return np.asarray(activated, dtype=np.float64), np.asarray(raw, dtype=np.float64)

    score.rank = encoder.rank  # type: ignore[attr-defined]
    return score


def assert_matches(ranking: list[dict[str, Any]], scores: np.ndarray, logits: np.ndarray, top_n: int | None = None) -> None:
    """Scores and logits within 1e-4 of CrossEncoder's, in its order (near-ties within the tolerance may swap)."""
    assert len(ranking) == (top_n or len(scores))
    assert len({r["index"] for r in ranking}) == len(ranking)
    for r in ranking:
        assert abs(r["score"] - scores[r["index"]]) < TOLERANCE
        assert abs(r["logit"] - logits[r["index"]]) < TOLERANCE
    ours = [scores[r["index"]] for r in ranking]
    assert all(a >= b - 1e-5 for a, b in pairwise(ours)), "not in CrossEncoder's order"
    best = np.sort(scores)[::-1][: len(ranking)]
    np.testing.assert_allclose(ours, best, atol=1e-5)  # the top_n kept are CrossEncoder's best


def test_python_api_matches_cross_encoder(sharp, reference) -> None:
    model = sharp[1]
    scores, logits = reference(QUERY, TEXTS)
    assert logits.std() > 0.1 and 0.2 < scores.mean() < 0.8  # the order below means something
    ranking = model.predict({"query": QUERY, "texts": TEXTS})
    assert_matches(ranking, scores, logits)
    assert [r["index"] for r in ranking] == [r["corpus_id"] for r in reference.rank(QUERY, TEXTS)]
    top = model.predict({"query": QUERY, "texts": TEXTS}, top_n=3, return_text=True)
    assert top == [{**r, "text": TEXTS[r["index"]]} for r in ranking[:3]]
    np.testing.assert_allclose([r["score"] for r in ranking], 1 / (1 + np.exp(-np.array([r["logit"] for r in ranking]))),
                               atol=1e-9)


def test_truncated_pairs_match_cross_encoder(sharp, reference) -> None:
    """Long query and long texts: both sides cut longest_first to 128 tokens, as CrossEncoder's tokenizer call does."""
    model = sharp[1]
    texts = [*[t for t in mixed_sentences(80, seed=3) if len(t) > 300][:8], "short text", "教练"]
    assert model.encoder.tokenizer.encode(LONG_QUERY, texts[0]).overflowing  # truncation really happens
    scores, logits = reference(LONG_QUERY, texts)
    assert_matches(model.predict({"query": LONG_QUERY, "texts": texts}), scores, logits)
    message = ("input.texts[0]: query and text together are longer than the model's max length of 128 tokens "
               "and truncate is false")
    with pytest.raises(PayloadTooLarge) as info:
        model.predict({"query": LONG_QUERY, "texts": texts}, truncate=False)
    assert info.value.message == message


def test_list_of_rankings_from_python(sharp, reference) -> None:
    model = sharp[1]
    second = ["a quick brown fox", "the river bank", "embeddings turn sentences into vectors"]
    got = model.predict([{"query": QUERY, "texts": TEXTS[:6]}, {"query": "fox", "texts": second}], top_n=2)
    assert len(got) == 2
    assert_matches(got[0], *reference(QUERY, TEXTS[:6]), top_n=2)
    assert_matches(got[1], *reference("fox", second), top_n=2)


def test_server_matches_cross_encoder(sharp, reference, server_factory: Callable[..., ThreadServer]) -> None:
    scores, logits = reference(QUERY, TEXTS)
    long_texts = [t for t in mixed_sentences(80, seed=3) if len(t) > 300][:4]
    long_scores, long_logits = reference(LONG_QUERY, long_texts)
    with server_factory({"rerank": sharp[1]}) as server:
        url = f"{server.url}/predictions/rerank"
        ranking = httpx.post(url, json={"query": QUERY, "texts": TEXTS}, timeout=60).json()
        top = httpx.post(url, json={"query": QUERY, "texts": TEXTS, "top_n": 5, "return_text": True}, timeout=60).json()
        many = httpx.post(url, json={"input": [{"query": QUERY, "texts": TEXTS}, {"query": LONG_QUERY, "texts": long_texts}]},
                          timeout=60).json()
        one = httpx.post(url, json={"input": {"query": QUERY, "texts": TEXTS}, "top_n": 2}, timeout=60).json()
        as_list = httpx.post(url, json=[{"query": QUERY, "texts": TEXTS[:3]}], timeout=60).json()
    assert_matches(ranking, scores, logits)
    assert top == [{**r, "text": TEXTS[r["index"]]} for r in ranking[:5]]
    assert many[0] == ranking
    assert_matches(many[1], long_scores, long_logits)
    assert one == ranking[:2]
    assert len(as_list) == 1 and sorted(r["index"] for r in as_list[0]) == [0, 1, 2]


def test_pairs_of_one_request_batch_together(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    """One item per text through the batcher: 8 texts are one runtime call of 8 rows, not 8 calls."""
    base = load("rerank")
    calls: list[int] = []

    class Counting:
        name, threads = base.runtimes[0].name, base.runtimes[0].threads

        def run(self, features: Any) -> np.ndarray:
            calls.append(features.input_ids.shape[0])
            return base.runtimes[0].run(features)

    with server_factory({"counted": clone(base, "counted", [Counting()])}) as server:
        response = httpx.post(f"{server.url}/predictions/counted", json={"query": "q", "texts": [f"text {i}" for i in range(8)]})
    assert response.status_code == 200 and len(response.json()) == 8
    assert calls == [8]


def error(code: int, message: str) -> dict[str, Any]:
    kind = {400: "BadRequest", 413: "PayloadTooLarge", 422: "InvalidInput"}[code]
    return {"code": code, "type": kind, "message": message}


SHAPE = '{"query": ..., "texts": [...]}'
FIELDS = "fields: query, texts, input, return_text, top_n, truncate"
ERRORS = [
    ({"texts": ["a"]}, 400, f"missing field 'query' (a reranking model takes {SHAPE})"),
    ({"query": "q"}, 400, f"missing field 'texts' (a reranking model takes {SHAPE})"),
    ({"query": 3, "texts": ["a"]}, 422, "field 'query' must be a string, got number"),
    ({"query": " ", "texts": ["a"]}, 422, "field 'query' is empty or blank"),
    ({"query": "q", "texts": "a"}, 422, "field 'texts' must be a list of strings, got string"),
    ({"query": "q", "texts": []}, 422, "field 'texts' is an empty list"),
    ({"query": "q", "texts": ["a", 5]}, 422, "texts[1] must be a string, got number"),
    ({"query": "q", "texts": ["a", None]}, 422, "texts[1] must be a string, got null"),
    ({"query": "q", "texts": ["a", "  "]}, 422, "texts[1] is empty or blank"),
    ({"query": "q", "texts": ["a"], "top_n": 0}, 422, "field 'top_n' must be >= 1, got 0"),
    ({"query": "q", "texts": ["a"], "top_n": "2"}, 422, "field 'top_n' must be an integer, got \"2\""),
    ({"query": "q", "texts": ["a"], "top_n": 1.5}, 422, "field 'top_n' must be an integer, got 1.5"),
    ({"query": "q", "texts": ["a"], "top_n": True}, 422, "field 'top_n' must be an integer, got true"),
    ({"query": "q", "texts": ["a"], "return_text": "yes"}, 422, "field 'return_text' must be true or false, got \"yes\""),
    ({"query": "q", "texts": ["a"], "truncate": 1}, 422, "field 'truncate' must be true or false, got 1"),
    ({"query": "q", "texts": ["a"], "raw_scores": True}, 422, f"unknown field 'raw_scores' for a reranking model ({FIELDS})"),
    ({"query": "q", "texts": ["a"], "is_tokenized": True}, 422,
     f"unknown field 'is_tokenized' for a reranking model ({FIELDS})"),
    ({"input": "q"}, 422, f"field 'input' must be a {SHAPE} object or a list of them, got string"),
    ({"input": []}, 422, "field 'input' is an empty list"),
    ({"input": ["q"]}, 422, f"input[0] must be a {SHAPE} object, got string"),
    ({"input": [{"query": "q", "texts": ["a"]}, {"texts": ["a"]}]}, 422, "input[1].query is missing"),
    ({"input": [{"query": "q", "texts": ["a", 1]}]}, 422, "input[0].texts[1] must be a string, got number"),
    ({"input": {"query": "q", "texts": []}}, 422, "input.texts is an empty list"),
    ({"input": {"query": "q", "texts": ["a"], "top_n": 1}}, 422,
     f"input has unknown field 'top_n' (a ranking is {SHAPE}; options go beside 'input')"),
    ({"input": {"query": "q", "texts": ["a"]}, "query": "q"}, 422, "fields 'input', 'query' given together; send one form"),
]


@pytest.mark.parametrize(("body", "code", "message"), ERRORS, ids=[m for _, _, m in ERRORS])
def test_errors(body: dict[str, Any], code: int, message: str, rerank_url: str) -> None:
    response = httpx.post(rerank_url, json=body)
    assert (response.status_code, response.json()) == (code, error(code, message))


def test_bare_bodies_are_refused(rerank_url: str) -> None:
    text = httpx.post(rerank_url, content=b"just a text", headers={"content-type": "text/plain"})
    message = f"field 'body' must be a {SHAPE} object or a list of them, got string"
    assert (text.status_code, text.json()) == (422, error(422, message))
    strings = httpx.post(rerank_url, json=["a", "b"])
    assert (strings.status_code, strings.json()) == (422, error(422, f"body[0] must be a {SHAPE} object, got string"))


def test_too_many_texts_is_413(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    with server_factory({"rr": load("rerank")}, max_items=3) as server:
        url = f"{server.url}/predictions/rr"
        assert len(httpx.post(url, json={"query": "q", "texts": ["a", "b", "c"]}).json()) == 3
        over = httpx.post(url, json={"query": "q", "texts": ["a", "b", "c", "d"]})
        assert (over.status_code, over.json()) == (413, error(413, "field 'texts' has 4 items, over the limit of 3"))
        split = httpx.post(url, json={"input": [{"query": "q", "texts": ["a", "b"]}, {"query": "r", "texts": ["c", "d"]}]})
        assert (split.status_code, split.json()) == (413, error(413, "field 'input' has 4 texts in all, over the limit of 3"))


def test_truncate_false_names_the_text(rerank_url: str) -> None:
    body = {"query": "q", "texts": ["short", " ".join(["word"] * 200)], "truncate": False}
    response = httpx.post(rerank_url, json=body)
    message = ("texts[1]: query and text together are longer than the model's max length of 128 tokens "
               "and truncate is false")
    assert (response.status_code, response.json()) == (413, error(413, message))


@pytest.fixture(scope="module")
def rerank_url(load: Callable[..., Model], settings: Settings) -> Any:
    """A server with the plain tiny cross-encoder as 'rr', for the error cases."""
    registry = Registry()
    registry.add(clone(load("rerank"), "rr"))
    with ThreadServer(registry, settings) as server:
        yield f"{server.url}/predictions/rr"
