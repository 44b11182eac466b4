"""The "int8" level: dynamic INT8 with SmoothQuant and fp32 outlier channels, int8 word-embedding rows.

Why int8 is not a plain `quantize_dynamic`: ONNX Runtime quantizes each MatMul's activations per tensor at run
time (one uint8 scale for the whole [batch, tokens, channels] input). BERT-family encoders carry a few outlier
channels (on all-MiniLM-L6-v2, channels 99, 63 and 223 of the attention LayerNorm outputs reach 28 where the
median channel stays near 2; the GELU outputs have similar ones), so one scale wastes most of the 8 bits on them:
per-tensor weights drift to cosine 0.78 against sentence-transformers, per-channel weights still to 0.94-0.95.
The default here measures each MatMul input's channel ranges on a built-in calibration sample, then

- applies SmoothQuant (alpha 0.85) to every LayerNorm-fed input (the Q/K/V projections, the FFN input): x @ W =
  (x / s) @ (s * W), moving activation range into the per-channel-quantized weights for one narrow Mul;
- on the other inputs (GELU outputs, attention contexts), where the largest channel range is >= 6x the median one
  (MiniLM: the early GELU outputs), keeps the 8 largest channels in a small fp32 side MatMul and quantizes the rest
  (x @ W = (x * keep) @ W + x[..., idx] @ W[idx]). Splitting the FFN inputs too (split_layernorm_inputs) is a bit
  more accurate but adds a full-width fp32 product and add per layer (-10% sentences/s).

Weights are pair-bounded (pair_bound.py), so every CPU class computes the same integer products. On MiniLM that gives
worst cosine 0.984, mean 0.998 on the calibration texts (held out: 0.993 / 0.998) at 1.5x fp32's sentences/s on 2
AVX2 cores (2.3x on AVX-512 VNNI/AMX before the pair bound); the configurations tried are in
benchmarks/optimize_bench.py and docs/optimization.md.

onnxruntime.quantization and onnx are imported inside the functions: the serving path never pays for them.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from berthing.packaging.calibration import activation_ranges, calibration_texts
from berthing.packaging.graph import Graph, is_large, opset, quiet, save_model
from berthing.packaging.key_mask import fold_checked
from berthing.packaging.pair_bound import bound_weight_pairs
from berthing.spec import ModelSpec
from berthing.types import ModelLoadError


@dataclass(frozen=True)
class Int8Config:
    """How `int8` quantizes; the defaults are the configuration measured best on all-MiniLM-L6-v2.

    op_types None means onnxruntime's own default list (it also quantizes the embedding Gathers).
    exclude holds regular expressions over node names that stay fp32.
    """

    name: str = "int8"
    per_channel: bool = True  # one weight scale per output channel, not per matrix
    reduce_range: bool = False  # 7-bit weights (|q| <= 64): no overflow on any CPU, but less precise than pair_bound
    weight_type: Literal["int8", "uint8"] = "int8"
    op_types: tuple[str, ...] | None = ("MatMul",)  # word embeddings (Gather) stay fp32
    outlier_channels: int = 8  # input channels per MatMul kept in fp32 (the largest on the calibration sample)
    outlier_ratio: float = 6.0  # split only inputs whose largest channel range is >= this x the median channel's
    per_token: bool = False  # scale each token's activations to [-1, 1] before quantizing (slower)
    smooth_alpha: float = 0.85  # SmoothQuant on LayerNorm-fed inputs that are not split: range moves into weights
    split_layernorm_inputs: bool = False  # split LayerNorm-fed inputs with outliers too, instead of smoothing them
    min_out_features: int = 17  # heads with fewer outputs (labels, QA's 2, a reranker's 1) stay fp32
    exclude: tuple[str, ...] = ()
    fuse_first: bool = False  # run the transformer fusions before quantizing
    embedding_rows: bool = True  # word-embedding table as int8 with one scale per row (~4x less memory per session)
    fold_key_mask: bool = True  # padding mask inside the QK product instead of a pass over the scores (fold_key_mask)
    pair_bound: bool = True  # adjacent weight rows sum to <= 128: no 16-bit overflow on x86 without VNNI (pair_bound.py)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for package manifests."""
        data = asdict(self)
        data["op_types"] = list(self.op_types) if self.op_types is not None else None
        data["exclude"] = list(self.exclude)
        return data


DEFAULT_INT8 = Int8Config()


def _const_matmuls(model: Any, cfg: Int8Config) -> dict[str, list[Any]]:
    """MatMuls with a 2-D constant weight that int8 quantizes, grouped by the activation they read."""
    inits = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        dims = list(inits[node.input[1]].dims)
        if len(dims) != 2 or dims[1] < cfg.min_out_features:
            continue
        if any(re.search(pattern, node.name) for pattern in cfg.exclude):
            continue
        groups.setdefault(node.input[0], []).append(node)
    return groups


def _split_outliers(g: Graph, x: str, nodes: list[Any], top: np.ndarray, k: int) -> tuple[str, list[str]]:
    """Zero the k largest channels of x for the int8 MatMuls and add them back through fp32 MatMuls on those
    channels only: x @ W = (x * keep) @ W + x[..., idx] @ W[idx]. Returns the new input and the fp32 nodes."""
    from onnx import helper

    idx = np.sort(np.argsort(-top, kind="stable")[:k]).astype(np.int64)
    keep = np.ones(top.shape[0], dtype=np.float32)
    keep[idx] = 0.0
    inliers, outliers = f"{x}/inliers", f"{x}/outliers"
    g.insert(nodes[0], [
        helper.make_node("Mul", [x, g.const(f"{x}/inlier_mask", keep)], [inliers], name=f"{x}/inlier_mask_mul"),
        helper.make_node("Gather", [x, g.const(f"{x}/outlier_index", idx)], [outliers], name=f"{x}/outlier_gather", axis=-1),
    ])
    fp32_nodes: list[str] = []
    for node in nodes:
        weight = g.weight(node)
        node.input[0] = inliers
        anchor = g.bias_add(node) or node
        out = anchor.output[0]
        anchor.output[0] = f"{out}/int8_part"
        side = helper.make_node(
            "MatMul", [outliers, g.const(f"{node.input[1]}/outlier_rows", weight[idx])], [f"{out}/fp32_part"],
            name=f"{node.name}/outliers",
        )
        add = helper.make_node("Add", [f"{out}/int8_part", f"{out}/fp32_part"], [out], name=f"{node.name}/outlier_add")
        g.insert(anchor, [side, add], after=True)
        fp32_nodes.append(side.name)
    return inliers, fp32_nodes


def _per_token(g: Graph, x: str, nodes: list[Any]) -> str:
    """Divide each token's activations by its max |value| before quantizing and multiply the outputs back:
    exact in fp32, and it gives every token the full 8-bit range (per-tensor scales otherwise follow the loudest)."""
    from onnx import helper

    absolute, row_max, scale, normed = f"{x}/abs", f"{x}/row_max", f"{x}/row_scale", f"{x}/row_normed"
    if opset(g.model) >= 18:
        reduce = helper.make_node(
            "ReduceMax", [absolute, g.const(f"{x}/last_axis", np.array([-1], dtype=np.int64))], [row_max],
            name=f"{x}/row_max", keepdims=1,
        )
    else:
        reduce = helper.make_node("ReduceMax", [absolute], [row_max], name=f"{x}/row_max", axes=[-1], keepdims=1)
    g.insert(nodes[0], [
        helper.make_node("Abs", [x], [absolute], name=f"{x}/abs"),
        reduce,
        helper.make_node("Max", [row_max, g.const(f"{x}/eps", np.array(1e-6, dtype=np.float32))], [scale], name=f"{x}/row_scale"),
        helper.make_node("Div", [x, scale], [normed], name=f"{x}/row_normed"),
    ])
    for node in nodes:
        out = node.output[0]
        node.input[0] = normed
        node.output[0] = f"{out}/normed"
        g.insert(node, [helper.make_node("Mul", [f"{out}/normed", scale], [out], name=f"{node.name}/rescale")], after=True)
    return normed


def _smooth(g: Graph, x: str, nodes: list[Any], top: np.ndarray, alpha: float) -> tuple[str, np.ndarray]:
    """SmoothQuant: x @ W = (x / s) @ (s * W) with s = max|x|^a / max|W|^(1-a) per input channel; returns the new
    input and s."""
    from onnx import helper

    weights = [g.weight(n) for n in nodes]
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.where((top > 0) & (wmax > 0), top**alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1.0)
    s = np.clip(s, 1e-4, 1e4).astype(np.float32)
    out = f"{x}/smoothed"
    g.insert(nodes[0], [helper.make_node("Mul", [x, g.const(f"{x}/smooth_inverse", 1 / s)], [out], name=f"{x}/smooth")])
    for node, weight in zip(nodes, weights, strict=True):
        node.input[0] = out
        node.input[1] = g.const(f"{node.input[1]}/smoothed", (weight * s[:, None]).astype(np.float32))
    return out, s


def quantize(
    model: Any, spec: ModelSpec, cfg: Int8Config, tokenizer: Path, texts: list[str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Dynamic INT8 per `cfg`; returns the quantized ModelProto and a record of what was quantized and kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded, difference = 0, None
    if cfg.fold_key_mask and tokenizer.is_file():
        model, folded, difference = fold_checked(model, spec, tokenizer, texts)
    groups = _const_matmuls(model, cfg)
    ranges: dict[str, np.ndarray] = {}
    sample: list[str] = []
    if (cfg.outlier_channels > 0 or cfg.smooth_alpha > 0) and groups:
        if not tokenizer.is_file():
            raise ModelLoadError(f"int8 needs the tokenizer for its calibration texts; {tokenizer} is missing")
        sample = texts or calibration_texts()
        ranges = activation_ranges(model, list(groups), spec, tokenizer, sample)
    g = Graph(model)
    quantized = [n.name for nodes in groups.values() for n in nodes]
    kept_fp32: list[str] = []
    outliers: dict[str, int] = {}
    smoothed = 0
    for x, nodes in groups.items():
        current = x
        top = ranges.get(x)
        k = min(cfg.outlier_channels, top.shape[0] // 8) if top is not None else 0
        spread = float(top.max() / max(float(np.median(top)), 1e-12)) if top is not None else 0.0
        layernorm_fed = g.producer_type(x).endswith("LayerNormalization")
        smooth_instead = layernorm_fed and cfg.smooth_alpha > 0 and not cfg.split_layernorm_inputs
        if top is not None and k > 0 and spread >= cfg.outlier_ratio and not smooth_instead:
            current, side = _split_outliers(g, current, nodes, top, k)
            kept_fp32 += side
            outliers[x] = k
        elif cfg.smooth_alpha > 0 and top is not None and layernorm_fed:
            current, _ = _smooth(g, current, nodes, top, cfg.smooth_alpha)
            smoothed += 1
        if cfg.per_token:
            current = _per_token(g, current, nodes)
    g.drop_unused()
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # fused ops defeat shape inference
    op_types = list(cfg.op_types) if cfg.op_types is not None else None
    nodes_to_quantize = None
    if op_types == ["MatMul"]:
        nodes_to_quantize = quantized  # exactly the chosen weights; never activation x activation MatMuls
        extra["MatMulConstBOnly"] = True
    with tempfile.TemporaryDirectory(prefix="berthing-int8-") as tmp, quiet():
        src = Path(tmp) / "prepared.onnx"
        save_model(model, src)
        out = Path(tmp) / "model.onnx"
        large = is_large(src.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("*.data")))
        quantize_dynamic(
            str(src), str(out), op_types_to_quantize=op_types, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
            weight_type=QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8,
            nodes_to_quantize=nodes_to_quantize, nodes_to_exclude=kept_fp32 or None,
            use_external_data_format=large, extra_options=extra,
        )
        result = onnx.load(str(out))
        bounded = 0
        if cfg.pair_bound and cfg.weight_type == "int8" and not cfg.reduce_range:
            bounded = bound_weight_pairs(result, onnx.load(str(src)))  # from the file: saving may externalize tensors
    rows = _quantize_embedding_rows(result) if cfg.embedding_rows else []
    record = {
        "config": cfg.to_dict(),
        "quantized_matmuls": len(quantized) if nodes_to_quantize is not None else None,
        "outlier_inputs": len(outliers),  # activations split into int8 and fp32 channels
        "outlier_channels_per_input": max(outliers.values(), default=0),
        "smoothed_inputs": smoothed,
        "pair_bounded_weights": bounded,  # weights whose adjacent rows sum to <= 128 (same integers on every CPU)
        "calibration_texts": len(sample),
        "int8_embedding_tables": rows,
        "key_mask_folded": folded,  # attention layers whose padding mask moved into the QK product
        # largest relative output change it made, fp32, on a padded batch (None: not tried, or the folded graph failed)
        "key_mask_difference": difference if difference is not None and np.isfinite(difference) else None,
    }
    return result, record


def _quantize_embedding_rows(model: Any) -> list[str]:
    """Store each large fp32 Gather table (the word embeddings) as int8 rows + one fp32 scale per row.

    The graph gathers the int8 rows and their scales and multiplies: only the looked-up rows are dequantized.
    Per-row scales keep each token's vector within 1/254 of its largest value; the table shrinks ~4x.
    """
    from onnx import helper, numpy_helper

    g = Graph(model)
    done: list[str] = []
    for node in list(model.graph.node):  # word embeddings gather straight from the graph's input_ids (export.py)
        if node.op_type != "Gather" or node.input[0] not in g.inits or node.input[1] != "input_ids":
            continue
        table = g.inits[node.input[0]]
        if table.data_type != 1 or len(table.dims) != 2 or table.dims[1] < 2:  # not our own per-row scales
            continue
        if next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            continue
        values = numpy_helper.to_array(table).astype(np.float32)
        column = np.sqrt(np.maximum(np.abs(values).max(axis=0), 1e-12)).astype(np.float32)  # tames outlier columns
        flat = values / column
        scale = np.maximum(np.abs(flat).max(axis=1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.rint(flat / scale), -127, 127).astype(np.int8)
        name = node.input[0]
        ids = node.input[1]
        q_name = g.const(f"{name}/int8_rows", q)
        s_name = g.const(f"{name}/row_scale", scale.astype(np.float32))
        c_name = g.const(f"{name}/column_scale", column)
        out = node.output[0]
        new = [
            helper.make_node("Gather", [q_name, ids], [f"{out}/int8"], name=f"{node.name}/int8_rows", axis=0),
            helper.make_node("Cast", [f"{out}/int8"], [f"{out}/rows"], name=f"{node.name}/cast", to=1),
            helper.make_node("Gather", [s_name, ids], [f"{out}/scale"], name=f"{node.name}/scales", axis=0),
            helper.make_node("Mul", [f"{out}/rows", f"{out}/scale"], [f"{out}/flat"], name=f"{node.name}/dequantize"),
            helper.make_node("Mul", [f"{out}/flat", c_name], [out], name=f"{node.name}/columns"),
        ]
        g.insert(node, new)
        model.graph.node.remove(node)
        done.append(name)
    g.drop_unused()
    return done
