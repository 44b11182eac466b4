"""Build tiny seeded HuggingFace models (2 layers, hidden 32) for every task, once, into a cache folder.

Plain kinds ("embed", "classify", ...) are BERT with all-MiniLM-L6-v2's tokenizer. "<arch>-<task>" kinds
("roberta-embed", "xlm-roberta-classify", "distilbert-ner", "electra-qa", "mpnet-rerank", ...) are the other
architectures, each with a tokenizer of its own family (tests/support/tokenizers.py); "bert-<task>" is the
plain kind itself. "long-embed" is a BERT with an 8192-position table, for long texts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from berthing.packaging.sources import default_model_path

BUILD_VERSION = "1"  # bump to rebuild cached tiny models
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
LABELS = ["negative", "neutral", "positive"]
NER_BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
NER_BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def _bert_config(**extra: object):
    from transformers import BertConfig

    sizes: dict[str, object] = {
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128,
    }
    return BertConfig(**(sizes | extra))


def _labelled(labels: list[str], **extra: object):
    """A tiny BERT config whose head predicts `labels`."""
    return _bert_config(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, **extra
    )


def _copy_tokenizer(target: Path, files: tuple[str, ...] = TOKENIZER_FILES, max_length: int = 128) -> None:
    src = default_model_path()
    for name in files:
        shutil.copy2(src / name, target / name)
    cfg = json.loads((target / "tokenizer_config.json").read_text()) if (target / "tokenizer_config.json").exists() else {}
    if cfg:
        cfg["model_max_length"] = max_length
        (target / "tokenizer_config.json").write_text(json.dumps(cfg))


def _save(
    model, target: Path, files: tuple[str, ...] = TOKENIZER_FILES, max_length: int = 128,
    tokenizer: Callable[[Path], object] | None = None,
) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if tokenizer is None:
        _copy_tokenizer(tmp, files, max_length)
    else:
        tokenizer(tmp)
    tmp.rename(target)
    return target


# Other architectures: every one has all five heads. Sizes as the BERT kinds: 2 layers, hidden 32, intermediate 64.
ARCHS = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "mpnet")
ARCH_TASKS = ("embed", "classify", "ner", "qa", "rerank")
LONG_POSITIONS = 8192
_HEADS = {"embed": "Model", "classify": "ForSequenceClassification", "rerank": "ForSequenceClassification",
          "ner": "ForTokenClassification", "qa": "ForQuestionAnswering"}
_CLASS_PREFIX = {"distilbert": "DistilBert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "electra": "Electra",
                 "mpnet": "MPNet"}


def _arch_config(arch: str, vocab_size: int, **extra: object):
    """A tiny config of `arch`; RoBERTa-style models get pad id 1 and a position table of 128 + 2."""
    import transformers

    sizes: dict[str, object] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "intermediate_size": 64, "max_position_embeddings": 128}
    if arch == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 128}
    elif arch == "electra":
        sizes["embedding_size"] = 16  # smaller than hidden, as ELECTRA-small: exercises embeddings_project
    elif arch in ("roberta", "xlm-roberta", "mpnet"):
        sizes.update(max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        if arch != "mpnet":
            sizes["type_vocab_size"] = 1
    cls = getattr(transformers, _CLASS_PREFIX[arch] + "Config")
    return cls(vocab_size=vocab_size, **sizes, **extra)


def _build_arch(arch: str, task: str, target: Path) -> Path:
    """A seeded tiny `arch` model with the `task` head and a tokenizer of its family."""
    import torch
    import transformers

    from tests.support import tokenizers

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(target.name + ".tok")
    shutil.rmtree(scratch, ignore_errors=True)
    if arch == "roberta":
        tokenizers.roberta_tokenizer(scratch)
    elif arch == "xlm-roberta":
        tokenizers.xlm_roberta_tokenizer(scratch)
    else:
        tokenizers.wordpiece_tokenizer(scratch, arch)
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(str(scratch)))
    labels = {"classify": LABELS, "ner": NER_BIO}.get(task)
    extra: dict[str, object] = {}
    if labels:
        extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                 "label2id": {n: i for i, n in enumerate(labels)}}
    elif task == "rerank":
        extra = {"num_labels": 1}
    torch.manual_seed(0)
    model = getattr(transformers, _CLASS_PREFIX[arch] + _HEADS[task])(_arch_config(arch, vocab_size, **extra))

    def copy(tmp: Path) -> None:
        for path in scratch.iterdir():
            shutil.copy2(path, tmp / path.name)

    try:
        return _save(model, target, tokenizer=copy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build(kind: str, root: Path) -> Path:
    """Return the folder of tiny model `kind`, building it (seeded) if missing."""
    import torch
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertModel

    arch, _, task = kind.partition("-") if not kind.startswith("xlm-roberta-") else ("xlm-roberta", "-", kind[12:])
    if arch == "bert" and task in ARCH_TASKS:
        kind = task  # BERT is what the plain kinds are: one model, one cache entry
    target = root / f"v{BUILD_VERSION}" / kind
    if (target / "config.json").exists():
        return target
    if arch in ARCHS and arch != "bert":
        if task not in ARCH_TASKS:
            raise ValueError(f"unknown tiny model kind {kind!r} (tasks: {', '.join(ARCH_TASKS)})")
        return _build_arch(arch, task, target)
    if kind == "long-embed":
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        return _save(BertModel(_bert_config(max_position_embeddings=LONG_POSITIONS)), target, max_length=LONG_POSITIONS)
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
