"""Export a checkpoint to ONNX once, into a cache folder keyed by the hash of its files.

An artifact folder holds model.onnx, tokenizer.json and berthing.json (the ModelSpec): everything
the ONNX runtime needs, so serving from it imports neither torch nor transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from berthing.packaging.checkpoint import read_checkpoint
from berthing.runtime.torch import check_weights, load_torch_model, task_output
from berthing.spec import ModelSpec
from berthing.types import ModelLoadError

EXPORT_FORMAT = "3"  # bump when the exported graph's contract changes, so caches are rebuilt
OPSET = 17
TOLERANCE = 1e-3  # max abs error allowed between ONNX Runtime and PyTorch on the check batches
CHECK_SHAPES = ((2, 5), (3, 11))  # (batch, length) of the check batches: the traced shape and another
_SKIP_SUFFIXES = (".md", ".onnx", ".h5", ".msgpack", ".ot")
Progress = Callable[[str], None]


def _hashed_files(folder: Path) -> list[tuple[str, Path]]:
    """The files whose bytes make the cache key: all but hidden ones and other formats' weights, sorted."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if not (rel.startswith(".") or "/." in rel or rel.endswith(_SKIP_SUFFIXES)):
            found.append((rel, path))
    return found


def checkpoint_hash(folder: Path, task: str, memo_dir: Path | None = None) -> str:
    """Hash every file that can change the exported model (weights, config, tokenizer, pooling).

    With `memo_dir`, the hash is remembered under a key made of each file's name, size, mtime, ctime and inode:
    reading 90 MB of weights at every start was a tenth of a second of the cold start; a file rewritten in any way
    changes its ctime, so the bytes are hashed again."""
    files = _hashed_files(folder)
    memo = None
    if memo_dir is not None:
        stats = [(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
                 for rel, st in ((rel, path.stat()) for rel, path in files)]
        key = json.dumps([EXPORT_FORMAT, task, str(folder.resolve()), stats])
        memo = memo_dir / hashlib.sha256(key.encode()).hexdigest()[:32]
        with contextlib.suppress(OSError, UnicodeDecodeError):
            remembered = memo.read_text(encoding="utf-8").strip()
            if len(remembered) == 24:
                return remembered
    digest = hashlib.sha256(f"berthing-export-{EXPORT_FORMAT}-{task}".encode())
    for rel, path in files:
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    value = digest.hexdigest()[:24]
    if memo is not None:
        with contextlib.suppress(OSError):  # a read-only cache still serves, it just hashes again next time
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
            tmp.write_text(value, encoding="utf-8")
            os.replace(tmp, memo)
    return value


def artifact_dir(cache_dir: Path, folder: Path, task: str) -> Path:
    """Where the ONNX artifact of this checkpoint and task lives (or will live)."""
    return cache_dir / "onnx" / checkpoint_hash(folder, task, memo_dir=cache_dir / "onnx" / ".hashes")


def is_artifact(path: Path) -> bool:
    """True when a folder holds a complete artifact."""
    return all((path / name).is_file() for name in ("model.onnx", "tokenizer.json", "berthing.json"))


def ensure_tokenizer_json(folder: Path, target: Path) -> None:
    """Copy tokenizer.json, or build it from vocab files with transformers' fast tokenizer; record the pad token."""
    if (folder / "tokenizer.json").is_file():
        shutil.copy2(folder / "tokenizer.json", target / "tokenizer.json")
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
            tok.backend_tokenizer.save(str(target / "tokenizer.json"))
        except Exception as exc:
            raise ModelLoadError(f"{folder} has no usable tokenizer (tokenizer.json or vocab files): {exc}") from exc
    _record_padding(folder, target / "tokenizer.json")


def _token_name(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _record_padding(folder: Path, path: Path) -> None:
    """Write the checkpoint's pad token into tokenizer.json's padding section when it has none.

    The serving Encoder reads the pad id from there; guessing by name picks the wrong one where a vocabulary
    holds several (MPNet's has [PAD] = 4 beside its real <pad> = 1, which RoBERTa-style position ids rely on).
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if tok.padding:
        return
    pad_id: int | None = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = _read_optional_json(folder / name)
        token = _token_name(data.get("pad_token"))
        if token is not None and (pad_id := tok.token_to_id(token)) is not None:
            break
    if pad_id is None:
        configured = _read_optional_json(folder / "config.json").get("pad_token_id")
        pad_id = configured if isinstance(configured, int) and 0 <= configured < tok.get_vocab_size() else None
    if pad_id is None:
        return  # the Encoder falls back to looking the usual names up
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]")
    tok.save(str(path))


def _read_optional_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# What each task's graph returns: the encoder's hidden states, or the head's logits ([B, L], [B, T, L]);
# QA's start and end logits are stacked into one [B, T, 2] tensor so every runtime has one output.
OUTPUT_NAMES = {
    "embed": "last_hidden_state", "classify": "logits", "rerank": "logits", "ner": "logits", "qa": "span_logits",
}


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


def _export_onnx(folder: Path, spec: ModelSpec, target: Path, allow_pickle: bool = False, attention: str = "eager") -> float:
    """Run torch's exporter with dynamic batch and sequence axes, then check ORT against torch.

    Returns the largest absolute difference seen on the check batches, which packages record."""
    import numpy as np
    import torch

    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime runs faster on CPU than the SDPA trace
    # (IsNaN/Where guards) and which its attention fusion recognizes (benchmarks/README.md, issue 5).
    model = load_torch_model(folder, spec, allow_pickle, attention=attention)
    wrapped = _wrapper(model, spec)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if spec.uses_token_types else [])
    output = OUTPUT_NAMES[spec.task]
    vocab = int(getattr(model.config, "vocab_size", 0) or 10)
    pad = getattr(model.config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) and 0 <= pad < vocab else 0
    args = _sample_inputs(*CHECK_SHAPES[0], vocab, pad, spec.uses_token_types)
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
    worst = 0.0
    # The traced shape and a different one: a size the tracer froze into the graph shows up in the second.
    for batch in (args, _sample_inputs(*CHECK_SHAPES[1], vocab, pad, spec.uses_token_types)):
        with torch.inference_mode():
            expected = wrapped(*batch).numpy()
        try:
            got = session.run(None, {n: a.numpy() for n, a in zip(names, batch, strict=True)})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"ONNX export of {folder} fails on a {tuple(batch[0].shape)} batch: {exc}") from exc
        valid = batch[1].numpy().astype(bool) if got.ndim == 3 else slice(None)
        err = float(np.abs(got[valid] - expected[valid]).max()) if got.shape == expected.shape else float("inf")
        if err > TOLERANCE:
            raise ModelLoadError(f"ONNX export of {folder} disagrees with PyTorch (max abs error {err:.2e})")
        worst = max(worst, err)
    return worst


def _sample_inputs(batch: int, length: int, vocab: int, pad: int, token_types: bool) -> tuple:
    """Deterministic ids below the vocabulary size; each row after the first is shorter, padded with the pad id."""
    import torch

    ids = (torch.arange(batch * length).reshape(batch, length) * 7 + 5) % max(vocab - 5, 1) + 5
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - row :] = 0
    ids = ids.masked_fill(mask == 0, pad)
    return (ids, mask) + ((torch.zeros_like(ids),) if token_types else ())


def write_artifact(folder: Path, spec: ModelSpec, target: Path, allow_pickle: bool = False, attention: str = "eager") -> dict:
    """Write tokenizer.json, model.onnx and berthing.json into an existing folder; return the verification record."""
    ensure_tokenizer_json(folder, target)
    err = _export_onnx(folder, spec, target, allow_pickle, attention)
    verification = {
        "method": "onnxruntime vs pytorch on deterministic check batches",
        "batches": [list(shape) for shape in CHECK_SHAPES],
        "max_abs_error": err,
        "tolerance": TOLERANCE,
    }
    data = json.loads(spec.to_json()) | {"verification": verification}
    (target / "berthing.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return verification


def export(
    folder: Path, spec: ModelSpec, cache_dir: Path, progress: Progress | None = None, allow_pickle: bool = False
) -> Path:
    """Return the artifact folder for this checkpoint, exporting it first if the cache lacks it."""
    target = artifact_dir(cache_dir, folder, spec.task)
    if is_artifact(target):
        return target
    check_weights(folder, allow_pickle)
    say = progress or (lambda _msg: None)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder.name} has no cached ONNX artifact and exporting one needs torch and transformers: "
            "pip install 'berthing[export]' (or serve an exported artifact)"
        ) from exc
    say(f"exporting to ONNX, once (cached in {target})")
    return _build_once(target, lambda tmp: write_artifact(folder, spec, tmp, allow_pickle))


def _build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Build an artifact in a temporary sibling folder, then rename it into place: a reader never sees half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it first: theirs is as good as ours
            if not is_artifact(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare(
    folder: Path,
    task: str | None,
    cache_dir: Path,
    progress: Progress | None = None,
    allow_pickle: bool = False,
    optimize: Any = None,
) -> Path:
    """A checkpoint folder or an artifact folder in, an artifact folder out (optimized once when asked, cached).

    `optimize` is a tune.OptimizeRequest; None or level "none" serves the fp32 export. Artifacts and packages are
    served as they were built."""
    if is_artifact(folder):
        return folder
    spec = read_checkpoint(folder, task)
    base = export(folder, spec, cache_dir, progress, allow_pickle)
    if optimize is None or optimize.level == "none":
        return base
    return optimized(folder, spec, base, optimize, progress, allow_pickle)


def optimized(
    folder: Path, spec: ModelSpec, base: Path, request: Any, progress: Progress | None = None, allow_pickle: bool = False
) -> Path:
    """The cached optimized artifact of an fp32 export, built (optimized and verified) the first time."""
    from berthing.packaging.tune import tune

    target = base.with_name(f"{base.name}-{request.key()}")
    if is_artifact(target):
        return target
    try:  # verification runs the PyTorch model; the optimizations edit the graph with onnx
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder.name} has no cached artifact for --optimize {request.level}, and building one needs torch, "
            f"transformers and onnx ({exc.name} is missing): pip install 'berthing[export]', serve a package, "
            "or serve the fp32 export with --optimize none"
        ) from exc
    say = progress or (lambda _msg: None)

    def build(tmp: Path) -> None:
        for name in ("model.onnx", "tokenizer.json", "berthing.json"):
            shutil.copyfile(base / name, tmp / name)
        tune(folder, spec, tmp, request, allow_pickle=allow_pickle, progress=lambda m: say(f"{m} (once, cached)"))

    return _build_once(target, build)
