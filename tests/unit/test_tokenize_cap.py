"""Tokenizer cost bounded before tokenizing: cut texts give the whole text's tokens, hostile ones read a bounded prefix.

Parity: Encoder.encode (which cuts long texts before tokenizing) against the same tokenizer on the whole text, for
many generated texts (English, CJK, emoji, accents, long words, whitespace runs, pre-split words, pairs) with four
tokenizer families: MiniLM's WordPiece, and the test suite's byte-level BPE (RoBERTa), Unigram (XLM-R) and WordPiece
with RoBERTa's template (MPNet). A small max length (16) makes most generated texts long enough to be cut.

Cost: a spy counts the characters handed to the Rust tokenizers; no timing is asserted (benchmarks/hostile_texts.py).
"""

from __future__ import annotations

import random
from copy import copy as shallow_copy
from pathlib import Path
from typing import Any

import pytest

from berthing.packaging.sources import default_model_path
from berthing.tasks.prefix import CHARS_PER_TOKEN, READ_CHARS_PER_TOKEN, window_capacity
from berthing.tasks.tokenize import Encoder
from berthing.types import PayloadTooLarge, TextPair, Tokens
from tests.support import models as tiny

FAMILIES = ("minilm", "roberta-embed", "xlm-roberta-embed", "mpnet-embed")
_WORDS = ("the model server answers requests quickly while batching them , deploying bert to production . "
          "what is the capital of france ? internationalization unbelievably naïve café résumé 2024 3.14 [SEP] "
          "don't it's").split()
_CJK = "北京是中国的首都上海是一个大城市服务器在两个核心上回答请求张三在联合国工作住在纽约教练我想打篮球"
_EMOJI = "😀🎉👍🏽🇫🇷❤️‍🔥"
_SEPS = (" ", " ", " ", "\n", "\t", "\r\n", "", ", ")


class Spy:
    """A Rust tokenizer that counts the characters it is given to tokenize (and can hold a call: `hold`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chars = 0

    def encode_batch(self, batch: list[Any], **kwargs: Any) -> Any:
        for item in batch:
            if isinstance(item, str):
                self.chars += len(item)
            elif isinstance(item, tuple):
                self.chars += sum(len(x) for x in item)
            else:
                self.chars += sum(len(w) for w in item)
        return self.tokenizer.encode_batch(batch, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def tokenizer_file(kind: str, cache_dir: Path, tiny_model_dir: Any) -> Path:
    """The family's tokenizer.json; a cached tiny model is used as it is (building one imports torch)."""
    if kind == "minilm":
        return default_model_path() / "tokenizer.json"
    cached = cache_dir / "tiny" / f"v{tiny.BUILD_VERSION}" / kind
    return (cached if (cached / "config.json").exists() else tiny_model_dir(kind)) / "tokenizer.json"


@pytest.fixture(scope="module")
def encoders(cache_dir: Path, tiny_model_dir: Any) -> dict[tuple[str, int], Encoder]:
    """Encoders by (family, max length), built once per module."""
    return {(kind, size): Encoder(tokenizer_file(kind, cache_dir, tiny_model_dir), size, True)
            for kind in FAMILIES for size in (16, 128)}


def spied(encoder: Encoder) -> tuple[Encoder, Spy, Spy]:
    """A copy of `encoder` whose two tokenizers count characters (the shared one stays untouched)."""
    copy = shallow_copy(encoder)
    main, counter = Spy(encoder.tokenizer), Spy(encoder._counter)
    copy.tokenizer, copy._counter = main, counter  # type: ignore[assignment]
    return copy, main, counter


def piece(rng: random.Random) -> str:
    """One word-ish piece: English, a CJK or emoji run, a long word (under 30 characters), digits."""
    roll = rng.random()
    if roll < 0.55:
        return rng.choice(_WORDS)
    if roll < 0.7:
        start = rng.randrange(len(_CJK))
        return _CJK[start : start + rng.randint(1, 12)]
    if roll < 0.8:
        return "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 6)))
    if roll < 0.9:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(12, 29)))
    return str(rng.randint(0, 10**6))


def separator(rng: random.Random) -> str:
    """Mostly one space; sometimes nothing, a newline or tab, or a whitespace run of up to 300 characters."""
    roll = rng.random()
    if roll < 0.85:
        return rng.choice(_SEPS)
    if roll < 0.93:
        return " " * rng.randint(2, 31)
    return "".join(rng.choice(" \n\t\r") for _ in range(rng.randint(32, 300)))


def text(rng: random.Random, pieces: int) -> str:
    out = [piece(rng)]
    for _ in range(pieces - 1):
        out.append(separator(rng))
        out.append(piece(rng))
    return "".join(out)


def whole(encoder: Encoder, item: Any) -> Any:
    """The reference: the model's truncating tokenizer on the whole input."""
    if isinstance(item, Tokens):
        return encoder.tokenizer.encode_batch([list(item.words)], is_pretokenized=True)[0]
    if isinstance(item, TextPair):
        return encoder.tokenizer.encode(item.text, item.text_pair)
    return encoder.tokenizer.encode(item)


def squeezable_run(value: str) -> bool:
    return any(len(run) >= 32 for run in "".join(c if c in " \t\n\r" else "|" for c in value).split("|"))


@pytest.mark.parametrize("kind", FAMILIES)
def test_cut_texts_tokenize_as_the_whole_text(kind: str, encoders: dict[tuple[str, int], Encoder]) -> None:
    rng = random.Random(f"single-{kind}")
    for size, count in ((16, 100), (128, 12)):
        encoder = encoders[kind, size]
        texts = [text(rng, rng.choice((3, 20, 60, 200)) * (1 if size == 16 else 4)) for _ in range(count)]
        cut = 0
        for value in texts:
            [got] = encoder.encode([value])
            ref = whole(encoder, value)
            assert (got.ids, got.type_ids) == (ref.ids, ref.type_ids), (kind, size, value[:200])
            if not (encoder.squeeze and squeezable_run(value)):
                assert got.encoding.offsets == ref.offsets, (kind, size, value[:200])
            cut += encoder.cut([value])[0] != value
        assert cut > count // 3  # most texts here were long enough to be cut: the parity above means something


@pytest.mark.parametrize("kind", FAMILIES)
def test_cut_pre_split_words_tokenize_as_the_whole_list(kind: str, encoders: dict[tuple[str, int], Encoder]) -> None:
    rng = random.Random(f"words-{kind}")
    encoder = encoders[kind, 16]
    for _ in range(30):
        words = Tokens(tuple(piece(rng) for _ in range(rng.choice((2, 30, 200)))))
        [got] = encoder.encode([words])
        ref = whole(encoder, words)
        assert (got.ids, got.type_ids, got.encoding.offsets) == (ref.ids, ref.type_ids, ref.offsets)


def _sides(encoding: Any) -> tuple[list[int], list[int]]:
    ids = encoding.ids
    return ([t for t, s in zip(ids, encoding.sequence_ids, strict=True) if s == 0],
            [t for t, s in zip(ids, encoding.sequence_ids, strict=True) if s == 1])


@pytest.mark.parametrize("kind", FAMILIES)
def test_cut_pairs_keep_longest_first_split(kind: str, encoders: dict[tuple[str, int], Encoder]) -> None:
    """Each side keeps the whole text's first tokens and the split longest_first makes, the odd token included
    (it goes to the first text only when that is strictly the longer: near-equal sides check it)."""
    rng = random.Random(f"pairs-{kind}")
    encoder = encoders[kind, 128]  # not 16: the reference's overflow is every window of one side with every other's
    lengths = (1, 10, 40, 120, 160)
    pairs = [TextPair(text(rng, rng.choice(lengths)), text(rng, rng.choice(lengths))) for _ in range(50)]
    pairs += [TextPair(_CJK * k, _CJK[::-1] * j) for k in (1, 21, 24) for j in (1, 21, 24)]
    if kind == "minilm":  # an odd room (125): one CJK character a token, both sides cut, equal or one apart
        pairs += [TextPair("中" * k, "文" * j) for k, j in ((1100, 1100), (1100, 1101), (1101, 1100))]
    cut = 0
    for pair in pairs:
        [got] = encoder.encode([pair])
        ref = whole(encoder, pair)
        assert (got.ids, got.type_ids) == (ref.ids, ref.type_ids), (kind, pair.text[:100], pair.text_pair[:100])
        cut += encoder.cut([pair])[0] != pair
    assert cut >= len(pairs) // 4, cut


def test_pairs_past_the_read_limit_split_by_characters(encoders: dict[tuple[str, int], Encoder]) -> None:
    """Both sides longer than the read limit: each keeps its first tokens; the odd token goes to the side with more
    characters (the whole texts are never tokenized to count them)."""
    encoder = encoders["minilm", 16]
    limit = READ_CHARS_PER_TOKEN * 16
    room = 16 - 3
    a, b = "中" * (limit * 2), "文" * (limit * 2 + 1)
    for first, second, first_gets in ((a, b, room // 2), (b, a, room // 2 + 1), (a, a, room // 2)):
        [got] = encoder.encode([TextPair(first, second)])
        sides = _sides(got.encoding)
        assert [len(s) for s in sides] == [first_gets, room - first_gets]
        assert sides[0] == encoder._counter.encode(first[:room], add_special_tokens=False).ids[:first_gets]


@pytest.mark.parametrize("kind", FAMILIES)
def test_whitespace_runs_are_skipped_not_read(kind: str, encoders: dict[tuple[str, int], Encoder]) -> None:
    encoder, _main, counter = spied(encoders[kind, 128])
    words = "the capital of france is paris " * 40
    for run in (" " * 1_000_000, "\n" * 300_000 + "\t \r\n" * 100_000):
        value = run + words
        [got] = encoder.encode([value])
        if encoder.squeeze:  # the words are reached: the run counts as one space
            assert got.ids == whole(encoder, " " + words).ids
            assert counter.chars < 64 * encoder.max_length
        else:  # byte-level BPE gives whitespace tokens: the run's first tokens are the text's
            assert got.ids == whole(encoder, run[: 64 * encoder.max_length]).ids


HOSTILE = {
    "8 MB without a space": "abcdefghij" * 800_000,
    "2M CJK characters": "中文字符测试" * 333_334,
    "2M emoji": "😀" * 2_000_000,
    "2M punctuation": "!?" * 1_000_000,
    "1M words of 100 letters": ("x" * 100 + " ") * 80_000,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_texts_cost_a_bounded_prefix(name: str, encoders: dict[tuple[str, int], Encoder]) -> None:
    """At most READ_CHARS_PER_TOKEN characters per token of the max length are read, with growing prefixes and
    the final call: under 3x that in all. The result is the one of a text of that prefix."""
    encoder, main, counter = spied(encoders["minilm", 128])
    value = HOSTILE[name]
    [got] = encoder.encode([value])
    limit = READ_CHARS_PER_TOKEN * encoder.max_length
    assert main.chars + counter.chars <= 3 * limit, (main.chars, counter.chars)
    assert len(got.ids) <= encoder.max_length
    assert got.ids == whole(encoder, value[:limit]).ids
    pair_encoder, pair_main, pair_counter = spied(encoders["minilm", 128])
    [pair] = pair_encoder.encode([TextPair(value, value[::-1])])
    assert pair_main.chars + pair_counter.chars <= 6 * limit
    assert len(pair.ids) <= encoder.max_length


def test_truncate_false_refuses_long_texts_before_tokenizing(encoders: dict[tuple[str, int], Encoder]) -> None:
    encoder, main, counter = spied(encoders["minilm", 128])
    limit = CHARS_PER_TOKEN * 128
    assert encoder.char_limit() == limit
    with pytest.raises(PayloadTooLarge) as info:
        encoder.encode(["fits", "中" * 2_000_000], truncate=False)
    assert info.value.message == (
        f"input[1] has 2000000 characters, over the {limit} allowed with truncate false (16 per token of the model's "
        "max length of 128 tokens); send a shorter text or set truncate to true"
    )
    assert main.chars == 4 and counter.chars == 0  # only the text before it was tokenized
    with pytest.raises(PayloadTooLarge, match=r"^input\[0\] is longer than the model's max length of 128 tokens"):
        encoder.encode(["中" * limit, "中" * (limit + 1)], truncate=False)  # in order: the first over its tokens
    with pytest.raises(PayloadTooLarge, match=r"^input\[0\] has 2049 characters \(both texts together\)"):
        encoder.encode([TextPair("a" * 1024, "b" * 1025)], truncate=False)
    [ok] = encoder.encode(["a " * 120], truncate=False)
    assert len(ok.ids) == 122


def test_windows_over_what_they_can_hold_are_refused_before_tokenizing(encoders: dict[tuple[str, int], Encoder]) -> None:
    encoder, main, counter = spied(encoders["minilm", 128])
    encoder.max_windows = 3
    stride = 32
    capacity = window_capacity(126, stride, 3)
    assert capacity == 126 + 2 * 94
    with pytest.raises(PayloadTooLarge) as info:
        encoder.windows(["中" * (capacity * CHARS_PER_TOKEN + 1)], stride)
    assert info.value.message == (
        f"input[0] has {capacity * CHARS_PER_TOKEN + 1} characters, over the {capacity * CHARS_PER_TOKEN} that 3 "
        "windows of 128 tokens (stride 32) can hold at 16 characters per token; send shorter texts"
    )
    assert main.chars == counter.chars == 0
    with pytest.raises(PayloadTooLarge, match=rf"^input\[1\] has more than {capacity} tokens, more than 3 windows"):
        encoder.windows(["fine", "中" * (capacity * 4)], stride)
    assert counter.chars <= capacity * 2 and main.chars == 0  # a prefix was read, no window made
    with pytest.raises(PayloadTooLarge, match=r"^input\[0\] has more than"):
        encoder.windows([Tokens(tuple("中" * (capacity * 4)))], stride)
    fits = "the capital of france is paris . " * 40  # 280 tokens in 1320 characters: read, then windowed
    got = encoder.windows([fits], stride)
    ref = encoder._variant(128, stride, "longest_first").encode(fits)
    assert [w.ids for w in got] == [e.ids for e in [ref, *ref.overflowing]]
