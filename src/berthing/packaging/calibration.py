"""Calibration texts and what int8 measures on them: each probed tensor's per-channel activation range.

The same texts feed verification (verify.py), so a level is judged on what it was calibrated on unless a user's
file is given. onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from berthing.engine.batching import plan_batches
from berthing.packaging.graph import save_model
from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Encoder
from berthing.types import ModelLoadError

CALIBRATION_FILE = "calibration.txt"


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


def graph_feeds(features: Any, inputs: set[str]) -> dict[str, np.ndarray]:
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
        outputs = session.run([names[i] for i in wanted], graph_feeds(features, inputs))
        real = features.attention_mask.astype(bool)
        for i, out in zip(wanted, outputs, strict=True):
            rows = out[real] if out.ndim == 3 and out.shape[:2] == real.shape else out.reshape(-1, out.shape[-1])
            top = np.abs(rows).max(axis=0)
            ranges[names[i]] = np.maximum(ranges[names[i]], top) if names[i] in ranges else top
    return ranges
