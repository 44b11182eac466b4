"""Sequence classification: softmax (single-label) or sigmoid (multi-label, one logit) over id2label."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from berthing.tasks.base import Task, option_int
from berthing.tasks.tokenize import Encoded, Features
from berthing.types import InvalidInput, TextInput


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic."""
    return 1.0 / (1.0 + np.exp(-logits))


class ClassifyTask(Task):
    """A label and its probability per text or text pair; `top_k` returns the k best instead."""

    name: ClassVar[str] = "classify"
    noun: ClassVar[str] = "a classification model"
    options: ClassVar[dict[str, Any]] = {"top_k": None}
    accepts_pairs: ClassVar[bool] = True

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        top_k = option_int(options, "top_k", 1)
        if top_k is not None and top_k > len(self.spec.labels):
            raise InvalidInput(f"field 'top_k' must be <= {len(self.spec.labels)} (the number of labels), got {top_k}")
        return {"top_k": top_k}

    def split(self, output: np.ndarray, features: Features) -> np.ndarray:
        logits = output.astype(np.float32, copy=False)
        return sigmoid(logits) if self.spec.multi_label else softmax(logits)

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        return self.format(np.stack(rows), options["top_k"])

    def format(self, probs: np.ndarray, top_k: int | None) -> list[Any]:
        """Label dicts from a [n, labels] probability matrix (shared with tasks that classify too)."""
        rows = probs
        labels = self.spec.labels
        order = np.argsort(-rows, axis=1, kind="stable")
        results: list[Any] = []
        for probs, idx in zip(rows.tolist(), order.tolist(), strict=True):
            if top_k is not None:
                results.append([{"label": labels[j], "score": probs[j]} for j in idx[:top_k]])
            else:
                best = idx[0]
                results.append(
                    {"label": labels[best], "score": probs[best], "scores": dict(zip(labels, probs, strict=True))}
                )
        return results
