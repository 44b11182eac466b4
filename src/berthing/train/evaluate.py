"""The dev and test figures of the model as served: the splits go through berthing's own loading and engine.

What metrics.json and the report say is then what `berthing serve` answers for the same texts, to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berthing.train.metrics import (
    classify_metrics,
    entity_spans,
    log_loss,
    ner_metrics,
    predicted_labels,
    spans_to_tags,
)
from berthing.types import TextPair


@dataclass
class SplitResult:
    """A split's figures, and what was expected and predicted per example (for the confusion matrix and mistakes)."""

    metrics: dict[str, Any]
    expected: list[Any] = field(default_factory=list)
    predicted: list[Any] = field(default_factory=list)


def load_served(path: Path, name: str, cache_dir: Path | None) -> Any:
    """A package (or checkpoint) loaded exactly as `berthing serve` loads it, with the default settings."""
    from berthing.config import Settings
    from berthing.loading import load_model
    from berthing.packaging.sources import resolve

    settings = Settings(cache_dir=cache_dir) if cache_dir is not None else Settings()
    source = resolve(f"{name}={path}", settings.cache_dir)
    return load_model(source, settings.load_options(source.name))


def model_input(example: Any) -> str | TextPair:
    """What a client sends for an example: its text, or the text pair."""
    pair = getattr(example, "text_pair", None)
    return TextPair(example.text, pair) if pair is not None else example.text


def evaluate_classify(model: Any, examples: list[Any], labels: list[str], multi_label: bool) -> SplitResult:
    """Accuracy, F1 and the log-loss of the served probabilities on `examples`."""
    answers = model.predict_items([model_input(e) for e in examples], {}) if examples else []
    expected = [tuple(sorted(e.labels)) if multi_label else tuple(e.labels) for e in examples]
    predicted = [predicted_labels(a, multi_label) for a in answers]
    loss = log_loss(expected, [a["scores"] for a in answers], labels, multi_label) if answers else None
    return SplitResult(classify_metrics(expected, predicted, labels, loss), expected, predicted)


def evaluate_ner(model: Any, examples: list[Any], loss: float | None) -> SplitResult:
    """seqeval entity figures from the served entity spans against the gold spans (character-level IOB2)."""
    answers = model.predict_items([e.text for e in examples], {}) if examples else []
    expected = [tuple(e.spans) for e in examples]
    predicted = [tuple(entity_spans(a)) for a in answers]
    true_tags = [spans_to_tags(e.text, e.spans) for e in examples]
    pred_tags = [spans_to_tags(e.text, p) for e, p in zip(examples, predicted, strict=True)]
    return SplitResult(ner_metrics(true_tags, pred_tags, loss), expected, predicted)


def confusion(labels: list[str], result: SplitResult) -> tuple[list[str], list[list[int]]]:
    """The test split's confusion matrix [true][predicted] (single-label classification)."""
    from sklearn.metrics import confusion_matrix

    true = [e[0] for e in result.expected]
    pred = [p[0] for p in result.predicted]
    return labels, confusion_matrix(true, pred, labels=labels).tolist() if true else [[0] * len(labels) for _ in labels]


def _show_spans(text: str, spans: tuple) -> str:
    return ", ".join(f"{kind}:{text[s:e]}" for s, e, kind in spans) or "(none)"


def wrong_predictions(task: str, examples: list[Any], result: SplitResult, limit: int = 20) -> list[dict[str, str]]:
    """Up to `limit` test examples the served model got wrong, as strings for the report."""
    out: list[dict[str, str]] = []
    for example, want, got in zip(examples, result.expected, result.predicted, strict=True):
        if want == got:
            continue
        if task == "ner":
            out.append({"text": example.text, "expected": _show_spans(example.text, want),
                        "predicted": _show_spans(example.text, got)})
        else:
            pair = getattr(example, "text_pair", None)
            text = f"{example.text} ‖ {pair}" if pair is not None else example.text
            out.append({"text": text, "expected": ", ".join(want), "predicted": ", ".join(got) or "(none)"})
        if len(out) >= limit:
            break
    return out
