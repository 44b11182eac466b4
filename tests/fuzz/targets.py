"""What the fuzz tests aim at: every POST route of a live server with a valid body for it, and each protocol's error
shape (a 4xx must come in the shape its clients parse, so "never a 500" is only half the check)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.routing import Route

TASKS = ("embed", "classify", "ner", "qa", "rerank")
VERSION = "1.0"  # the version of every model the fixtures load

# A valid body per task on the routes that take any task (TorchServe's, KServe's, TEI's POST /)
PREDICTION = {
    "embed": {"input": ["a short text", "another"], "normalize": True, "truncate": True},
    "classify": {"input": "a fine film", "top_k": 2},
    "ner": {"input": "John lives in Paris", "aggregation_strategy": "simple", "ignore_labels": ["O"]},
    "qa": {"question": "Where does John live?", "context": "John lives in Paris.", "max_answer_len": 5, "doc_stride": 16},
    "rerank": {"query": "a query", "texts": ["a text", "another text"], "top_n": 1, "return_text": True},
}
KSERVE_INPUTS = {"embed": ("text",), "classify": ("text", "text_pair"), "ner": ("text",), "qa": ("question", "context"),
                 "rerank": ("query", "text")}
HF_ROOT = {
    "embed": {"inputs": {"source_sentence": "a text", "sentences": ["a", "b"]}, "parameters": {"truncate": True}},
    "classify": {"inputs": "a fine film", "parameters": {"top_k": 1, "function_to_apply": "softmax"}},
    "ner": {"inputs": "John lives in Paris", "parameters": {"aggregation_strategy": "simple"}},
    "qa": {"inputs": {"question": "Where?", "context": "In Paris."}, "parameters": {"top_k": 1}},
    "rerank": {"query": "a query", "texts": ["a", "b"], "raw_scores": False},
}


def kserve_body(task: str) -> dict[str, Any]:
    """A V2 inference request with one BYTES element per input the task reads."""
    inputs = [{"name": n, "datatype": "BYTES", "shape": [1], "data": ["some text"]} for n in KSERVE_INPUTS[task]]
    return {"id": "fuzz", "inputs": inputs, "parameters": {"binary_data_output": False},
            "outputs": [{"name": "score" if task in ("classify", "qa", "rerank") else "embedding" if task == "embed"
                         else "entities", "parameters": {"binary_data": False}}]}


# Routes whose body is the same whatever the model: path -> (the task it fits, body)
FIXED: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/embeddings": ("embed", {"model": "embed", "input": ["a text", "b"], "encoding_format": "float", "dimensions": 8}),
    "/embeddings": ("embed", {"model": "default/not-specified", "input": [[101, 2023, 102]], "modality": "text"}),
    "/embed": ("embed", {"inputs": ["a text", [101, 102]], "normalize": True, "truncation_direction": "Left",
                         "dimensions": 8, "truncate": True}),
    "/embed_all": ("embed", {"inputs": "a text", "truncate": True}),
    "/predict": ("classify", {"inputs": [["a"], ["a", "b"]], "raw_scores": False, "truncate": True}),
    "/rerank": ("rerank", {"query": "a query", "texts": ["a", "b"], "return_text": True, "raw_scores": False}),
    "/similarity": ("embed", {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}, "parameters": {"truncate": True}}),
    "/tokenize": ("embed", {"inputs": ["a text", "b"], "add_special_tokens": True}),
    "/decode": ("embed", {"ids": [[101, 2023, 102]], "skip_special_tokens": True}),
    "/v1/rerank": ("rerank", {"model": "rerank", "query": "q", "documents": ["a", {"text": "b", "id": 1}], "top_n": 1,
                              "return_documents": True, "rank_fields": ["text"], "max_tokens_per_doc": 8}),
    "/v2/rerank": ("rerank", {"query": "q", "documents": ["a", "b"], "top_n": 2, "max_tokens_per_doc": 8, "priority": 0}),
    "/classify": ("classify", {"input": ["a fine film", {"text": "a", "text_pair": "b"}], "model": "classify"}),
    "/encode": ("classify", {"id": 7, "texts": ["a text", "first ||| second"], "is_tokenized": False, "model": "classify"}),
}
INFINITY_RERANK = {"query": "q", "documents": ["a", "b"], "return_documents": True, "model": "default/not-specified"}


@dataclass(frozen=True)
class Target:
    """One POST request that works: a path, a body, and the task of the model it reaches."""

    path: str
    body: Any
    task: str
    fits: bool = True  # False: a model named in the path whose task the route does not serve (a 4xx to check too)


def _tei_body(suffix: str, task: str) -> Any:
    return HF_ROOT[task] if not suffix else FIXED[suffix][1]


def targets(app: Any) -> list[Target]:
    """A target per POST route of the app and per model where the path names one (each model's own body)."""
    out: list[Target] = []
    for route in app.routes:
        if not isinstance(route, Route) or "POST" not in (route.methods or ()):
            continue
        path = route.path.replace("{version}", VERSION)
        if "{model}" in path:
            for task in TASKS:
                body = kserve_body(task) if path.startswith("/v2/") else PREDICTION[task]
                out.append(Target(path.replace("{model}", task), body, task))
        elif path.startswith("/models/{name}"):
            suffix = path.removeprefix("/models/{name}")
            for task in TASKS:
                fits = not suffix or FIXED[suffix][0] == task or suffix in ("/tokenize", "/decode")
                out.append(Target(path.replace("{name}", task), _tei_body(suffix, task), task, fits))
        elif path == "/":
            out.append(Target("/", HF_ROOT["embed"], "embed"))  # the default model: the first served
        else:
            task, body = FIXED[path]
            out.append(Target(path, body, task))
    out.append(Target("/rerank", INFINITY_RERANK, "rerank"))  # the same path answers Infinity's shape
    unique: dict[str, Target] = {}
    for target in out:  # Infinity's /rerank route sits behind TEI's (the first registered answers both shapes)
        unique.setdefault(f"{target.path} {target.body!r}", target)
    return list(unique.values())


# -- error shapes ---------------------------------------------------------------------------------------------------

Shape = Callable[[Any], bool]


def _keys(body: Any, **types: type | tuple[type, ...]) -> bool:
    return isinstance(body, dict) and all(isinstance(body.get(k, ...), t) for k, t in types.items())


SHAPES: dict[str, Shape] = {
    "berthing": lambda b: _keys(b, code=int, type=str, message=str),
    "openai": lambda b: _keys(b, error=dict) and _keys(b["error"], message=str, type=str, param=(str, type(None)),
                                                         code=(str, type(None))),
    "tei": lambda b: _keys(b, error=str, error_type=str),
    "cohere": lambda b: _keys(b, message=str),
    "infinity": lambda b: _keys(b, error=dict) and _keys(b["error"], message=str, type=str, code=int),
    "kserve": lambda b: _keys(b, error=str) and len(b) == 1,
    "bert-serving": lambda b: _keys(b, description=str, type=str, status=int),
}


def shapes_of(path: str) -> tuple[str, ...]:
    """The error shapes a path may answer in (/rerank: TEI's, or Infinity's for an Infinity body)."""
    bare = "/" + path.split("/", 3)[3] if path.startswith("/models/") and path.count("/") > 2 else path
    if path.startswith("/predictions/"):
        return ("berthing",)
    if path.startswith("/v2/models/"):
        return ("kserve",)
    if bare in ("/v1/embeddings", "/embeddings"):
        return ("openai",)
    if bare in ("/v1/rerank", "/v2/rerank"):
        return ("cohere",)
    if bare == "/classify":
        return ("infinity",)
    if bare == "/encode":
        return ("bert-serving",)
    if bare == "/rerank":
        return ("tei", "infinity")
    return ("tei",)


def one_per_handler(found: list[Target]) -> list[Target]:
    """The targets that reach distinct code: every route and body once, where the path's model fits it
    (/models/{name}/embed is /embed's handler and body; /predictions/{m}/{v} is /predictions/{m}'s)."""
    def again(path: str) -> bool:
        parts = path.split("/")
        return (parts[1] == "models" and len(parts) > 3) or "versions" in parts or (parts[1] == "predictions" and len(parts) > 3)

    return [t for t in found if t.fits and not again(t.path)]


def check_answer(path: str, response: httpx.Response) -> None:
    """Never a 5xx; a 4xx is JSON in the route's own error shape; a 2xx is JSON (or KServe's binary tensors)."""
    assert response.status_code < 500, f"{path}: {response.status_code} {response.text[:500]}"
    kind = response.headers.get("content-type", "")
    if response.is_success and kind == "application/octet-stream" and path.startswith("/v2/"):
        return
    assert kind.startswith("application/json"), f"{path}: {response.status_code} {kind} {response.text[:300]}"
    body = response.json()
    if response.status_code >= 400:
        shapes = shapes_of(path)
        assert any(SHAPES[s](body) for s in shapes), f"{path}: {response.status_code} {body!r:.500} is not {shapes}"


def walk(value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position in a JSON value (the root too), as a path of keys and indices."""
    yield where
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, (*where, i))
