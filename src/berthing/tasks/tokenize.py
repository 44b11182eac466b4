"""Batch tokenization with the Rust `tokenizers` library and per-batch padding with numpy."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from berthing.inputs import json_type
from berthing.tasks.prefix import (
    _WHOLE,
    CHARS_PER_TOKEN,
    MAX_WINDOWS,
    READ_CHARS_PER_TOKEN,
    Side,
    _Cut,
    ignores_whitespace,
    input_chars,
    read_prefix,
    side_chars,
    window_capacity,
)
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
        # The reader of prefixes: untruncated, no special tokens, offsets as the pre-tokenizer gives them (a
        # post-processor may trim them, and cutting at a trimmed offset would leave a space token behind).
        self._counter = Tokenizer.from_file(str(tokenizer_file))
        self._counter.no_padding()
        self._counter.no_truncation()
        self._counter.post_processor = None
        self.squeeze = ignores_whitespace(self._counter)
        self.max_windows = MAX_WINDOWS  # the engine may set its max_queue here: windows past it are refused

    def encode(self, inputs: list[TextInput], truncate: bool = True) -> list[Encoded]:
        """Tokenize a list of texts or pairs in one Rust call (pre-split Tokens in a second one; TokenIds as given, no
        special tokens added, as TEI does); with truncate=False, too-long input is a 413.

        Truncating, long texts are cut first (see cut()): the tokens are the whole text's, the cost is bounded.
        Offsets are then those of the text tokenized, the same unless a long whitespace run was squeezed."""
        encodings: list[Encoding | None]
        over = None
        if truncate:
            tokenized = self.cut(inputs)
        else:  # the inputs before the first one over the character limit are checked first, as they come
            over = self.first_over(inputs)
            tokenized = inputs if over is None else inputs[:over]
        if any(isinstance(x, Tokens | TokenIds) for x in tokenized):
            encodings = encode_mixed(self.tokenizer, tokenized)
        else:
            batch: list[str | tuple[str, str]] = [
                (x.text, x.text_pair) if isinstance(x, TextPair) else x for x in tokenized
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
        if over is not None:
            raise self.over_limit(inputs[over], f"input[{over}]")
        return out

    # -- what one text may cost: cut before truncating, refused before tokenizing ---------------------------------

    def char_limit(self) -> int:
        """The most characters an input may have with truncate=false (both texts of a pair together)."""
        return CHARS_PER_TOKEN * self.max_length

    def first_over(self, inputs: list[Any]) -> int | None:
        """The first input over char_limit(): with truncate=false it is refused before it is tokenized, since the
        whole text must be tokenized to know it fits and real text averages far fewer than CHARS_PER_TOKEN."""
        limit = self.char_limit()
        return next((i for i, item in enumerate(inputs) if input_chars(item) > limit), None)

    def over_limit(self, item: Any, name: str) -> PayloadTooLarge:
        """The 413 for an input over char_limit(), stating the rule."""
        both = " (both texts together)" if isinstance(item, TextPair) else ""
        return PayloadTooLarge(
            f"{name} has {input_chars(item)} characters{both}, over the {self.char_limit()} allowed with truncate false "
            f"({CHARS_PER_TOKEN} per token of the model's max length of {self.max_length} tokens); send a shorter "
            "text or set truncate to true"
        )

    def _cut(self, side: Side, need: int, squeeze: bool) -> _Cut:
        """A side to read until its first `need` tokens are certain: from 8 characters a token, doubling, up to
        READ_CHARS_PER_TOKEN per token of the max length."""
        limit = READ_CHARS_PER_TOKEN * max(self.max_length, need)
        return _Cut(side, need, min(8 * (need + 1), limit), limit, squeeze and self.squeeze)

    def _settle(self, cuts: list[_Cut]) -> None:
        """Read every cut in growing prefixes, one Rust call per round for all of them, until each is settled."""
        todo = [c for c in cuts if c.wants()]
        while todo:
            for c in todo:
                if c.probed:  # straight to the limit rather than a last step of a few characters
                    c.cap = c.limit if c.cap * c.grow * 2 > c.limit else c.cap * c.grow
                c.read, c.covered = read_prefix(c.side, c.cap, c.squeeze)
            texts = [c for c in todo if isinstance(c.read, str)]
            split = [c for c in todo if not isinstance(c.read, str)]
            if texts:
                found = self._counter.encode_batch([c.read for c in texts], add_special_tokens=False)
                for c, enc in zip(texts, found, strict=True):
                    c.learn(enc)
            if split:
                found = self._counter.encode_batch(
                    [list(c.read) for c in split], is_pretokenized=True, add_special_tokens=False
                )
                for c, enc in zip(split, found, strict=True):
                    c.learn(enc)
            todo = [c for c in todo if c.wants()]

    def prefixes(self, texts: list[str], need: int) -> list[str]:
        """Each text cut after the word of its need-th token (whole when shorter), reading a bounded prefix: the
        first `need` tokens, their offsets included, are the whole text's (no whitespace is squeezed)."""
        cuts = {i: self._cut(t, need, False) for i, t in enumerate(texts) if len(t) > 8 * (need + 1)}
        self._settle(list(cuts.values()))
        out = list(texts)
        for i, c in cuts.items():
            read, _ = c.trim(need)
            assert isinstance(read, str)
            out[i] = read
        return out

    def cut(self, inputs: list[Any]) -> list[Any]:
        """Inputs as they may be tokenized with truncation, each long text (each side of a pair) cut to a prefix
        whose truncated tokens are the whole text's, read in prefixes growing from 8 characters per token: whatever
        the text, at most READ_CHARS_PER_TOKEN characters per token of the max length are tokenized.

        Exact for every text whose first max_length tokens lie within that many characters (whitespace runs of 32+
        counted as one where the tokenizer ignores whitespace); past it, the prefix read stands for the text (a
        single 8 MB word: [UNK] either way). Pairs keep longest_first's split: see _pair()."""
        single = self.max_length - self.tokenizer.num_special_tokens_to_add(False)
        both = self.max_length - self.tokenizer.num_special_tokens_to_add(True)
        start = 8 * (single + 1)
        out = list(inputs)
        singles: dict[int, _Cut] = {}
        pairs: dict[int, tuple[_Cut, _Cut]] = {}
        for i, item in enumerate(inputs):
            if isinstance(item, TextPair):
                if max(len(item.text), len(item.text_pair)) > 8 * (both + 1):
                    pairs[i] = (self._cut(item.text, both + 1, True), self._cut(item.text_pair, both + 1, True))
            elif isinstance(item, Tokens):
                if side_chars(item.words) > start:
                    singles[i] = self._cut(item.words, single, True)
            elif isinstance(item, str) and len(item) > start:
                singles[i] = self._cut(item, single, True)
        self._settle([*singles.values(), *(c for p in pairs.values() for c in p)])
        for i, c in singles.items():
            read, _ = c.trim(single)
            out[i] = read if isinstance(read, str) else Tokens(read)
        while pairs:
            waiting: dict[int, tuple[_Cut, _Cut]] = {}
            for i, (a, b) in pairs.items():
                texts = self._pair(a, b, both)
                if texts is None:
                    waiting[i] = (a, b)
                else:
                    out[i] = TextPair(*texts)  # type: ignore[arg-type]
            self._settle([c for p in waiting.values() for c in p])
            pairs = waiting
        return out

    @staticmethod
    def _pair(a: _Cut, b: _Cut, room: int) -> tuple[Side, Side] | None:
        """The two cut texts of a pair, or None after raising a need that one more read can meet.

        longest_first keeps a shorter side of at most room/2 tokens whole and gives the other the rest; past that,
        each side gets half and the odd token goes to the first text only when it is strictly the longer. So the
        cut texts must keep the first tokens of each side and which side is longer: the shorter side is cut after
        room+1 tokens, the longer one after more than that. Both sides are read on until one is read whole and the
        other is seen to be longer; only past the read limit on both sides is the longer one taken to be the one
        with more characters (the one case that may differ from tokenizing both whole)."""
        if a.covered and b.covered and a.count + b.count <= room:
            return a.read, b.read
        if a.covered and b.covered:
            first_longer = a.count > b.count
        elif a.covered:  # b is at least b.known tokens long: at least as long as a once b.known >= a.count
            if b.known < a.count and b.cap < b.limit:
                b.need = max(b.need, a.count)
                return None
            first_longer = False
        elif b.covered:  # a is longer than b once a.known > b.count
            if a.known <= b.count and a.cap < a.limit:
                a.need = max(a.need, b.count + 1)
                return None
            first_longer = True
        else:  # which one is longer is known once one side is read whole: read on while the limit allows
            growing = [c for c in (a, b) if c.cap < c.limit]
            for c in growing:
                c.need = _WHOLE
            if growing:
                return None
            first_longer = side_chars(a.side) > side_chars(b.side)
        short, long_ = (b, a) if first_longer else (a, b)
        short_text, kept = short.trim(min(short.count, room + 1))
        need = max(room - kept + 1, kept + (1 if first_longer else 0))
        if not long_.covered and long_.known < need and long_.cap < long_.limit:
            long_.need = max(long_.need, need)
            return None
        long_text, _ = long_.trim(need)
        return (long_text, short_text) if first_longer else (short_text, long_text)

    def check_windows(self, sides: list[tuple[str, Side]], capacity: int, windows: str) -> None:
        """413, before the windows are tokenized, for a side with more tokens than `capacity` (what the windows
        described by `windows` hold): at once past CHARS_PER_TOKEN characters a token, else by reading growing
        prefixes (from about one character a token, x4) until more tokens than that are certain or the side is read."""
        rule = capacity * CHARS_PER_TOKEN
        cuts: list[tuple[str, _Cut]] = []
        for where, side in sides:
            size = side_chars(side)
            if size > rule:
                raise PayloadTooLarge(
                    f"{where} has {size} characters, over the {rule} that {windows} can hold at "
                    f"{CHARS_PER_TOKEN} characters per token; send shorter texts"
                )
            if size > capacity:
                start = capacity + capacity // 8 + 1  # one read for CJK (a token a character), x4 after
                cuts.append((where, _Cut(side, capacity + 1, start, size, self.squeeze, grow=4)))
        self._settle([c for _, c in cuts])
        for where, c in cuts:
            if c.known > capacity:
                raise PayloadTooLarge(
                    f"{where} has more than {capacity} tokens, more than {windows} can hold; send shorter texts"
                )

    def count_tokens(self, texts: list[str], limits: list[int]) -> list[tuple[int, bool]]:
        """(tokens, exact) per text, special tokens left out: exact up to its limit; past it, a lower bound over the
        limit, found reading at most CHARS_PER_TOKEN characters per token of max(limit, max_length)."""
        cuts = [
            _Cut(t, n + 1, n + n // 8 + 1, CHARS_PER_TOKEN * max(n, self.max_length), self.squeeze, grow=4)
            for t, n in zip(texts, limits, strict=True)
        ]
        self._settle(cuts)
        return [
            (c.count, True) if c.covered else (max(c.count, n + 1), False) for c, n in zip(cuts, limits, strict=True)
        ]

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
        (`stride` tokens shared between neighbours), each an item whose `source` is the input's index. A text
        needing more than max_windows windows is refused (413) before its windows are made (check_windows)."""
        size = max_length or self.max_length
        tok = self._variant(size, stride, strategy)
        given = next((i for i, x in enumerate(inputs) if isinstance(x, TokenIds)), None)
        if given is not None:  # windows need the text's offsets and word ids, which token ids do not carry
            raise InvalidInput(f"input[{given}]: this model takes texts, not token ids")
        sides = [(f"input[{i}]", x.words if isinstance(x, Tokens) else x) for i, x in enumerate(inputs)
                 if isinstance(x, str | Tokens)]
        if sides:  # pairs (QA) are checked by their task, which knows the question's share of each window
            room = size - tok.num_special_tokens_to_add(False)
            self.check_windows(sides, window_capacity(room, stride, self.max_windows),
                               f"{self.max_windows} windows of {size} tokens (stride {stride})")
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
