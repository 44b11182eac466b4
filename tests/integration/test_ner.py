"""Token classification: parity with transformers' pipeline, BIOES grouping, long texts in windows, errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from berthing.engine.model import Model
from berthing.tasks.base import COMMON_OPTIONS
from berthing.tasks.ner import NerTask, group_labels
from berthing.types import InvalidInput
from tests.support.ner import assert_same_entities
from tests.support.servers import ThreadServer
from tests.support.texts import mixed_sentences

STRATEGIES = ["none", "simple", "first", "average", "max"]
HANDWRITTEN = [
    "My name is Sarah Jones and I live in London, working for Acme Corporation since 2019.",
    "Unbelievably, the tokenization of café and cafe\u0301 differs; 江泽民 visited 北京 in 1998!",
    "Angela Merkel met Emmanuel Macron in Strasbourg to discuss the Schengen agreement.",
    "hello [SEP] world, ﬁne ½ — ok?",
    "中共中央总书记、国家主席江泽民发表１９９８年新年讲话。",
]


def _post(url: str, payload: object) -> Any:
    response = httpx.post(url, json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _short_texts(model: Model) -> list[str]:
    """Texts the pipeline reads whole (it truncates at 128 tokens), English, Chinese and mixed."""
    fits = [t for t in mixed_sentences(60) if len(model.encoder.encode([t])[0].ids) < model.encoder.max_length]
    return HANDWRITTEN + fits[:25]



@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_transformers_pipeline(
    strategy: str, tiny_model_dir: Callable[[str], Any], load: Callable[..., Model],
    server_factory: Callable[..., ThreadServer],
) -> None:
    from transformers import pipeline

    model = load("ner")
    texts = _short_texts(model)
    pipe = pipeline("token-classification", model=str(tiny_model_dir("ner")), aggregation_strategy=strategy, device="cpu")
    reference = pipe(texts)
    assert sum(len(r) for r in reference) >= 100  # random weights still tag plenty of tokens
    assert sum(1 for r in reference if r) >= len(texts) - 2
    in_process = model.predict(texts, aggregation_strategy=strategy)
    assert_same_entities(reference, in_process, texts, strategy)
    with server_factory({"ner": model}) as server:
        url = f"{server.url}/predictions/ner"
        over_http = _post(url, {"input": texts, "aggregation_strategy": strategy})
        one = _post(url, {"input": texts[0], "aggregation_strategy": strategy})
    assert_same_entities(reference, over_http, texts, strategy)
    assert one == over_http[0]


def test_ignore_labels_matches_pipeline(tiny_model_dir: Callable[[str], Any], load: Callable[..., Model]) -> None:
    from transformers import pipeline

    model = load("ner")
    texts = HANDWRITTEN
    pipe = pipeline("token-classification", model=str(tiny_model_dir("ner")), device="cpu")
    for strategy, ignore in [("none", []), ("simple", []), ("average", ["O", "PER"]), ("none", ["O", "B-LOC", "I-LOC"])]:
        reference = pipe(texts, aggregation_strategy=strategy, ignore_labels=ignore)
        got = model.predict(texts, aggregation_strategy=strategy, ignore_labels=ignore)
        assert_same_entities(reference, got, texts, strategy)
    everything = model.predict(texts[0], aggregation_strategy="none", ignore_labels=[])
    assert [e["index"] for e in everything] == list(range(1, len(model.encoder.encode([texts[0]])[0].ids) - 1))


def test_default_is_simple_and_strategy_case_is_free(load: Callable[..., Model]) -> None:
    model = load("ner")
    simple = model.predict(HANDWRITTEN[0], aggregation_strategy="simple")
    assert model.predict(HANDWRITTEN[0]) == simple
    assert model.predict(HANDWRITTEN[0], aggregation_strategy="SIMPLE") == simple
    assert simple and all(e["entity_group"] != "O" for e in simple)


# -- BIOES ------------------------------------------------------------------------------------------------------------

def test_bioes_grouping_by_hand() -> None:
    labels = ["B-PER", "I-PER", "E-PER", "S-PER", "I-PER", "E-LOC", "S-LOC", "S-LOC", "B-LOC", "E-LOC", "I-LOC",
              "O", "O", "E-PER", "E-PER", "B-PER", "B-PER", "I-PER", "LOC"]
    assert group_labels(labels) == [
        (0, 2, "PER"),  # B I E
        (3, 3, "PER"),  # S is alone
        (4, 4, "PER"),  # nothing continues after S
        (5, 5, "LOC"),  # E of another tag starts its own
        (6, 6, "LOC"), (7, 7, "LOC"),  # S S: two entities
        (8, 9, "LOC"),  # B E
        (10, 10, "LOC"),  # nothing continues after E
        (11, 12, "O"),
        (13, 13, "PER"), (14, 14, "PER"),  # E after E: closed, a new one
        (15, 15, "PER"), (16, 17, "PER"),  # B B I: the pipeline's rule
        (18, 18, "LOC"),  # no prefix: its own tag
    ]
    bio = ["B-PER", "I-PER", "I-PER", "B-PER", "I-LOC", "I-LOC", "O", "I-PER"]  # plain BIO: the pipeline's groups
    assert group_labels(bio) == [(0, 2, "PER"), (3, 3, "PER"), (4, 5, "LOC"), (6, 6, "O"), (7, 7, "PER")]


def _expected_bioes(tokens: list[dict], text: str) -> list[tuple[str, int, int]]:
    """A separate reading of BIOES over per-token labels: B opens, I/E extend an open group of the same
    tag (E closes it), S is a group of its own; anything else opens a group."""
    groups: list[list[Any]] = []
    open_ = False
    for t in tokens:
        prefix, tag = t["entity"].split("-", 1) if "-" in t["entity"] else ("I", t["entity"])
        if prefix in ("I", "E") and open_ and groups and groups[-1][0] == tag:
            groups[-1][2] = t["end"]
        else:
            groups.append([tag, t["start"], t["end"]])
        open_ = prefix in ("B", "I")
    return [(g[0], g[1], g[2]) for g in groups if g[0] != "O"]


def test_bioes_model_groups(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    model = load("ner-bioes")
    texts = _short_texts(load("ner"))[:15]
    tokens = model.predict(texts, aggregation_strategy="none", ignore_labels=[])
    seen = {t["entity"].split("-")[0] for ts in tokens for t in ts}
    assert {"B", "I", "E", "S"} <= seen  # the random head predicts every prefix somewhere
    with server_factory({"bioes": model}) as server:
        grouped = _post(f"{server.url}/predictions/bioes", {"input": texts})
    assert sum(len(g) for g in grouped) > 20
    for text, ts, groups in zip(texts, tokens, grouped, strict=True):
        assert [(g["entity_group"], g["start"], g["end"]) for g in groups] == _expected_bioes(ts, text)
        for g in groups:
            assert g["word"] == text[g["start"] : g["end"]]
            members = [t["score"] for t in ts if g["start"] <= t["start"] and t["end"] <= g["end"]]
            assert abs(g["score"] - float(np.mean(members))) < 1e-6


# -- long texts -------------------------------------------------------------------------------------------------------

def _long_text(model: Model) -> str:
    text = " ".join(mixed_sentences(40, seed=11))
    tok = Tokenizer.from_file(str(model.encoder.tokenizer_file))
    tok.no_truncation()
    assert len(tok.encode(text).ids) > 4 * model.encoder.max_length
    return text


def test_long_text_is_windowed_not_truncated(load: Callable[..., Model], tiny_model_dir: Callable[[str], Any]) -> None:
    """Every token of a 4x-max-length text is labelled once, with the scores of the window where it sat
    farthest from a cut, computed here independently with transformers."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = load("ner")
    text = _long_text(model)
    tokens = model.predict(text, aggregation_strategy="none", ignore_labels=[])

    folder = tiny_model_dir("ner")
    tok = AutoTokenizer.from_pretrained(str(folder))
    full = tok(text, truncation=False, return_offsets_mapping=True, verbose=False)
    n = len(full["input_ids"]) - 2
    assert [t["index"] for t in tokens] == list(range(1, n + 1))  # no token lost, none twice
    assert [(t["start"], t["end"]) for t in tokens] == [tuple(o) for o in full["offset_mapping"][1:-1]]

    max_length, stride = model.encoder.max_length, NerTask.stride(model.encoder)
    assert stride == max_length // 4
    chunks = tok(text, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
    step, width = max_length - 2 - stride, max_length - 2
    labels = [model.spec.labels[i] for i in range(len(model.spec.labels))]
    hf = AutoModelForTokenClassification.from_pretrained(str(folder)).eval()
    best = np.full(n, -1.0)
    expected: list[tuple[str, float]] = [("", 0.0)] * n
    last = len(chunks["input_ids"]) - 1
    assert last >= 4
    for k, ids in enumerate(chunks["input_ids"]):
        start = k * step
        content = ids[1:-1]
        assert content == full["input_ids"][1 + start : 1 + start + len(content)]
        with torch.inference_mode():
            probs = torch.softmax(hf(input_ids=torch.tensor([ids])).logits[0, 1:-1], dim=-1).numpy()
        for j in range(len(content)):
            left = j if k > 0 else np.inf
            right = width - 1 - j if k < last else np.inf
            if min(left, right) > best[start + j]:
                best[start + j] = min(left, right)
                expected[start + j] = (labels[int(probs[j].argmax())], float(probs[j].max()))
    assert [t["entity"] for t in tokens] == [e[0] for e in expected]
    assert max(abs(t["score"] - e[1]) for t, e in zip(tokens, expected, strict=True)) < 1e-4


def test_long_text_groups_and_truncated_prefix_parity(
    load: Callable[..., Model], tiny_model_dir: Callable[[str], Any], server_factory: Callable[..., ThreadServer],
) -> None:
    from transformers import pipeline

    model = load("ner")
    text = _long_text(model)
    with server_factory({"ner": model}) as server:
        url = f"{server.url}/predictions/ner"
        results = {s: _post(url, {"input": text, "aggregation_strategy": s}) for s in STRATEGIES}
        assert _post(url, {"input": text, "truncate": False}) == results["simple"]  # nothing to cut: same answer
    for strategy in STRATEGIES[1:]:
        groups = results[strategy]
        assert len(groups) > 50
        spans = [(g["start"], g["end"]) for g in groups]
        assert spans == sorted(spans) and len(set(spans)) == len(spans)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlaps, no duplicates across windows
        assert all(g["word"] == text[g["start"] : g["end"]] for g in groups)
        assert spans[-1][1] > len(text) - 100  # the end of the text is read too

    # The first window is what the pipeline sees when it truncates: its first 100 tokens match exactly.
    pipe = pipeline("token-classification", model=str(tiny_model_dir("ner")), device="cpu")
    reference = pipe(text, aggregation_strategy="none")
    head = [r for r in reference if r["index"] <= 100]
    got = [t for t in results["none"] if t["index"] <= 100]
    assert head and [(r["entity"], r["start"], r["end"], r["word"]) for r in head] == [
        (t["entity"], t["start"], t["end"], t["word"]) for t in got
    ]
    assert max(abs(float(r["score"]) - t["score"]) for r, t in zip(head, got, strict=True)) < 1e-4


def test_many_texts_of_mixed_lengths_in_one_request(load: Callable[..., Model]) -> None:
    """Windows of several texts batch together; each text's answer is what it gets alone."""
    model = load("ner")
    texts = [_long_text(model), HANDWRITTEN[0], _long_text(model)[:900], HANDWRITTEN[4]]
    together = model.predict(texts)
    assert together == [model.predict(t) for t in texts]


# -- errors -----------------------------------------------------------------------------------------------------------

FIELDS = "fields: input, " + ", ".join(sorted(COMMON_OPTIONS | NerTask.options))  # other tasks may add common ones
STRATEGY_MSG = "field 'aggregation_strategy' must be one of none, simple, first, average, max, got {}"
ERRORS = [
    ({"input": "a", "aggregation_strategy": "xyz"}, STRATEGY_MSG.format('"xyz"')),
    ({"input": "a", "aggregation_strategy": 3}, STRATEGY_MSG.format("3")),
    ({"input": "a", "aggregation_strategy": ["simple"]}, STRATEGY_MSG.format('["simple"]')),
    ({"input": "a", "ignore_labels": "O"}, "field 'ignore_labels' must be a list of strings, got \"O\""),
    ({"input": "a", "ignore_labels": ["O", 1]}, "field 'ignore_labels' must be a list of strings, got [\"O\",1]"),
    ({"input": "a", "ignore_labels": {"O": True}}, "field 'ignore_labels' must be a list of strings, got {\"O\":true}"),
    ({"input": "a", "top_k": 1}, f"unknown field 'top_k' for a token classification model ({FIELDS})"),
    ({"input": "a", "truncate": "no"}, "field 'truncate' must be true or false, got \"no\""),
    ({"text": "a", "text_pair": "b"}, "input[0]: a token classification model takes texts, not text pairs"),
    ({"input": ["a", {"text": "b", "text_pair": "c"}]}, "input[1]: a token classification model takes texts, not text pairs"),
]


def test_errors_are_422_naming_the_field(load: Callable[..., Model], server_factory: Callable[..., ThreadServer]) -> None:
    model = load("ner")
    with server_factory({"ner": model}) as server:
        for body, message in ERRORS:
            response = httpx.post(f"{server.url}/predictions/ner", json=body)
            assert response.headers["content-type"] == "application/json"
            assert (response.status_code, response.json()) == (422, {"code": 422, "type": "InvalidInput", "message": message})
        assert httpx.post(f"{server.url}/predictions/ner", json={"input": "still fine"}).status_code == 200
    with pytest.raises(InvalidInput) as caught:
        model.predict("a", aggregation_strategy="xyz")
    assert caught.value.message == STRATEGY_MSG.format('"xyz"')
    with pytest.raises(InvalidInput, match="field 'ignore_labels' must be a list of strings, got \"O\""):
        model.predict("a", ignore_labels="O")


def test_pre_split_words_match_pipeline(tiny_model_dir: Callable[[str], Any], load: Callable[..., Model]) -> None:
    """is_tokenized input: offsets into " ".join(words), as the pipeline's is_split_into_words."""
    from transformers import pipeline

    import berthing.types

    if not hasattr(berthing.types, "Tokens"):
        pytest.skip("no pre-split input in this version")
    words = [["Angela", "Merkel", "met", "Emmanuel", "Macron", "in", "Strasbourg", "unaffably", "."],
             ["江泽民", "访问", "北京", "and", "London"]]
    pipe = pipeline("token-classification", model=str(tiny_model_dir("ner")), device="cpu")
    model = load("ner")
    for strategy in ("none", "simple", "first"):
        reference = pipe(words, is_split_into_words=True, aggregation_strategy=strategy)
        assert all(reference)
        got = model.predict([berthing.types.Tokens(tuple(w)) for w in words], aggregation_strategy=strategy, is_tokenized=True)
        assert_same_entities(reference, got, [" ".join(w) for w in words], strategy)
