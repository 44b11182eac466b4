"""Reading a long text in growing prefixes, so tokenizing it costs what its first tokens cost.

Truncation keeps a text's first max_length tokens; tokenizing 8 MB to keep 256 tokens would be seconds of one
request's time. These helpers read just enough of each side to make those tokens certain (tokenize.Encoder.cut).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Encoding, Tokenizer

from berthing.types import TextPair, Tokens

# Bounds on what one text may cost the tokenizer, all in characters per token of the model's max length. Measured
# on prose, code, JSON and Markdown with MiniLM's WordPiece: 2 to 5 characters per token on average and under 6 in
# any 256-token stretch; CJK is 1. So 16 is 3x room for real text: with truncate=false, or over what the windows of
# NER/QA can hold, a text averaging more is refused (413) before it is tokenized.
CHARS_PER_TOKEN = 16
# With truncation the text is read in growing prefixes until its first max_length tokens are known for certain; at
# most this many characters per token are read (whitespace runs of 32+ count as one where the tokenizer ignores
# whitespace), and what lies beyond is never tokenized: 8 MB with no space costs what 16 KB costs (MiniLM).
READ_CHARS_PER_TOKEN = 64
# Windows one request may make: the default max_queue (each window is one queued item).
MAX_WINDOWS = 2048

_RUN = re.compile(r"[ \t\n\r]{32,}")  # a whitespace run squeezed to one space when the tokenizer ignores whitespace
_SPACES = re.compile(r"[ \t\n\r]*")

Side = str | tuple[str, ...]  # one text to tokenize: a string, or pre-split words
_WHOLE = 1 << 62  # a need no prefix meets: read on to the whole side (or the read limit)


def side_chars(side: Side) -> int:
    """Characters in one side (pre-split words count one separator each): what the character rules count."""
    return len(side) if isinstance(side, str) else sum(len(word) + 1 for word in side)


def input_chars(item: Any) -> int:
    """Characters to tokenize in one input: both texts of a pair; token ids count as none."""
    if isinstance(item, TextPair):
        return len(item.text) + len(item.text_pair)
    if isinstance(item, Tokens):
        return side_chars(item.words)
    return len(item) if isinstance(item, str) else 0


def read_prefix(side: Side, cap: int, squeeze: bool) -> tuple[Side, bool]:
    """The first `cap` characters of a side, and whether that is all of it (a word list keeps whole words, the last
    one cut). With `squeeze`, a whitespace run of 32+ characters is read as one space, so that a megabyte of spaces
    before the words costs one character: only for tokenizers that give such a run the tokens of one space."""
    if not isinstance(side, str):
        words: list[str] = []
        size = 0
        for word in side:
            if len(word) > cap - size:
                if cap > size:
                    words.append(word[: cap - size])
                return tuple(words), False
            words.append(word)
            size += len(word) + 1
        return tuple(words), True
    if not squeeze:
        return side[:cap], len(side) <= cap
    pieces: list[str] = []
    size = pos = 0
    end = len(side)
    while size < cap and pos < end:
        stop = min(end, pos + cap - size)
        run = _RUN.search(side, pos, stop)
        if run is None:
            pieces.append(side[pos:stop])
            size += stop - pos
            pos = stop
            break
        pieces.append(side[pos : run.start()])
        pieces.append(" ")
        size += run.start() - pos + 1
        pos = _SPACES.match(side, run.end()).end()  # type: ignore[union-attr]  # the run may go on past `stop`
    return "".join(pieces), pos >= end


@dataclass(slots=True, eq=False)
class _Cut:
    """One side read in growing prefixes until its first `need` tokens are certain, the whole side is read, or
    `limit` characters are. A token is certain when a later word follows it in the prefix: each word is tokenized
    on its own, so the words before the prefix's last (maybe cut) word are the whole text's."""

    side: Side
    need: int
    cap: int
    limit: int
    squeeze: bool = False
    grow: int = 2
    read: Side = ""
    covered: bool = False
    probed: bool = False
    ids: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    known: int = 0  # tokens certain: all of them when the whole side was read, else those before the last word

    def wants(self) -> bool:
        """Whether another (longer) read is needed and allowed."""
        return not self.probed or (not self.covered and self.known < self.need and self.cap < self.limit)

    def learn(self, encoding: Encoding) -> None:
        self.probed = True
        self.ids = encoding.ids
        self.offsets = encoding.offsets
        words: list[int] = []
        for w in encoding.word_ids:  # no special tokens are added, so None is not expected; keep the previous word
            words.append(w if w is not None else (words[-1] if words else -1))
        self.words = words
        if self.covered or not words:
            self.known = len(words)
            return
        j = len(words)
        while j and words[j - 1] == words[-1]:
            j -= 1
        self.known = j

    @property
    def count(self) -> int:
        """The side's tokens when it was read whole, else a lower bound (certain tokens)."""
        return len(self.ids) if self.covered else self.known

    def trim(self, k: int) -> tuple[Side, int]:
        """The read text cut after the word of its k-th token, and the tokens that text has. Exact (the whole
        text's first tokens) when k tokens are certain; past the limit, the read text cut after token k+1."""
        n = len(self.ids)
        if k >= n or k < 1:
            return self.read, n
        if not self.covered and self.known < k:  # the limit was reached: no word boundary to trust
            if isinstance(self.read, str):
                return self.read[: self.offsets[k][1]], k + 1
            return self.read, n
        word = self.words[k - 1]
        j = k
        while j < n and self.words[j] == word:
            j += 1
        if j == n and self.covered:
            return self.read, n
        if isinstance(self.read, str):
            return self.read[: max(end for _, end in self.offsets[k - 1 : j])], j
        return self.read[: word + 1], j


def window_capacity(room: int, stride: int, windows: int) -> int:
    """Tokens that `windows` windows of `room` tokens, each sharing `stride` with the previous one, hold."""
    return room + (windows - 1) * max(1, room - stride)


def ignores_whitespace(tokenizer: Tokenizer) -> bool:
    """Whether a run of ASCII whitespace gives the tokens of one space, wherever it stands (WordPiece, and the
    SentencePiece ones that split on whitespace): then read_prefix may squeeze long runs. Byte-level BPE says no."""
    samples = [("ab", "cd"), ("x.", "中文"), ("1", "é"), ("", "cd"), ("ab", "")]
    runs = [" " * 40, "\n" * 40, "\t" * 40, "\r\n" * 20, " \t\n\r" * 10]
    batch = [left + " " + right for left, right in samples]
    batch += [left + run + right for run in runs for left, right in samples]
    found = [e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]
    return all(found[k] == found[k % len(samples)] for k in range(len(samples), len(found)))
