"""berthing: BERT-family encoders from checkpoint to a fast production service."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from berthing.version import __version__

if TYPE_CHECKING:
    from berthing.client import AsyncClient, Client
    from berthing.engine.model import Model


def load(
    source: str | Path | None = None,
    *,
    task: str | None = None,
    runtime: str = "onnx",
    name: str | None = None,
    **settings: Any,
) -> Model:
    """Load a model for in-process use: `berthing.load("./ckpt").predict(["a", "b"])`.

    `source` is a checkpoint folder, an exported artifact, a package (.berth or its folder), a hub id, or None
    for the default model.
    Other keywords are Settings fields (cache_dir, threads, max_batch_tokens, trust_handlers, ...).
    """
    from berthing.config import Settings
    from berthing.loading import load_model
    from berthing.packaging.sources import resolve

    config = Settings(task=task, runtime=runtime, **settings)
    spec = str(source) if source is not None else None
    resolved = resolve(f"{name}={spec or ''}" if name else spec, config.cache_dir)
    return load_model(resolved, config.load_options(resolved.name))


def __getattr__(name: str) -> Any:
    """Client and AsyncClient on first use: `import berthing` stays as fast as before (no httpx import)."""
    if name in ("Client", "AsyncClient"):
        from berthing import client

        return getattr(client, name)
    if name == "train":  # berthing.train(...): the package is callable; torch and transformers load on the first call
        import berthing.train

        return berthing.train
    raise AttributeError(f"module 'berthing' has no attribute {name!r}")


__all__ = ["AsyncClient", "Client", "__version__", "load"]
