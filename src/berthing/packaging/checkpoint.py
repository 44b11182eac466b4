"""Read a HuggingFace checkpoint folder (JSON files only) into a ModelSpec: task, pooling, labels, lengths.

Pure JSON reading, no transformers import, so the serving path can use it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from berthing.spec import TASKS, ModelSpec
from berthing.types import ModelLoadError

# Heads this version can serve; the others are detected so the error can name them.
_HEAD_TASKS = {
    "ForSequenceClassification": "classify",
    "ForTokenClassification": "ner",
    "ForQuestionAnswering": "qa",
}
# Model types whose forward takes no token_type_ids, or whose tokenizers never produce any but zeros.
_NO_TOKEN_TYPES = {"distilbert", "roberta", "xlm-roberta", "camembert", "mpnet", "bart"}
# Model types whose position ids start after the padding index, as fairseq's did: position = padding_idx + 1 + i
# with padding_idx 1, so the usable length is the table minus 2 (roberta-base: 514 -> 512). MPNet hard-codes it too.
_PADDING_OFFSET_POSITIONS = {
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "roberta-prelayernorm", "data2vec-text",
    "ibert", "longformer", "xmod",
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def detect_task(folder: Path, config: dict[str, Any]) -> str:
    """The task a checkpoint is for: its head if it has one, else embeddings.

    A sequence classifier with one label, or with sentence-transformers' CrossEncoder settings in its
    config, is a cross-encoder: reranking.
    """
    for arch in config.get("architectures") or []:
        for suffix, task in _HEAD_TASKS.items():
            if arch.endswith(suffix):
                if task == "classify" and (_num_labels(config) == 1 or "sentence_transformers" in config):
                    return "rerank"
                return task
    return "embed"


def _num_labels(config: dict[str, Any]) -> int:
    return int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)


def _sentence_transformers_pooling(folder: Path) -> tuple[str | None, bool]:
    """Pooling mode and Normalize presence from a sentence-transformers modules.json, if any."""
    modules = _read_json(folder / "modules.json") if (folder / "modules.json").exists() else None
    if not modules:
        return None, False
    pooling: str | None = None
    normalize = False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = _read_json(folder / module.get("path", "") / "config.json")
            pooling = _pooling_from_config(cfg)
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def _pooling_from_config(cfg: dict[str, Any]) -> str:
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        return {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(mode, mode)
    for key, name in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_lasttoken", "lasttoken"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("pooling_mode_mean_tokens", "mean"),
    ):
        if cfg.get(key):
            return name
    return "mean"


def _max_length(folder: Path, config: dict[str, Any]) -> int:
    """Usable tokens per text: sentence-transformers' setting, else the tokenizer's, else the position table."""
    model_type = config.get("model_type", "")
    positions = int(config.get("max_position_embeddings") or 512)
    if model_type in _PADDING_OFFSET_POSITIONS:
        positions -= 2
    candidates = [positions]
    st = _read_json(folder / "sentence_bert_config.json")
    if isinstance(st.get("max_seq_length"), int):
        candidates.append(st["max_seq_length"])
    tok = _read_json(folder / "tokenizer_config.json")
    limit = tok.get("model_max_length")
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        candidates.append(limit)
    return min(candidates)


def _uses_token_types(model_type: str, config: dict[str, Any]) -> bool:
    """Feed token_type_ids only where they can differ from zeros: a one-row type table (RoBERTa-style) would
    fail on the 1s a BERT-style tokenizer writes for a text pair's second segment; the model's own zeros are right."""
    return model_type not in _NO_TOKEN_TYPES and int(config.get("type_vocab_size", 2)) > 1


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    n = _num_labels(config)
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(max(n, len(id2label)))]


def read_checkpoint(folder: Path, task: str | None = None) -> ModelSpec:
    """Build the ModelSpec of a checkpoint folder; `task` overrides detection."""
    config = _read_json(folder / "config.json")
    if not config:
        raise ModelLoadError(f"{folder} is not a HuggingFace checkpoint: config.json is missing")
    detected = detect_task(folder, config)
    chosen = task or detected
    if chosen not in TASKS:
        raise ModelLoadError(f"unknown task {chosen!r} (tasks: {', '.join(TASKS)})")
    model_type = str(config.get("model_type", "bert"))
    spec = ModelSpec(
        task=chosen,
        model_type=model_type,
        max_length=_max_length(folder, config),
        uses_token_types=_uses_token_types(model_type, config),
        hidden_size=int(config.get("hidden_size") or config.get("dim") or 0),
    )
    if chosen == "embed":
        pooling, normalize = _sentence_transformers_pooling(folder)
        spec.pooling = pooling or "mean"
        spec.normalize = normalize
    elif chosen in ("classify", "rerank", "ner"):
        spec.labels = _labels(config)
        spec.multi_label = config.get("problem_type") == "multi_label_classification" or len(spec.labels) == 1
    return spec
