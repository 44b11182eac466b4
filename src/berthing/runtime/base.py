"""The runtime contract: one padded batch in, one numpy array out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from berthing.tasks.tokenize import Features


class Runtime(Protocol):
    """Runs a padded batch; knows nothing of HTTP or tasks."""

    name: str
    threads: int

    def run(self, features: Features) -> np.ndarray:
        """The model's single output for the batch (last hidden state or logits)."""
        ...
