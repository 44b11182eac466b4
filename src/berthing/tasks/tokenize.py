"""Batch tokenization with the Rust `tokenizers` library and per-batch padding with numpy."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from berthing.types import PayloadTooLarge, TextInput, TextPair, Tokens

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

    @property
    def length(self) -> int:
        return len(self.ids)


def encode_mixed(tokenizer: Tokenizer, inputs: list[Any]) -> list[Encoding]:
    """Texts and pairs in one Rust call, pre-split Tokens in another (is_pretokenized is per call), in input order.

    A Tokens item is encoded as HF's tokenizer(words, is_split_into_words=True): each word normalized and
    split into word pieces on its own, special tokens added; word_ids index the words, offsets are per word.
    """
    words = [i for i, x in enumerate(inputs) if isinstance(x, Tokens)]
    texts = [i for i, x in enumerate(inputs) if not isinstance(x, Tokens)]
    found: dict[int, Encoding] = {}
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

    def encode(self, inputs: list[TextInput], truncate: bool = True) -> list[Encoded]:
        """Tokenize a list of texts or pairs in one Rust call (pre-split Tokens in a second one); with truncate=False,
        too-long input is a 413."""
        if any(isinstance(x, Tokens) for x in inputs):
            encodings = encode_mixed(self.tokenizer, inputs)
        else:
            batch: list[str | tuple[str, str]] = [
                (x.text, x.text_pair) if isinstance(x, TextPair) else x for x in inputs
            ]
            encodings = self.tokenizer.encode_batch(batch, add_special_tokens=True)
        out: list[Encoded] = []
        for i, enc in enumerate(encodings):
            if not truncate and enc.overflowing:
                raise PayloadTooLarge(
                    f"input[{i}] is longer than the model's max length of {self.max_length} tokens "
                    "and truncate is false"
                )
            out.append(Encoded(enc.ids, enc.type_ids, i, enc))
        return out

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
        if any(isinstance(x, Tokens) for x in inputs):
            encodings = encode_mixed(tok, inputs)
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
        return Features(ids, mask, types)
