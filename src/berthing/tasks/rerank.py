"""Reranking with a cross-encoder: score (query, text) pairs, answer as HF text-embeddings-inference's /rerank does.

A request {"query": q, "texts": [t0, t1, ...]} becomes one (q, ti) pair per text, each its own item in the
batcher, so one request's pairs batch together (and with other requests'); the answer is one ranking,
[{"index", "score", "logit", "text"?}, ...] best first. {"input": [{"query", "texts"}, ...]} gives a list of rankings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from berthing.inputs import json_type, text_value
from berthing.tasks.base import Task, option_bool, option_int
from berthing.tasks.tokenize import Encoded, Encoder, Features
from berthing.types import BadRequest, InvalidInput, PayloadTooLarge, TextInput, TextPair

RANKING_KEYS = ("query", "texts")
SHAPE = '{"query": ..., "texts": [...]}'


@dataclass(frozen=True, slots=True)
class Candidate(TextPair):
    """A (query, text) pair that remembers its ranking (`group`), its place in `texts` and how messages name it."""

    group: int = 0
    index: int = 0
    where: str = ""


def _name(pair: TextInput, i: int) -> str:
    """How messages name a pair: as the client wrote it (texts[2]) or by its place in the input list."""
    return pair.where if isinstance(pair, Candidate) else f"input[{i}]"


def logistic(logits: np.ndarray) -> np.ndarray:
    """Sigmoid without overflow warnings for large negative logits (tanh form), in float64."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))



def _ranking(query: Any, texts: Any, group: int, prefix: str) -> list[Candidate]:
    """One query and its texts -> candidates; `prefix` is '' at the top level, 'input[0].' inside a list."""
    name = (lambda key: f"{prefix}{key}") if prefix else (lambda key: f"field '{key}'")
    q = text_value(query, name("query"))
    if not isinstance(texts, list):
        raise InvalidInput(f"{name('texts')} must be a list of strings, got {json_type(texts)}")
    if not texts:
        raise InvalidInput(f"{name('texts')} is an empty list")
    return [
        Candidate(q, text_value(text, f"{prefix}texts[{i}]"), group, i, f"{prefix}texts[{i}]") for i, text in enumerate(texts)
    ]


def _object(value: Any, where: str, group: int) -> list[Candidate]:
    """A {"query", "texts"} object inside 'input' (or a Python argument); anything else there is a mistake."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a {SHAPE} object, got {json_type(value)}")
    extra = sorted(set(value) - set(RANKING_KEYS))
    if extra:
        raise InvalidInput(f"{where} has unknown field '{extra[0]}' (a ranking is {SHAPE}; options go beside 'input')")
    for key in RANKING_KEYS:
        if key not in value:
            raise InvalidInput(f"{where}.{key} is missing")
    return _ranking(value["query"], value["texts"], group, f"{where}.")


def _limit(items: list[Candidate], field: str, max_items: int | None, groups: int) -> None:
    """More texts than the server takes per request is a 413, counted over every ranking of the request."""
    if max_items is not None and len(items) > max_items:
        what = "items" if groups == 1 else "texts in all"
        raise PayloadTooLarge(f"field '{field}' has {len(items)} {what}, over the limit of {max_items}")


class RerankTask(Task):
    """Relevance of each text to a query, sorted best first; `top_n` keeps the n best, `return_text` echoes texts."""

    name: ClassVar[str] = "rerank"
    noun: ClassVar[str] = "a reranking model"
    options: ClassVar[dict[str, Any]] = {"top_n": None, "return_text": None}
    accepts_pairs: ClassVar[bool] = True

    def parse(self, value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[TextInput], bool]:
        """A {"query", "texts"} object (one ranking) or a list of them (a list of rankings); from JSON or Python."""
        if isinstance(value, dict):
            items = _object(value, field, 0)
            _limit(items, "texts", max_items, 1)
            return list(items), True
        if isinstance(value, list):
            if not value:
                raise InvalidInput(f"field '{field}' is an empty list")
            items = [c for g, v in enumerate(value) for c in _object(v, f"{field}[{g}]", g)]
            _limit(items, field, max_items, len(value))
            return list(items), False
        raise InvalidInput(f"field '{field}' must be a {SHAPE} object or a list of them, got {json_type(value)}")

    def parse_object(
        self, data: dict[str, Any], max_items: int | None
    ) -> tuple[list[TextInput], bool, dict[str, Any]]:
        """{"query", "texts", options...}, or {"input": one or a list of {"query", "texts"}, options...}."""
        data = dict(data)
        if "input" in data:
            given = [k for k in RANKING_KEYS if k in data]
            if given:
                raise InvalidInput(f"fields 'input', '{given[0]}' given together; send one form")
            inputs, single = self.parse(data.pop("input"), "input", max_items)
            return inputs, single, data
        for key in RANKING_KEYS:
            if key not in data:
                raise BadRequest(f"missing field '{key}' (a reranking model takes {SHAPE})")
        items = _ranking(data.pop("query"), data.pop("texts"), 0, "")
        _limit(items, "texts", max_items, 1)
        return list(items), True, data

    def check(self, inputs: list[TextInput], options: dict[str, Any]) -> dict[str, Any]:
        """Own list of fields: a reranker takes neither is_tokenized nor plain texts."""
        allowed = sorted({"truncate", *self.options})
        for key in options:
            if key not in allowed:
                raise InvalidInput(
                    f"unknown field '{key}' for {self.noun} (fields: query, texts, input, {', '.join(allowed)})"
                )
        for i, item in enumerate(inputs):
            if not isinstance(item, Candidate):
                raise InvalidInput(f"input[{i}]: {self.noun} takes {SHAPE}, not texts or text pairs")
        return super().check(inputs, options)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"top_n": option_int(options, "top_n", 1), "return_text": option_bool(options, "return_text", False)}

    def encode(self, encoder: Encoder, inputs: list[TextInput], options: dict[str, Any]) -> list[Encoded]:
        """Pairs truncated longest_first, as CrossEncoder does; with truncate=false a too-long pair is named by its text
        (and one over the character limit is refused before tokenizing, named the same way)."""
        over = None if options["truncate"] else encoder.first_over(inputs)
        encoded = encoder.encode(inputs if over is None else inputs[:over], truncate=True)
        if not options["truncate"]:
            for item, pair in zip(encoded, inputs, strict=False):
                if item.encoding.overflowing:
                    where = _name(pair, item.source)
                    raise PayloadTooLarge(
                        f"{where}: query and text together are longer than the model's max length of "
                        f"{encoder.max_length} tokens and truncate is false"
                    )
        if over is not None:  # the pairs before it fit: it is refused untokenized
            raise encoder.over_limit(inputs[over], _name(inputs[over], over))
        return encoded

    def split(self, output: np.ndarray, features: Features) -> np.ndarray:
        return np.ascontiguousarray(output.reshape(output.shape[0], -1)[:, 0], dtype=np.float32)

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        """One ranking per query (not per pair): the answer mirrors the request's rankings, not its items."""
        logits = np.asarray(rows, dtype=np.float32).reshape(-1)
        scores = logistic(logits)
        groups: dict[int, list[int]] = {}
        for i, pair in enumerate(inputs):
            groups.setdefault(pair.group if isinstance(pair, Candidate) else 0, []).append(i)
        top_n, return_text = options["top_n"], options["return_text"]
        rankings: list[Any] = []
        for members in groups.values():
            order = sorted(members, key=lambda i: -logits[i])  # stable: equal logits keep the texts' order
            ranking = []
            for i in order[:top_n]:
                pair = inputs[i]
                entry: dict[str, Any] = {
                    "index": pair.index if isinstance(pair, Candidate) else i,
                    "score": float(scores[i]),
                    "logit": float(logits[i]),
                }
                if return_text and isinstance(pair, TextPair):
                    entry["text"] = pair.text_pair
                ranking.append(entry)
            rankings.append(ranking)
        return rankings
