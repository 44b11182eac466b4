"""Batch tokenization with the Rust `tokenizers` library and per-batch padding with numpy."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from berthing.inputs import json_type
from berthing.types import InvalidInput, PayloadTooLarge, TextInput, TextPair, TokenIds, Tokens

_MAX_VARIANTS = 16


@dataclass(slots=True)
class Encoded:
    """One tokenized item, unpadded: an input, or one window of a long input (`source` says which input).

    `encoding` is the Rust Encoding itself, so tasks can read offsets, word ids and sequence ids
    (NER spans, QA context tokens) without copying them for tasks that never look.
    """

    ids: list[int]
    type_ids: list[int]
    source: int = 0
    encoding: Any = None
    all_tokens: bool = False  # the task wants this item's every token row, not one pooled row (TEI's /embed_all)

    @property
    def length(self) -> int:
        return len(self.ids)


def check_token_ids(ids: Any, vocab_size: int, where: str) -> tuple[int, ...]:
    """Token ids as given, or a 422 naming the bad one (`where[j]`): a non-empty list of ints in [0, vocab_size)."""
    if not isinstance(ids, list | tuple):
        raise InvalidInput(f"{where} must be a list of token ids, got {json_type(ids)}")
    if not ids:
        raise InvalidInput(f"{where} is an empty list of token ids")
    for j, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{where}[{j}] must be a token id (an integer), got {json_type(value)}")
        if not 0 <= value < vocab_size:
            raise InvalidInput(f"{where}[{j}] is {value}, not a token id of this model (0 to {vocab_size - 1})")
    return tuple(ids)


def encode_mixed(tokenizer: Tokenizer, inputs: list[Any]) -> list[Encoding | None]:
    """Texts and pairs in one Rust call, pre-split Tokens in another (is_pretokenized is per call), in input order.

    A Tokens item is encoded as HF's tokenizer(words, is_split_into_words=True): each word normalized and
    split into word pieces on its own, special tokens added; word_ids index the words, offsets are per word.
    A TokenIds item needs no tokenizer: its place is None, and the caller takes its ids as given.
    """
    words = [i for i, x in enumerate(inputs) if isinstance(x, Tokens)]
    texts = [i for i, x in enumerate(inputs) if not isinstance(x, Tokens | TokenIds)]
    found: dict[int, Encoding | None] = {i: None for i, x in enumerate(inputs) if isinstance(x, TokenIds)}
    if words:
        encoded = tokenizer.encode_batch([list(inputs[i].words) for i in words], is_pretokenized=True, add_special_tokens=True)
        found.update(zip(words, encoded, strict=True))
    if texts:
        batch = [(inputs[i].text, inputs[i].text_pair) if isinstance(inputs[i], TextPair) else inputs[i] for i in texts]
        found.update(zip(texts, tokenizer.encode_batch(batch, add_special_tokens=True), strict=True))
    return [found[i] for i in range(len(inputs))]


def joined_offsets(encoding: Encoding, words: tuple[str, ...] | list[str], delimiter: str = " ") -> list[tuple[int, int]]:
    """A pre-split encoding's per-word offsets made absolute in delimiter.join(words), as HF's NER pipeline does."""
    starts: list[int] = []
    position = 0
    for word in words:
        starts.append(position)
        position += len(word) + len(delimiter)
    return [
        (0, 0) if word is None else (starts[word] + start, starts[word] + end)
        for word, (start, end) in zip(encoding.word_ids, encoding.offsets, strict=True)
    ]


@dataclass(slots=True)
class Features:
    """A padded batch, the runtime's input."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None
    all_tokens: np.ndarray | None = None  # per row: keep every token's output (None when no item asked)


class Encoder:
    """Tokenizes inputs truncated to the model's max length; padding happens per batch, not here."""

    def __init__(self, tokenizer_file: Path, max_length: int, uses_token_types: bool) -> None:
        self.tokenizer_file = tokenizer_file
        self._variants: dict[tuple[int, int, str], Tokenizer] = {}
        self._variants_lock = threading.Lock()
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        padding = self.tokenizer.padding or {}
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        self.max_length = max_length
        self.uses_token_types = uses_token_types
        found = (i for t in ("[PAD]", "<pad>", "<PAD>") if (i := self.tokenizer.token_to_id(t)) is not None)
        self.pad_id = int(padding.get("pad_id", next(found, 0)))
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, inputs: list[TextInput], truncate: bool = True) -> list[Encoded]:
        """Tokenize a list of texts or pairs in one Rust call (pre-split Tokens in a second one; TokenIds as given, no
        special tokens added, as TEI does); with truncate=False, too-long input is a 413."""
        encodings: list[Encoding | None]
        if any(isinstance(x, Tokens | TokenIds) for x in inputs):
            encodings = encode_mixed(self.tokenizer, inputs)
        else:
            batch: list[str | tuple[str, str]] = [
                (x.text, x.text_pair) if isinstance(x, TextPair) else x for x in inputs
            ]
            encodings = self.tokenizer.encode_batch(batch, add_special_tokens=True)  # type: ignore[assignment]
        out: list[Encoded] = []
        for i, enc in enumerate(encodings):
            if enc is None:
                out.append(self._given(inputs[i], i, truncate))
                continue
            if not truncate and enc.overflowing:
                raise PayloadTooLarge(
                    f"input[{i}] is longer than the model's max length of {self.max_length} tokens "
                    "and truncate is false"
                )
            out.append(Encoded(enc.ids, enc.type_ids, i, enc))
        return out

    def _given(self, item: Any, i: int, truncate: bool) -> Encoded:
        """A TokenIds input: its ids checked against the vocabulary, cut to max_length (413 when truncate is off)."""
        ids = list(check_token_ids(item.ids, self.vocab_size, f"input[{i}]"))
        if len(ids) > self.max_length:
            if not truncate:
                raise PayloadTooLarge(
                    f"input[{i}] has {len(ids)} token ids, over the model's max length of {self.max_length} "
                    "and truncate is false"
                )
            ids = ids[: self.max_length]
        return Encoded(ids, [0] * len(ids), i)

    def _variant(self, max_length: int, stride: int, strategy: str) -> Tokenizer:
        """A tokenizer with its own truncation settings: settings are per object, so each config gets one."""
        key = (max_length, stride, strategy)
        with self._variants_lock:
            tok = self._variants.get(key)
            if tok is None:
                if len(self._variants) >= _MAX_VARIANTS:  # strides are client-chosen: keep the table bounded
                    self._variants.pop(next(iter(self._variants)))
                tok = Tokenizer.from_file(str(self.tokenizer_file))
                tok.no_padding()
                tok.enable_truncation(max_length=max_length, stride=stride, strategy=strategy)
                self._variants[key] = tok
            return tok

    def windows(
        self, inputs: list[TextInput], stride: int, strategy: str = "longest_first", max_length: int | None = None
    ) -> list[Encoded]:
        """Tokenize with overflow kept: an input longer than max_length becomes overlapping windows
        (`stride` tokens shared between neighbours), each an item whose `source` is the input's index."""
        tok = self._variant(max_length or self.max_length, stride, strategy)
        given = next((i for i, x in enumerate(inputs) if isinstance(x, TokenIds)), None)
        if given is not None:  # windows need the text's offsets and word ids, which token ids do not carry
            raise InvalidInput(f"input[{given}]: this model takes texts, not token ids")
        encodings: list[Encoding]
        if any(isinstance(x, Tokens) for x in inputs):
            encodings = [e for e in encode_mixed(tok, inputs) if e is not None]
        else:
            batch: list[str | tuple[str, str]] = [
                (x.text, x.text_pair) if isinstance(x, TextPair) else x for x in inputs
            ]
            encodings = tok.encode_batch(batch, add_special_tokens=True)
        out: list[Encoded] = []
        for i, enc in enumerate(encodings):
            parts: list[Encoding] = [enc, *enc.overflowing]
            out.extend(Encoded(part.ids, part.type_ids, i, part) for part in parts)
        return out

    def collate(self, items: list[Encoded]) -> Features:
        """Pad a batch to its longest item (never to max_length)."""
        width = max(item.length for item in items)
        ids = np.full((len(items), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        types = np.zeros((len(items), width), dtype=np.int64) if self.uses_token_types else None
        for row, item in enumerate(items):
            n = item.length
            ids[row, :n] = item.ids
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = item.type_ids
        keep = np.array([item.all_tokens for item in items]) if any(item.all_tokens for item in items) else None
        return Features(ids, mask, types, keep)
