"""Task name -> task class, imported on first use (each task is one module under berthing.tasks)."""

from __future__ import annotations

import importlib

from berthing.spec import ModelSpec
from berthing.tasks.base import Task

TASK_CLASSES: dict[str, str] = {
    "embed": "berthing.tasks.embed:EmbedTask",
    "classify": "berthing.tasks.classify:ClassifyTask",
    "ner": "berthing.tasks.ner:NerTask",
    "qa": "berthing.tasks.qa:QaTask",
    "rerank": "berthing.tasks.rerank:RerankTask",
}


def task_class(name: str) -> type[Task] | None:
    """The class serving a task, or None when this version has no module for it."""
    target = TASK_CLASSES.get(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def make_task(spec: ModelSpec) -> Task:
    """The task object for a model spec."""
    cls = task_class(spec.task)
    if cls is None:
        raise KeyError(spec.task)
    return cls(spec)
