"""The "fused" level: ONNX Runtime's transformer fusions, and the attention head count they need from the graph.

onnx and onnxruntime.transformers are imported inside the functions: the serving path never pays for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from berthing.packaging.graph import quiet
from berthing.spec import ModelSpec


def detect_heads(model: Any, hidden_size: int) -> int:
    """Attention heads from the graph: the head size is the constant last dimension of the [batch, tokens, -1, d]
    (or [.., h, d]) reshapes of the attention; 0 when no such reshape is found."""
    from onnx import numpy_helper

    if hidden_size <= 0:
        return 0
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers = {out: node for node in model.graph.node for out in node.output}
    counts: dict[int, int] = {}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = consts.get(node.input[1])
        dims: list[int | None]
        if shape is not None:
            dims = [int(v) for v in shape.reshape(-1)]
        elif (concat := producers.get(node.input[1])) is not None and concat.op_type == "Concat":
            dims = [int(consts[i].reshape(-1)[0]) if i in consts and consts[i].size == 1 else None for i in concat.input]
        else:
            continue
        if len(dims) == 4 and isinstance(dims[3], int) and dims[3] > 0 and hidden_size % dims[3] == 0:
            heads = hidden_size // dims[3]
            if dims[2] in (-1, heads) and heads > 0:
                counts[heads] = counts.get(heads, 0) + 1
    return max(counts, key=lambda h: counts[h]) if counts else 0


def hidden_size_of(model: Any, spec: ModelSpec) -> int:
    """The spec's hidden size, else the input size of the first square MatMul weight."""
    if spec.hidden_size:
        return spec.hidden_size
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            if len(dims) == 2 and dims[0] == dims[1]:
                return int(numpy_helper.to_array(inits[node.input[1]]).shape[0])
    return 0


def fuse(model: Any, spec: ModelSpec, num_heads: int = 0) -> tuple[Any, dict[str, Any]]:
    """ONNX Runtime's BERT optimizer (opt_level 0: its Python fusions only, so the graph stays portable).

    Returns the graph and what fused. Attention fuses only on an eager-attention export (berthing's since export
    format 3; an SDPA trace's IsNaN/Where guards hide the pattern). On 2 AVX-512 cores the fused graph measured
    slower than the plain one (246 vs 261 sentences/s on MiniLM), so `auto` rarely keeps it.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    hidden = hidden_size_of(model, spec)
    heads = num_heads or detect_heads(model, hidden)
    options = FusionOptions("bert")
    options.enable_attention = heads > 0  # without a head count the fusion would guess, and may guess wrong
    with quiet():
        optimized = optimize_model(
            model, model_type="bert", num_heads=heads, hidden_size=hidden if heads else 0,
            optimization_options=options, opt_level=0,
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}  # it logs them too
    return optimized.model, {"num_heads": heads, "hidden_size": hidden, "fused": stats}
