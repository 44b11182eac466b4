"""A small seeded BERT with a character vocabulary from the training texts: a base when no pretrained checkpoint exists.

It is not pretrained: it learns only from the data it is trained on. Real runs start from a pretrained Chinese
checkpoint such as bert-base-chinese; this exists for offline machines and tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from berthing.train.encode import bio_labels
from berthing.train.formats import TAG

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def char_vocab(texts: Iterable[str]) -> list[str]:
    """The specials, then every character of `texts` (sorted) and its word-continuation piece '##' + char."""
    chars = sorted({ch for text in texts for ch in text if not ch.isspace() and ch.isprintable()})
    return SPECIALS + [piece for ch in chars if ch not in SPECIALS for piece in (ch, "##" + ch)]


def model_labels(task: str, labels: list[str]) -> list[str]:
    """The head's labels: classify as given; ner BIO tags "O", "B-X", "I-X" per entity type (tags pass as they are)."""
    if task == "classify":
        return list(labels)
    if task != "ner":
        raise ValueError(f"unknown task {task!r}; expected classify or ner")
    if "O" in labels and all(TAG.match(label) for label in labels):
        return list(labels)
    return bio_labels(labels)


def _tokenizer(vocab: list[str]):
    """A WordPiece tokenizer as BERT's (BERT normalizer without lowercasing or accent stripping, CJK split apart)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)
    return tok


def _write_tokenizer(target: Path, vocab: list[str], max_length: int) -> None:
    _tokenizer(vocab).save(str(target / "tokenizer.json"))
    (target / "vocab.txt").write_text("".join(piece + "\n" for piece in vocab), encoding="utf-8")
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": False, "tokenize_chinese_chars": True,
              "strip_accents": False, "model_max_length": max_length, "clean_up_tokenization_spaces": False, **specials}
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (target / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def build_scratch(texts: Iterable[str], target: Path, *, task: str, labels: list[str], hidden: int = 128,
                  layers: int = 2, heads: int = 2, max_length: int = 128, seed: int = 42) -> Path:
    """Save a seeded, untrained BERT (classify: sequence, ner: token classification head) and its character
    tokenizer to `target`, a folder that AutoTokenizer and AutoModelFor... load as it is."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    names = model_labels(task, labels)
    if not names:
        raise ValueError("build_scratch needs at least one label")
    vocab = char_vocab(texts)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max_length, pad_token_id=0,
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    head = BertForSequenceClassification if task == "classify" else BertForTokenClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = head(config)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    _write_tokenizer(target, vocab, max_length)
    return target
