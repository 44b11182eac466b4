"""ModelSpec: what the engine knows about a model (task, pooling, labels, lengths), stored as berthing.json.

Pure data at the bottom of the layers: tasks, runtimes and the engine read a spec; packaging/checkpoint.py builds
one from a checkpoint's JSON files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

TASKS = ("embed", "classify", "ner", "qa", "rerank")
POOLINGS = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len")


@dataclass
class ModelSpec:
    """Everything the engine needs to know about a model, stored as berthing.json beside its artifact."""

    task: str
    model_type: str
    max_length: int
    uses_token_types: bool
    pooling: str = "mean"
    normalize: bool = False
    labels: list[str] = field(default_factory=list)
    multi_label: bool = False
    hidden_size: int = 0

    def to_json(self) -> str:
        """Serialize for the artifact folder."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Rebuild from berthing.json, ignoring keys a newer version may have added."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})
