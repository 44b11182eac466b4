"""Task name -> task class."""

from __future__ import annotations

from berthing.packaging.checkpoint import ModelSpec
from berthing.tasks.base import Task
from berthing.tasks.classify import ClassifyTask
from berthing.tasks.embed import EmbedTask

TASK_CLASSES: dict[str, type[Task]] = {"embed": EmbedTask, "classify": ClassifyTask}


def make_task(spec: ModelSpec) -> Task:
    """The task object for a model spec."""
    return TASK_CLASSES[spec.task](spec)
