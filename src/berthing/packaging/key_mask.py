"""The key-mask fold int8 applies: the attention padding mask moved into the QK product, kept only when exact.

onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from berthing.packaging.calibration import calibration_texts, graph_feeds
from berthing.packaging.fuse import detect_heads, hidden_size_of
from berthing.packaging.graph import Graph, drop_dead_nodes, opset, save_model, scalar
from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Encoder

# Softmax input for padded keys after the key-mask fold: far enough below any real score that its weight vanishes in
# fp32 (e^-60 ~ 1e-26), near enough that exp stays in ONNX Runtime's fast path (inputs below ~-87 from the row's max
# take a slow one: 6x slower softmax for rows with padding at finfo.min, the exporter's value).
KEY_MASK_VALUE = -60.0


def fold_key_mask(model: Any, num_heads: int) -> int:
    """Move the padding mask out of the [batch, heads, tokens, tokens] scores and into the QK product: Q gets a
    column of ones, K^T a row holding each key's mask value, so Q'K'^T = QK^T + mask with no extra pass over the
    scores (and with KEY_MASK_VALUE, softmax stays on its fast path). Returns the attention layers changed; 0 where
    the graph does not have the expected Softmax(Add(scale * MatMul(Q, K^T), mask)) shape. fold_checked() checks the
    result against the unfolded graph and keeps it only when they agree."""
    from onnx import helper

    inputs = {i.name for i in model.graph.input}
    if "attention_mask" not in inputs or num_heads <= 0 or opset(model) < 13:
        return 0
    g = Graph(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    plans: list[tuple[Any, Any, Any, float]] = []
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        add = producers.get(softmax.input[0])
        if add is None or add.op_type != "Add" or len(g.users.get(add.output[0], [])) != 1:
            return 0
        product_ops = ("Mul", "Div", "MatMul")
        scores = next((i for i in add.input if (p := producers.get(i)) is not None and p.op_type in product_ops), None)
        if scores is None:
            return 0
        node, scale = producers[scores], 1.0
        if node.op_type in ("Mul", "Div"):
            const = next((v for i in node.input if (v := scalar(g, i)) is not None), None)
            matmul = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
            if const is None or const == 0 or matmul is None:
                return 0
            scale, node = (const if node.op_type == "Mul" else 1.0 / const), matmul
        transposes = [producers.get(i) for i in node.input]
        if any(t is None or t.op_type != "Transpose" or len(t.attribute[0].ints) != 4 for t in transposes):
            return 0
        plans.append((add, node, scores, scale))
    if not plans:
        return 0
    g.const("key_mask/one", np.array(1.0, dtype=np.float32))
    g.const("key_mask/axes", np.array([1, 2], dtype=np.int64))
    g.const("key_mask/heads", np.array([1, num_heads, 1, 1], dtype=np.int64))
    g.const("key_mask/pads", np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=np.int64))
    head = [
        helper.make_node("Cast", ["attention_mask"], ["key_mask/real"], name="key_mask/cast", to=1),
        helper.make_node("Sub", ["key_mask/one", "key_mask/real"], ["key_mask/padded"], name="key_mask/padded"),
    ]
    rows: dict[float, str] = {}
    for add, matmul, scores, scale in plans:
        if scale not in rows:  # the mask row is scaled with the product, so it lands at KEY_MASK_VALUE
            tag = f"key_mask/{len(rows)}"
            value = g.const(f"{tag}/value", np.array(KEY_MASK_VALUE / scale, dtype=np.float32))
            head += [
                helper.make_node("Mul", ["key_mask/padded", value], [f"{tag}/values"], name=f"{tag}/values"),
                helper.make_node("Unsqueeze", [f"{tag}/values", "key_mask/axes"], [f"{tag}/row1"], name=f"{tag}/row1"),
                helper.make_node("Expand", [f"{tag}/row1", "key_mask/heads"], [f"{tag}/row"], name=f"{tag}/row"),
            ]
            rows[scale] = f"{tag}/row"
        q, kt = matmul.input[0], matmul.input[1]
        matmul.input[0], matmul.input[1] = f"{q}/with_ones", f"{kt}/with_mask"
        pad = helper.make_node(
            "Pad", [q, "key_mask/pads", "key_mask/one"], [f"{q}/with_ones"], name=f"{matmul.name}/ones", mode="constant"
        )
        row = helper.make_node("Concat", [kt, rows[scale]], [f"{kt}/with_mask"], name=f"{matmul.name}/mask_row", axis=2)
        g.insert(matmul, [pad, row])
        for user in g.users.get(add.output[0], []):
            user.input[:] = [scores if i == add.output[0] else i for i in user.input]
        model.graph.node.remove(add)
    for node in reversed(head):
        model.graph.node.insert(0, node)
    drop_dead_nodes(model)
    g.drop_unused()
    return len(plans)


_FOLD_TOLERANCE = 1e-4  # relative; the fold is exact up to e^KEY_MASK_VALUE, so anything larger is another graph


def _max_difference(before: Any, after: Any, spec: ModelSpec, tokenizer: Path, texts: Sequence[str]) -> float:
    """Largest |after - before| over the real tokens' outputs (relative to before's largest), fp32, on one batch of
    calibration texts of mixed lengths (so padded keys are in play)."""
    import onnx
    import onnxruntime as ort

    encoder = Encoder(tokenizer, spec.max_length, spec.uses_token_types)
    items = encoder.encode(list(texts)[:16])
    features = encoder.collate(items)
    real = features.attention_mask.astype(bool)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    results = []
    with tempfile.TemporaryDirectory(prefix="berthing-fold-") as tmp:
        for i, model in enumerate((before, after)):
            path = Path(tmp) / f"{i}.onnx"
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # saving with external data rewrites the tensors it saves to point at the file
            save_model(copy, path)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            results.append(session.run(None, graph_feeds(features, {x.name for x in session.get_inputs()})))
    worst = 0.0
    for a, b in zip(*results, strict=True):
        if a.ndim >= 2 and a.shape[:2] == real.shape:
            a, b = a[real], b[real]
        scale = max(float(np.abs(a).max()), 1e-6)
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def fold_checked(model: Any, spec: ModelSpec, tokenizer: Path, texts: Sequence[str] | None) -> tuple[Any, int, float | None]:
    """fold_key_mask on a copy, kept only when the real tokens' outputs stay within _FOLD_TOLERANCE of the unfolded
    graph's: (the graph to go on with, attention layers folded, the difference measured; None when nothing folded)."""
    import onnx

    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    folded = fold_key_mask(trial, detect_heads(model, hidden_size_of(model, spec)))
    if not folded:
        return model, 0, None
    try:
        difference = _max_difference(model, trial, spec, tokenizer, texts or calibration_texts())
    except Exception:  # noqa: BLE001 - a fold that does not even run (a head count the graph disagrees with)
        difference = float("inf")
    if difference <= _FOLD_TOLERANCE:
        return trial, folded, difference
    return model, 0, difference  # another attention shape than the fold assumes: keep the graph as exported
