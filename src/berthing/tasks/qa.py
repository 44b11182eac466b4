"""Extractive question answering: the best context spans for a question, as transformers' pipeline picks them.

Post-processing follows transformers 4.57's QuestionAnsweringPipeline (`select_starts_ends`, `decode_spans`,
`postprocess`) step by step in numpy, so answers, offsets and scores match it; tests check that against the
pipeline itself in an environment of its own (tests/support/hf457.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from berthing.inputs import check_list, json_type, text_value
from berthing.spec import ModelSpec
from berthing.tasks.base import Task, option_bool, option_int
from berthing.tasks.prefix import CHARS_PER_TOKEN, window_capacity
from berthing.tasks.tokenize import Encoded, Encoder, Features
from berthing.types import BadRequest, InvalidInput, PayloadTooLarge, TextInput, TextPair

MAX_SEQ_LEN = 384  # the pipeline's window length: min(model_max_length, 384)
MAX_WINDOWS = 2048  # windows one request may make; each is a model pass
MIN_NULL_SCORE = 1000000.0  # the pipeline's start value for the null answer's score ("large and positive")
OBJECT = "{'question', 'context'}"



def _item(value: Any, where: str) -> TextPair:
    """One {question, context} object (or a TextPair from Python) -> TextPair(question, context)."""
    if isinstance(value, TextPair):
        return TextPair(text_value(value.text, f"{where}.question"), text_value(value.text_pair, f"{where}.context"))
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a {OBJECT} object, got {json_type(value)}")
    extra = sorted(set(value) - {"question", "context"})
    if extra:
        raise InvalidInput(f"{where} has unknown field '{extra[0]}' (a question is {OBJECT})")
    for key in ("question", "context"):
        if key not in value:
            raise InvalidInput(f"{where}.{key} is missing")
    return TextPair(text_value(value["question"], f"{where}.question"), text_value(value["context"], f"{where}.context"))


def decode_spans(
    start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pipeline's `decode_spans`: the topk (start, end) token pairs by start*end probability, end >= start,
    at most max_answer_len tokens long. Kept as written there, quirks included, so the answers match it."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = np.array([np.argmax(scores_flat)])
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # As in the pipeline: nonzero() of the [1, seq] mask is (rows, columns), so index 0 passes too.
    allowed = np.asarray(undesired_tokens.nonzero())
    desired = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts = starts[desired]
    ends = ends[desired]
    return starts, ends, candidates[0, starts, ends]


def select_starts_ends(
    start: np.ndarray,
    end: np.ndarray,
    p_mask: np.ndarray,
    attention_mask: np.ndarray,
    min_null_score: float,
    top_k: int,
    handle_impossible_answer: bool,
    max_answer_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The pipeline's `select_starts_ends` on one window ([1, seq] logits): softmax over the tokens that may answer
    (context and CLS), the null score from CLS, then the best spans."""
    undesired_tokens = np.abs(p_mask - 1) & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score


def char_span(encoding: Any, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """The pipeline's `get_indices`: token span -> character span in the context, widened to whole words."""
    if align_to_words:
        try:
            start_word = encoding.token_to_word(s)
            end_word = encoding.token_to_word(e)
            return encoding.word_to_chars(start_word, 1)[0], encoding.word_to_chars(end_word, 1)[1]
        except (TypeError, ValueError, IndexError):  # CLS has no word: the pipeline falls back to offsets too
            pass
    return encoding.offsets[s][0], encoding.offsets[e][1]


def cls_token_id(encoder: Encoder) -> int | None:
    """The id the pipeline keeps unmasked for the null answer: the post-processor's first special token."""
    processor = json.loads(encoder.tokenizer.to_str()).get("post_processor") or {}
    if processor.get("type") == "Sequence":
        processor = next((p for p in processor.get("processors", []) if p.get("type") != "ByteLevel"), {})
    if isinstance(processor.get("cls"), list):  # BertProcessing, RobertaProcessing: ["[CLS]", 101]
        return int(processor["cls"][1])
    for piece in processor.get("pair", []):  # TemplateProcessing
        if "SpecialToken" in piece:
            ids = processor.get("special_tokens", {}).get(piece["SpecialToken"]["id"], {}).get("ids", [])
            return int(ids[0]) if ids else None
    return next((i for t in ("[CLS]", "<s>") if (i := encoder.tokenizer.token_to_id(t)) is not None), None)


class QaTask(Task):
    """Answers as {answer, score, start, end} (character offsets into the context); `top_k` gives lists."""

    name: ClassVar[str] = "qa"
    noun: ClassVar[str] = "a question answering model"
    options: ClassVar[dict[str, Any]] = {
        "top_k": 1,
        "max_answer_len": 15,
        "handle_impossible_answer": False,
        "doc_stride": None,
        "max_question_len": None,
        "align_to_words": True,
    }
    accepts_pairs: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self._cls_id: int | None = None  # set by the first encode(): finish() has no encoder at hand
        self._cls_known = False

    # -- input forms -------------------------------------------------------------------------------------------

    def parse(self, value: Any, field: str = "input", max_items: int | None = None) -> tuple[list[TextInput], bool]:
        """A {question, context} object (one answer) or a list of them (a list of answers)."""
        if isinstance(value, list):
            check_list(value, field, max_items)
            return [_item(v, f"{field}[{i}]") for i, v in enumerate(value)], False
        if isinstance(value, dict | TextPair):
            return [_item(value, field)], True
        raise InvalidInput(f"field '{field}' must be a {OBJECT} object or a list of them, got {json_type(value)}")

    def parse_object(
        self, data: dict[str, Any], max_items: int | None
    ) -> tuple[list[TextInput], bool, dict[str, Any]]:
        """{"question", "context", options...} is one input; {"input": [...], options...} a list of them."""
        data = dict(data)
        flat = [k for k in ("question", "context") if k in data]
        wrapped = [k for k in ("input", "inputs") if k in data]
        if flat and wrapped:
            raise InvalidInput(f"fields '{flat[0]}' and '{wrapped[0]}' given together; send one form")
        if flat:
            for key, other in (("question", "context"), ("context", "question")):
                if key not in data:
                    raise BadRequest(f"missing field '{key}' (sent '{other}' without it)")
            question = text_value(data.pop("question"), "field 'question'")
            pair = TextPair(question, text_value(data.pop("context"), "field 'context'"))
            return [pair], True, data
        if not wrapped:
            raise BadRequest(f"missing fields 'question' and 'context' (or 'input': a list of {OBJECT} objects)")
        if len(wrapped) > 1:
            raise InvalidInput("fields 'input', 'inputs' given together; send one")
        inputs, single = self.parse(data.pop(wrapped[0]), wrapped[0], max_items)
        return inputs, single, data

    # -- options -----------------------------------------------------------------------------------------------

    def check(self, inputs: list[TextInput], options: dict[str, Any]) -> dict[str, Any]:
        """QA options only (no `truncate`: long contexts are windowed, never cut)."""
        for key in options:
            if key not in self.options:
                fields = ", ".join(["question", "context", "input", *sorted(self.options)])
                raise InvalidInput(f"unknown field '{key}' for {self.noun} (fields: {fields})")
        for i, item in enumerate(inputs):
            if not isinstance(item, TextPair):
                raise InvalidInput(f"input[{i}] must be a {OBJECT} object, not {type(item).__name__}")
        return {
            "top_k": option_int(options, "top_k", 1) or 1,
            # past any sequence's length a larger value changes nothing; numpy's int64 would overflow on 2**63+
            "max_answer_len": min(option_int(options, "max_answer_len", 1) or 15, 1 << 20),
            "handle_impossible_answer": option_bool(options, "handle_impossible_answer", False),
            "doc_stride": option_int(options, "doc_stride", 0),
            "max_question_len": option_int(options, "max_question_len", 1),
            "align_to_words": option_bool(options, "align_to_words", True),
        }

    # -- encode: windows over question + context -----------------------------------------------------------------

    def encode(self, encoder: Encoder, inputs: list[TextInput], options: dict[str, Any]) -> list[Encoded]:
        """Question + context windows as the pipeline makes them: truncation only_second, overlap doc_stride."""
        if not self._cls_known:
            self._cls_id, self._cls_known = cls_token_id(encoder), True
        max_len = min(encoder.max_length, MAX_SEQ_LEN)
        specials = encoder.tokenizer.num_special_tokens_to_add(True)
        default_stride = min(max_len // 2, 128)
        stride = options["doc_stride"]
        if stride is not None and stride >= max_len - specials:
            raise InvalidInput(
                f"field 'doc_stride' must be < {max_len - specials} (the window of {max_len} tokens less "
                f"{specials} special tokens), got {stride}"
            )
        pairs = [p for p in inputs if isinstance(p, TextPair)]
        limit = options["max_question_len"]
        if limit is not None and limit < encoder.max_length:  # a bounded prefix with the question's limit+1 tokens
            questions = encoder.prefixes([p.text for p in pairs], limit + 1)
            pairs = [TextPair(q, p.text_pair) for q, p in zip(questions, pairs, strict=True)]
        else:  # _cut_questions never cuts at max_length or more: the question is tokenized whole, so bounded first
            self._check_questions(pairs, max_len)
        if limit is not None:
            pairs = self._cut_questions(encoder, pairs, limit)
        q_lens = _token_counts(encoder, [p.text for p in pairs])
        capacities = [self._capacity(max_len - q - specials, stride, default_stride) for q in q_lens]
        for i, (pair, capacity) in enumerate(zip(pairs, capacities, strict=True)):
            if capacity > max_len and len(pair.text_pair) > capacity * CHARS_PER_TOKEN:  # windowed; not tokenized yet
                raise PayloadTooLarge(
                    f"input[{i}].context has {len(pair.text_pair)} characters, over the {capacity * CHARS_PER_TOKEN} "
                    f"that {MAX_WINDOWS} windows of {max_len} tokens can hold at {CHARS_PER_TOKEN} characters per "
                    "token; send shorter contexts"
                )
        counted = encoder.count_tokens([p.text_pair for p in pairs], capacities)  # exact up to what fits
        groups: dict[int, list[int]] = {}
        total_windows = 0
        for i, (q, (c, exact)) in enumerate(zip(q_lens, counted, strict=True)):
            room = max_len - q - specials
            if q + c + specials <= max_len:  # one window: the stride is never used
                groups.setdefault(stride if stride is not None else default_stride, []).append(i)
                continue
            if room < 1:
                raise InvalidInput(
                    f"input[{i}].question is {q} tokens: with {specials} special tokens no context fits in the "
                    f"model's max length of {max_len} (set max_question_len to cut it)"
                )
            if stride is not None and stride >= room:
                raise InvalidInput(
                    f"field 'doc_stride' must be < {room} for input[{i}], the context tokens that fit beside its "
                    f"question ({max_len} - {q} question tokens - {specials} special tokens), got {stride}"
                )
            chosen = stride
            if chosen is None:  # the pipeline fails where its default doesn't fit; half the room still overlaps
                chosen = default_stride if default_stride < room else room // 2
            total_windows += 1 + -(-(c - room) // (room - chosen))
            if total_windows > MAX_WINDOWS:  # counted before tokenizing them: a tiny step would make millions
                alone = 1 + -(-(c - room) // (room - chosen))
                raise PayloadTooLarge(
                    f"the contexts need more than {MAX_WINDOWS} windows of {max_len} tokens (input[{i}] alone "
                    f"needs {alone if exact else f'more than {MAX_WINDOWS}'}); send shorter contexts or a smaller "
                    "doc_stride"
                )
            groups.setdefault(chosen, []).append(i)
        items: list[Encoded] = []
        for window_stride, members in groups.items():
            for item in encoder.windows([pairs[i] for i in members], window_stride, "only_second", max_len):
                item.source = members[item.source]
                items.append(item)
        items.sort(key=lambda item: item.source)  # stable: windows stay in order within their input
        return items

    @staticmethod
    def _capacity(room: int, stride: int | None, default_stride: int) -> int:
        """Context tokens that MAX_WINDOWS windows hold beside a question leaving `room` tokens; just `room` where
        only one window is allowed (the question leaves none, or doc_stride does not fit): more is an error then."""
        chosen = stride
        if chosen is None:
            chosen = default_stride if default_stride < room else room // 2
        if room < 1 or chosen >= room:
            return max(room, 0)
        return window_capacity(room, chosen, MAX_WINDOWS)

    @staticmethod
    def _check_questions(pairs: list[TextPair], max_len: int) -> None:
        """413 for a question that could not fit in one window at CHARS_PER_TOKEN characters a token, before
        tokenizing it (a max_question_len under the max length cuts questions instead)."""
        limit = CHARS_PER_TOKEN * max_len
        for i, pair in enumerate(pairs):
            if len(pair.text) > limit:
                raise PayloadTooLarge(
                    f"input[{i}].question has {len(pair.text)} characters, over the {limit} that a window of {max_len} "
                    f"tokens can hold at {CHARS_PER_TOKEN} characters per token; send a shorter question or set "
                    f"max_question_len (under {max_len}) to cut it"
                )

    @staticmethod
    def _cut_questions(encoder: Encoder, pairs: list[TextPair], limit: int) -> list[TextPair]:
        """Questions over `limit` tokens, cut at the last whole word that fits (at a token if no word does)."""
        out: list[TextPair] = []
        for pair, enc in zip(pairs, encoder.tokenizer.encode_batch([p.text for p in pairs], add_special_tokens=False),
                             strict=True):
            if len(enc.ids) + sum(len(o.ids) for o in enc.overflowing) <= limit or limit >= len(enc.ids):
                out.append(pair)
                continue
            word = enc.word_ids[limit]
            first = next(t for t, w in enumerate(enc.word_ids) if w == word) if word is not None else limit
            cut = enc.offsets[first][0] or enc.offsets[limit][0]
            out.append(TextPair(pair.text[:cut], pair.text_pair))
        return out

    # -- split and finish ----------------------------------------------------------------------------------------

    def split(self, output: np.ndarray, features: Features) -> Sequence[np.ndarray]:
        """[batch, seq, 2] start/end logits -> one [tokens, 2] row per window, padding dropped."""
        logits = output.astype(np.float32, copy=False)
        lengths = features.attention_mask.sum(axis=1).tolist()
        return [logits[i, :n] for i, n in enumerate(lengths)]

    def finish(
        self, rows: list[np.ndarray], items: list[Encoded], inputs: list[TextInput], options: dict[str, Any]
    ) -> list[Any]:
        windows: list[list[tuple[np.ndarray, Encoded]]] = [[] for _ in inputs]
        for row, item in zip(rows, items, strict=True):
            windows[item.source].append((row, item))
        cls_id = self._cls_id
        results: list[Any] = []
        for pair, spans in zip(inputs, windows, strict=True):
            assert isinstance(pair, TextPair)
            answers = self._answers(pair.text_pair, spans, cls_id, options)
            if options["top_k"] > 1:
                results.append(answers)
            else:
                results.append(answers[0] if answers else {"answer": "", "score": 0.0, "start": 0, "end": 0})
        return results

    @staticmethod
    def _answers(
        context: str, spans: list[tuple[np.ndarray, Encoded]], cls_id: int | None, options: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The pipeline's `postprocess` for one input: best spans per window, merged by text, null answer, top_k."""
        top_k: int = options["top_k"]
        align: bool = options["align_to_words"]
        impossible: bool = options["handle_impossible_answer"]
        pre_topk = top_k * 2 + 10 if align else top_k  # some candidates merge or drop when aligned to words
        min_null_score = MIN_NULL_SCORE
        answers: list[dict[str, Any]] = []
        for row, item in spans:
            enc = item.encoding
            ids = np.asarray(enc.ids)
            p_mask = np.array([[0 if sid == 1 else 1 for sid in enc.sequence_ids]], dtype=np.int64)
            if cls_id is not None:
                p_mask[0, ids == cls_id] = 0
            attention_mask = np.ones_like(p_mask)
            starts, ends, scores, min_null_score = select_starts_ends(
                row[None, :, 0], row[None, :, 1], p_mask, attention_mask, min_null_score, pre_topk, impossible,
                options["max_answer_len"],
            )
            for s, e, score in zip(starts.tolist(), ends.tolist(), scores, strict=True):
                start_index, end_index = char_span(enc, s, e, align)
                text = context[start_index:end_index]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score.item()
                else:
                    answers.append({"answer": text, "score": score.item(), "start": start_index, "end": end_index})
        if impossible:
            answers.append({"answer": "", "score": min_null_score, "start": 0, "end": 0})
        return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def _token_counts(encoder: Encoder, texts: list[str]) -> list[int]:
    """Tokens per text without special tokens, overflow included (the shared tokenizer truncates)."""
    encodings = encoder.tokenizer.encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) + sum(len(o.ids) for o in e.overflowing) for e in encodings]
