"""Build tiny seeded HuggingFace models (2 layers, hidden 32) for every task, once, into a cache folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from berthing.packaging.sources import default_model_path

BUILD_VERSION = "1"  # bump to rebuild cached tiny models
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
LABELS = ["negative", "neutral", "positive"]
NER_BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
NER_BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def _bert_config(**extra: object):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, **extra,
    )


def _labelled(labels: list[str], **extra: object):
    """A tiny BERT config whose head predicts `labels`."""
    return _bert_config(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **extra
    )


def _copy_tokenizer(target: Path, files: tuple[str, ...] = TOKENIZER_FILES) -> None:
    src = default_model_path()
    for name in files:
        shutil.copy2(src / name, target / name)
    cfg = json.loads((target / "tokenizer_config.json").read_text()) if (target / "tokenizer_config.json").exists() else {}
    if cfg:
        cfg["model_max_length"] = 128
        (target / "tokenizer_config.json").write_text(json.dumps(cfg))


def _save(model, target: Path, files: tuple[str, ...] = TOKENIZER_FILES) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    _copy_tokenizer(tmp, files)
    tmp.rename(target)
    return target


def build(kind: str, root: Path) -> Path:
    """Return the folder of tiny model `kind`, building it (seeded) if missing."""
    import torch
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertModel

    target = root / f"v{BUILD_VERSION}" / kind
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if kind == "embed":  # plain BertModel: mean pooling, no normalize
        return _save(BertModel(_bert_config()), target)
    if kind == "embed-vocab-only":  # no tokenizer.json: berthing must build one
        return _save(BertModel(_bert_config()), target, ("vocab.txt", "tokenizer_config.json"))
    if kind == "classify":
        return _save(BertForSequenceClassification(_labelled(LABELS)), target)
    if kind == "multilabel":
        config = _labelled(["sports", "tech", "food"], problem_type="multi_label_classification")
        return _save(BertForSequenceClassification(config), target)
    if kind in ("ner", "ner-bioes"):
        labels = NER_BIO if kind == "ner" else NER_BIOES
        return _save(BertForTokenClassification(_labelled(labels)), target)
    if kind == "qa":
        return _save(BertForQuestionAnswering(_bert_config()), target)
    if kind == "rerank":  # a cross-encoder: one logit, scored with sigmoid
        return _save(BertForSequenceClassification(_bert_config(num_labels=1)), target)
    if kind == "st-cls":  # sentence-transformers layout with CLS pooling + Normalize (as bge)
        folder = _save(BertModel(_bert_config()), target)
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
        )
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
        return folder
    raise ValueError(f"unknown tiny model kind {kind!r}")
