"""Every supported architecture through both runtimes, against transformers on the same checkpoint.

Embeddings and classification go through the task (Model.predict); the NER, QA and rerank heads are checked at
the runtime's raw output (logits), so the architectures are proven independently of those task modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from berthing.config import Settings
from berthing.packaging.export import prepare
from berthing.runtime.base import Runtime
from berthing.spec import ModelSpec
from berthing.tasks.tokenize import Encoder
from berthing.types import TextPair
from tests.support.models import ARCHS
from tests.support.texts import mixed_sentences

TEXTS = mixed_sentences(24)  # 1 to ~300 tokens: the long ones are truncated at the tiny models' 128
PAIRS = [TextPair(a, b) for a, b in zip(TEXTS[:8], TEXTS[8:16], strict=True)]
TOKEN_TYPES = {"bert": True, "electra": True}  # the others take no token_type_ids (or only zeros)
PAD_IDS = {"roberta": 1, "xlm-roberta": 1, "mpnet": 1}  # <pad> = 1; the WordPiece ones use [PAD] = 0
ATOL = 1e-4


def kind(arch: str, task: str) -> str:
    """The tiny model kind; BERT's are the plain kinds the other tests use (loaded once for all)."""
    return task if arch == "bert" else f"{arch}-{task}"


_HEADS: dict[tuple[str, str], tuple[Encoder, dict[str, Runtime]]] = {}


@pytest.fixture(scope="module")
def head(tiny_model_dir, settings: Settings):
    """Factory: head(arch, task) -> (encoder, {'onnx': runtime, 'torch': runtime}), built without the task module."""
    from berthing.runtime.onnx import OnnxRuntime
    from berthing.runtime.torch import TorchRuntime

    def _head(arch: str, task: str) -> tuple[Encoder, dict[str, Runtime]]:
        if (arch, task) not in _HEADS:
            folder = tiny_model_dir(kind(arch, task))
            artifact = prepare(folder, task, settings.cache_dir)
            spec = ModelSpec.from_dict(json.loads((artifact / "berthing.json").read_text("utf-8")))
            encoder = Encoder(artifact / "tokenizer.json", spec.max_length, spec.uses_token_types)
            runtimes: dict[str, Runtime] = {
                "onnx": OnnxRuntime(artifact / "model.onnx", 1), "torch": TorchRuntime(folder, spec, 1)
            }
            _HEADS[arch, task] = (encoder, runtimes)
        return _HEADS[arch, task]

    return _head


def _reference(folder: Path, task: str, inputs: list, max_length: int = 128) -> tuple[dict, np.ndarray]:
    """transformers' tokenization and output (hidden states or logits; QA's start/end stacked) for `inputs`."""
    import torch
    import transformers

    from berthing.runtime.torch import task_output

    cls = {
        "embed": transformers.AutoModel,
        "classify": transformers.AutoModelForSequenceClassification,
        "rerank": transformers.AutoModelForSequenceClassification,
        "ner": transformers.AutoModelForTokenClassification,
        "qa": transformers.AutoModelForQuestionAnswering,
    }[task]
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    if inputs and isinstance(inputs[0], TextPair):
        enc = tok([p.text for p in inputs], [p.text_pair for p in inputs], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
    else:
        enc = tok(inputs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    model = cls.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        return dict(enc), task_output(model(**enc), task).numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_spec_and_tokenizer(arch: str, load, tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    model = load(kind(arch, "embed"))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir(kind(arch, "embed"))))
    assert model.spec.model_type == arch
    assert model.spec.max_length == 128  # RoBERTa-style tables are 130 long: 2 rows go to the padding offset
    assert model.spec.uses_token_types is TOKEN_TYPES.get(arch, False)
    assert model.encoder.pad_id == tok.pad_token_id == PAD_IDS.get(arch, 0)
    ours = model.encoder.encode(TEXTS + PAIRS)
    singles = tok(TEXTS, truncation=True, max_length=128)["input_ids"]
    pairs = tok([p.text for p in PAIRS], [p.text_pair for p in PAIRS], truncation=True, max_length=128)["input_ids"]
    assert [e.ids for e in ours] == singles + pairs


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
@pytest.mark.parametrize("arch", ARCHS)
def test_mean_pooled_embeddings_match_transformers(arch: str, runtime: str, load, tiny_model_dir) -> None:
    enc, hidden = _reference(tiny_model_dir(kind(arch, "embed")), "embed", TEXTS)
    mask = enc["attention_mask"].numpy()[:, :, None].astype(np.float32)
    reference = (hidden * mask).sum(1) / mask.sum(1)
    model = load(kind(arch, "embed"), runtime=runtime)
    assert model.spec.pooling == "mean"
    np.testing.assert_allclose(np.array(model.predict(TEXTS)), reference, atol=ATOL)


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
@pytest.mark.parametrize("arch", ARCHS)
def test_classification_matches_pipeline(arch: str, runtime: str, load, tiny_model_dir) -> None:
    from transformers import pipeline

    folder = tiny_model_dir(kind(arch, "classify"))
    classifier = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")
    pairs = [{"text": p.text, "text_pair": p.text_pair} for p in PAIRS]
    reference = classifier(TEXTS, truncation=True) + classifier(pairs, truncation=True)
    model = load(kind(arch, "classify"), runtime=runtime)
    got = model.predict(TEXTS) + model.predict(pairs)
    for ref, res in zip(reference, got, strict=True):
        assert res["label"] == ref[0]["label"]
        for r in ref:
            assert abs(res["scores"][r["label"]] - r["score"]) < ATOL


@pytest.mark.parametrize("task", ["embed", "classify"])
@pytest.mark.parametrize("arch", ARCHS)
def test_torch_runtime_agrees_with_onnx(arch: str, task: str, load) -> None:
    onnx_out = load(kind(arch, task)).predict(TEXTS)
    torch_out = load(kind(arch, task), runtime="torch").predict(TEXTS)
    if task == "embed":
        np.testing.assert_allclose(np.array(onnx_out), np.array(torch_out), atol=ATOL)
        return
    for a, b in zip(onnx_out, torch_out, strict=True):
        assert a["label"] == b["label"]
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) < ATOL


@pytest.mark.parametrize("task", ["ner", "qa", "rerank"])
@pytest.mark.parametrize("arch", ARCHS)
def test_head_logits_match_transformers(arch: str, task: str, head, tiny_model_dir) -> None:
    """NER logits [B, T, L], QA start/end [B, T, 2] and the cross-encoder's [B, 1], on the same token ids."""
    inputs = TEXTS if task == "ner" else PAIRS  # QA and rerank read (question, context) / (query, passage) pairs
    enc, reference = _reference(tiny_model_dir(kind(arch, task)), task, inputs)
    encoder, runtimes = head(arch, task)
    features = encoder.collate(encoder.encode(inputs))
    np.testing.assert_array_equal(features.input_ids, enc["input_ids"].numpy())
    np.testing.assert_array_equal(features.attention_mask, enc["attention_mask"].numpy())
    if features.token_type_ids is not None:
        np.testing.assert_array_equal(features.token_type_ids, enc["token_type_ids"].numpy())
    valid = features.attention_mask.astype(bool)
    outputs = {}
    for name, runtime in runtimes.items():
        got = runtime.run(features)
        assert got.shape == reference.shape, name
        if got.ndim == 3:  # per-token logits: padding rows are free to differ
            np.testing.assert_allclose(got[valid], reference[valid], atol=ATOL, err_msg=name)
        else:
            np.testing.assert_allclose(got, reference, atol=ATOL, err_msg=name)
        outputs[name] = got
    rows = valid if reference.ndim == 3 else slice(None)
    np.testing.assert_allclose(outputs["onnx"][rows], outputs["torch"][rows], atol=ATOL)
