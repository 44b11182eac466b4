"""Pickle weights are refused by berthing itself, before transformers (or torch) opens them."""

from __future__ import annotations

from pathlib import Path

import pytest

from berthing.runtime.torch import check_weights
from berthing.types import ModelLoadError


def _folder(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).write_bytes(b"not really weights")
    return tmp_path


@pytest.mark.parametrize("names", [("pytorch_model.bin",), ("pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json")])
def test_pickle_only_checkpoints_are_refused(tmp_path: Path, names: tuple[str, ...]) -> None:
    folder = _folder(tmp_path, "config.json", *names)
    with pytest.raises(ModelLoadError, match=rf"holds pickle weights \({names[0]}\) and no model\.safetensors"):
        check_weights(folder)
    check_weights(folder, allow_pickle=True)


@pytest.mark.parametrize(
    "names",
    [("model.safetensors", "pytorch_model.bin"), ("model.safetensors.index.json",), ("config.json",), ("training_args.bin",)],
)
def test_safetensors_or_no_model_pickle_pass(tmp_path: Path, names: tuple[str, ...]) -> None:
    check_weights(_folder(tmp_path, *names))
