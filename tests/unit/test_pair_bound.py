"""Pair-bounded int8 weights: ONNX Runtime computes the exact integer product on this host, whatever its CPU class."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from berthing.packaging.pair_bound import PAIR_LIMIT, pair_bounded, worst_pair
from berthing.runtime.cpu import detect


def _int8_matmul(q: np.ndarray, scale: np.ndarray) -> ort.InferenceSession:
    """One DynamicQuantizeMatMul (what ORT fuses quantize_dynamic's MatMulInteger into), symmetric s8 weights."""
    n = q.shape[1]
    inits = [numpy_helper.from_array(q, "W"), numpy_helper.from_array(scale.astype(np.float32), "s"),
             numpy_helper.from_array(np.zeros(n, np.int8), "z")]
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "W", "s", "z"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, q.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _activations(k: int) -> np.ndarray:
    """Activations whose u8 codes sit at 255 on most channels: the worst case for 16-bit pair sums."""
    x = np.full((4, k), 10.0, dtype=np.float32)
    x[:, 0] = 0.0  # the range is [0, 10]: zero point 0, every other channel quantizes to 255
    return x


def test_pair_bounded_weights_keep_every_adjacent_pair_within_the_limit() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((385, 64)).astype(np.float32)  # odd K: the last row has no partner
    w[10:12] *= 40  # two large rows side by side, as SmoothQuant makes them
    q, scale = pair_bounded(w)
    assert q.dtype == np.int8 and scale.shape == (64,)
    assert worst_pair(q) <= PAIR_LIMIT
    assert np.abs(q).max() >= 100  # still 8 bits where no two large weights are neighbours
    error = np.abs(q * scale - w).max(axis=0) / np.abs(w).max(axis=0)
    assert error.max() <= 1 / 127


def test_onnxruntime_computes_pair_bounded_products_exactly_on_this_cpu() -> None:
    """Plain 8-bit weights with two large neighbours overflow on x86 without VNNI; pair-bounded ones never do."""
    k, n = 64, 16
    w = np.zeros((k, n), dtype=np.float32)
    w[2:4] = 1.0  # rows 2 and 3 are a pair for vpmaddubsw
    w[5] = -0.25
    x = _activations(k)
    exact = x @ w
    q, scale = pair_bounded(w)
    got = _int8_matmul(q, scale).run(None, {"x": x})[0]
    assert np.allclose(got, exact, rtol=0.02), f"{detect().describe()}: {got[0, 0]} != {exact[0, 0]}"

    plain = np.clip(np.rint(w / (np.abs(w).max(axis=0) / 127)), -127, 127).astype(np.int8)
    overflowing = _int8_matmul(plain, np.abs(w).max(axis=0) / 127).run(None, {"x": x})[0]
    if detect().saturates_u8s8:  # what the pair bound is for: this host clips 255 * 127 * 2 to 32,767
        assert overflowing[0, 0] < 0.6 * exact[0, 0]
    else:
        assert np.allclose(overflowing, exact, rtol=0.02)
