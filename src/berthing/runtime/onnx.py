"""ONNX Runtime on CPU: the default runtime, free of torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from berthing.tasks.tokenize import Features

# ONNX Runtime fusions left off: its CPU SkipLayerNormalization kernel runs slower than the Add and
# LayerNormalization it replaces (onnxruntime 1.32, 2 AVX-512 cores, all-MiniLM-L6-v2 int8: +12-15% sentences/s on
# one thread, +6-9% on two; benchmarks/README.md, "SkipLayerNormalization"). Accuracy is unchanged. The fusion only
# fires on graphs that carry shapes (int8 ones do; berthing's fp32 exports do not fuse either way).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(threads: int) -> ort.SessionOptions:
    """All graph optimizations (but DISABLED_OPTIMIZERS, per session), `threads` intra-op threads (spinning on: measured
    faster), sequential execution."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def create_session(model_path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session with DISABLED_OPTIMIZERS left off; every berthing session goes through here."""
    return ort.InferenceSession(
        str(model_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )


class OnnxRuntime:
    """One InferenceSession with the graph optimizations above and a fixed intra-op thread count."""

    name = "onnx"

    def __init__(self, model_path: Path, threads: int) -> None:
        options = session_options(threads)
        self.threads = threads
        self.model_path = model_path
        self.session = create_session(model_path, options)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def run(self, features: Features) -> np.ndarray:
        feeds = {"input_ids": features.input_ids, "attention_mask": features.attention_mask}
        if "token_type_ids" in self.input_names and features.token_type_ids is not None:
            feeds["token_type_ids"] = features.token_type_ids
        return self.session.run(None, feeds)[0]
