"""Typed results of each task, read from the JSON the TorchServe route answers (field names as the server's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Label:
    """A class and its probability; `scores` has every label's probability (absent in top_k lists)."""

    label: str
    score: float
    scores: dict[str, float] | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Label:
        return cls(data["label"], float(data["score"]), data.get("scores"))


@dataclass(frozen=True, slots=True)
class Entity:
    """A named entity: `label` is the group ("PER") when aggregated, the token's tag ("B-PER") when not.

    `start`/`end` are character offsets into the text; `index` is the token's position (aggregation "none" only)."""

    label: str
    score: float
    word: str
    start: int | None
    end: int | None
    index: int | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Entity:
        label = data["entity_group"] if "entity_group" in data else data["entity"]
        return cls(label, float(data["score"]), data["word"], data.get("start"), data.get("end"), data.get("index"))


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer span: the text and its character offsets into the context ("" with start=end=0 for no answer)."""

    answer: str
    score: float
    start: int
    end: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> Answer:
        return cls(data["answer"], float(data["score"]), int(data["start"]), int(data["end"]))


@dataclass(frozen=True, slots=True)
class Ranked:
    """One text of a ranking: its `index` in the texts given, relevance `score` (sigmoid of `logit`), `text` if asked."""

    index: int
    score: float
    logit: float
    text: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any], offset: int = 0) -> Ranked:
        return cls(int(data["index"]) + offset, float(data["score"]), float(data["logit"]), data.get("text"))


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model of the management API's list: name, source URL, and status while loading or failed."""

    name: str
    url: str
    status: str | None = None


def labels(value: Any) -> Label | list[Label]:
    """One classification: a label, or a best-first list of them (top_k)."""
    return [Label.of(v) for v in value] if isinstance(value, list) else Label.of(value)


def entities(value: list[dict[str, Any]]) -> list[Entity]:
    return [Entity.of(v) for v in value]


def answers(value: Any) -> Answer | list[Answer]:
    """One question's answer, or its best-first list of answers (top_k > 1)."""
    return [Answer.of(v) for v in value] if isinstance(value, list) else Answer.of(value)


def merge_rankings(parts: list[list[dict[str, Any]]], offsets: list[int], top_n: int | None) -> list[Ranked]:
    """Rankings of consecutive slices of the texts as one: best logit first, ties in text order, as the server sorts."""
    merged = [Ranked.of(entry, offset) for part, offset in zip(parts, offsets, strict=True) for entry in part]
    merged.sort(key=lambda r: (-r.logit, r.index))
    return merged[:top_n] if top_n is not None else merged
