"""Hypothesis strategies for hostile request bodies: random JSON of every shape, bodies one mutation away from valid,
and raw JSON fragments Python's json would never write (NaN, 1e999, 10^5 levels of nesting, lone surrogates)."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# BERTHING_FUZZ_SCALE=20 searches 20 times longer with fresh random draws; the suite runs at 1, derandomized
SCALE = float(os.environ.get("BERTHING_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    """Bounded and deterministic (the same draws every run), no example database, no deadline (a shared CI box)."""
    return settings(
        max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=SCALE == 1, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )

# Every field name any protocol reads, so random objects reach past "unknown field" into the parsers
FIELDS = (
    "input", "inputs", "text", "text_pair", "texts", "query", "documents", "model", "top_k", "top_n", "truncate",
    "normalize", "is_tokenized", "aggregation_strategy", "ignore_labels", "question", "context", "max_answer_len",
    "handle_impossible_answer", "doc_stride", "return_text", "encoding_format", "dimensions", "modality", "user",
    "truncation_direction", "prompt_name", "raw_scores", "return_documents", "rank_fields", "max_tokens_per_doc",
    "max_chunks_per_doc", "priority", "ids", "skip_special_tokens", "add_special_tokens", "parameters",
    "source_sentence", "sentences", "id", "outputs", "name", "datatype", "shape", "data", "binary_data_size",
    "binary_data", "binary_data_output", "timeout_ms", "function_to_apply", "max_question_len", "align_to_words",
)
WORDS = ("", " ", "a", "a b", "[CLS]", "[SEP] [PAD]", "\u0000", "\ufeff", "é\u0301", "😀" * 3, "日本語", "Left", "float",
         "base64", "simple", "none", "BYTES", "FP32", "text", "query", "embed", "classify", "ner", "qa", "rerank",
         "embed:1.0", "default/not-specified", "a ||| b", "x" * 600)
CONTENT_TYPES = (
    None, "application/json", "text/plain", "application/x-www-form-urlencoded", "application/octet-stream",
    "application/json; charset=utf-16", "multipart/form-data; boundary=x", "text/json", "application/problem+json",
    "image/png", "application/json;;;=", "text/plain; charset=latin-1",
)
# Headers some route reads, and values for them no client should send (framing headers that contradict the body,
# Content-Length and Transfer-Encoding, are uvicorn's to refuse, with its own text/plain 400, before any route runs)
HEADERS = ("X-Berthing-Model", "X-Berthing-Timeout-Ms", "Inference-Header-Content-Length", "Content-Encoding", "Expect")
HEADER_VALUES = ("", " ", "0", "-1", "1", "1e999", "NaN", "inf", "-0", "99999999999999999999999", "0x10", "1_000",
                 "embed", "ghost", "embed:1.0", "embed:9", ":", "gzip", "deflate", "br", "identity", "gzip, gzip",
                 "100-continue", "chunked", "\t", "a" * 4000)
LIMITS = (0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400)
# Raw JSON text put where a value goes: what no encoder writes, but a client may send
FRAGMENTS = {
    "NaN": b"NaN", "-Infinity": b"-Infinity", "1e999": b"1e999", "-1e999": b"-1e999", "u64 max": b"18446744073709551615",
    "i64 max": b"9223372036854775807", "i64 min": b"-9223372036854775808", "u32 overflow": b"4294967296",
    "i64 overflow": b"-9223372036854775809", "400 digits": b"9" * 400, "tiny float": b"1e-400", "-0": b"-0.0",
    "max float": b"1.7976931348623157e308", "lone high surrogate": b'"\\ud800"', "lone low surrogate": b'"a\\udc00b"',
    "reversed surrogates": b'"\\udc00\\ud800"', "raw surrogate bytes": b'"\xed\xa0\x80"', "invalid utf-8": b'"\xff\xfe\xc3"',
    "NUL": b'"\\u0000"', "nested 1000": b"[" * 1000 + b'"x"' + b"]" * 1000, "objects 1000": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "nested 10^5": b"[" * 100_000 + b"]" * 100_000, "empty list": b"[]", "empty object": b"{}", "null": b"null",
    "many items": b"[" + b",".join([b'"a"'] * 5000) + b"]", "many ids": b"[" + b",".join([b"101"] * 5000) + b"]",
    "long text": b'"' + b"word " * 20_000 + b'"',
}
SENTINEL = "\u2063fuzz-fragment\u2063"


def dump(value: Any) -> bytes:
    """JSON bytes as Python writes them: big integers, NaN/Infinity, lone surrogates escaped as \\udXXX."""
    return json.dumps(value).encode()


def with_fragment(body: Any, where: tuple[Any, ...], fragment: bytes) -> bytes:
    """`body` serialized with the raw JSON `fragment` at position `where` (the root when empty)."""
    if not where:
        return fragment
    marked = _replace(body, where, SENTINEL)
    return dump(marked).replace(dump(SENTINEL), fragment)


def _replace(value: Any, where: tuple[Any, ...], new: Any) -> Any:
    if not where:
        return new
    head, rest = where[0], where[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    out = list(value)
    out[head] = _replace(out[head], rest, new)
    return out


def replace(value: Any, where: tuple[Any, ...], new: Any) -> Any:
    """A copy of `value` with the item at `where` replaced."""
    return _replace(value, where, new)


def _strings() -> st.SearchStrategy[str]:
    surrogates = st.text(st.characters(categories=["Cs"]) | st.characters(max_codepoint=0x7F), min_size=1, max_size=4)
    return st.sampled_from(WORDS) | st.text(max_size=12) | surrogates


def _leaves() -> st.SearchStrategy[Any]:
    numbers = st.integers() | st.sampled_from(LIMITS) | st.floats() | st.integers(min_value=-2, max_value=200)
    return st.none() | st.booleans() | numbers | _strings()


keys = st.sampled_from(FIELDS) | st.text(max_size=6)
json_values = st.recursive(
    _leaves(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=16,
)
# An object made mostly of the fields the protocols read: gets past "body must be an object" and "unknown field"
json_objects = st.dictionaries(keys, json_values, max_size=6)
