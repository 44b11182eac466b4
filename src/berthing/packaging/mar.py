"""TorchServe .mar archives as a checkpoint source: extract safely, map setup_config/index_to_name to task/labels.

The .mar's own handler is TorchServe's Python code and is not carried over: berthing's task replaces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berthing.packaging.archive import ArchiveLimits, extract
from berthing.types import ModelLoadError

# setup_config.json "mode" values of TorchServe's HuggingFace transformers handler.
_MODES = {
    "sequence_classification": "classify",
    "token_classification": "ner",
    "question_answering": "qa",
}


@dataclass
class MarContents:
    """What a .mar holds once extracted: its checkpoint folder and what its metadata says."""

    folder: Path
    name: str | None
    version: str | None
    task: str | None
    labels: list[str] = field(default_factory=list)
    handler: str | None = None


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path.name} from the .mar: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _labels(index_to_name: dict[str, Any]) -> list[str]:
    """index_to_name.json ({"0": "neg", "1": "pos"}) as a list in index order."""
    try:
        indexed = sorted((int(k), str(v)) for k, v in index_to_name.items())
    except ValueError as exc:
        raise ModelLoadError(f"index_to_name.json keys must be class indices: {exc}") from exc
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise ModelLoadError("index_to_name.json must number its classes 0, 1, 2, ... without gaps")
    return [name for _, name in indexed]


def open_mar(mar: Path, workdir: Path, limits: ArchiveLimits | None = None) -> MarContents:
    """Extract `mar` under `workdir` (same safety checks as packages) and read its metadata."""
    folder = extract(mar, workdir / "mar", limits)
    meta = _json(folder / "MAR-INF" / "MANIFEST.json")
    if not meta:
        raise ModelLoadError(f"{mar.name} is not a TorchServe model archive: MAR-INF/MANIFEST.json is missing")
    model = meta.get("model") or {}
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{mar.name} holds no config.json: only HuggingFace checkpoints (torch-model-archiver --extra-files "
            "config.json,vocab.txt,...) can be packed"
        )
    setup = _json(folder / "setup_config.json")
    mode = setup.get("mode")
    if mode is not None and mode not in _MODES:
        raise ModelLoadError(f"{mar.name}: setup_config.json mode {mode!r} is not served (modes: {', '.join(_MODES)})")
    return MarContents(
        folder=folder,
        name=model.get("modelName"),
        version=model.get("modelVersion"),
        task=_MODES.get(mode) if mode else None,
        labels=_labels(_json(folder / "index_to_name.json")),
        handler=model.get("handler"),
    )
