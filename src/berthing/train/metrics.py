"""The figures of a trained model: scikit-learn for classification, seqeval for entities, never hand-written.

Entity figures are computed on character-level BIO tags made from spans, so they equal exact span matching and
anyone holding the texts, the gold spans and a server's answers can compute the same numbers (`spans_to_tags`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _round(value: Any) -> float:
    """Plain floats for JSON (numpy scalars are not serializable)."""
    return float(value)


def classify_metrics(
    y_true: list[tuple[str, ...]], y_pred: list[tuple[str, ...]], labels: list[str], loss: float | None
) -> dict[str, Any]:
    """Accuracy (subset accuracy for multi-label), macro/micro/weighted F1 and per-label figures, by scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer(classes=labels)
    binarizer.fit([labels])
    true = binarizer.transform(y_true)
    pred = binarizer.transform(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, zero_division=0)
    return {
        "accuracy": _round(accuracy_score(true, pred)),
        "macro_f1": _round(f1_score(true, pred, average="macro", zero_division=0)),
        "micro_f1": _round(f1_score(true, pred, average="micro", zero_division=0)),
        "weighted_f1": _round(f1_score(true, pred, average="weighted", zero_division=0)),
        "per_label": {
            label: {"precision": _round(p), "recall": _round(r), "f1": _round(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "loss": None if loss is None else _round(loss),
        "count": len(y_true),
    }


def ner_metrics(true_tags: list[list[str]], pred_tags: list[list[str]], loss: float | None) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (seqeval, IOB2, strict spans) overall and per entity type."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    strict = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    report = classification_report(true_tags, pred_tags, output_dict=True, **strict)
    per_type = {
        name: {
            "precision": _round(row["precision"]), "recall": _round(row["recall"]),
            "f1": _round(row["f1-score"]), "support": int(row["support"]),
        }
        for name, row in sorted(report.items())
        if not name.endswith(" avg")
    }
    return {
        "precision": _round(precision_score(true_tags, pred_tags, **strict)),
        "recall": _round(recall_score(true_tags, pred_tags, **strict)),
        "f1": _round(f1_score(true_tags, pred_tags, **strict)),
        "accuracy": _round(accuracy_score(true_tags, pred_tags)),
        "per_type": per_type,
        "loss": None if loss is None else _round(loss),
        "count": len(true_tags),
    }


def spans_to_tags(text: str, spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """One IOB2 tag per character of `text`: B- on a span's first character, I- on the rest, O elsewhere."""
    tags = ["O"] * len(text)
    for start, end, kind in spans:
        for i in range(max(0, start), min(end, len(text))):
            tags[i] = f"{'B' if i == start else 'I'}-{kind}"
    return tags


def entity_spans(entities: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """Spans from a served NER answer (`entity_group` with the default aggregation, `entity` without)."""
    out = []
    for entity in entities:
        kind = entity.get("entity_group") or str(entity.get("entity", "")).split("-", 1)[-1]
        out.append((int(entity["start"]), int(entity["end"]), str(kind)))
    return sorted(out)


def predicted_labels(answer: dict[str, Any] | list[dict[str, Any]], multi_label: bool) -> tuple[str, ...]:
    """The label(s) a served classification answer gives: the top label, or every label over 0.5 (multi-label)."""
    if isinstance(answer, list):  # top_k answers
        answer = {"label": answer[0]["label"], "scores": {a["label"]: a["score"] for a in answer}}
    if multi_label:
        return tuple(sorted(label for label, score in answer["scores"].items() if score > 0.5))
    return (str(answer["label"]),)


def log_loss(true: list[tuple[str, ...]], scores: list[dict[str, float]], labels: list[str], multi_label: bool) -> float:
    """Cross-entropy of served probabilities (binary per label for multi-label): the loss of the packaged model."""
    total = 0.0
    for gold, row in zip(true, scores, strict=True):
        if multi_label:
            for label in labels:
                p = min(max(row[label], 1e-12), 1 - 1e-12)
                total -= math.log(p if label in gold else 1 - p) / len(labels)
        else:
            total -= math.log(max(row[gold[0]], 1e-12))
    return total / max(1, len(true))


def majority_baseline(train: list[tuple[str, ...]], test: list[tuple[str, ...]]) -> dict[str, Any]:
    """Accuracy of always answering the training set's most common label (set): what a model must beat."""
    from collections import Counter

    if not train or not test:
        return {"label": None, "accuracy": 0.0}
    common = Counter(train).most_common(1)[0][0]
    return {"label": list(common), "accuracy": sum(1 for t in test if t == common) / len(test)}
