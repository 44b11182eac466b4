"""Sentence embeddings: pool the encoder's last hidden state (mean/cls/max/lasttoken), optionally normalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from berthing.tasks.base import Task, option_bool
from berthing.tasks.tokenize import Encoded, Encoder, Features
from berthing.types import TextInput


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool [batch, seq, hidden] over the real tokens of each row, as sentence-transformers does."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = mask.sum(axis=1) - 1
        return hidden[np.arange(hidden.shape[0]), last]
    m = mask.astype(hidden.dtype)
    if mode == "max":
        return np.where(m[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    summed = np.einsum("bsh,bs->bh", hidden, m)
    counts = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(counts)
    return summed / counts


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows (torch.nn.functional.normalize's eps)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class EmbedTask(Task):
    """One float vector per text; with `all_tokens`, every token's vector unpooled (TEI's /embed_all)."""

    name: ClassVar[str] = "embed"
    noun: ClassVar[str] = "an embedding model"
    options: ClassVar[dict[str, Any]] = {"normalize": None}

    def check(self, inputs: list[TextInput], options: dict[str, Any]) -> dict[str, Any]:
        """`all_tokens` is for adapters (TEI's /embed_all), kept out of the fields that messages list to users."""
        all_tokens = option_bool(options, "all_tokens", False)
        checked = super().check(inputs, {k: v for k, v in options.items() if k != "all_tokens"})
        return {**checked, "all_tokens": all_tokens}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"normalize": option_bool(options, "normalize", self.spec.normalize)}

    def encode(self, encoder: Encoder, inputs: list[TextInput], options: dict[str, Any]) -> list[Encoded]:
        """Items flagged when the request wants token vectors, so split() keeps their rows whole."""
        items = super().encode(encoder, inputs, options)
        if options.get("all_tokens"):
            for item in items:
                item.all_tokens = True
        return items

    def split(self, output: np.ndarray, features: Features) -> np.ndarray | Sequence[np.ndarray]:
        pooled = np.ascontiguousarray(pool(output, features.attention_mask, self.spec.pooling), dtype=np.float32)
        if features.all_tokens is None:
            return pooled
        lengths = features.attention_mask.sum(axis=1).tolist()
        return [
            np.array(output[b, :n], dtype=np.float32) if keep else pooled[b]
            for b, (n, keep) in enumerate(zip(lengths, features.all_tokens.tolist(), strict=True))
        ]

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        if options.get("all_tokens"):
            return list(rows)  # [tokens, hidden] per input, never normalized (as TEI's /embed_all)
        stacked = np.stack(rows)
        return list(normalize(stacked) if options["normalize"] else stacked)
