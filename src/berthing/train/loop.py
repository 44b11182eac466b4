"""transformers' Trainer, set up for berthing train: weighted loss, progress, train.log, a clean Ctrl-C."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

Say = Callable[[str], None]


class WeightedTrainer(Trainer):
    """The Trainer with an optional per-class weight in the loss (imbalanced labels count as much as common ones)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer divides by accumulation steps

    def __init__(self, *args: Any, class_weights: list[float] | None = None, multi_label: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.multi_label = multi_label

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        weights = self.class_weights.to(logits.device)
        if self.multi_label:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weights)
        else:
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), weight=weights)
        return (loss, outputs) if return_outputs else loss


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class BarCallback(TrainerCallback):
    """A rich bar per epoch (loss, steps/s, ETA) on a terminal; otherwise a plain line every `every_s` seconds."""

    def __init__(self, say: Say, log: Say, bar: bool, every_s: float = 10.0) -> None:
        self.say, self.log, self.bar, self.every_s = say, log, bar, every_s
        self.loss: float | None = None
        self._progress: Any = None
        self._task: Any = None
        self._start = self._last = time.monotonic()
        self._start_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = state.global_step
        if self.bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} steps/s"), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._progress.start()

    def _per_epoch(self, state: Any) -> int:
        return max(1, round(state.max_steps / max(state.num_train_epochs, 1e-9))) if state.num_train_epochs else state.max_steps

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            epoch = int(state.epoch or 0) + 1
            per_epoch = self._per_epoch(state)
            done = state.global_step - (epoch - 1) * per_epoch
            total = min(per_epoch, state.max_steps - (epoch - 1) * per_epoch)
            self._task = self._progress.add_task(
                f"epoch {epoch}/{int(-(-state.max_steps // per_epoch))}", total=max(total, 1), completed=max(done, 0),
                loss="-", rate="-",
            )

    def _rate(self, state: Any) -> float:
        elapsed = time.monotonic() - self._start
        return (state.global_step - self._start_step) / elapsed if elapsed > 0 else 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rate = self._rate(state)
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=loss, rate=f"{rate:.2f}")
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else 0
            self.say(
                f"epoch {state.epoch:.2f}/{state.num_train_epochs:g} step {state.global_step}/{state.max_steps} "
                f"loss {loss} {rate:.2f} steps/s ETA {_duration(eta)}"
            )

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any) -> None:
        name = args.metric_for_best_model
        figure = (metrics or {}).get(f"eval_{name}")
        if figure is not None:  # the per-epoch dev evaluation (not the final ones, named otherwise)
            line = f"epoch {state.epoch:.2f}: dev {name} {figure:.4f}, dev loss {metrics.get('eval_loss', float('nan')):.4f}"
            if self._progress is not None:
                self._progress.console.print(line)
                self.log(line)
            else:
                self.say(line)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.stop_task(self._task)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class LogCallback(TrainerCallback):
    """Every logged point (train loss, dev figures) as a line of train.log and a history entry for the report."""

    def __init__(self, write: Say, metric: str) -> None:
        self.write, self.metric = write, metric
        self.history: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        point: dict[str, Any] = {"epoch": float(state.epoch or 0), "step": int(state.global_step)}
        if "loss" in logs:
            point["train_loss"] = float(logs["loss"])
        if "eval_loss" in logs:
            point["dev_loss"] = float(logs["eval_loss"])
        if f"eval_{self.metric}" in logs:
            point["dev_metric"] = float(logs[f"eval_{self.metric}"])
            point["dev_metric_name"] = self.metric
        if len(point) > 2:
            self.history.append(point)
        shown = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
        self.write(f"step {state.global_step} epoch {state.epoch or 0:.2f}: {shown}")


class InterruptCallback(TrainerCallback):
    """Ctrl-C: finish the current step, save a checkpoint (no dev evaluation), stop. A second Ctrl-C stops at once."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.interrupted = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.say("interrupted: saving a checkpoint after this step (Ctrl-C again to stop without one)")

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.interrupted:  # saved at the step already; a dev evaluation would only delay the exit
            control.should_save = False
            control.should_evaluate = False
