"""Check an optimized graph against a reference (the fp32 ONNX graph, or the PyTorch checkpoint) before it serves.

Why through berthing's own Model: both sides run the same task code (tokenizer, windows, pooling, softmax, entity
grouping, answer spans, rankings), so the comparison is of what a client would get back, not of raw tensors whose
tolerable error differs per task. Each task has its figures and thresholds (all configurable):

    embed     cosine between the two vectors of each text: min >= 0.98 and mean >= 0.995
    classify  same label (label set when multi-label) >= 99% of texts; max probability error <= 0.1
    ner       entities (start, end, group) in common / in either >= 0.95
    qa        same answer span >= 95% of questions (built from the texts; the longest word is asked about)
    rerank    same order for >= 95% of text pairs within each ranking; max score error <= 0.1

The texts are the built-in calibration sample (berthing/data/calibration.txt) or a user's file, one text a line.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from berthing.engine.batcher import BatchLimits
from berthing.engine.model import Model
from berthing.packaging.calibration import calibration_texts, read_texts
from berthing.runtime.threads import threads_per_worker
from berthing.runtime.torch import TorchRuntime
from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Encoder
from berthing.types import ModelLoadError

QA_PAIRS = 48  # questions built from the texts: QA reads whole contexts in windows, so it is the slowest task
RANKINGS = 24  # rerank: rankings of RANKING_SIZE texts each
RANKING_SIZE = 8


@dataclass(frozen=True)
class Thresholds:
    """Pass marks; None turns a check off (its figure is still reported)."""

    cosine_min: float | None = 0.98
    cosine_mean: float | None = 0.995
    label_agreement: float | None = 0.99
    max_prob_error: float | None = 0.1
    entity_agreement: float | None = 0.95
    span_agreement: float | None = 0.95
    order_agreement: float | None = 0.95
    max_score_error: float | None = 0.1


# Which figures each task is judged on, and whether a figure must be at least (>=) or at most (<=) its mark.
_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    "embed": (("cosine_min", ">="), ("cosine_mean", ">=")),
    "classify": (("label_agreement", ">="), ("max_prob_error", "<=")),
    "ner": (("entity_agreement", ">="),),
    "qa": (("span_agreement", ">="),),
    "rerank": (("order_agreement", ">="), ("max_score_error", "<=")),
}


@dataclass
class VerifyReport:
    """Figures, the thresholds applied, and which of them failed; to_dict() goes into a package manifest."""

    task: str
    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float]
    failed: list[str] = field(default_factory=list)  # threshold names, e.g. ["cosine_min"]
    messages: list[str] = field(default_factory=list)  # e.g. "cosine_min 0.9612 < 0.98"
    inputs: int = 0
    candidate: str = ""
    reference: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain floats, lists, strings)."""
        return json.loads(json.dumps(asdict(self)))

    def summary(self) -> str:
        """One line for logs and CLI output."""
        figures = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items())
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.messages)
        return f"{self.task} vs {self.reference or 'reference'} on {self.inputs} inputs: {figures} -> {verdict}"


# -- models -----------------------------------------------------------------------------------------------------


def onnx_model(model_onnx: Path, spec: ModelSpec, tokenizer: Path, threads: int = 0, name: str = "candidate") -> Model:
    """A berthing Model around one ONNX graph (no cache, no export): what verification and speed checks run."""
    from berthing.runtime.onnx import OnnxRuntime  # onnxruntime: only when a graph is run

    encoder = Encoder(tokenizer, spec.max_length, spec.uses_token_types)
    runtime = OnnxRuntime(model_onnx, threads_per_worker(1, threads))
    return Model(name, "verify", spec, encoder, [runtime], BatchLimits(), model_onnx.parent, 0.0)


def torch_model(checkpoint: Path, spec: ModelSpec, tokenizer: Path, threads: int = 0, allow_pickle: bool = False) -> Model:
    """The PyTorch checkpoint as a berthing Model (the --runtime torch path), with the artifact's tokenizer."""
    encoder = Encoder(tokenizer, spec.max_length, spec.uses_token_types)
    runtime = TorchRuntime(checkpoint, spec, threads_per_worker(1, threads), allow_pickle)
    return Model("reference", "torch", spec, encoder, [runtime], BatchLimits(), checkpoint, 0.0)


def as_model(source: Model | Path, spec: ModelSpec | None = None, tokenizer: Path | None = None, threads: int = 0) -> Model:
    """A Model, a model.onnx file, an artifact folder (model.onnx + tokenizer.json + berthing.json) or a
    checkpoint folder (run by PyTorch) -> a Model. Files and checkpoints need the spec and tokenizer from an
    artifact unless their folder has them."""
    if isinstance(source, Model):
        return source
    folder = source if source.is_dir() else source.parent
    if spec is None and (folder / "berthing.json").is_file():
        spec = ModelSpec.from_dict(json.loads((folder / "berthing.json").read_text(encoding="utf-8")))
    tokenizer = tokenizer or (folder / "tokenizer.json")
    if spec is None or not tokenizer.is_file():
        raise ModelLoadError(f"{source} has no berthing.json/tokenizer.json beside it; pass spec= and tokenizer=")
    if source.is_file():
        return onnx_model(source, spec, tokenizer, threads, source.parent.name)
    if (source / "model.onnx").is_file():
        return onnx_model(source / "model.onnx", spec, tokenizer, threads, source.name)
    if (source / "config.json").is_file():
        return torch_model(source, spec, tokenizer, threads)
    raise ModelLoadError(f"{source} is neither an ONNX graph, an artifact folder nor a checkpoint folder")


# -- inputs -----------------------------------------------------------------------------------------------------


def _longest_word(text: str) -> str:
    words = [w.strip(".,;:!?()\"'") for w in text.split()]
    words = [w for w in words if w]
    if len(words) >= 3:
        return max(words, key=len)
    return text[len(text) // 3 : len(text) // 3 + 4]  # unspaced scripts (Chinese, Japanese): a few characters


def qa_inputs(texts: Sequence[str], n: int = QA_PAIRS) -> list[dict[str, str]]:
    """Question/context pairs from the texts: each text of 60+ characters is a context, asked about its longest
    word (so a real QA model has something to find; agreement is what is measured, not correctness)."""
    contexts = [t for t in texts if len(t) >= 60] or list(texts)
    templates = ("What does the text say about {}?", "Who or what is {}?", "Where is {} mentioned?", "{}是什么？")
    pairs = []
    for i, context in enumerate(itertools.islice(itertools.cycle(contexts), min(n, max(len(contexts), 1)))):
        pairs.append({"question": templates[i % len(templates)].format(_longest_word(context)), "context": context})
    return pairs


def rerank_inputs(texts: Sequence[str], n: int = RANKINGS, size: int = RANKING_SIZE) -> list[dict[str, Any]]:
    """Rankings from the texts: a short text as the query, `size` others (a fixed stride apart) as candidates."""
    queries = [t for t in texts if len(t) <= 80] or list(texts)
    rankings = []
    for i in range(min(n, len(queries))):
        start = (i * 7) % len(texts)
        candidates = [texts[(start + j * 5) % len(texts)] for j in range(size)]
        rankings.append({"query": queries[(i * 3) % len(queries)], "texts": candidates})
    return rankings


def task_inputs(task: str, texts: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """What verification sends for a task: (inputs for Model.predict, options)."""
    if task == "qa":
        return list(qa_inputs(texts)), {}
    if task == "rerank":
        return list(rerank_inputs(texts)), {}
    if task == "ner":
        return list(texts), {"aggregation_strategy": "simple"}
    if task == "embed":
        return list(texts), {"normalize": True}
    return list(texts), {}


def read_texts_or_default(texts: Sequence[str] | Path | None) -> list[str]:
    """A list as given, a file's lines (one text a line), or the built-in calibration sample."""
    if isinstance(texts, Path):
        return read_texts(texts)
    return list(texts) if texts is not None else calibration_texts()


# -- comparisons ------------------------------------------------------------------------------------------------


def _embed(cand: list[Any], ref: list[Any]) -> dict[str, float]:
    a, b = np.asarray(cand, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(axis=1)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def _classify(cand: list[Any], ref: list[Any], multi_label: bool) -> dict[str, float]:
    def labels(result: dict[str, Any]) -> Any:
        if multi_label:
            return frozenset(k for k, v in result["scores"].items() if v >= 0.5)
        return result["label"]

    same = [labels(c) == labels(r) for c, r in zip(cand, ref, strict=True)]
    errors = [abs(c["scores"][k] - r["scores"][k]) for c, r in zip(cand, ref, strict=True) for k in r["scores"]]
    return {"label_agreement": float(np.mean(same)), "max_prob_error": float(max(errors, default=0.0)),
            "mean_prob_error": float(np.mean(errors)) if errors else 0.0}


def _ner(cand: list[Any], ref: list[Any]) -> dict[str, float]:
    common = union = 0
    score_errors: list[float] = []
    identical = 0
    for c, r in zip(cand, ref, strict=True):
        a = {(e["start"], e["end"], e["entity_group"]): e["score"] for e in c}
        b = {(e["start"], e["end"], e["entity_group"]): e["score"] for e in r}
        common += len(a.keys() & b.keys())
        union += len(a.keys() | b.keys())
        score_errors += [abs(a[k] - b[k]) for k in a.keys() & b.keys()]
        identical += a.keys() == b.keys()
    return {"entity_agreement": common / union if union else 1.0, "texts_identical": identical / max(len(ref), 1),
            "entities": float(union), "max_score_error": float(max(score_errors, default=0.0))}


def _qa(cand: list[Any], ref: list[Any]) -> dict[str, float]:
    same = [(c["start"], c["end"]) == (r["start"], r["end"]) for c, r in zip(cand, ref, strict=True)]
    errors = [abs(c["score"] - r["score"]) for c, r in zip(cand, ref, strict=True)]
    return {"span_agreement": float(np.mean(same)), "max_score_error": float(max(errors, default=0.0))}


def _rerank(cand: list[Any], ref: list[Any]) -> dict[str, float]:
    agree = pairs = top1 = 0
    errors: list[float] = []
    for c, r in zip(cand, ref, strict=True):
        cl = {e["index"]: e["logit"] for e in c}
        rl = {e["index"]: e["logit"] for e in r}
        cs = {e["index"]: e["score"] for e in c}
        errors += [abs(cs[i] - e["score"]) for i, e in ((e["index"], e) for e in r)]
        top1 += c[0]["index"] == r[0]["index"]
        for i, j in itertools.combinations(sorted(rl), 2):
            if abs(rl[i] - rl[j]) < 1e-6:
                continue  # a tie in the reference has no order to keep
            pairs += 1
            agree += (rl[i] - rl[j]) * (cl[i] - cl[j]) > 0
    return {"order_agreement": agree / pairs if pairs else 1.0, "top1_agreement": top1 / max(len(ref), 1),
            "max_score_error": float(max(errors, default=0.0))}


def compare(task: str, cand: list[Any], ref: list[Any], spec: ModelSpec | None = None) -> dict[str, float]:
    """A task's agreement figures between two lists of results for the same inputs."""
    if task == "embed":
        return _embed(cand, ref)
    if task == "classify":
        return _classify(cand, ref, bool(spec and spec.multi_label))
    if task == "ner":
        return _ner(cand, ref)
    if task == "qa":
        return _qa(cand, ref)
    if task == "rerank":
        return _rerank(cand, ref)
    raise ValueError(f"no verification for task {task!r}")


def judge(task: str, metrics: dict[str, float], thresholds: Thresholds) -> tuple[dict[str, float], list[str], list[str]]:
    """(thresholds applied, names that failed, messages) for a task's figures."""
    applied: dict[str, float] = {}
    failed: list[str] = []
    messages: list[str] = []
    for name, direction in _CHECKS[task]:
        mark = getattr(thresholds, name)
        if mark is None:
            continue
        applied[name] = mark
        value = metrics[name]
        ok = value >= mark if direction == ">=" else value <= mark
        if not ok:
            failed.append(name)
            messages.append(f"{name} {value:.4f} {'<' if direction == '>=' else '>'} {mark}")
    return applied, failed, messages


def verify(
    candidate: Model | Path,
    reference: Model | Path,
    *,
    spec: ModelSpec | None = None,
    tokenizer: Path | None = None,
    texts: Sequence[str] | Path | None = None,
    thresholds: Thresholds | None = None,
    threads: int = 0,
    reference_results: list[Any] | None = None,
) -> VerifyReport:
    """Run both models on the task's inputs through berthing's task code and judge the agreement.

    `texts`: a list, a file (one text per line), or None for the built-in calibration sample.
    `reference_results` skips running the reference again (choose() runs it once for every level).
    """
    started = time.perf_counter()
    cand = as_model(candidate, spec, tokenizer, threads)
    spec = spec or cand.spec
    sample = read_texts_or_default(texts)
    inputs, options = task_inputs(spec.task, sample)
    if reference_results is None:
        ref = as_model(reference, spec, tokenizer, threads)
        reference_results = ref.predict(inputs, **options)
    results = cand.predict(inputs, **options)
    metrics = compare(spec.task, results, reference_results, spec)
    applied, failed, messages = judge(spec.task, metrics, thresholds or Thresholds())
    return VerifyReport(
        task=spec.task, passed=not failed, metrics={k: round(v, 6) for k, v in metrics.items()}, thresholds=applied,
        failed=failed, messages=messages, inputs=len(inputs), candidate=_describe(candidate), reference=_describe(reference),
        seconds=round(time.perf_counter() - started, 2),
    )


def _describe(source: Model | Path) -> str:
    if isinstance(source, Path):
        return str(source)
    return f"{source.name} ({source.runtimes[0].name})"


def measure_speed(model: Model, inputs: list[Any], options: dict[str, Any], min_seconds: float = 0.5) -> float:
    """Inputs per second for one pass over `inputs` (repeated until min_seconds), after a warm-up call."""
    model.predict(inputs[: max(1, len(inputs) // 8)], **options)
    done = 0
    started = time.perf_counter()
    while True:
        model.predict(inputs, **options)
        done += len(inputs)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def interleaved_speeds(
    models: dict[str, Model], inputs: list[Any], options: dict[str, Any], rounds: int = 3, min_seconds: float = 0.5
) -> dict[str, float]:
    """Best of `rounds` for each model, measured round-robin: on a shared machine a burst of other work then
    slows one round of every model instead of every round of one."""
    best: dict[str, float] = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for key, model in models.items():
            best[key] = max(best[key], measure_speed(model, inputs, options, min_seconds))
    return best

