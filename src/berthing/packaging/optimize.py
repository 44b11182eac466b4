"""Optimize an exported model.onnx: ONNX Runtime's transformer fusions ("fused") or dynamic INT8 ("int8").

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

On MiniLM that gives worst cosine 0.984, mean 0.998 on the calibration texts (held out: 0.995 / 0.9984) at
2.0x fp32's sentences/s on 2 AVX-512/VNNI cores; the other configurations tried are in
benchmarks/optimize_bench.py and its table.

onnxruntime and onnx are imported inside the functions: the serving path imports this module's names only
when it optimizes, and never pays for onnxruntime.transformers or onnxruntime.quantization otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from berthing.spec import ModelSpec
from berthing.types import ModelLoadError

Level = Literal["none", "fused", "int8"]
LEVELS: tuple[Level, ...] = ("none", "fused", "int8")
CALIBRATION_FILE = "calibration.txt"
_LARGE_MODEL_BYTES = 1_500_000_000  # above this, graphs are written with external data (protobuf stops at 2 GB)


@dataclass(frozen=True)
class Int8Config:
    """How `int8` quantizes; the defaults are the configuration measured best on all-MiniLM-L6-v2.

    op_types None means onnxruntime's own default list (it also quantizes the embedding Gathers).
    exclude holds regular expressions over node names that stay fp32.
    """

    name: str = "int8"
    per_channel: bool = True  # one weight scale per output channel, not per matrix
    reduce_range: bool = False  # 7-bit weights: for CPUs without VNNI, whose u8s8 dot products can saturate
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for package manifests."""
        data = asdict(self)
        data["op_types"] = list(self.op_types) if self.op_types is not None else None
        data["exclude"] = list(self.exclude)
        return data


DEFAULT_INT8 = Int8Config()


@dataclass
class Optimized:
    """An optimized graph and what was done to it (JSON-ready `record`, for a package manifest)."""

    path: Path
    level: Level
    record: dict[str, Any] = field(default_factory=dict)


def calibration_texts() -> list[str]:
    """The built-in calibration sample: ~200 texts in English, Chinese and eight other languages, 1-300 tokens."""
    text = resources.files("berthing").joinpath("data", CALIBRATION_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_texts(path: Path) -> list[str]:
    """A user's calibration file: one text per line; blank lines are skipped."""
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ModelLoadError(f"{path} holds no texts (one text per line)")
    return texts


def optimize(src_onnx: Path, level: Level, out_dir: Path, spec: ModelSpec, **options: Any) -> Path:
    """Write `out_dir/model.onnx` optimized to `level` and return its path (options: see optimize_with_record)."""
    return optimize_with_record(src_onnx, level, out_dir, spec, **options).path


def optimize_with_record(
    src_onnx: Path,
    level: Level,
    out_dir: Path,
    spec: ModelSpec,
    *,
    config: Int8Config | None = None,
    tokenizer: Path | None = None,
    texts: Sequence[str] | None = None,
    num_heads: int = 0,
) -> Optimized:
    """Optimize `src_onnx` into `out_dir/model.onnx`; out_dir may be src_onnx's own folder (replaced atomically).

    `tokenizer` (default: tokenizer.json beside src_onnx) and `texts` (default: the built-in calibration sample)
    feed the activation statistics int8 needs; `num_heads` helps the fusions when the graph does not show it.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown optimization level {level!r} (levels: {', '.join(LEVELS)})")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.onnx"
    record: dict[str, Any] = {"level": level}
    if level == "none":
        if src_onnx.resolve() != target.resolve():
            data = src_onnx.with_name(src_onnx.name + ".data")
            if data.is_file():  # weights beside the graph (models over 2 GB)
                shutil.copyfile(data, target.with_name(target.name + ".data"))
            _replace_with(target, lambda tmp: shutil.copyfile(src_onnx, tmp))
    else:
        import onnx

        model = onnx.load(str(src_onnx))
        if level == "fused" or (config or DEFAULT_INT8).fuse_first:
            model, record["fusions"] = fuse(model, spec, num_heads)
        if level == "int8":
            cfg = config or DEFAULT_INT8
            tok = tokenizer or src_onnx.parent / "tokenizer.json"
            model, record["int8"] = quantize(model, spec, cfg, tok, list(texts) if texts is not None else None)
        _replace_with(target, lambda tmp: save_model(model, tmp, target.name + ".data"))
    record["seconds"] = round(time.perf_counter() - started, 2)
    record["size_bytes"] = target.stat().st_size
    return Optimized(target, level, record)


def _replace_with(target: Path, write: Any) -> None:
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
    large = sum(t.ByteSize() for t in model.graph.initializer) > _LARGE_MODEL_BYTES
    if large:
        location = data_name or path.name + ".data"
        (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, location=location)
    else:
        onnx.save_model(model, str(path))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


# -- fused ------------------------------------------------------------------------------------------------------


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


def _hidden_size(model: Any, spec: ModelSpec) -> int:
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

    hidden = _hidden_size(model, spec)
    heads = num_heads or detect_heads(model, hidden)
    options = FusionOptions("bert")
    options.enable_attention = heads > 0  # without a head count the fusion would guess, and may guess wrong
    with _quiet():
        optimized = optimize_model(
            model, model_type="bert", num_heads=heads, hidden_size=hidden if heads else 0,
            optimization_options=options, opt_level=0,
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}  # it logs them too
    return optimized.model, {"num_heads": heads, "hidden_size": hidden, "fused": stats}


# -- int8 -------------------------------------------------------------------------------------------------------


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


def _feeds(features: Any, inputs: set[str]) -> dict[str, np.ndarray]:
    """A padded batch as a graph's feeds (zero token types where the graph wants them and the tokenizer has none)."""
    feeds = {"input_ids": features.input_ids, "attention_mask": features.attention_mask}
    if "token_type_ids" in inputs:
        types = features.token_type_ids
        feeds["token_type_ids"] = types if types is not None else np.zeros_like(features.input_ids)
    return feeds


def activation_ranges(
    model: Any, tensors: list[str], spec: ModelSpec, tokenizer: Path, texts: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-channel max |activation| of `tensors` over the real (unpadded) tokens of `texts`, fp32 graph."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from berthing.engine.batching import plan_batches
    from berthing.tasks.tokenize import Encoder

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every probed tensor
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="berthing-calib-") as tmp:
        path = Path(tmp) / "probe.onnx"
        save_model(probe, path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    wanted = [i for i, n in enumerate(names) if n in set(tensors)]
    encoder = Encoder(tokenizer, spec.max_length, spec.uses_token_types)
    items = encoder.encode(list(texts))
    ranges: dict[str, np.ndarray] = {}
    for batch in plan_batches([e.length for e in items], 2048, 32):
        features = encoder.collate([items[i] for i in batch])
        outputs = session.run([names[i] for i in wanted], _feeds(features, inputs))
        real = features.attention_mask.astype(bool)
        for i, out in zip(wanted, outputs, strict=True):
            rows = out[real] if out.ndim == 3 and out.shape[:2] == real.shape else out.reshape(-1, out.shape[-1])
            top = np.abs(rows).max(axis=0)
            ranges[names[i]] = np.maximum(ranges[names[i]], top) if names[i] in ranges else top
    return ranges


class _Graph:
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


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _split_outliers(g: _Graph, x: str, nodes: list[Any], top: np.ndarray, k: int) -> tuple[str, list[str]]:
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


def _per_token(g: _Graph, x: str, nodes: list[Any]) -> str:
    """Divide each token's activations by its max |value| before quantizing and multiply the outputs back:
    exact in fp32, and it gives every token the full 8-bit range (per-tensor scales otherwise follow the loudest)."""
    from onnx import helper

    absolute, row_max, scale, normed = f"{x}/abs", f"{x}/row_max", f"{x}/row_scale", f"{x}/row_normed"
    if _opset(g.model) >= 18:
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


def _smooth(g: _Graph, x: str, nodes: list[Any], top: np.ndarray, alpha: float) -> tuple[str, np.ndarray]:
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


# Softmax input for padded keys after the key-mask fold: far enough below any real score that its weight vanishes in
# fp32 (e^-60 ~ 1e-26), near enough that exp stays in ONNX Runtime's fast path (inputs below ~-87 from the row's max
# take a slow one: 6x slower softmax for rows with padding at finfo.min, the exporter's value).
KEY_MASK_VALUE = -60.0


def _scalar(g: _Graph, name: str) -> float | None:
    from onnx import numpy_helper

    if name in g.inits and int(np.prod(g.inits[name].dims)) == 1:
        return float(numpy_helper.to_array(g.inits[name]).reshape(-1)[0])
    node = next((n for n in g.model.graph.node if name in n.output and n.op_type == "Constant"), None)
    if node is not None and node.attribute and node.attribute[0].name == "value":
        value = numpy_helper.to_array(node.attribute[0].t)
        return float(value.reshape(-1)[0]) if value.size == 1 else None
    return None


def fold_key_mask(model: Any, num_heads: int) -> int:
    """Move the padding mask out of the [batch, heads, tokens, tokens] scores and into the QK product: Q gets a
    column of ones, K^T a row holding each key's mask value, so Q'K'^T = QK^T + mask with no extra pass over the
    scores (and with KEY_MASK_VALUE, softmax stays on its fast path). Returns the attention layers changed; 0 where
    the graph does not have the expected Softmax(Add(scale * MatMul(Q, K^T), mask)) shape. quantize() checks the
    result against the unfolded graph and keeps it only when they agree."""
    from onnx import helper

    inputs = {i.name for i in model.graph.input}
    if "attention_mask" not in inputs or num_heads <= 0 or _opset(model) < 13:
        return 0
    g = _Graph(model)
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
            const = next((v for i in node.input if (v := _scalar(g, i)) is not None), None)
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
    _drop_dead_nodes(model)
    g.drop_unused()
    return len(plans)


_FOLD_TOLERANCE = 1e-4  # relative; the fold is exact up to e^KEY_MASK_VALUE, so anything larger is another graph


def _max_difference(before: Any, after: Any, spec: ModelSpec, tokenizer: Path, texts: Sequence[str]) -> float:
    """Largest |after - before| over the real tokens' outputs (relative to before's largest), fp32, on one batch of
    calibration texts of mixed lengths (so padded keys are in play)."""
    import onnx
    import onnxruntime as ort

    from berthing.tasks.tokenize import Encoder

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
            results.append(session.run(None, _feeds(features, {x.name for x in session.get_inputs()})))
    worst = 0.0
    for a, b in zip(*results, strict=True):
        if a.ndim >= 2 and a.shape[:2] == real.shape:
            a, b = a[real], b[real]
        scale = max(float(np.abs(a).max()), 1e-6)
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def _drop_dead_nodes(model: Any) -> None:
    """Remove nodes no graph output depends on (the old mask's Expand/Where chain after fold_key_mask)."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))


def quantize(
    model: Any, spec: ModelSpec, cfg: Int8Config, tokenizer: Path, texts: list[str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Dynamic INT8 per `cfg`; returns the quantized ModelProto and a record of what was quantized and kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded, difference = 0, None
    if cfg.fold_key_mask and tokenizer.is_file():
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        folded = fold_key_mask(trial, detect_heads(model, _hidden_size(model, spec)))
        if folded:
            try:
                difference = _max_difference(model, trial, spec, tokenizer, texts or calibration_texts())
            except Exception:  # noqa: BLE001 - a fold that does not even run (a head count the graph disagrees with)
                difference = float("inf")
            if difference <= _FOLD_TOLERANCE:
                model = trial
            else:  # another attention shape than the fold assumes: keep the graph as exported
                folded = 0
    groups = _const_matmuls(model, cfg)
    ranges: dict[str, np.ndarray] = {}
    sample: list[str] = []
    if (cfg.outlier_channels > 0 or cfg.smooth_alpha > 0) and groups:
        if not tokenizer.is_file():
            raise ModelLoadError(f"int8 needs the tokenizer for its calibration texts; {tokenizer} is missing")
        sample = texts or calibration_texts()
        ranges = activation_ranges(model, list(groups), spec, tokenizer, sample)
    g = _Graph(model)
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
    with tempfile.TemporaryDirectory(prefix="berthing-int8-") as tmp, _quiet():
        src = Path(tmp) / "prepared.onnx"
        save_model(model, src)
        out = Path(tmp) / "model.onnx"
        large = src.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("*.data")) > _LARGE_MODEL_BYTES
        quantize_dynamic(
            str(src), str(out), op_types_to_quantize=op_types, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
            weight_type=QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8,
            nodes_to_quantize=nodes_to_quantize, nodes_to_exclude=kept_fp32 or None,
            use_external_data_format=large, extra_options=extra,
        )
        result = onnx.load(str(out))
    rows = _quantize_embedding_rows(result) if cfg.embedding_rows else []
    record = {
        "config": cfg.to_dict(),
        "quantized_matmuls": len(quantized) if nodes_to_quantize is not None else None,
        "outlier_inputs": len(outliers),  # activations split into int8 and fp32 channels
        "outlier_channels_per_input": max(outliers.values(), default=0),
        "smoothed_inputs": smoothed,
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

    g = _Graph(model)
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


# -- choosing a level -------------------------------------------------------------------------------------------


DEFAULT_ORDER: tuple[Level, ...] = ("int8", "fused", "none")


@dataclass
class LevelResult:
    """One level tried by choose(): its graph, verification, speed, and what the optimizer did."""

    level: Level
    path: str | None
    passed: bool
    speed: float  # inputs per second on the verification inputs (sentences/s for embed and classify)
    report: dict[str, Any] | None  # VerifyReport.to_dict()
    record: dict[str, Any]
    error: str | None = None  # the optimization itself failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Choice:
    """The chosen level (None when none passed) and every level's result, for the package manifest."""

    level: Level | None
    path: Path | None
    results: list[LevelResult]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "results": [r.to_dict() for r in self.results]}

    def result(self, level: Level) -> LevelResult | None:
        return next((r for r in self.results if r.level == level), None)


def choose(
    src_onnx: Path,
    spec: ModelSpec,
    work_dir: Path,
    levels: Sequence[Level] = DEFAULT_ORDER,
    *,
    tokenizer: Path | None = None,
    reference: Any = None,
    texts: Sequence[str] | Path | None = None,
    thresholds: Any = None,
    config: Int8Config | None = None,
    threads: int = 0,
    num_heads: int = 0,
    tolerance: float = 0.05,
    rounds: int = 3,
    progress: Any = None,
) -> Choice:
    """The fastest level that passes verification, with every level's report and speed.

    Each level is written to work_dir/<level>/model.onnx, verified against `reference` (a Model or path for
    verify.as_model; default: src_onnx itself, the fp32 graph) and timed round-robin on the verification inputs.
    Speeds within `tolerance` of the fastest count as a tie, and ties go to the earlier level in `levels`
    (int8 -> fused -> none by default), so timing noise does not flip the choice between equals.
    """
    from berthing.packaging import verify as v

    say = progress or (lambda _message: None)
    tok = tokenizer or src_onnx.parent / "tokenizer.json"
    sample = v.read_texts_or_default(texts)
    ref_model = v.as_model(reference if reference is not None else src_onnx, spec, tok, threads)
    inputs, options = v.task_inputs(spec.task, sample)
    say(f"running the reference on {len(inputs)} calibration inputs")
    ref_results = ref_model.predict(inputs, **options)
    results: list[LevelResult] = []
    models: dict[str, Any] = {}
    for level in levels:
        say(f"optimizing: {level}, then verifying it")
        try:
            done = optimize_with_record(
                src_onnx, level, work_dir / level, spec, config=config, tokenizer=tok,
                texts=sample if level == "int8" else None, num_heads=num_heads,
            )
            model = v.onnx_model(done.path, spec, tok, threads, level)
        except Exception as exc:  # noqa: BLE001 - a level that cannot be built is reported and skipped, not fatal
            results.append(LevelResult(level, None, False, 0.0, None, {"level": level}, f"{type(exc).__name__}: {exc}"))
            continue
        report = v.verify(
            model, ref_model, spec=spec, tokenizer=tok, texts=sample, thresholds=thresholds, reference_results=ref_results
        )
        models[level] = model
        results.append(LevelResult(level, str(done.path), report.passed, 0.0, report.to_dict(), done.record))
    if len(models) > 1:
        say(f"timing {', '.join(models)} on the calibration inputs")
    speeds = v.interleaved_speeds(models, inputs, options, rounds if len(models) > 1 else 1) if models else {}
    for r in results:
        r.speed = round(speeds.get(r.level, 0.0), 1)
    passing = [r for r in results if r.passed]
    if not passing:
        return Choice(None, None, results)
    fastest = max(r.speed for r in passing)
    chosen = next(r for r in passing if r.speed >= fastest * (1 - tolerance))
    return Choice(chosen.level, Path(chosen.path) if chosen.path else None, results)
