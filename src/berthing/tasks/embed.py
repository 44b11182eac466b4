"""Sentence embeddings: pool the encoder's last hidden state (mean/cls/max/lasttoken), optionally normalize."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from berthing.tasks.base import Task, option_bool
from berthing.tasks.tokenize import Encoded, Features
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
    """One float vector per text."""

    name: ClassVar[str] = "embed"
    noun: ClassVar[str] = "an embedding model"
    options: ClassVar[dict[str, Any]] = {"normalize": None}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"normalize": option_bool(options, "normalize", self.spec.normalize)}

    def split(self, output: np.ndarray, features: Features) -> np.ndarray:
        return np.ascontiguousarray(pool(output, features.attention_mask, self.spec.pooling), dtype=np.float32)

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        stacked = np.stack(rows)
        return list(normalize(stacked) if options["normalize"] else stacked)
