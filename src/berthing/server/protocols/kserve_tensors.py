"""KServe V2 tensors <-> task inputs and results, shared by the HTTP and gRPC adapters; pure Python and numpy.

Every task reads BYTES inputs of any shape (elements in row-major order, so [n] and [n, 1] both work) and answers
one row per text: embed "embedding" FP32 [n, dim]; classify "label" BYTES [n], "score" FP32 [n], "scores" FP32
[n, labels]; ner "entities" BYTES [n] (a JSON list per text); qa "answer" BYTES, "score" FP64, "start"/"end" INT64;
rerank "score" FP64 [n] per text in input order and "ranking" INT64 [n], the texts' indices best first.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from berthing.inputs import text_value
from berthing.server.protocols.codec import dumps
from berthing.tasks.rerank import Candidate
from berthing.types import BadRequest, PayloadTooLarge, TextInput, TextPair

if TYPE_CHECKING:
    from berthing.engine.model import Model

# numpy dtypes of the numeric datatypes (little-endian, as the binary extension and raw contents are)
NUMPY = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1", "INT16": "<i2",
    "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]  # server metadata, both transports
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64"}
# request parameters that steer transport or scheduling, not the model: accepted and ignored
TRANSPORT_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}

# per task: (required inputs, optional inputs), the parameters it takes
INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "embed": (("text",), ()), "classify": (("text",), ("text_pair",)), "ner": (("text",), ()),
    "qa": (("question", "context"), ()), "rerank": (("query", "text"), ()),
}
PARAMETERS = {
    "embed": ("truncate", "normalize"), "classify": ("truncate",), "ner": ("truncate", "aggregation_strategy"),
    "qa": ("max_answer_len", "handle_impossible_answer", "doc_stride", "max_question_len", "align_to_words"),
    "rerank": ("truncate",),
}


@dataclass(slots=True)
class Tensor:
    """One tensor on the wire: BYTES data is a list of bytes/str, numeric data an ndarray of `shape`."""

    name: str
    datatype: str
    shape: list[int]
    data: Any


# -- BYTES and raw contents ------------------------------------------------------------------------------------------


def encode_bytes(items: Sequence[bytes | str]) -> bytes:
    """BYTES elements as the binary extension lays them out: a 4-byte little-endian length, then the bytes."""
    out = bytearray()
    for item in items:
        raw = item.encode() if isinstance(item, str) else item
        out += struct.pack("<I", len(raw))
        out += raw
    return bytes(out)


def decode_bytes(raw: bytes, name: str) -> list[bytes]:
    """Length-prefixed BYTES elements back into a list; a length running past the end is a 400."""
    items: list[bytes] = []
    at, size = 0, len(raw)
    while at < size:
        if at + 4 > size:
            raise BadRequest(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > size:
            raise BadRequest(f"input '{name}': BYTES element of {length} bytes runs past the end of its data")
        items.append(raw[at:at + length])
        at += length
    return items


def from_raw(raw: bytes, datatype: str, name: str) -> list[Any]:
    """Raw (binary) tensor contents -> flat element list."""
    if datatype == "BYTES":
        return list(decode_bytes(raw, name))
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise BadRequest(f"input '{name}' has unknown datatype '{datatype}'")
    width = np.dtype(dtype).itemsize
    if len(raw) % width:
        raise BadRequest(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype} elements")
    return np.frombuffer(raw, dtype=dtype).tolist()


def to_raw(tensor: Tensor) -> bytes:
    """A tensor's raw contents (binary extension, gRPC raw_output_contents)."""
    if tensor.datatype == "BYTES":
        return encode_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=NUMPY[tensor.datatype]).tobytes()


def to_json_data(tensor: Tensor) -> list[Any]:
    """A tensor's elements, flat and row-major, as JSON `data` (BYTES as UTF-8 strings)."""
    if tensor.datatype == "BYTES":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in tensor.data]
    return np.asarray(tensor.data).ravel().tolist()


def flatten(value: Any) -> list[Any]:
    """JSON `data` may be flat or nested by shape; either way, its elements in row-major order."""
    if not isinstance(value, list):
        return [value]
    out: list[Any] = []
    for item in value:
        out.extend(flatten(item))
    return out


# -- metadata ----------------------------------------------------------------------------------------------------------


def input_specs(task: str) -> list[dict[str, Any]]:
    """The model's inputs as metadata lists them: BYTES, any number of elements."""
    required, optional = INPUTS[task]
    return [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in (*required, *optional)]


def output_specs(task: str, dim: int, labels: int) -> list[dict[str, Any]]:
    """The model's outputs (-1 where a size is per request or unknown)."""
    one = [-1]
    specs = {
        "embed": [("embedding", "FP32", [-1, dim or -1])],
        "classify": [("label", "BYTES", one), ("score", "FP32", one), ("scores", "FP32", [-1, labels or -1])],
        "ner": [("entities", "BYTES", one)],
        "qa": [("answer", "BYTES", one), ("score", "FP64", one), ("start", "INT64", one), ("end", "INT64", one)],
        "rerank": [("score", "FP64", one), ("ranking", "INT64", one)],
    }[task]
    return [{"name": n, "datatype": d, "shape": s} for n, d, s in specs]


def model_config(name: str, task: str, dim: int, labels: int, max_items: int) -> dict[str, Any]:
    """Triton's model configuration JSON: max_batch_size 0, so dims are the whole shape, as in the metadata."""
    optional = set(INPUTS[task][1])

    def entry(spec: dict[str, Any]) -> dict[str, Any]:
        out = {"name": spec["name"], "data_type": CONFIG_TYPES[spec["datatype"]], "dims": spec["shape"]}
        if spec["name"] in optional:
            out["optional"] = True
        return out

    return {
        "name": name, "platform": "berthing", "backend": "berthing", "max_batch_size": 0,
        "input": [entry(s) for s in input_specs(task)], "output": [entry(s) for s in output_specs(task, dim, labels)],
        "parameters": {"task": {"string_value": task}, "max_items": {"string_value": str(max_items)}},
    }


# -- request: tensors -> task inputs and options -----------------------------------------------------------------------


def check_shape(shape: Any, name: str) -> list[int]:
    """A tensor's shape: a list of non-negative integers."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    return shape


def _texts(tensor: Tensor) -> list[Any]:
    """A BYTES tensor's elements as str (UTF-8); non-strings from JSON stay as they are, for the text check."""
    out: list[Any] = []
    for i, item in enumerate(tensor.data):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"input '{tensor.name}' element {i} is not valid UTF-8") from None
        out.append(item)
    return out


def task_inputs(task: str, tensors: list[Tensor], max_items: int) -> list[TextInput]:
    """The request's input tensors as the task's inputs, with KServe's own messages for what does not fit."""
    required, optional = INPUTS[task]
    known = (*required, *optional)
    by_name: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name not in known:
            raise BadRequest(f"unexpected input '{tensor.name}' (inputs: {', '.join(known)})")
        if tensor.name in by_name:
            raise BadRequest(f"input '{tensor.name}' is given twice")
        if tensor.datatype != "BYTES":
            raise BadRequest(f"input '{tensor.name}' must have datatype BYTES, got {tensor.datatype}")
        if len(tensor.data) != math.prod(tensor.shape):
            raise BadRequest(f"input '{tensor.name}' has {len(tensor.data)} elements but shape {tensor.shape}")
        by_name[tensor.name] = tensor
    for name in required:
        if name not in by_name:
            raise BadRequest(f"missing input '{name}' (inputs: {', '.join(known)})")
    texts = {name: _texts(t) for name, t in by_name.items()}
    main = "text" if "text" in texts else required[0]
    count = len(texts[main])
    if count == 0:
        raise BadRequest(f"input '{main}' is empty (shape {by_name[main].shape})")
    if count > max_items:
        raise PayloadTooLarge(f"input '{main}' has {count} elements, over the limit of {max_items}")
    for name, values in texts.items():
        if name != main and not (task == "rerank" and name == "query" and len(values) == 1) and len(values) != count:
            raise BadRequest(f"input '{name}' has {len(values)} elements; input '{main}' has {count}")
    if task == "qa":
        return [
            TextPair(text_value(q, f"question[{i}]"), text_value(c, f"context[{i}]"))
            for i, (q, c) in enumerate(zip(texts["question"], texts["context"], strict=True))
        ]
    if task == "rerank":
        queries = texts["query"]
        if len(queries) == 1:  # one query ranks every text: one group
            query = text_value(queries[0], "query[0]")
            return [Candidate(query, text_value(t, f"text[{i}]"), 0, i, f"text[{i}]") for i, t in enumerate(texts["text"])]
        return [  # a query per text: each pair scored on its own
            Candidate(text_value(q, f"query[{i}]"), text_value(t, f"text[{i}]"), i, i, f"text[{i}]")
            for i, (q, t) in enumerate(zip(queries, texts["text"], strict=True))
        ]
    if "text_pair" in texts:
        return [
            TextPair(text_value(a, f"text[{i}]"), text_value(b, f"text_pair[{i}]"))
            for i, (a, b) in enumerate(zip(texts["text"], texts["text_pair"], strict=True))
        ]
    return [text_value(t, f"text[{i}]") for i, t in enumerate(texts["text"])]


def task_options(task: str, parameters: dict[str, Any], model: str) -> dict[str, Any]:
    """Request parameters as task options; transport ones are dropped, unknown ones are a 400 naming what is taken."""
    allowed = PARAMETERS[task]
    options: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in TRANSPORT_PARAMETERS or key.startswith("triton_"):
            continue
        if key not in allowed:
            raise BadRequest(f"unknown parameter '{key}' for model '{model}' (parameters: {', '.join(allowed)})")
        options[key] = value
    return options


# -- results -> output tensors ---------------------------------------------------------------------------------------


def task_outputs(task: str, results: list[Any], inputs: list[TextInput], labels: Sequence[str]) -> list[Tensor]:
    """One request's results (one per input; one ranking per query for rerank) as output tensors, in metadata order."""
    if task == "embed":
        matrix = np.stack([np.asarray(r, dtype=np.float32) for r in results])
        return [Tensor("embedding", "FP32", list(matrix.shape), matrix)]
    n = len(results)
    if task == "classify":
        scores = np.array([[r["scores"][label] for label in labels] for r in results], dtype=np.float32).reshape(n, -1)
        return [
            Tensor("label", "BYTES", [n], [r["label"] for r in results]),
            Tensor("score", "FP32", [n], np.array([r["score"] for r in results], dtype=np.float32)),
            Tensor("scores", "FP32", list(scores.shape), scores),
        ]
    if task == "ner":
        return [Tensor("entities", "BYTES", [n], [dumps(r) for r in results])]
    if task == "qa":
        return [
            Tensor("answer", "BYTES", [n], [r["answer"] for r in results]),
            Tensor("score", "FP64", [n], np.array([r["score"] for r in results], dtype=np.float64)),
            Tensor("start", "INT64", [n], np.array([r["start"] for r in results], dtype=np.int64)),
            Tensor("end", "INT64", [n], np.array([r["end"] for r in results], dtype=np.int64)),
        ]
    if task == "rerank":
        count = len(inputs)
        score = np.zeros(count, dtype=np.float64)
        logit = np.zeros(count, dtype=np.float32)
        for ranking in results:
            for entry in ranking:
                score[entry["index"]], logit[entry["index"]] = entry["score"], entry["logit"]
        if len(results) == 1:  # one query: the task's own order (best first, ties in text order)
            order = [entry["index"] for entry in results[0]]
        else:
            order = sorted(range(count), key=lambda i: -logit[i])
        return [Tensor("score", "FP64", [count], score), Tensor("ranking", "INT64", [count], np.array(order, dtype=np.int64))]
    raise BadRequest(f"task '{task}' has no KServe V2 tensors")


def pick_outputs(outputs: list[Tensor], wanted: list[str] | None) -> list[Tensor]:
    """The outputs asked for, in the order asked (all of them when none are named)."""
    if not wanted:
        return outputs
    by_name = {t.name: t for t in outputs}
    for name in wanted:
        if name not in by_name:
            raise BadRequest(f"unknown output '{name}' (outputs: {', '.join(by_name)})")
    return [by_name[name] for name in wanted]


# -- one inference, for either transport -------------------------------------------------------------------------------


def served(model: Model) -> str:
    """The model's task, refused when KServe V2 cannot carry it (a custom handler takes raw bodies)."""
    if model.handler is not None:
        raise BadRequest(
            f"model '{model.name}' runs a custom handler, which KServe V2 cannot feed; use /predictions/{model.name}"
        )
    if model.spec.task not in INPUTS:
        raise BadRequest(f"model '{model.name}' has task '{model.spec.task}', which KServe V2 does not serve")
    return model.spec.task


def metadata(model: Model, versions: list[str]) -> dict[str, Any]:
    """Model metadata (GET /v2/models/{m}, gRPC ModelMetadata)."""
    task = served(model)
    return {
        "name": model.name, "versions": versions, "platform": "berthing", "inputs": input_specs(task),
        "outputs": output_specs(task, model.spec.hidden_size, len(model.spec.labels)),
    }


def config(model: Model, max_items: int) -> dict[str, Any]:
    """Triton model configuration (GET .../config, gRPC ModelConfig)."""
    return model_config(model.name, served(model), model.spec.hidden_size, len(model.spec.labels), max_items)


async def infer(model: Model, tensors: list[Tensor], parameters: dict[str, Any], wanted: list[str] | None,
                max_items: int) -> list[Tensor]:
    """Input tensors -> the task's inputs -> the shared batcher -> the output tensors asked for."""
    task = served(model)
    inputs = task_inputs(task, tensors, max_items)
    options = task_options(task, parameters, model.name)
    results = await model.infer(inputs, options)
    return pick_outputs(task_outputs(task, results, inputs, model.spec.labels), wanted)
