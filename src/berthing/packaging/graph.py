"""Small in-place edits on an ONNX graph and its saving, shared by the fusions, int8 and the key-mask fold.

onnx is imported inside the functions, so importing this module costs nothing on the serving path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LARGE_MODEL_BYTES = 1_500_000_000  # above this, graphs are written with external data (protobuf stops at 2 GB)


def is_large(nbytes: int) -> bool:
    """Whether a graph whose weights take `nbytes` must keep them in a file beside it (protobuf stops at 2 GB)."""
    return nbytes > LARGE_MODEL_BYTES


def replace_with(target: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a graph."""
    fd, name = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: Any, path: Path, data_name: str | None = None) -> None:
    """Save a ModelProto; graphs near protobuf's 2 GB limit keep their weights in a file beside them
    (`data_name`, default <file name>.data: the name the graph will be read under, not a temporary one)."""
    import onnx

    domains = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node} - domains - {"", "ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))  # fused ops (com.microsoft) need their domain
    if is_large(sum(t.ByteSize() for t in model.graph.initializer)):
        location = data_name or path.name + ".data"
        (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, location=location)
    else:
        onnx.save_model(model, str(path))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's tools log advice ("consider pre-processing", "failed to detect num_heads") at WARNING on the
    root logger and their own; the record says what happened instead."""

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    # Their loggers are named after bare modules ("onnx_model_bert", "fusion_attention"), so the filter sits on the
    # handlers, which every propagated record reaches, and keeps everything that does not come from onnxruntime.
    root = logging.getLogger()
    handlers = list(root.handlers)
    loggers = [logging.getLogger(name) for name in ("onnxruntime", "onnxruntime.transformers", "fusion_base")]
    levels = [lg.level for lg in loggers]
    root.addFilter(drop)
    for handler in handlers:
        handler.addFilter(drop)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(drop)
        for handler in handlers:
            handler.removeFilter(drop)
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


class Graph:
    """Small in-place edits on a ModelProto: constants, node insertion, weights by name."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.users: dict[str, list[Any]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def weight(self, node: Any) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[node.input[1]])

    def insert(self, anchor: Any, nodes: list[Any], after: bool = False) -> None:
        graph_nodes = self.model.graph.node
        position = next(i for i, n in enumerate(graph_nodes) if n is anchor) + (1 if after else 0)
        for offset, node in enumerate(nodes):
            graph_nodes.insert(position + offset, node)

    def bias_add(self, node: Any) -> Any | None:
        """The Add of a 1-D bias that alone reads this MatMul's output (kept next to it so MatMul+bias fuse)."""
        users = self.users.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        other = [i for i in users[0].input if i != node.output[0]]
        if len(other) == 1 and other[0] in self.inits and len(self.inits[other[0]].dims) == 1:
            return users[0]
        return None

    def producer_type(self, tensor: str) -> str:
        return next((n.op_type for n in self.model.graph.node if tensor in n.output), "")

    def drop_unused(self) -> None:
        used = {name for node in self.model.graph.node for name in node.input}
        kept = [t for t in self.model.graph.initializer if t.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(kept)


def opset(model: Any) -> int:
    """The graph's default-domain opset (17 when it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def scalar(g: Graph, name: str) -> float | None:
    """The value of a one-element initializer or Constant output; None for anything else."""
    from onnx import numpy_helper

    if name in g.inits and int(np.prod(g.inits[name].dims)) == 1:
        return float(numpy_helper.to_array(g.inits[name]).reshape(-1)[0])
    node = next((n for n in g.model.graph.node if name in n.output and n.op_type == "Constant"), None)
    if node is not None and node.attribute and node.attribute[0].name == "value":
        value = numpy_helper.to_array(node.attribute[0].t)
        return float(value.reshape(-1)[0]) if value.size == 1 else None
    return None


def drop_dead_nodes(model: Any) -> None:
    """Remove nodes no graph output depends on (the old mask's Expand/Where chain after fold_key_mask)."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
