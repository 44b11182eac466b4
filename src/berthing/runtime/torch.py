"""PyTorch fallback runtime (--runtime torch): the checkpoint's own model, no export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Features


class TorchRuntime:
    """Runs the HF model under torch.inference_mode with torch's intra-op threads set."""

    name = "torch"

    def __init__(self, folder: Path, spec: ModelSpec, threads: int, allow_pickle: bool = False) -> None:
        import torch

        from berthing.packaging.export import load_torch_model, task_output

        torch.set_num_threads(threads)
        self.threads = threads
        self.torch = torch
        self.spec = spec
        self.model = load_torch_model(folder, spec, allow_pickle)
        self.task_output = task_output

    def run(self, features: Features) -> np.ndarray:
        torch = self.torch
        kwargs = {
            "input_ids": torch.from_numpy(features.input_ids),
            "attention_mask": torch.from_numpy(features.attention_mask),
        }
        if self.spec.uses_token_types and features.token_type_ids is not None:
            kwargs["token_type_ids"] = torch.from_numpy(features.token_type_ids)
        with torch.inference_mode():
            out = self.model(**kwargs)
        return self.task_output(out, self.spec.task).float().numpy()
