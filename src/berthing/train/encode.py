"""Examples -> tokenized features with labels, the way the Trainer's collators want them.

NER labels come from character spans through the tokenizer's offsets: the first token overlapping a span is B-X,
the others inside it I-X, tokens outside O, special tokens -100 (ignored by the loss and the dev figure).
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def bio_labels(types: list[str]) -> list[str]:
    """The tag set of a token classifier over entity types: O, then B-X and I-X per type, in the types' order."""
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def classify_features(examples: list[Any], tokenizer: Any, labels: list[str], multi_label: bool, max_length: int) -> list[dict]:
    """input_ids etc. per text (or text pair) and its label id (or a multi-hot float vector)."""
    index = {label: i for i, label in enumerate(labels)}
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    if any(p is not None for p in pairs):
        encoded = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_length)
    else:
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
    features = []
    for i, example in enumerate(examples):
        row = {key: values[i] for key, values in encoded.items()}
        if multi_label:
            hot = [0.0] * len(labels)
            for label in example.labels:
                hot[index[label]] = 1.0
            row["labels"] = hot
        else:
            row["labels"] = index[example.labels[0]]
        features.append(row)
    return features


def token_labels(offsets: list[tuple[int, int]], special: list[bool], spans: tuple, tag_ids: dict[str, int]) -> list[int]:
    """One label id per token from character spans (see the module docstring)."""
    out = []
    started: set[int] = set()
    for (start, end), is_special in zip(offsets, special, strict=True):
        if is_special or end <= start:
            out.append(IGNORE)
            continue
        tag = "O"
        for n, (s, e, kind) in enumerate(spans):
            if start < e and end > s:  # the token overlaps span n
                tag = f"{'I' if n in started else 'B'}-{kind}"
                started.add(n)
                break
        out.append(tag_ids[tag])
    return out


def ner_features(examples: list[Any], tokenizer: Any, tags: list[str], max_length: int) -> list[dict]:
    """input_ids etc. per sentence (truncated to max_length for training) and a label id per token."""
    tag_ids = {tag: i for i, tag in enumerate(tags)}
    encoded = tokenizer(
        [e.text for e in examples], truncation=True, max_length=max_length,
        return_offsets_mapping=True, return_special_tokens_mask=True,
    )
    features = []
    for i, example in enumerate(examples):
        offsets = [tuple(o) for o in encoded["offset_mapping"][i]]
        special = [bool(s) for s in encoded["special_tokens_mask"][i]]
        row = {key: values[i] for key, values in encoded.items() if key not in ("offset_mapping", "special_tokens_mask")}
        row["labels"] = token_labels(offsets, special, example.spans, tag_ids)
        features.append(row)
    return features


def class_weights(examples: list[Any], labels: list[str], multi_label: bool) -> list[float]:
    """Inverse-frequency weights (n / (k * count)), as scikit-learn's 'balanced'; multi-label: negatives/positives."""
    counts = [0] * len(labels)
    index = {label: i for i, label in enumerate(labels)}
    for example in examples:
        for label in example.labels:
            counts[index[label]] += 1
    n = len(examples)
    if multi_label:
        return [max(n - c, 1) / max(c, 1) for c in counts]
    return [n / (len(labels) * max(c, 1)) for c in counts]
