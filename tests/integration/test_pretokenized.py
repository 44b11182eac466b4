"""Pre-tokenized input (bert-serving's is_tokenized): parity with HF's tokenizer(words, is_split_into_words=True)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from berthing.engine.model import Model
from berthing.tasks.tokenize import joined_offsets
from berthing.types import InvalidInput, Tokens
from tests.support.texts import mixed_sentences

WORDS = [
    ["hello", "world"],
    ["教", "练"],
    ["Deploying", "BERT,", "to", "production!", "unaffable"],
    ["new york", "is", "big"],  # a word with a space in it stays one word (one word id), as in HF
    mixed_sentences(40, seed=5)[10].split(),
    ("word " * 300).split(),  # over 128 tokens: truncated like the HF reference
]


def _hf(folder: Path, words: list[list[str]]) -> tuple[Any, Any]:
    """(tokenizer output, model) for pre-split words, the transformers way."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok(words, is_split_into_words=True, padding=True, truncation=True, max_length=128, return_tensors="pt"), tok


def test_tokens_match_hf_is_split_into_words(load: Callable[..., Model], tiny_model_dir: Callable[[str], Path]) -> None:
    enc, _ = _hf(tiny_model_dir("embed"), WORDS)
    items = load("embed").encoder.encode([Tokens(tuple(w)) for w in WORDS])
    for row, item in enumerate(items):
        n = int(enc["attention_mask"][row].sum())
        assert item.ids == enc["input_ids"][row, :n].tolist()
        assert item.encoding.word_ids == enc.word_ids(row)[:n]  # word ids index the words, for NER
        assert item.source == row


def test_embeddings_match_transformers(load: Callable[..., Model], tiny_model_dir: Callable[[str], Path], api: str) -> None:
    import torch
    from transformers import AutoModel

    folder = tiny_model_dir("embed")
    enc, _ = _hf(folder, WORDS)
    with torch.inference_mode():
        hidden = AutoModel.from_pretrained(str(folder)).eval()(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    reference = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    got = np.array(load("embed").predict([Tokens(tuple(w)) for w in WORDS]))
    np.testing.assert_allclose(got, reference, atol=1e-4)
    served = httpx.post(f"{api}/predictions/embedder", json={"input": WORDS, "is_tokenized": True}, timeout=60)
    assert served.status_code == 200, served.text
    np.testing.assert_allclose(np.array(served.json()), reference, atol=1e-4)
    one = httpx.post(f"{api}/predictions/embedder", json={"input": WORDS[0], "is_tokenized": True}).json()
    np.testing.assert_allclose(np.array(one), reference[0], atol=1e-4)  # a flat list of words is one text
    single = load("embed").predict(Tokens(tuple(WORDS[0])))
    np.testing.assert_allclose(np.array(single), reference[0], atol=1e-4)


def test_classification_matches_transformers(load: Callable[..., Model], tiny_model_dir: Callable[[str], Path], api: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = tiny_model_dir("classify")
    enc, _ = _hf(folder, WORDS)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        probs = torch.softmax(model(**enc).logits, dim=-1).numpy()
    labels = [model.config.id2label[i] for i in range(probs.shape[1])]
    served = httpx.post(f"{api}/predictions/sentiment", json={"input": WORDS, "is_tokenized": True}, timeout=60)
    assert served.status_code == 200, served.text
    python = load("classify").predict([Tokens(tuple(w)) for w in WORDS], is_tokenized=True)
    for got in (served.json(), python):
        for row, result in enumerate(got):
            np.testing.assert_allclose([result["scores"][label] for label in labels], probs[row], atol=1e-4)
            assert result["label"] == labels[int(probs[row].argmax())]


def test_is_tokenized_false_keeps_texts(api: str) -> None:
    url = f"{api}/predictions/embedder"
    plain = httpx.post(url, json={"input": ["hello", "world"]}).json()
    assert httpx.post(url, json={"input": ["hello", "world"], "is_tokenized": False}).json() == plain
    assert len(plain) == 2


def test_truncate_false_is_413(api: str) -> None:
    response = httpx.post(f"{api}/predictions/sentiment", json={"input": [["ok"], WORDS[-1]], "is_tokenized": True,
                                                              "truncate": False})
    message = "input[1] is longer than the model's max length of 128 tokens and truncate is false"
    assert (response.status_code, response.json()) == (413, {"code": 413, "type": "PayloadTooLarge", "message": message})


SHAPE = "a list of words or a list of lists of words when is_tokenized is true"
ERRORS = [
    ({"input": "hello world"}, f"field 'input' must be {SHAPE}, got string"),
    ({"input": 3}, f"field 'input' must be {SHAPE}, got number"),
    ({"input": []}, "field 'input' is an empty list"),
    ({"input": [["hello"], []]}, "input[1] is an empty list of words"),
    ({"input": [["hello"], [1]]}, "input[1][0] must be a string, got number"),
    ({"input": [["hello"], ["a", None]]}, "input[1][1] must be a string, got null"),
    ({"input": [["hello"], ["a", " "]]}, "input[1][1] is empty or blank"),
    ({"input": [["hello"], "world"]}, "input[1] must be a list of words, got string"),
    ({"input": ["hello", 7]}, "input[1] must be a string, got number"),
    ({"text": ["hello", ""]}, "text[1] is empty or blank"),
    ({"input": ["hello"], "is_tokenized": "yes"}, "field 'is_tokenized' must be true or false, got \"yes\""),
]


@pytest.mark.parametrize(("body", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_errors(api: str, body: dict[str, Any], message: str) -> None:
    body = {"is_tokenized": True, **body}
    for model in ("embedder", "sentiment"):
        response = httpx.post(f"{api}/predictions/{model}", json=body)
        assert (response.status_code, response.json()) == (422, {"code": 422, "type": "InvalidInput", "message": message})


def test_too_many_lists_is_413(load: Callable[..., Model], server_factory: Callable[..., Any]) -> None:
    with server_factory({"small": load("embed")}, max_items=2) as server:
        response = httpx.post(f"{server.url}/predictions/small", json={"input": [["a"], ["b"], ["c"]], "is_tokenized": True})
    message = "field 'input' has 3 items, over the limit of 2"
    assert (response.status_code, response.json()) == (413, {"code": 413, "type": "PayloadTooLarge", "message": message})


def test_python_needs_tokens_with_is_tokenized(load: Callable[..., Model]) -> None:
    with pytest.raises(InvalidInput, match=r"input\[0\] must be a list of words \(berthing.types.Tokens\)"):
        load("embed").predict(["hello world"], is_tokenized=True)
    with pytest.raises(InvalidInput, match=r"input\[0\]\[1\] is empty or blank"):
        load("embed").predict([Tokens(("a", ""))])


def test_joined_offsets_point_into_the_joined_words(load: Callable[..., Model]) -> None:
    """What an NER task needs to show entities of pre-split input: offsets into " ".join(words), as HF's pipeline."""
    words = Tokens(("John", "lives", "in", "Berlin,", "unaffable"))
    item = load("embed").encoder.encode([words])[0]
    offsets = joined_offsets(item.encoding, words.words)
    pieces = [words.text[s:e] for (s, e), w in zip(offsets, item.encoding.word_ids, strict=True) if w is not None]
    assert words.text == "John lives in Berlin, unaffable"
    assert pieces == ["John", "lives", "in", "Berlin", ",", "una", "ffa", "ble"]


def test_ner_encoding_carries_word_ids(load: Callable[..., Model]) -> None:
    """NER reads word ids and offsets from Encoded.encoding; pre-split words keep theirs through the NER task's encode."""
    try:
        import berthing.tasks.ner  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("no NER task in this version")
    model = load("ner")
    words = Tokens(("John", "lives", "in", "Berlin"))
    checked = model.task.check([words], {"is_tokenized": True})
    items = model.task.encode(model.encoder, [words], checked)
    assert len(items) == 1 and items[0].encoding.word_ids == [None, 0, 1, 2, 3, None]
