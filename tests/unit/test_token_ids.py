"""TokenIds input: the model's own ids taken as the whole sequence (as TEI does), checked, cut or refused by length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berthing.tasks.tokenize import Encoder
from berthing.types import InvalidInput, PayloadTooLarge, TokenIds, Tokens

MAX = 16


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Any) -> Encoder:
    return Encoder(Path(tiny_model_dir("embed")) / "tokenizer.json", MAX, uses_token_types=True)


def test_ids_are_used_as_given_beside_texts_and_words(encoder: Encoder) -> None:
    text = "hello world"
    ids = encoder.tokenizer.encode(text).ids
    items = encoder.encode([text, TokenIds(tuple(ids)), Tokens(("hello", "world"))])
    assert [item.ids for item in items] == [ids, ids, ids]
    assert items[1].type_ids == [0] * len(ids) and items[1].source == 1 and items[1].encoding is None
    assert items[0].encoding is not None and items[2].encoding is not None


def test_long_ids_are_cut_or_refused(encoder: Encoder) -> None:
    long = TokenIds(tuple(range(1000, 1000 + MAX + 5)))
    assert encoder.encode([long])[0].ids == list(range(1000, 1000 + MAX))
    with pytest.raises(PayloadTooLarge, match=r"^input\[0\] has 21 token ids, over the model's max length of 16 "):
        encoder.encode([long], truncate=False)


@pytest.mark.parametrize(("ids", "message"), [
    ((101, 30522), r"input[1][1] is 30522, not a token id of this model (0 to 30521)"),
    ((101, -1), r"input[1][1] is -1, not a token id of this model (0 to 30521)"),
    ((101, "a"), r"input[1][1] must be a token id (an integer), got string"),
    ((101, True), r"input[1][1] must be a token id (an integer), got boolean"),
    ((), r"input[1] is an empty list of token ids"),
])
def test_bad_ids_name_their_place(encoder: Encoder, ids: tuple[Any, ...], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        encoder.encode(["fine", TokenIds(ids)])
    assert caught.value.message == message


def test_windows_refuse_ids(encoder: Encoder) -> None:
    with pytest.raises(InvalidInput, match=r"^input\[0\]: this model takes texts, not token ids$"):
        encoder.windows([TokenIds((101, 102))], stride=4)
