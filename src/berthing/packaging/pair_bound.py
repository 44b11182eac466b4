"""int8 weights that no x86 kernel can overflow: each pair of adjacent weight rows sums to at most 128 in magnitude.

Why: on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) ONNX Runtime multiplies u8 activations by s8
weights with `vpmaddubsw`, which adds the products of rows 2i and 2i+1 into a *saturating 16-bit* sum: with
activations up to 255 and weights up to 127 the pair reaches 64,770 and is clipped to 32,767. SmoothQuant moves
activation range into the weights, so on an AVX2 host berthing's int8 MiniLM fell to cosine 0.876 (0.984 on a VNNI
host, whose `vpdpbusd` adds into 32 bits). Scaling each output column so that |q[2i]| + |q[2i+1]| <= 128 keeps
every pair sum within 255 * 128 = 32,640: the 16-bit path then computes the same integers as VNNI, AMX and arm64,
so a graph verified on one CPU class gives the same vectors on all of them. It costs much less precision than
7-bit weights (`reduce_range`, |q| <= 64): a column keeps its full 8 bits unless two large weights sit side by
side. Measured on MiniLM, AVX2 (docs/optimization.md): 0.9839 / 0.99754 against 0.9741 / 0.99585 for reduce_range,
at the speed of plain s8 (u8 weights are exact too, but ORT's AVX2 u8 x u8 kernel ran 30% slower).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAIR_LIMIT = 128  # 255 * 128 = 32,640 <= 32,767
QUANTIZED_SUFFIX = "_quantized"  # onnxruntime.quantization's names: W -> W_quantized, W_scale, W_zero_point


def _pair_sums(a: np.ndarray) -> np.ndarray:
    """|a[2i]| + |a[2i+1]| for each row pair of a [K, N] array ([K // 2, N]; an odd last row has no partner)."""
    even = a.shape[0] - a.shape[0] % 2
    return np.abs(a[:even]).reshape(even // 2, 2, -1).sum(axis=1)


def pair_bounded(weights: np.ndarray, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 [K, N] weights and their scales ([N], or a scalar when not per channel) with every adjacent
    row pair's magnitude sum <= PAIR_LIMIT. Rounding adds at most 1 to a pair, hence the scale divides by 127."""
    w = np.abs(weights.astype(np.float64))
    axis = 0 if per_channel else None
    largest = np.maximum(_pair_sums(w).max(axis=axis, initial=0.0), w.max(axis=axis))
    scale = np.maximum(largest, 1e-12) / (PAIR_LIMIT - 1)
    q = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
    return q, np.asarray(scale, dtype=np.float32)


def bound_weight_pairs(quantized: Any, prepared: Any) -> int:
    """Requantize in place every MatMulInteger weight of `quantized` (quantize_dynamic's output, s8 symmetric) from
    its fp32 original in `prepared` (quantize_dynamic's input); returns how many weights were rewritten."""
    from onnx import numpy_helper

    originals = {t.name: t for t in prepared.graph.initializer}
    inits = {t.name: t for t in quantized.graph.initializer}
    done = 0
    for node in quantized.graph.node:
        if node.op_type != "MatMulInteger" or not node.input[1].endswith(QUANTIZED_SUFFIX):
            continue
        base = node.input[1][: -len(QUANTIZED_SUFFIX)]
        weight, scale, zero = inits.get(node.input[1]), inits.get(base + "_scale"), inits.get(base + "_zero_point")
        if base not in originals or weight is None or scale is None or weight.data_type != 3:  # 3: INT8
            continue
        if zero is not None and np.any(numpy_helper.to_array(zero)):
            continue  # asymmetric weights: not what berthing asks quantize_dynamic for
        q, s = pair_bounded(numpy_helper.to_array(originals[base]), per_channel=len(scale.dims) > 0)
        weight.CopyFrom(numpy_helper.from_array(q, weight.name))
        scale.CopyFrom(numpy_helper.from_array(s.reshape(tuple(scale.dims)), scale.name))
        done += 1
    return done


def worst_pair(q: np.ndarray) -> int:
    """The largest |q[2i]| + |q[2i+1]| of an int8 [K, N] weight: what the 16-bit kernels add at once."""
    wide = q.astype(np.int32)
    return int(max(_pair_sums(wide).max(initial=0), np.abs(wide).max(initial=0)))


def cpu_line(cpu: Any, level: str | None) -> str:
    """'cpu: AMD EPYC (avx2, no vnni) -> int8 with pair-bounded weights ...' for `pack` and `serve` output."""
    if level != "int8":
        return f"cpu: {cpu.describe()} -> {'fp32' if level in (None, 'none') else level + ' (fp32)'}"
    how = "16-bit pair sums here cannot overflow" if cpu.saturates_u8s8 else "32-bit dot products here"
    return f"cpu: {cpu.describe()} -> int8 with pair-bounded weights ({how})"
