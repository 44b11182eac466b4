"""Token classification (NER): softmax per token in split(); windows merged per token and grouped in finish().

Grouping follows transformers' TokenClassificationPipeline (same words, labels, scores and offsets), extended
to BIOES/BILOU tags, with `word` taken from the original text so `text[start:end] == word` for every group.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from berthing.tasks.base import Task, as_json
from berthing.tasks.tokenize import Encoded, Encoder, Features
from berthing.types import InvalidInput, TextInput

STRATEGIES = ("none", "simple", "first", "average", "max")
DEFAULT_STRATEGY = "simple"
DEFAULT_IGNORE = ("O",)
# Tag prefixes: BIO, BIOES (E ends a group, S is a one-token group) and BILOU's L/U as E/S.
_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable, float32 (as the pipeline computes it)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def split_tag(label: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); a label without a known prefix continues like I- (the pipeline's rule)."""
    head, sep, rest = label.partition("-")
    if sep and rest and head in _PREFIXES:
        return _PREFIXES[head], rest
    return "I", label


def continues(label: str, previous: str) -> bool:
    """Whether a token (or word) tagged `label` extends the group ending in `previous`.

    For BIO labels this is exactly the pipeline's rule (same tag, not B-); E- and S- close a group, so
    nothing continues after them, and S- never continues one.
    """
    bi, tag = split_tag(label)
    last_bi, last_tag = split_tag(previous)
    return tag == last_tag and bi in ("I", "E") and last_bi not in ("E", "S")


def group_labels(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """Spans (first, last, tag) of consecutive labels that form one entity, inclusive, in order."""
    spans: list[tuple[int, int, str]] = []
    for i, label in enumerate(labels):
        if spans and continues(label, labels[i - 1]):
            first, _, tag = spans[-1]
            spans[-1] = (first, i, tag)
        else:
            spans.append((i, i, split_tag(label)[1]))
    return spans


@dataclass(frozen=True, slots=True)
class WordRule:
    """What the pipeline needs from the tokenizer to tell subword tokens: its subword prefix and unknown id."""

    has_subword_prefix: bool
    unk_id: int | None

    @classmethod
    def of(cls, encoder: Encoder) -> WordRule:
        """Unigram (XLM-R, sentencepiece) keeps its unk as `unk_id` in tokenizer.json only, not on the Python model:
        without it an unknown piece would not get the pipeline's word = text and is_subword = False."""
        model = encoder.tokenizer.model
        unk = getattr(model, "unk_token", None)
        unk_id = encoder.tokenizer.token_to_id(unk) if isinstance(unk, str) else None
        if unk_id is None:
            found = json.loads(encoder.tokenizer.to_str()).get("model", {}).get("unk_id")
            unk_id = found if isinstance(found, int) else None
        if unk_id is None:  # byte-level BPE has no unk in its model; the checkpoint's unk token still has an id
            unk_id = next((i for t in ("<unk>", "[UNK]") if (i := encoder.tokenizer.token_to_id(t)) is not None), None)
        return cls(bool(getattr(model, "continuing_subword_prefix", None)), unk_id)


@dataclass(slots=True)
class TextTokens:
    """One input's tokens over the whole text (windows merged), template specials left out."""

    probs: np.ndarray  # [n, labels]
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[int]
    word_ids: list[int | None]
    first_index: int  # index of the first text token in an unwindowed encoding (1 after [CLS])


def _content(encoding: Any) -> list[int]:
    """Positions of the text's own tokens in a window (not [CLS]/[SEP] added by the template)."""
    return [i for i, s in enumerate(encoding.sequence_ids) if s is not None]


def _shift(prev: Any, prev_pos: list[int], cur: Any, cur_pos: list[int], stride: int) -> int:
    """How many text tokens window `cur` starts after window `prev` (len - stride, checked against the ids)."""

    def fits(shift: int) -> bool:
        overlap = min(len(prev_pos) - shift, len(cur_pos))
        return all(
            prev.ids[prev_pos[shift + j]] == cur.ids[cur_pos[j]] and prev.offsets[prev_pos[shift + j]] == cur.offsets[cur_pos[j]]
            for j in range(overlap)
        )

    expected = max(len(prev_pos) - stride, 0)
    if fits(expected):
        return expected
    return next((s for s in range(len(prev_pos)) if fits(s)), len(prev_pos))


def merge_windows(rows: list[np.ndarray], windows: list[Encoded], stride: int) -> TextTokens:
    """One input's windows -> one token sequence; each token keeps the scores of the window where it is
    farthest from a cut edge (the text's own start and end are not cuts), so it saw the most context."""
    positions = [_content(w.encoding) for w in windows]
    starts = [0]
    for k in range(1, len(windows)):
        prev, cur = windows[k - 1].encoding, windows[k].encoding
        starts.append(starts[-1] + _shift(prev, positions[k - 1], cur, positions[k], stride))
    total = max((s + len(p) for s, p in zip(starts, positions, strict=True)), default=0)
    labels = rows[0].shape[-1]
    probs = np.zeros((total, labels), dtype=np.float32)
    best = np.full(total, -1.0)
    source = np.zeros(total, dtype=np.int64)
    local = np.zeros(total, dtype=np.int64)
    last = len(windows) - 1
    for k, (start, pos) in enumerate(zip(starts, positions, strict=True)):
        j = np.arange(len(pos), dtype=np.float64)
        left = j if k > 0 else np.full(len(pos), np.inf)
        right = len(pos) - 1 - j if k < last else np.full(len(pos), np.inf)
        dist = np.minimum(left, right)
        better = dist > best[start : start + len(pos)]  # ties keep the earlier window
        glob = start + np.flatnonzero(better)
        chosen = np.asarray(pos, dtype=np.int64)[better]
        best[glob], source[glob], local[glob] = dist[better], k, chosen
        probs[glob] = rows[k][chosen]
    ids: list[int] = []
    tokens: list[str] = []
    offsets: list[tuple[int, int]] = []
    special: list[int] = []
    word_ids: list[int | None] = []
    for k, i in zip(source.tolist(), local.tolist(), strict=True):
        enc = windows[k].encoding
        ids.append(enc.ids[i])
        tokens.append(enc.tokens[i])
        offsets.append(tuple(enc.offsets[i]))
        special.append(enc.special_tokens_mask[i])
        word_ids.append(enc.word_ids[i])
    first_index = positions[0][0] if positions and positions[0] else 0
    return TextTokens(probs, ids, tokens, offsets, special, word_ids, first_index)


def join_words(tt: TextTokens, words: Sequence[str]) -> str:
    """Pre-split input (a Tokens item): offsets per word made absolute in " ".join(words), as the pipeline
    does for is_split_into_words; returns the joined text the entities point into."""
    starts: list[int] = []
    position = 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    tt.offsets = [
        (s, e) if w is None else (starts[w] + s, starts[w] + e) for w, (s, e) in zip(tt.word_ids, tt.offsets, strict=True)
    ]
    return " ".join(words)


@dataclass(slots=True)
class Piece:
    """A token, or a word of tokens, with its label and score: what grouping works on."""

    label: str
    score: float
    start: int
    end: int


class NerTask(Task):
    """Entities per text: per-token labels (`none`) or grouped spans (`simple`, `first`, `average`, `max`)."""

    name: ClassVar[str] = "ner"
    noun: ClassVar[str] = "a token classification model"
    options: ClassVar[dict[str, Any]] = {"aggregation_strategy": None, "ignore_labels": None}

    _rule: WordRule | None = None  # set by encode(): finish() sees no encoder
    _stride: int = 0

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        strategy = options.get("aggregation_strategy")
        if strategy is None:
            strategy = DEFAULT_STRATEGY
        elif not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
            raise InvalidInput(
                f"field 'aggregation_strategy' must be one of {', '.join(STRATEGIES)}, got {as_json(strategy)}"
            )
        ignore = options.get("ignore_labels")
        if ignore is None:
            ignore = list(DEFAULT_IGNORE)
        elif not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
            raise InvalidInput(f"field 'ignore_labels' must be a list of strings, got {as_json(ignore)}")
        return {"aggregation_strategy": strategy.lower(), "ignore_labels": list(ignore)}

    @staticmethod
    def stride(encoder: Encoder) -> int:
        """Tokens shared by neighbouring windows: a quarter of the max length, fewer than a window holds."""
        post = encoder.tokenizer.post_processor
        added = post.num_special_tokens_to_add(False) if post is not None else 0
        return max(0, min(encoder.max_length // 4, encoder.max_length - added - 1))

    def encode(self, encoder: Encoder, inputs: list[TextInput], options: dict[str, Any]) -> list[Encoded]:
        """Every text whole: a text over the max length becomes overlapping windows, never truncated."""
        if self._rule is None:
            self._stride = self.stride(encoder)  # before _rule: another thread may see _rule set
            self._rule = WordRule.of(encoder)
        return encoder.windows(inputs, self._stride)

    def split(self, output: np.ndarray, features: Features) -> Sequence[np.ndarray]:
        probs = softmax(output.astype(np.float32, copy=False))
        lengths = features.attention_mask.sum(axis=1).tolist()
        return [np.ascontiguousarray(probs[b, :n]) for b, n in enumerate(lengths)]

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        by_source: list[list[int]] = [[] for _ in inputs]
        for i, item in enumerate(items):
            by_source[item.source].append(i)
        results: list[Any] = []
        for item, members in zip(inputs, by_source, strict=True):
            merged = merge_windows([rows[i] for i in members], [items[i] for i in members], self._stride)
            words = getattr(item, "words", None)  # pre-split input (is_tokenized)
            text = join_words(merged, words) if words is not None else str(item)
            results.append(self.entities(text, merged, options["aggregation_strategy"], options["ignore_labels"]))
        return results

    def entities(self, text: str, tt: TextTokens, strategy: str, ignore: list[str]) -> list[dict[str, Any]]:
        """The pipeline's postprocess on one whole text: pre-entities, words, groups, then ignore_labels."""
        rule = self._rule or WordRule(True, None)
        labels = self.spec.labels
        keep = [i for i, s in enumerate(tt.special) if not s]
        if not keep:
            return []
        probs = tt.probs[keep]
        top = probs.argmax(axis=1).tolist()
        top_score = probs.max(axis=1).tolist()
        words: list[str] = []
        subword: list[bool] = []
        for i in keep:
            start, end = tt.offsets[i]
            ref = text[start:end]
            word = tt.tokens[i]
            if rule.has_subword_prefix:
                sub = len(word) != len(ref)
            else:  # the pipeline's fallback for tokenizers without a subword prefix
                sub = start > 0 and " " not in text[start - 1 : start + 1]
            if rule.unk_id is not None and tt.ids[i] == rule.unk_id:
                word, sub = ref, False
            words.append(word)
            subword.append(sub)
        if strategy == "none":
            out = []
            for j, i in enumerate(keep):
                label = labels[top[j]]
                if label in ignore:
                    continue
                start, end = tt.offsets[i]
                out.append({"entity": label, "score": top_score[j], "index": tt.first_index + i,
                            "word": words[j], "start": start, "end": end})
            return out
        if strategy == "simple":
            pieces = [Piece(labels[top[j]], top_score[j], *tt.offsets[i]) for j, i in enumerate(keep)]
        else:
            pieces = self.word_pieces(probs, [tt.offsets[i] for i in keep], subword, strategy)
        out = []
        for first, last, tag in group_labels([p.label for p in pieces]):
            if tag in ignore:
                continue
            members = pieces[first : last + 1]
            start, end = members[0].start, members[-1].end
            score = float(np.mean(np.array([p.score for p in members], dtype=np.float32)))
            out.append({"entity_group": tag, "score": score, "word": text[start:end], "start": start, "end": end})
        return out

    def word_pieces(
        self, probs: np.ndarray, offsets: list[tuple[int, int]], subword: list[bool], strategy: str
    ) -> list[Piece]:
        """One piece per word (a token and the subword tokens after it), labelled by `strategy`: the first
        token's label, the most confident token's label, or the argmax of the averaged scores."""
        bounds = [j for j, sub in enumerate(subword) if j == 0 or not sub] + [len(subword)]
        labels = self.spec.labels
        pieces: list[Piece] = []
        for a, b in itertools.pairwise(bounds):
            word = probs[a:b]
            if strategy == "first":
                scores = word[0]
            elif strategy == "max":
                scores = word[int(word.max(axis=1).argmax())]
            else:
                scores = np.nanmean(word, axis=0)
            best = int(scores.argmax())
            pieces.append(Piece(labels[best], float(scores[best]), offsets[a][0], offsets[b - 1][1]))
        return pieces
