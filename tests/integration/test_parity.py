"""Parity with the HuggingFace references, through a real server on loopback."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import numpy as np
import pytest

from tests.support.texts import mixed_sentences

SENTENCES = mixed_sentences(200)


def _post(url: str, payload: object) -> object:
    response = httpx.post(url, json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_minilm_embeddings_match_sentence_transformers(minilm_server, load) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(load("minilm").source), device="cpu").encode(SENTENCES, batch_size=32)
    got = np.array(_post(f"{minilm_server.url}/predictions/minilm", {"input": SENTENCES}), dtype=np.float32)
    assert got.shape == reference.shape == (200, 384)
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999, f"min cosine {cosine.min()}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # Normalize module honoured


@pytest.mark.slow
def test_one_per_request_at_concurrency_32_equals_one_big_list(minilm_server) -> None:
    url = f"{minilm_server.url}/predictions/minilm"
    texts = SENTENCES[:96]
    together = np.array(_post(url, {"input": texts}))
    with httpx.Client(timeout=120) as client, cf.ThreadPoolExecutor(32) as pool:
        singles = list(pool.map(lambda t: client.post(url, json={"input": t}).json(), texts))
    np.testing.assert_allclose(np.array(singles), together, atol=1e-5)


def test_classification_matches_transformers_pipeline(tiny_model_dir, load, server_factory) -> None:
    from transformers import pipeline

    folder = tiny_model_dir("classify")
    texts = SENTENCES[:40]
    reference = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")(texts, truncation=True)
    with server_factory({"sentiment": load("classify")}) as server:
        got = _post(f"{server.url}/predictions/sentiment", {"input": texts})
        top = _post(f"{server.url}/predictions/sentiment", {"input": texts[:3], "top_k": 2})
    for ref, res in zip(reference, got, strict=True):
        ref_scores = {r["label"]: r["score"] for r in ref}
        assert res["label"] == ref[0]["label"]
        assert set(res["scores"]) == set(ref_scores)
        for label, p in ref_scores.items():
            assert abs(res["scores"][label] - p) < 1e-4
    for ref, res in zip(reference[:3], top, strict=True):
        assert [r["label"] for r in res] == [r["label"] for r in ref[:2]]


def test_multilabel_uses_sigmoid(tiny_model_dir, load) -> None:
    from transformers import pipeline

    folder = tiny_model_dir("multilabel")
    reference = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")(SENTENCES[:10], truncation=True)
    got = load("multilabel").predict(SENTENCES[:10])
    for ref, res in zip(reference, got, strict=True):
        for r in ref:
            assert abs(res["scores"][r["label"]] - r["score"]) < 1e-4
        assert abs(sum(res["scores"].values()) - 1.0) > 1e-3  # sigmoid: no reason to sum to 1


def test_text_pairs_match_pipeline(tiny_model_dir, load, server_factory) -> None:
    from transformers import pipeline

    folder = tiny_model_dir("classify")
    pairs = [{"text": a, "text_pair": b} for a, b in zip(SENTENCES[:8], SENTENCES[8:16], strict=True)]
    reference = pipeline("text-classification", model=str(folder), top_k=None, device="cpu")(pairs, truncation=True)
    with server_factory({"pairs": load("classify")}) as server:
        got = _post(f"{server.url}/predictions/pairs", {"input": pairs})
        one = _post(f"{server.url}/predictions/pairs", pairs[0])
    assert one == got[0]
    for ref, res in zip(reference, got, strict=True):
        for r in ref:
            assert abs(res["scores"][r["label"]] - r["score"]) < 1e-4


def test_st_cls_pooling_and_normalize(tiny_model_dir, load) -> None:
    from sentence_transformers import SentenceTransformer

    folder = tiny_model_dir("st-cls")
    reference = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES[:30])
    model = load("st-cls")
    assert (model.spec.pooling, model.spec.normalize, model.spec.max_length) == ("cls", True, 64)
    got = np.array(model.predict(SENTENCES[:30]))
    np.testing.assert_allclose(got, reference, atol=1e-4)


def test_plain_bert_mean_pooling_matches_transformers(tiny_model_dir, load) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_model_dir("embed")
    tok = AutoTokenizer.from_pretrained(str(folder))
    ref_model = AutoModel.from_pretrained(str(folder)).eval()
    texts = SENTENCES[:20]
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = ref_model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    reference = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    model = load("embed")
    assert (model.spec.pooling, model.spec.normalize) == ("mean", False)
    np.testing.assert_allclose(np.array(model.predict(texts)), reference, atol=1e-4)
    normalized = np.array(model.predict(texts, normalize=True))
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)


def test_vocab_only_checkpoint_gets_a_tokenizer(tiny_model_dir, load) -> None:
    assert not (tiny_model_dir("embed-vocab-only") / "tokenizer.json").exists()
    same_weights = np.array(load("embed").predict(SENTENCES[:5]))
    np.testing.assert_allclose(np.array(load("embed-vocab-only").predict(SENTENCES[:5])), same_weights, atol=1e-5)


def test_torch_runtime_agrees_with_onnx(load) -> None:
    texts = SENTENCES[:16]
    onnx_out = load("classify").predict(texts)
    torch_out = load("classify", runtime="torch").predict(texts)
    for a, b in zip(onnx_out, torch_out, strict=True):
        assert a["label"] == b["label"]
        for label in a["scores"]:
            assert abs(a["scores"][label] - b["scores"][label]) < 1e-4
