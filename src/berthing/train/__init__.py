"""Fine-tuning: from labelled data (TSV, CSV, JSONL, CoNLL, People's Daily) to a verified package and a report.

`berthing.train(...)` calls train.run.train: this package is the attribute `berthing.train` once any of its modules is
imported, so the package itself is callable (torch and transformers load on the first call, not on import).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """The berthing.train package, callable as berthing.train(task, data, output, ...)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from berthing.train.run import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
