"""Task-level parity for every architecture: NER, QA and rerank through Model.predict against HuggingFace's own code.

test_architectures.py proves the heads' raw logits per architecture; this proves what the task modules make of them,
where tokenizers differ most: byte-level BPE (RoBERTa), sentencepiece Unigram (XLM-R), MPNet's <s>/</s> specials,
DistilBERT without token types. References: transformers' token-classification pipeline for each aggregation
strategy, transformers 4.57's question-answering pipeline (its own environment, tests/support/hf457.py) and
sentence-transformers' CrossEncoder.predict/rank. One server round-trip per task checks the HTTP path.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from berthing.config import Settings
from berthing.engine.model import Model
from berthing.loading import load_model
from berthing.packaging.sources import ModelSource
from berthing.registry import Registry
from berthing.types import TextPair
from tests.support import hf457
from tests.support.http import clone
from tests.support.models import ARCHS
from tests.support.ner import assert_same_entities
from tests.support.servers import ThreadServer
from tests.support.texts import mixed_sentences

STRATEGIES = ("none", "simple", "first", "average", "max")
TOLERANCE = 1e-4


def kind(arch: str, task: str) -> str:
    """The tiny model kind; BERT's are the plain kinds the other tests use (loaded once for all)."""
    return task if arch == "bert" else f"{arch}-{task}"


def _post(url: str, payload: object) -> Any:
    response = httpx.post(url, json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _untruncated_length(model: Model, text: str) -> int:
    """Tokens of `text` with specials and no truncation (the shared encoder truncates at max length)."""
    tok = Tokenizer.from_file(str(model.encoder.tokenizer_file))
    tok.no_truncation()
    return len(tok.encode(text).ids)


# -- NER: pipeline("token-classification", aggregation_strategy=S) ---------------------------------------------------

NER_HANDWRITTEN = [
    "My name is Sarah Jones and I live in London, working for Acme Corporation since 2019.",
    "Unbelievably, the tokenization of café and cafe\u0301 differs; 江泽民 visited 北京 in 1998!",  # unk pieces in XLM-R
    "Angela Merkel met Emmanuel Macron in Strasbourg to discuss the Schengen agreement.",
    "hello [SEP] world, ﬁne ½ — ok?",
    "  leading spaces,   runs of   spaces and a tab\there (byte-level BPE's Ġ tokens)",
    "中共中央总书记、国家主席江泽民发表１９９８年新年讲话。",
]


def _ner_texts(model: Model) -> list[str]:
    """Texts the pipeline reads whole (it truncates where berthing windows): each under the model's max length."""
    pool = NER_HANDWRITTEN + mixed_sentences(40)
    fits = [t for t in pool if len(model.encoder.encode([t])[0].ids) < model.encoder.max_length]
    return fits[:20]


_PIPES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def ner_pipe(tiny_model_dir: Callable[[str], Path]) -> Callable[[str], Any]:
    """Factory: ner_pipe(arch) -> transformers' token-classification pipeline on the tiny model, built once."""
    from transformers import pipeline

    def _pipe(arch: str) -> Any:
        if arch not in _PIPES:
            _PIPES[arch] = pipeline("token-classification", model=str(tiny_model_dir(kind(arch, "ner"))), device="cpu")
        return _PIPES[arch]

    return _pipe



@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("arch", ARCHS)
def test_ner_matches_pipeline(
    arch: str, strategy: str, load: Callable[..., Model], ner_pipe: Callable[[str], Any], record_property: Any
) -> None:
    model = load(kind(arch, "ner"))
    pipe = ner_pipe(arch)
    texts = _ner_texts(model)
    assert len(texts) == 20
    worst = 0.0
    for options in ({}, {"ignore_labels": []}):  # the default (drop O), and every token / group
        reference = pipe(texts, aggregation_strategy=strategy, **options)
        assert sum(1 for r in reference if r) >= (len(texts) if options else len(texts) - 3), "too few entities to compare"
        assert sum(len(r) for r in reference) >= 2 * len(texts)
        got = model.predict(texts, aggregation_strategy=strategy, **options)
        worst = max(worst, assert_same_entities(reference, got, texts, strategy))
    record_property("max_score_diff", worst)


def test_ner_over_http_matches_python(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    """One request per architecture to one server: the same entities as Model.predict (checked above)."""
    models = {arch: load(kind(arch, "ner")) for arch in ARCHS}
    with server_factory(models) as server:
        for arch, model in models.items():
            texts = _ner_texts(model)[:8]
            got = _post(f"{server.url}/predictions/{arch}", {"input": texts, "aggregation_strategy": "average"})
            want = model.predict(texts, aggregation_strategy="average")
            assert [[(e["entity_group"], e["start"], e["end"], e["word"]) for e in g] for g in got] == [
                [(e["entity_group"], e["start"], e["end"], e["word"]) for e in w] for w in want
            ], arch
            gaps = [abs(e["score"] - f["score"]) for g, w in zip(got, want, strict=True) for e, f in zip(g, w, strict=True)]
            assert gaps and max(gaps) < 1e-6


# -- QA: transformers 4.57's question-answering pipeline ---------------------------------------------------------------

QA_INPUTS = [
    {"question": "Where does Alice live?", "context": "Alice lives in Paris with her two cats. Bob lives in Berlin."},
    {"question": "What did the fox jump over?", "context": "The quick brown fox jumps over the lazy dog near the river."},
    {"question": "Who wrote it?", "context": "Unaffable reviewers praised the novel; its author, Zoë Müller-Lüdenscheidt, "
     "did not."},
    {"question": "Which city?", "context": "Tokyo."},
    {"question": "  What is   the capital?", "context": "  The capital of France is Paris.   北京是中国的首都。"},
]
FILLER = (
    "The committee met on Tuesday to discuss the budget for the coming year. Several members raised concerns about "
    "the rising cost of maintenance, while others argued that new investment was overdue. "
)
NEEDLE = "The treasurer, Margaret Okafor, announced that the reserve fund holds 4.2 million euros. "
# Over 4x the tiny models' 128 tokens for every tokenizer (BERT's WordPiece is the densest): the answer early,
# in the middle and late.
QA_LONG = [
    {"question": "How much does the reserve fund hold?", "context": FILLER * 8 + NEEDLE + FILLER * 7},
    {"question": "Who is the treasurer?", "context": NEEDLE + FILLER * 15},
    {"question": "What did members raise?", "context": FILLER * 15 + NEEDLE},
]
QA_CASES: dict[str, tuple[list[dict[str, str]], dict[str, Any]]] = {
    "default": (QA_INPUTS, {}),
    "top-k": (QA_INPUTS, {"top_k": 3}),
    "impossible": (QA_INPUTS, {"handle_impossible_answer": True, "top_k": 2}),
    "not-aligned": (QA_INPUTS, {"align_to_words": False, "top_k": 3}),
    "long": (QA_LONG, {"doc_stride": 32, "top_k": 2}),
    "long-default-stride": (QA_LONG, {}),
    "long-impossible": (QA_LONG, {"doc_stride": 48, "handle_impossible_answer": True}),
}


@pytest.fixture(scope="module")
def qa_reference(tiny_model_dir: Callable[[str], Path]) -> dict[str, dict[str, list[Any]]]:
    """{arch: {case: answers}} from transformers 4.57's pipeline: every architecture in one child process."""
    cases = [{"inputs": inputs, "options": options} for inputs, options in QA_CASES.values()]
    answer = hf457.question_answering_many({arch: tiny_model_dir(kind(arch, "qa")) for arch in ARCHS}, cases)
    assert answer["versions"]["transformers"].startswith("4.57.")
    return {arch: dict(zip(QA_CASES, answer["results"][arch], strict=True)) for arch in ARCHS}


def assert_same_answers(got: list[Any], want: list[Any], inputs: list[dict[str, str]]) -> float:
    """Answer, start and end exact, score within 1e-4, per answer (lists when top_k > 1); returns the largest gap."""
    worst = 0.0
    assert len(got) == len(want) == len(inputs)
    for g, w, item in zip(got, want, inputs, strict=True):
        g_list, w_list = (g, w) if isinstance(w, list) else ([g], [w])
        assert [(a["answer"], a["start"], a["end"]) for a in g_list] == [(a["answer"], a["start"], a["end"]) for a in w_list]
        for a, b in zip(g_list, w_list, strict=True):
            worst = max(worst, abs(a["score"] - b["score"]))
            assert a["answer"] == (item["context"][a["start"] : a["end"]] if a["answer"] else "")
    assert worst <= TOLERANCE, worst
    return worst


@pytest.mark.parametrize("case", list(QA_CASES))
@pytest.mark.parametrize("arch", ARCHS)
def test_qa_matches_pipeline(
    arch: str, case: str, load: Callable[..., Model], qa_reference: dict[str, dict[str, list[Any]]], record_property: Any
) -> None:
    model = load(kind(arch, "qa"))
    inputs, options = QA_CASES[case]
    if inputs is QA_LONG:  # really over 4x the max length, so really windowed
        assert all(_untruncated_length(model, x["context"]) > 4 * model.encoder.max_length for x in inputs)
    got = model.predict(inputs, **options)
    record_property("max_score_diff", assert_same_answers(got, qa_reference[arch][case], inputs))


def test_qa_over_http_matches_pipeline(
    load: Callable[..., Model], qa_reference: dict[str, dict[str, list[Any]]], server_factory: Callable[..., ThreadServer]
) -> None:
    """The long contexts (many windows) over HTTP, one request per architecture, against the pipeline."""
    models = {arch: load(kind(arch, "qa")) for arch in ARCHS}
    inputs, options = QA_CASES["long"]
    with server_factory(models) as server:
        for arch in ARCHS:
            got = _post(f"{server.url}/predictions/{arch}", {"input": inputs, **options})
            assert_same_answers(got, qa_reference[arch]["long"], inputs)


# -- rerank: sentence-transformers' CrossEncoder.predict / rank ---------------------------------------------------------

QUERY = "how does the model server batch requests"
LONG_QUERY = " ".join(["deploying bert to production used to mean writing a custom handler"] * 8)
RERANK_TEXTS = [*mixed_sentences(24, seed=11), *[t for t in mixed_sentences(80, seed=3) if len(t) > 300][:4], "教练"]
SHARP_STD = 0.25  # logit spread; the head's input varies by ~1e-3, so louder heads would lift float noise toward 1e-4
NEAR_TIE = 2e-5  # scores this close may swap places (their float noise is ~5e-6); anything farther apart keeps its order


def _sharpened(tiny: Path, target: Path) -> Path:
    """The tiny cross-encoder with a louder final linear layer: its raw logits differ by ~1e-5, too little for an order.

    The new weights point along the layer input's main direction of variation (its first principal component), so a
    std of SHARP_STD takes the smallest weights (least float noise amplified) and no large constant is cancelled by
    the bias (a random direction gave ~1e3 logits minus a ~1e3 bias: 6e-4 of float32 rounding).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (target / "config.json").exists():
        return target
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny)).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    sample = AutoTokenizer.from_pretrained(str(tiny))([QUERY] * len(RERANK_TEXTS), RERANK_TEXTS, padding=True,
                                                      truncation=True, return_tensors="pt")
    with torch.no_grad():
        model(**sample)
        hook.remove()
        features = seen[0]
        centred = features - features.mean(0, keepdim=True)
        weight = torch.linalg.svd(centred, full_matrices=False).Vh[:1]  # the direction the inputs vary most along
        weight = weight * torch.sign(weight[0, weight[0].abs().argmax()])  # a sign that doesn't depend on the SVD
        weight = weight * (SHARP_STD / float((features @ weight.T).std()))
        last.weight.copy_(weight)
        last.bias.fill_(-float((features @ weight.T).mean()))
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for path in tiny.iterdir():  # tokenizer files of whichever family
        if path.is_file() and not (tmp / path.name).exists():
            shutil.copy2(path, tmp / path.name)
    tmp.rename(target)
    return target


_SHARP: dict[str, tuple[Model, Any]] = {}


@pytest.fixture(scope="module")
def sharp(tiny_model_dir: Callable[[str], Path], cache_dir: Path, settings: Settings) -> Callable[[str], tuple[Model, Any]]:
    """Factory: sharp(arch) -> (berthing Model, sentence-transformers CrossEncoder) of the sharpened cross-encoder."""
    from sentence_transformers import CrossEncoder

    def _sharp(arch: str) -> tuple[Model, Any]:
        if arch not in _SHARP:
            folder = _sharpened(tiny_model_dir(kind(arch, "rerank")), cache_dir / "tiny" / f"{arch}-rerank-sharp-v2")
            model = load_model(ModelSource(f"{arch}-sharp", folder), settings.load_options())
            _SHARP[arch] = (model, CrossEncoder(str(folder), device="cpu"))
        return _SHARP[arch]

    return _sharp


def cross_encoder_scores(encoder: Any, query: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid scores, raw logits) from CrossEncoder.predict for a query and its texts."""
    import torch

    pairs = [(query, t) for t in texts]
    scores = encoder.predict(pairs, batch_size=8)
    logits = encoder.predict(pairs, batch_size=8, activation_fn=torch.nn.Identity())
    return np.asarray(scores, dtype=np.float64), np.asarray(logits, dtype=np.float64)


def assert_same_ranking(ranking: list[dict[str, Any]], scores: np.ndarray, logits: np.ndarray, rank: list[dict]) -> float:
    """Scores and logits within 1e-4 of CrossEncoder's; the order of CrossEncoder.rank (a swap only between near-ties
    closer than NEAR_TIE). Returns the largest score gap."""
    assert sorted(r["index"] for r in ranking) == list(range(len(scores)))
    worst = 0.0
    for r in ranking:
        worst = max(worst, abs(r["score"] - scores[r["index"]]))
        assert abs(r["logit"] - logits[r["index"]]) < TOLERANCE, (r, logits[r["index"]])
    assert worst < TOLERANCE, worst
    assert len(rank) == len(ranking)
    for ours, theirs in zip(ranking, rank, strict=True):
        if ours["index"] != theirs["corpus_id"]:
            assert abs(scores[ours["index"]] - float(theirs["score"])) < NEAR_TIE, (ours, theirs)
    assert all(a >= b - NEAR_TIE for a, b in pairwise(scores[r["index"]] for r in ranking))
    return worst


@pytest.mark.parametrize("arch", ARCHS)
def test_rerank_matches_cross_encoder(arch: str, sharp: Callable[[str], tuple[Model, Any]], record_property: Any) -> None:
    model, encoder = sharp(arch)
    assert model.spec.model_type == arch
    worst = 0.0
    for query in (QUERY, LONG_QUERY):  # the long query makes pairs truncate longest_first on both sides
        scores, logits = cross_encoder_scores(encoder, query, RERANK_TEXTS)
        assert logits.std() > 0.05, "logits too close for the order to mean anything"
        ranking = model.predict({"query": query, "texts": RERANK_TEXTS})
        worst = max(worst, assert_same_ranking(ranking, scores, logits, encoder.rank(query, RERANK_TEXTS)))
    assert any(model.encoder.encode([TextPair(LONG_QUERY, t)])[0].encoding.overflowing for t in RERANK_TEXTS)
    record_property("max_score_diff", worst)


@pytest.fixture()
def rerank_server(sharp: Callable[[str], tuple[Model, Any]], settings: Settings) -> Iterator[str]:
    registry = Registry()
    for arch in ARCHS:
        registry.add(clone(sharp(arch)[0], arch))
    with ThreadServer(registry, settings) as server:
        yield server.url


def test_rerank_over_http_matches_cross_encoder(sharp: Callable[[str], tuple[Model, Any]], rerank_server: str) -> None:
    for arch in ARCHS:
        encoder = sharp(arch)[1]
        scores, logits = cross_encoder_scores(encoder, QUERY, RERANK_TEXTS)
        ranking = _post(f"{rerank_server}/predictions/{arch}", {"query": QUERY, "texts": RERANK_TEXTS})
        assert_same_ranking(ranking, scores, logits, encoder.rank(QUERY, RERANK_TEXTS))
