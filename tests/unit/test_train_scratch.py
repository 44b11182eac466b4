"""berthing.train.scratch: a seeded character-vocabulary BERT that transformers and berthing's own loader both run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from berthing.config import Settings
from berthing.loading import load_model
from berthing.packaging.sources import ModelSource
from berthing.train.scratch import SPECIALS, build_scratch, char_vocab, model_labels

TEXTS = ["中共中央总书记、国家主席江泽民发表新年讲话。", "手机很好，漂亮时尚，赠品一般", "Hello world, 北京!"]
PROBES = ["江泽民在北京发表讲话。", "手机一般，赠品很好", "Hello 北京", "未见过的字"]


def test_vocabulary_and_labels() -> None:
    vocab = char_vocab(["ab a", "ba"])
    assert vocab == [*SPECIALS, "a", "##a", "b", "##b"]
    assert model_labels("ner", ["LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert model_labels("ner", ["O", "B-X", "I-X", "E-X", "S-X"]) == ["O", "B-X", "I-X", "E-X", "S-X"]
    assert model_labels("classify", ["-1", "0", "1"]) == ["-1", "0", "1"]


def test_tokenizer_one_token_per_chinese_character(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = build_scratch(TEXTS, tmp_path / "m", task="classify", labels=["0", "1"], hidden=32, max_length=64)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                                  "tokenizer_config.json", "special_tokens_map.json"}
    assert (folder / "vocab.txt").read_text("utf-8").splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.model_max_length == 64 and tok.pad_token_id == 0
    text = "江泽民发表讲话。"
    enc = tok(text, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", *text, "[SEP]"]
    assert enc["offset_mapping"] == [(0, 0), *[(i, i + 1) for i in range(len(text))], (0, 0)]
    pair = tok("Hello", "北京", return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(pair["input_ids"]) == ["[CLS]", "H", "##e", "##l", "##l", "##o", "[SEP]", "北", "京",
                                                            "[SEP]"]
    assert pair["token_type_ids"] == [0] * 7 + [1] * 3
    assert tok.convert_ids_to_tokens(tok("上海")["input_ids"]) == ["[CLS]", "[UNK]", "[UNK]", "[SEP]"]  # chars not in the data


def test_seeded(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    a = build_scratch(TEXTS, tmp_path / "a", task="classify", labels=["0", "1"], hidden=32, seed=5)
    b = build_scratch(TEXTS, tmp_path / "b", task="classify", labels=["0", "1"], hidden=32, seed=5)
    c = build_scratch(TEXTS, tmp_path / "c", task="classify", labels=["0", "1"], hidden=32, seed=6)
    wa, wb, wc = (load_file(str(p / "model.safetensors")) for p in (a, b, c))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not np.array_equal(wa["classifier.weight"], wc["classifier.weight"])


def _load(folder: Path, name: str, settings: Settings):
    options = settings.model_copy(update={"runtime": "onnx"}).load_options()
    return load_model(ModelSource(name, folder), options)


def test_classifier_loads_in_transformers_and_berthing(tmp_path: Path, settings: Settings) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = ["-1", "0", "1"]
    folder = build_scratch(TEXTS, tmp_path / "clf", task="classify", labels=labels, hidden=64, layers=2, heads=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "-1", "1": "0", "2": "1"} and config["label2id"] == {"-1": 0, "0": 1, "1": 2}
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        expected = torch.softmax(hf(**tok(PROBES, padding=True, return_tensors="pt")).logits, -1).numpy()
    model = _load(folder, "scratch-classify", settings)
    assert model.spec.task == "classify" and model.spec.labels == labels
    got = model.predict(PROBES)
    assert np.abs(np.array([[g["scores"][label] for label in labels] for g in got]) - expected).max() < 1e-4


def test_ner_loads_in_transformers_and_berthing(tmp_path: Path, settings: Settings) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    folder = build_scratch(TEXTS, tmp_path / "ner", task="ner", labels=["LOC", "ORG", "PER"], hidden=32)
    tags = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert json.loads((folder / "config.json").read_text())["id2label"] == {str(i): t for i, t in enumerate(tags)}
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForTokenClassification.from_pretrained(str(folder)).eval()
    model = _load(folder, "scratch-ner", settings)
    assert model.spec.task == "ner" and model.spec.labels == tags
    for text in PROBES:
        enc = tok(text, return_tensors="pt", return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            probs = torch.softmax(hf(**enc).logits[0], -1).numpy()
        got = model.predict(text, aggregation_strategy="none", ignore_labels=[])
        assert [(e["start"], e["end"]) for e in got] == [tuple(o) for o in offsets[1:-1]]
        for entity, row in zip(got, probs[1:-1], strict=True):
            assert entity["entity"] == tags[int(row.argmax())]
            assert entity["score"] == pytest.approx(float(row.max()), abs=1e-4)
