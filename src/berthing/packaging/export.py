"""Export a checkpoint to ONNX once, into a cache folder keyed by the hash of its files.

An artifact folder holds model.onnx, tokenizer.json and berthing.json (the ModelSpec): everything
the ONNX runtime needs, so serving from it imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from berthing.packaging.checkpoint import ModelSpec, read_checkpoint
from berthing.types import ModelLoadError

EXPORT_FORMAT = "1"  # bump when the exported graph's contract changes, so caches are rebuilt
OPSET = 17
_SKIP_SUFFIXES = (".md", ".onnx", ".h5", ".msgpack", ".ot")
Progress = Callable[[str], None]


def checkpoint_hash(folder: Path, task: str) -> str:
    """Hash every file that can change the exported model (weights, config, tokenizer, pooling)."""
    digest = hashlib.sha256(f"berthing-export-{EXPORT_FORMAT}-{task}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(_SKIP_SUFFIXES):
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:24]


def artifact_dir(cache_dir: Path, folder: Path, task: str) -> Path:
    """Where the ONNX artifact of this checkpoint and task lives (or will live)."""
    return cache_dir / "onnx" / checkpoint_hash(folder, task)


def is_artifact(path: Path) -> bool:
    """True when a folder holds a complete artifact."""
    return all((path / name).is_file() for name in ("model.onnx", "tokenizer.json", "berthing.json"))


def ensure_tokenizer_json(folder: Path, target: Path) -> None:
    """Copy tokenizer.json, or build it from vocab files with transformers' fast tokenizer."""
    if (folder / "tokenizer.json").is_file():
        shutil.copy2(folder / "tokenizer.json", target / "tokenizer.json")
        return
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        tok.backend_tokenizer.save(str(target / "tokenizer.json"))
    except Exception as exc:
        raise ModelLoadError(f"{folder} has no usable tokenizer (tokenizer.json or vocab files): {exc}") from exc


# What each task's graph returns: the encoder's hidden states, or the head's logits ([B, L], [B, T, L]);
# QA's start and end logits are stacked into one [B, T, 2] tensor so every runtime has one output.
OUTPUT_NAMES = {
    "embed": "last_hidden_state", "classify": "logits", "rerank": "logits", "ner": "logits", "qa": "span_logits",
}


def task_output(out, task: str):
    """The one tensor a task's runtime returns, from a transformers model output."""
    if task == "embed":
        return out.last_hidden_state
    if task == "qa":
        import torch

        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def load_torch_model(folder: Path, spec: ModelSpec):
    """The PyTorch module whose output the runtime serves: the encoder, or the model with its head."""
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
        model = cls.from_pretrained(str(folder))
    except Exception as exc:
        raise ModelLoadError(f"cannot load the weights of {folder}: {exc}") from exc
    return model.eval()


def _wrapper(model, spec: ModelSpec):
    """A positional-argument module returning one tensor, which the ONNX exporter handles cleanly."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return task_output(self.model(**kwargs), spec.task)

    return Wrapped().eval()


def _export_onnx(folder: Path, spec: ModelSpec, target: Path) -> None:
    """Run torch's exporter with dynamic batch and sequence axes, then check ORT against torch."""
    import numpy as np
    import torch

    model = load_torch_model(folder, spec)
    wrapped = _wrapper(model, spec)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if spec.uses_token_types else [])
    output = OUTPUT_NAMES[spec.task]
    ids = torch.tensor([[2, 5, 7, 9, 3], [2, 6, 8, 3, 0]], dtype=torch.long)
    mask = (ids > 0).long()
    args = (ids, mask) + ((torch.zeros_like(ids),) if spec.uses_token_types else ())
    with torch.inference_mode():
        expected = wrapped(*args).numpy()
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if spec.task in ("classify", "rerank") else {0: "batch", 1: "sequence"}
    path = target / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the output is checked below instead
        torch.onnx.export(
            wrapped, args, str(path), input_names=names, output_names=[output],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
    valid = mask.numpy().astype(bool) if got.ndim == 3 else slice(None)
    err = float(np.abs(got[valid] - expected[valid]).max())
    if err > 1e-3:
        raise ModelLoadError(f"ONNX export of {folder} disagrees with PyTorch (max abs error {err:.2e})")


def export(folder: Path, spec: ModelSpec, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Return the artifact folder for this checkpoint, exporting it first if the cache lacks it."""
    target = artifact_dir(cache_dir, folder, spec.task)
    if is_artifact(target):
        return target
    say = progress or (lambda _msg: None)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder.name} has no cached ONNX artifact and exporting one needs torch and transformers: "
            "pip install 'berthing[export]' (or serve an exported artifact)"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        say(f"exporting to ONNX, once (cached in {target})")
        ensure_tokenizer_json(folder, tmp)
        _export_onnx(folder, spec, tmp)
        (tmp / "berthing.json").write_text(spec.to_json(), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:  # another process exported it first: theirs is as good as ours
            if not is_artifact(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare(folder: Path, task: str | None, cache_dir: Path, progress: Progress | None = None) -> Path:
    """A checkpoint folder or an artifact folder in, an artifact folder out."""
    if is_artifact(folder):
        return folder
    return export(folder, read_checkpoint(folder, task), cache_dir, progress)
