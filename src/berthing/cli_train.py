"""`berthing train classify|ner DATA -o DIR`: fine-tune, evaluate the package, report; registered on cli.app."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
_TASKS = ("classify", "ner")


def train_command(
    task: Annotated[str, typer.Argument(metavar="TASK", help="classify (single-label, multi-label, text pairs) or ner.")],
    data: Annotated[Path, typer.Argument(help="TSV, CSV, JSONL, CoNLL or People's Daily file; split 6:2:2 unless --dev/--test.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder: checkpoint/, NAME-VERSION.berth, metrics.json, "
                                         "report.html, runs/, train.log.")],
    base: Annotated[str | None, typer.Option(help="Base model: a checkpoint folder, a package trained here, a hub id, "
                                             "or 'scratch' (a small seeded BERT, not pretrained); default: the default.")] = None,
    epochs: Annotated[float, typer.Option(help="Training epochs.")] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Examples per step (per gradient accumulation step).")] = 32,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (2e-5; scratch 2e-3, NER 1e-3).")] = None,
    max_length: Annotated[int, typer.Option(help="Tokens per example in training; the package truncates there too.")] = 128,
    warmup_ratio: Annotated[float, typer.Option(help="Share of the steps spent warming the learning rate up.")] = 0.0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the split, the shuffling and the new head.")] = 42,
    early_stopping: Annotated[int | None, typer.Option(help="Stop after N epochs without a better dev figure.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps in all.")] = None,
    gradient_accumulation: Annotated[int, typer.Option(help="Steps whose gradients add up before an update.")] = 1,
    class_weights: Annotated[bool, typer.Option("--class-weights", help="Weigh the loss by inverse label frequency.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Go on from the last checkpoint in OUTPUT/runs/.")] = False,
    threads: Annotated[int, typer.Option(help="Torch threads (0: the cores this process may use).")] = 0,
    scratch_hidden: Annotated[int, typer.Option(help="--base scratch: hidden size.")] = 128,
    scratch_layers: Annotated[int, typer.Option(help="--base scratch: layers.")] = 2,
    name: Annotated[str | None, typer.Option(help="Package name (default: the output folder's name).")] = None,
    version: Annotated[str, typer.Option(help="Package version.")] = "1.0",
    no_pack: Annotated[bool, typer.Option("--no-pack", help="No package: figures are of the checkpoint.")] = False,
    optimize: Annotated[str, typer.Option(envvar="BERTHING_OPTIMIZE", help="The package's level, as berthing pack: auto, "
                                          "none, fused or int8.")] = "auto",
    fmt: Annotated[str | None, typer.Option("--format", help="tsv, csv, jsonl, conll or peoples-daily (default: found).")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column of a TSV/CSV with a header.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column of a TSV/CSV with a header.")] = None,
    dev: Annotated[Path | None, typer.Option(help="Dev file (default: split from DATA).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test file (default: split from DATA).")] = None,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip bad rows (counted in the report).")] = False,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows after shuffling.")] = None,
    log_every: Annotated[float, typer.Option(help="Seconds between progress lines when stderr is not a terminal.")] = 10.0,
) -> None:
    """Fine-tune a classifier or NER model; write the best checkpoint, a verified package, metrics.json and report.html.

    A real run starts from a pretrained checkpoint (for Chinese: bert-base-chinese, downloaded where a network exists)."""
    from berthing.train.data import DataError
    from berthing.train.run import TrainError, TrainInterrupted, TrainOptions, train
    from berthing.types import BerthingError

    if task not in _TASKS:
        console.print(f"[red]error:[/] unknown task {task!r} (tasks: {', '.join(_TASKS)})")
        raise typer.Exit(2)
    options = TrainOptions(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, max_length=max_length, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, seed=seed, early_stopping=early_stopping, max_steps=max_steps,
        gradient_accumulation=gradient_accumulation, class_weights=class_weights, resume=resume, threads=threads, base=base,
        scratch_hidden=scratch_hidden, scratch_layers=scratch_layers, name=name, version=version, pack=not no_pack,
        optimize=optimize, log_every=log_every, fmt=fmt, text_column=text_column, label_column=label_column, dev=dev,
        test=test, skip_bad_rows=skip_bad_rows, limit=limit,
    )
    try:
        result = train(task, data, output, options, progress=lambda message: console.print(message, markup=False))
    except DataError as exc:
        console.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    except TrainInterrupted as exc:
        again = " ".join(["berthing", *map(shlex.quote, sys.argv[1:])])
        again += "" if "--resume" in sys.argv else " --resume"
        console.print(f"[yellow]{exc}[/]; resume with:\n  {again}", highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/] without saving a checkpoint (the last one in runs/ still resumes)")
        raise typer.Exit(130) from None
    except (TrainError, BerthingError) as exc:
        console.print(f"[red]error:[/] {getattr(exc, 'message', exc)}", highlight=False)
        raise typer.Exit(1) from None
    test_figures = result.metrics["test"]
    figure = "f1" if task == "ner" else "accuracy"
    console.print(f"[green]✓[/] test {figure} {test_figures[figure]:.4f} on the {result.metrics['evaluated_on']}; "
                  f"report {result.report}", highlight=False)
    typer.echo(str(result.package or result.checkpoint))
