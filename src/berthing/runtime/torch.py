"""PyTorch fallback runtime (--runtime torch): the checkpoint's own model, no export.

The exporter traces the same module this runtime serves, so loading it (pickle weights refused first) lives here,
below packaging. torch and transformers are imported inside the functions: serving ONNX never loads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Features
from berthing.types import ModelLoadError


def check_weights(folder: Path, allow_pickle: bool = False) -> None:
    """Refuse pickle weights (pytorch_model.bin without safetensors) before transformers opens them: unpickling
    runs code. With allow_pickle they load through torch's weights-only unpickler."""
    if allow_pickle or any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for p in folder.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if pickles:
        raise ModelLoadError(
            f"{folder.name} holds pickle weights ({pickles[0]}) and no model.safetensors; pickle can run code when "
            "loaded. Convert it to safetensors, or pass --allow-pickle to load it with torch's weights-only loader"
        )


def load_torch_model(folder: Path, spec: ModelSpec, allow_pickle: bool = False, attention: str | None = None):
    """The PyTorch module whose output the runtime serves: the encoder, or the model with its head.

    `attention` picks transformers' attention implementation (None: its default, SDPA where supported)."""
    check_weights(folder, allow_pickle)
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar for a 1-second load is noise in server logs
    cls = {
        "classify": transformers.AutoModelForSequenceClassification,
        "rerank": transformers.AutoModelForSequenceClassification,
        "ner": transformers.AutoModelForTokenClassification,
        "qa": transformers.AutoModelForQuestionAnswering,
    }.get(spec.task, transformers.AutoModel)
    try:
        extra = {"attn_implementation": attention} if attention else {}
        model = cls.from_pretrained(str(folder), weights_only=True, **extra)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the weights of {folder}: {exc}") from exc
    return model.eval()


def task_output(out, task: str):
    """The one tensor a task's runtime returns, from a transformers model output."""
    if task == "embed":
        return out.last_hidden_state
    if task == "qa":
        import torch

        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


class TorchRuntime:
    """Runs the HF model under torch.inference_mode with torch's intra-op threads set."""

    name = "torch"

    def __init__(self, folder: Path, spec: ModelSpec, threads: int, allow_pickle: bool = False) -> None:
        import torch

        torch.set_num_threads(threads)
        self.threads = threads
        self.torch = torch
        self.spec = spec
        self.model = load_torch_model(folder, spec, allow_pickle)

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
        return task_output(out, self.spec.task).float().numpy()
