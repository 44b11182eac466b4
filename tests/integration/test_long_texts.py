"""Models with long position tables (8k, as tao-8k) serve long texts whole; the token budget keeps each call small.

No timing or memory assertions: what is checked is that nothing is cut at 512 and that a long text never shares
a runtime call (the padded-token budget of 512 admits one long item alone, never a long one plus others).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from berthing.engine.model import Model
from tests.support.http import clone
from tests.support.models import LONG_POSITIONS

_WORDS = (
    "long documents keep their meaning only when the model reads them whole , so a server for an 8k model "
    "must not cut them at 512 tokens . the batcher splits the work by padded tokens instead"
).split()


def long_text(words: int, offset: int = 0) -> str:
    """A deterministic English text of `words` words (one token each in MiniLM's vocabulary, mostly)."""
    return " ".join(_WORDS[(offset + i * 7) % len(_WORDS)] for i in range(words))


def _reference(folder, texts: list[str]) -> np.ndarray:
    """transformers' mean-pooled embedding of each text, untruncated, one text per call."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state[0]
        out.append(hidden.mean(0).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def long_model(load) -> Model:
    return load("long-embed")


def test_spec_allows_the_whole_position_table(long_model: Model) -> None:
    assert long_model.spec.max_length == LONG_POSITIONS == 8192
    assert long_model.encoder.max_length == 8192


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_long_text_is_embedded_whole(runtime: str, load, tiny_model_dir) -> None:
    text = long_text(3200)
    model = load("long-embed", runtime=runtime)
    [encoded] = model.encoder.encode([text])
    assert 3200 < encoded.length <= 8192, encoded.length  # not cut at 512
    assert encoded.ids[-1] == 102  # [SEP] last: nothing truncated away
    reference = _reference(tiny_model_dir("long-embed"), [text])
    np.testing.assert_allclose(np.array(model.predict([text])), reference, atol=1e-4)


def test_several_long_texts_run_one_per_call(long_model: Model, tiny_model_dir) -> None:
    """Through the async batcher with the default budget: each long text alone, the short ones together."""
    assert long_model.limits.max_batch_tokens == 512
    texts = [long_text(3000), "a short one", long_text(1500, 3), "another short text", long_text(600, 5), "third"]
    batches: list[tuple[int, int, int]] = []

    async def run() -> list[np.ndarray]:
        model = clone(long_model, "long")  # its own batcher, so the shared model stays untouched
        model.start(on_batch=lambda items, padded, real, _s: batches.append((items, padded, real)))
        try:
            return await model.infer(texts, {})
        finally:
            await model.stop()

    got = np.array(asyncio.run(run()))
    lengths = [e.length for e in long_model.encoder.encode(texts)]
    assert sum(items for items, _, _ in batches) == len(texts)
    assert sum(real for _, _, real in batches) == sum(lengths)
    for items, padded, real in batches:
        if padded > 512:  # only a lone item may go over the budget
            assert items == 1 and padded == real
    assert sorted(p for i, p, _ in batches if p > 512) == sorted(n for n in lengths if n > 512)
    np.testing.assert_allclose(got, _reference(tiny_model_dir("long-embed"), texts), atol=1e-4)
