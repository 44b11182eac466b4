"""Question answering: parity with transformers 4.57's pipeline (Python API and a real server), and every error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from berthing.engine.model import Model
from berthing.types import BadRequest, InvalidInput
from tests.support import hf457
from tests.support.servers import ThreadServer

SCORE_TOLERANCE = 1e-4

INPUTS = [
    {"question": "Where does Alice live?", "context": "Alice lives in Paris with her two cats. Bob lives in Berlin."},
    {"question": "What did the fox jump over?", "context": "The quick brown fox jumps over the lazy dog near the river."},
    {
        "question": "When was the bridge finished?",
        "context": "Construction of the Golden Gate Bridge began in January 1933 and the bridge was opened to traffic "
        "in May 1937, after four years of work by thousands of workers.",
    },
    {"question": "Who wrote it?", "context": "Unaffable reviewers praised the novel; its author, Zoë Müller-Lüdenscheidt, "
     "did not."},
    {"question": "Which city?", "context": "Tokyo."},
]
FILLER = (
    "The committee met on Tuesday to discuss the budget for the coming year. Several members raised concerns about "
    "the rising cost of maintenance, while others argued that new investment was overdue. "
)
NEEDLE = "The treasurer, Margaret Okafor, announced that the reserve fund holds 4.2 million euros. "
# Contexts about 4x the tiny model's 128 tokens: several windows each, the answer early, late or in between.
LONG_CONTEXT = FILLER * 6 + NEEDLE + FILLER * 5
LONG = [
    {"question": "How much does the reserve fund hold?", "context": LONG_CONTEXT},
    {"question": "Who is the treasurer?", "context": NEEDLE + FILLER * 11},
    {"question": "What did members raise?", "context": FILLER * 11 + NEEDLE},
]
CASES: dict[str, tuple[list[dict[str, str]], dict[str, Any]]] = {
    "default": (INPUTS, {}),
    "top-k": (INPUTS, {"top_k": 3}),
    "impossible": (INPUTS, {"handle_impossible_answer": True}),
    "impossible-top-k": (INPUTS, {"handle_impossible_answer": True, "top_k": 4}),
    "short-answers": (INPUTS, {"max_answer_len": 2}),
    "one-token-answers": (INPUTS, {"max_answer_len": 1, "top_k": 2}),
    "not-aligned": (INPUTS, {"align_to_words": False, "top_k": 3}),
    "long": (LONG, {"doc_stride": 32}),
    "long-top-k": (LONG, {"doc_stride": 32, "top_k": 3}),
    "long-impossible": (LONG, {"doc_stride": 32, "handle_impossible_answer": True, "top_k": 2}),
    "long-default-stride": (LONG, {}),
}


@pytest.fixture(scope="module")
def qa(load: Callable[..., Model]) -> Model:
    return load("qa")


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Callable[[str], Any]) -> dict[str, list[Any]]:
    """Every case answered by transformers 4.57's own pipeline, in one child process."""
    cases = [{"inputs": inputs, "options": options} for inputs, options in CASES.values()]
    answer = hf457.question_answering(tiny_model_dir("qa"), cases)
    assert answer["versions"]["transformers"].startswith("4.57.")
    return dict(zip(CASES, answer["results"], strict=True))


@pytest.fixture(scope="module")
def server(qa: Model, settings: Any) -> Iterator[str]:
    from berthing.registry import Registry
    from tests.support.http import clone

    registry = Registry()
    registry.add(clone(qa, "qa"))
    with ThreadServer(registry, settings) as running:
        yield f"{running.url}/predictions/qa"


def assert_answer(got: dict[str, Any], want: dict[str, Any], context: str) -> None:
    assert set(got) == {"answer", "score", "start", "end"}
    assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"]), (got, want)
    assert abs(got["score"] - want["score"]) <= SCORE_TOLERANCE, (got, want)
    if got["answer"]:
        assert context[got["start"] : got["end"]] == got["answer"]
    else:
        assert (got["start"], got["end"]) == (0, 0)


def assert_same(got: list[Any], want: list[Any], inputs: list[dict[str, str]], top_k: int) -> None:
    assert len(got) == len(want) == len(inputs)
    for g, w, item in zip(got, want, inputs, strict=True):
        if top_k > 1:
            assert isinstance(g, list) and len(g) == len(w), (g, w)
            for ga, wa in zip(g, w, strict=True):
                assert_answer(ga, wa, item["context"])
        else:
            assert_answer(g, w, item["context"])


@pytest.mark.parametrize("case", list(CASES))
def test_python_api_matches_pipeline(qa: Model, reference: dict[str, list[Any]], case: str) -> None:
    inputs, options = CASES[case]
    top_k = options.get("top_k", 1)
    assert_same(qa.predict(inputs, **options), reference[case], inputs, top_k)
    assert_same([qa.predict(inputs[0], **options)], reference[case][:1], inputs[:1], top_k)  # one object, one answer


@pytest.mark.parametrize("case", list(CASES))
def test_server_matches_pipeline(server: str, reference: dict[str, list[Any]], case: str) -> None:
    inputs, options = CASES[case]
    top_k = options.get("top_k", 1)
    listed = httpx.post(server, json={"input": inputs, **options}, timeout=60)
    assert listed.status_code == 200, listed.text
    assert_same(listed.json(), reference[case], inputs, top_k)
    single = httpx.post(server, json={**inputs[-1], **options}, timeout=60)
    assert single.status_code == 200, single.text
    assert_same([single.json()], reference[case][-1:], inputs[-1:], top_k)


def test_cases_cover_what_they_claim(qa: Model, reference: dict[str, list[Any]]) -> None:
    """The null answer wins somewhere, long contexts really are windowed, short answers really are short."""
    assert any(r["answer"] == "" for r in reference["impossible"]), reference["impossible"]
    assert any(r["answer"] != "" for r in reference["impossible"]), reference["impossible"]
    checked = qa.task.check([], {"doc_stride": 32})
    windows = qa.task.encode(qa.encoder, qa.task.parse(LONG)[0], checked)
    assert [sum(w.source == i for w in windows) for i in range(len(LONG))] == [5, 5, 5]
    assert all(w.length <= qa.encoder.max_length for w in windows)
    assert all(len(r["answer"].split()) <= 2 for r in reference["short-answers"])


def test_answers_are_context_spans(qa: Model) -> None:
    """Answers never reach into the question: a context of one word has one answer, that word."""
    got = qa.predict({"question": "Which city is the capital of France, and why?", "context": "Paris"})
    assert (got["answer"], got["start"], got["end"]) == ("Paris", 0, 5)
    several = qa.predict({"question": "a b c d e f g", "context": "x y"}, top_k=3)
    assert {a["answer"] for a in several} <= {"x", "y", "x y", ""}


def test_question_cut_by_max_question_len(qa: Model) -> None:
    """max_question_len keeps the first whole words of a long question (transformers' fast pipeline ignores it)."""
    context = FILLER * 8
    question = "What did the committee discuss " * 40  # 200 tokens: alone over the max length
    with pytest.raises(InvalidInput, match=r"input\[0\]\.question is 200 tokens"):
        qa.predict({"question": question, "context": context})
    cut = qa.predict({"question": question, "context": context}, max_question_len=20)
    assert cut == qa.predict({"question": "What did the committee discuss " * 4, "context": context})


# -- errors -------------------------------------------------------------------------------------------------------

def error(code: int, message: str) -> dict[str, Any]:
    kind = {400: "BadRequest", 422: "InvalidInput", 413: "PayloadTooLarge"}[code]
    return {"code": code, "type": kind, "message": message}


Q = "Where does Alice live?"
C = "Alice lives in Paris."
LONG_Q = {"question": Q, "context": FILLER * 6}  # 5 question tokens: 128 - 5 - 3 = 120 context tokens per window
OBJ = "{'question', 'context'}"
FIELDS = (
    "question, context, input, align_to_words, doc_stride, handle_impossible_answer, max_answer_len, "
    "max_question_len, top_k"
)
ERRORS: list[tuple[str, Any, int, str]] = [
    ("missing-question", {"context": C}, 400, "missing field 'question' (sent 'context' without it)"),
    ("missing-context", {"question": Q, "top_k": 2}, 400, "missing field 'context' (sent 'question' without it)"),
    ("missing-both", {"top_k": 2}, 400, f"missing fields 'question' and 'context' (or 'input': a list of {OBJ} objects)"),
    ("empty-context", {"question": Q, "context": ""}, 422, "field 'context' is empty or blank"),
    ("blank-question", {"question": " \n", "context": C}, 422, "field 'question' is empty or blank"),
    ("question-number", {"question": 42, "context": C}, 422, "field 'question' must be a string, got number"),
    ("context-list", {"question": Q, "context": ["a"]}, 422, "field 'context' must be a string, got array"),
    ("flat-and-input", {"question": Q, "input": [{"question": Q, "context": C}]}, 422,
     "fields 'question' and 'input' given together; send one form"),
    ("input-string", {"input": "Alice lives in Paris."}, 422,
     f"field 'input' must be a {OBJ} object or a list of them, got string"),
    ("input-empty-list", {"input": []}, 422, "field 'input' is an empty list"),
    ("item-missing-question", {"input": [{"question": Q, "context": C}, {"context": C}]}, 422, "input[1].question is missing"),
    ("item-missing-context", {"input": {"question": Q}}, 422, "input.context is missing"),
    ("item-empty-context", {"input": [{"question": Q, "context": "  "}]}, 422, "input[0].context is empty or blank"),
    ("item-question-null", {"inputs": [{"question": None, "context": C}]}, 422, "inputs[0].question must be a string, got null"),
    ("item-unknown-key", {"input": [{"question": Q, "context": C, "text": "x"}]}, 422,
     f"input[0] has unknown field 'text' (a question is {OBJ})"),
    ("item-string", {"input": [{"question": Q, "context": C}, "Paris?"]}, 422, f"input[1] must be a {OBJ} object, got string"),
    ("top-k-zero", {"question": Q, "context": C, "top_k": 0}, 422, "field 'top_k' must be >= 1, got 0"),
    ("top-k-negative", {"question": Q, "context": C, "top_k": -2}, 422, "field 'top_k' must be >= 1, got -2"),
    ("top-k-string", {"question": Q, "context": C, "top_k": "3"}, 422, "field 'top_k' must be an integer, got \"3\""),
    ("max-answer-len-zero", {"question": Q, "context": C, "max_answer_len": 0}, 422,
     "field 'max_answer_len' must be >= 1, got 0"),
    ("max-answer-len-float", {"question": Q, "context": C, "max_answer_len": 1.5}, 422,
     "field 'max_answer_len' must be an integer, got 1.5"),
    ("impossible-string", {"question": Q, "context": C, "handle_impossible_answer": "yes"}, 422,
     "field 'handle_impossible_answer' must be true or false, got \"yes\""),
    ("doc-stride-negative", {**LONG_Q, "doc_stride": -1}, 422, "field 'doc_stride' must be >= 0, got -1"),
    ("doc-stride-over-window", {"question": Q, "context": C, "doc_stride": 500}, 422,
     "field 'doc_stride' must be < 125 (the window of 128 tokens less 3 special tokens), got 500"),
    ("doc-stride-over-room", {**LONG_Q, "doc_stride": 120}, 422,
     "field 'doc_stride' must be < 120 for input[0], the context tokens that fit beside its question "
     "(128 - 5 question tokens - 3 special tokens), got 120"),
    ("max-question-len-zero", {"question": Q, "context": C, "max_question_len": 0}, 422,
     "field 'max_question_len' must be >= 1, got 0"),
    ("truncate", {"question": Q, "context": C, "truncate": False}, 422,
     f"unknown field 'truncate' for a question answering model (fields: {FIELDS})"),
    ("unknown-option", {"question": Q, "context": C, "topk": 2}, 422,
     f"unknown field 'topk' for a question answering model (fields: {FIELDS})"),
]


@pytest.mark.parametrize(("body", "code", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_body(server: str, body: Any, code: int, message: str) -> None:
    response = httpx.post(server, json=body)
    assert response.headers["content-type"] == "application/json", response.text
    assert (response.status_code, response.json()) == (code, error(code, message))


def test_non_json_bodies(server: str) -> None:
    text = httpx.post(server, content=b"Where does Alice live?", headers={"content-type": "text/plain"})
    message = f"field 'body' must be a {OBJ} object or a list of them, got string"
    assert (text.status_code, text.json()) == (422, error(422, message))
    listed = httpx.post(server, json=[{"question": Q, "context": C}, {"question": Q, "context": 3}])
    assert (listed.status_code, listed.json()) == (422, error(422, "body[1].context must be a string, got number"))
    ok = httpx.post(server, json=[{"question": Q, "context": C}])
    assert ok.status_code == 200 and ok.json()[0]["answer"] in C


def test_doc_stride_at_room_edge_is_served(server: str) -> None:
    response = httpx.post(server, json={**LONG_Q, "doc_stride": 119})
    assert response.status_code == 200, response.text
    assert response.json()["answer"] in LONG_Q["context"]


def test_python_api_errors(qa: Model) -> None:
    with pytest.raises(InvalidInput, match=r"^input\.context is missing$"):
        qa.predict({"question": Q})
    with pytest.raises(InvalidInput, match=r"^field 'top_k' must be >= 1, got 0$"):
        qa.predict({"question": Q, "context": C}, top_k=0)
    with pytest.raises(InvalidInput, match=r"^field 'input' must be a \{'question', 'context'\} object or a list"):
        qa.predict("Where does Alice live?")
    with pytest.raises(BadRequest, match=r"^missing field 'question'"):
        qa.task.parse_object({"context": C}, None)


def test_too_many_windows_is_refused_before_tokenizing_them(server: str) -> None:
    body = {"question": "what?", "context": "word " * 20000, "doc_stride": 120}  # a 3-token step: 6627 windows
    response = httpx.post(server, json=body)
    message = (
        "the contexts need more than 2048 windows of 128 tokens (input[0] alone needs 6627); "
        "send shorter contexts or a smaller doc_stride"
    )
    assert (response.status_code, response.json()) == (413, {"code": 413, "type": "PayloadTooLarge", "message": message})
    assert httpx.post(server, json={"question": "what?", "context": "word " * 2000}).status_code == 200


def test_a_huge_max_answer_len_is_the_same_as_any_length_past_the_context(qa: Model) -> None:
    """2**64-1 overflowed numpy's int64 from the Python API (the server's JSON parser refuses it before: 400)."""
    item = {"question": "Where is it?", "context": "It is in Paris, the capital of France."}
    assert qa.predict(item, max_answer_len=2**64 - 1) == qa.predict(item, max_answer_len=512)
