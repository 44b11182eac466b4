"""Optimization levels and the verification gate: fused and int8 graphs run, verify() passes an unchanged graph and
fails a broken one with its figures, choose() picks the fastest passing level. Tiny seeded models; MiniLM is slow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from berthing.config import Settings
from berthing.packaging.calibration import calibration_texts
from berthing.packaging.export import prepare
from berthing.packaging.fuse import detect_heads
from berthing.packaging.int8 import Int8Config, _quantize_embedding_rows
from berthing.packaging.optimize import choose, optimize, optimize_with_record
from berthing.packaging.sources import default_model_path
from berthing.packaging.verify import Thresholds, qa_inputs, rerank_inputs, task_inputs, verify
from berthing.spec import ModelSpec
from berthing.types import ModelLoadError

TASKS = ("embed", "classify", "ner", "qa", "rerank")
TEXTS = calibration_texts()[::4]  # ~50 texts of every length and script: enough to compare, quick on tiny models


@pytest.fixture(scope="module")
def artifact(tiny_model_dir, settings: Settings):
    """Factory: artifact(kind) -> the exported (cached) artifact folder of a tiny model."""
    return lambda kind: prepare(tiny_model_dir(kind), None, settings.cache_dir)


def _spec(folder: Path) -> ModelSpec:
    return ModelSpec.from_dict(json.loads((folder / "berthing.json").read_text(encoding="utf-8")))


def _copy_artifact(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "tokenizer.json", "berthing.json"):
        shutil.copy2(src / name, dst / name)
    return dst


def _feeds(session: ort.InferenceSession, batch: int = 3, length: int = 9) -> dict[str, np.ndarray]:
    ids = (np.arange(batch * length).reshape(batch, length) * 7 + 5) % 90 + 5
    mask = np.ones_like(ids)
    mask[1:, length - 3 :] = 0
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    if any(i.name == "token_type_ids" for i in session.get_inputs()):
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


def _run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, _feeds(session))[0]


def _break_weights(folder: Path, scale: float = 1.0, seed: int = 1) -> None:
    """Add Gaussian noise of `scale` x each 2-D weight's own spread: a graph that still runs but is another model."""
    model = onnx.load(str(folder / "model.onnx"))
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) == 2 and min(tensor.dims) > 1:
            w = numpy_helper.to_array(tensor)
            noisy = w + rng.normal(0.0, scale * float(w.std()) + 1e-3, w.shape).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    onnx.save(model, str(folder / "model.onnx"))


# -- optimize -----------------------------------------------------------------------------------------------------


OTHER_ARCHS = ("distilbert-embed", "roberta-classify", "xlm-roberta-ner", "electra-qa", "mpnet-rerank")


@pytest.mark.parametrize("kind", [*TASKS, *OTHER_ARCHS])
def test_fused_and_int8_graphs_are_valid_and_run(kind: str, artifact, tmp_path: Path) -> None:
    src = artifact(kind)
    spec = _spec(src)
    expected = _run(src / "model.onnx")
    fused = optimize_with_record(src / "model.onnx", "fused", tmp_path / "fused", spec)
    int8 = optimize_with_record(src / "model.onnx", "int8", tmp_path / "int8", spec)
    for result in (fused, int8):
        assert result.path == tmp_path / result.level / "model.onnx"
        onnx.checker.check_model(str(result.path))
        got = _run(result.path)
        assert got.shape == expected.shape and np.isfinite(got).all()
    assert np.abs(_run(fused.path) - expected).max() < 1e-3  # fusions change the graph, not the numbers
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    record = int8.record["int8"]
    assert record["quantized_matmuls"] > 0 and record["calibration_texts"] == len(calibration_texts())
    assert len(record["int8_embedding_tables"]) == 1 and "word_embeddings" in record["int8_embedding_tables"][0]
    json.dumps(fused.record), json.dumps(int8.record)  # manifest-ready


def test_fused_reports_what_fused_on_bert(artifact, tmp_path: Path) -> None:
    src = artifact("embed")
    model = onnx.load(str(src / "model.onnx"))
    assert detect_heads(model, 32) == 2  # the tiny BERT: hidden 32, 2 heads of 16
    record = optimize_with_record(src / "model.onnx", "fused", tmp_path, _spec(src)).record["fusions"]
    assert record["num_heads"] == 2 and record["hidden_size"] == 32
    assert record["fused"].get("SkipLayerNormalization", 0) >= 2  # one per residual, two per layer


def test_int8_keeps_outlier_channels_in_fp32_and_can_be_plain(artifact, tmp_path: Path) -> None:
    src = artifact("embed")
    spec = _spec(src)
    split = optimize_with_record(src / "model.onnx", "int8", tmp_path / "split", spec, config=Int8Config(outlier_ratio=0))
    plain_config = Int8Config(outlier_channels=0, smooth_alpha=0)
    plain = optimize_with_record(src / "model.onnx", "int8", tmp_path / "plain", spec, config=plain_config)
    assert split.record["int8"]["outlier_inputs"] > 0
    assert split.record["int8"]["outlier_channels_per_input"] == 8  # min(8, channels // 8): the 64-wide FFN input
    assert plain.record["int8"]["outlier_inputs"] == 0 and plain.record["int8"]["calibration_texts"] == 0
    side = [n.name for n in onnx.load(str(split.path)).graph.node if n.name.endswith("/outliers")]
    assert side and all(n.op_type == "MatMul" for n in onnx.load(str(split.path)).graph.node if n.name in side)  # stays fp32
    for path in (split.path, plain.path):
        assert np.isfinite(_run(path)).all()


def test_int8_smooths_layernorm_fed_inputs_and_splits_only_the_others(artifact, tmp_path: Path) -> None:
    """A split LayerNorm-fed input costs a full-width fp32 product and add per MatMul group; SmoothQuant costs one
    narrow Mul, so by default only inputs no LayerNorm feeds (GELU outputs, attention contexts) are split."""
    src = artifact("embed")
    spec = _spec(src)
    every = {"outlier_ratio": 0.0}  # treat every input as skewed
    default = optimize_with_record(src / "model.onnx", "int8", tmp_path / "d", spec, config=Int8Config(**every)).record
    old = Int8Config(split_layernorm_inputs=True, **every)
    split_all = optimize_with_record(src / "model.onnx", "int8", tmp_path / "s", spec, config=old).record
    layers = 2  # the tiny test model's encoder layers
    # per layer: Q/K/V share the attention LayerNorm's output, the FFN reads the next one
    assert default["int8"]["smoothed_inputs"] == 2 * layers
    assert default["int8"]["outlier_inputs"] == 2 * layers  # attention context and GELU output
    assert split_all["int8"]["smoothed_inputs"] == 0
    assert split_all["int8"]["outlier_inputs"] == 4 * layers
    assert default["int8"]["config"]["split_layernorm_inputs"] is False


@pytest.mark.parametrize("kind", ["embed", "distilbert-embed", "roberta-embed", "electra-embed", "mpnet-embed"])
def test_key_mask_fold_keeps_every_real_token_output(kind: str, artifact, tmp_path: Path) -> None:
    """Padding moved from the scores into the QK product: the real tokens' outputs stay what they were (fp32),
    or, for an attention the fold does not recognise, the graph is left alone."""
    from berthing.packaging.graph import save_model
    from berthing.packaging.key_mask import fold_key_mask

    src = artifact(kind)
    model = onnx.load(str(src / "model.onnx"))
    spec = _spec(src)
    folded = fold_key_mask(model, detect_heads(model, spec.hidden_size))
    save_model(model, tmp_path / "folded.onnx")
    before, after = _run(src / "model.onnx"), _run(tmp_path / "folded.onnx")
    real = np.ones((3, 9), dtype=bool)
    real[1:, 6:] = False  # _feeds pads the last two rows
    np.testing.assert_allclose(after[real], before[real], rtol=0, atol=1e-5)
    ops = [n.op_type for n in model.graph.node]
    expected = {"embed": 2, "distilbert-embed": 2, "roberta-embed": 2, "electra-embed": 2, "mpnet-embed": 0}[kind]
    assert folded == expected, ops
    if folded:
        assert "Expand" in ops and ops.count("Pad") == folded  # one ones-column per layer, the old [B,1,S,S] mask gone


def test_int8_folds_the_key_mask_and_refuses_a_fold_that_changes_outputs(artifact, tmp_path: Path, monkeypatch) -> None:
    import berthing.packaging.key_mask as key_mask

    src = artifact("embed")
    spec = _spec(src)
    on = optimize_with_record(src / "model.onnx", "int8", tmp_path / "on", spec).record["int8"]
    off_config = Int8Config(fold_key_mask=False)
    off = optimize_with_record(src / "model.onnx", "int8", tmp_path / "off", spec, config=off_config).record["int8"]
    assert on["key_mask_folded"] == 2 and on["key_mask_difference"] <= 1e-6
    assert off["key_mask_folded"] == 0 and off["key_mask_difference"] is None
    softmax_inputs = {n.input[0] for n in onnx.load(str(tmp_path / "on" / "model.onnx")).graph.node if n.op_type == "Softmax"}
    producers = {o: n.op_type for n in onnx.load(str(tmp_path / "on" / "model.onnx")).graph.node for o in n.output}
    assert {producers[i] for i in softmax_inputs} != {"Add"}  # the scores go straight to softmax
    monkeypatch.setattr(key_mask, "KEY_MASK_VALUE", 60.0)  # a fold that attends to padding: must be refused
    wrong = optimize_with_record(src / "model.onnx", "int8", tmp_path / "wrong", spec).record["int8"]
    assert wrong["key_mask_folded"] == 0 and wrong["key_mask_difference"] > 1e-4
    monkeypatch.setattr(key_mask, "KEY_MASK_VALUE", -60.0)
    monkeypatch.setattr(key_mask, "detect_heads", lambda model, hidden: 3)  # a mask row of the wrong width
    broken = optimize_with_record(src / "model.onnx", "int8", tmp_path / "broken", spec)
    assert broken.record["int8"]["key_mask_folded"] == 0 and broken.record["int8"]["key_mask_difference"] is None
    assert np.isfinite(_run(broken.path)).all()  # the int8 graph is built all the same, unfolded
    json.dumps(broken.record, allow_nan=False)  # manifests stay strict JSON


def test_sessions_leave_skip_layernorm_unfused(artifact, tmp_path: Path) -> None:
    """ONNX Runtime would fuse Add + LayerNormalization into its slower SkipLayerNormalization kernel; berthing's
    sessions keep them apart. Checked on the graph ONNX Runtime writes after its optimizations, for an int8 graph
    (the fusion needs the shapes that quantization records; a plain export does not fuse either way)."""
    from berthing.runtime.onnx import DISABLED_OPTIMIZERS, create_session, session_options

    src = artifact("embed")
    int8 = optimize_with_record(src / "model.onnx", "int8", tmp_path / "int8", _spec(src)).path
    fused_path, ours_path = tmp_path / "ort-default.onnx", tmp_path / "berthing.onnx"
    options = session_options(1)
    options.optimized_model_filepath = str(fused_path)
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    options = session_options(1)
    options.optimized_model_filepath = str(ours_path)
    create_session(int8, options)

    def ops(path: Path) -> list[str]:
        return [n.op_type for n in onnx.load(str(path)).graph.node]

    assert "SkipLayerNormalization" in ops(fused_path)  # the fusion exists under this name: disabling it means something
    assert "SkipLayerNormalization" not in ops(ours_path) and "LayerNormalization" in ops(ours_path)
    assert DISABLED_OPTIMIZERS == ("SkipLayerNormFusion",)


@pytest.mark.parametrize("kind", ["embed", "roberta-classify"])
def test_word_embeddings_become_int8_rows_with_their_own_scales(kind: str, artifact, tmp_path: Path) -> None:
    src = artifact(kind)
    model = onnx.load(str(src / "model.onnx"))
    table = next(t for t in model.graph.initializer if "word_embeddings" in t.name)
    assert _quantize_embedding_rows(model) == [table.name]
    onnx.save(model, str(tmp_path / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    assert table.name not in inits  # the fp32 table is gone; int8 rows (1 byte a value) + per-row and column scales
    assert inits[f"{table.name}/int8_rows"].data_type == onnx.TensorProto.INT8
    assert list(inits[f"{table.name}/row_scale"].dims) == [table.dims[0], 1]
    rows, scales = inits[f"{table.name}/int8_rows"], inits[f"{table.name}/row_scale"]
    assert len(rows.raw_data) + len(scales.raw_data) < 0.3 * len(table.raw_data)  # 1 byte a value + 4 a row, not 4 a value
    expected, got = _run(src / "model.onnx"), _run(tmp_path / "model.onnx")
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()  # rows keep 1/254 of their largest value
    assert _quantize_embedding_rows(model) == []  # nothing left to do: the rows are already int8


def test_none_copies_and_in_place_replaces_atomically(artifact, tmp_path: Path) -> None:
    src = _copy_artifact(artifact("classify"), tmp_path / "art")
    spec = _spec(src)
    before = (src / "model.onnx").read_bytes()
    assert optimize(src / "model.onnx", "none", tmp_path / "none", spec).read_bytes() == before
    assert optimize(src / "model.onnx", "none", src, spec) == src / "model.onnx"  # same file: left as it is
    assert (src / "model.onnx").read_bytes() == before
    optimize(src / "model.onnx", "int8", src, spec)  # in place: the folder ends with one valid graph, no leftovers
    assert sorted(p.name for p in src.iterdir()) == ["berthing.json", "model.onnx", "tokenizer.json"]
    assert (src / "model.onnx").read_bytes() != before and np.isfinite(_run(src / "model.onnx")).all()


def test_large_graphs_keep_their_weights_in_a_data_file(artifact, tmp_path: Path, monkeypatch) -> None:
    """Graphs over protobuf's 2 GB limit (xlm-roberta-large) need external data: lower the bar to see that path."""
    import berthing.packaging.graph as graph

    monkeypatch.setattr(graph, "LARGE_MODEL_BYTES", 0)
    src = artifact("embed")
    spec = _spec(src)
    int8 = optimize(src / "model.onnx", "int8", tmp_path / "int8", spec, tokenizer=src / "tokenizer.json")
    assert sorted(p.name for p in int8.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    copy = optimize(int8, "none", tmp_path / "copy", spec)
    assert sorted(p.name for p in copy.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert np.array_equal(_run(int8), _run(copy)) and np.isfinite(_run(copy)).all()


def test_unknown_level_and_missing_tokenizer_are_refused(artifact, tmp_path: Path) -> None:
    src = artifact("embed")
    with pytest.raises(ValueError, match="unknown optimization level 'fast'"):
        optimize(src / "model.onnx", "fast", tmp_path, _spec(src))  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="int8 needs the tokenizer"):
        optimize(src / "model.onnx", "int8", tmp_path, _spec(src), tokenizer=tmp_path / "nope.json")


# -- verify -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_verify_passes_an_unchanged_graph(task: str, artifact, tmp_path: Path) -> None:
    src = artifact(task)
    copy = optimize(src / "model.onnx", "none", tmp_path, _spec(src))
    report = verify(copy, src, spec=_spec(src), tokenizer=src / "tokenizer.json", texts=TEXTS)
    assert report.passed and report.failed == [] and report.task == task
    perfect = {"embed": ("cosine_min", 1.0), "classify": ("label_agreement", 1.0), "ner": ("entity_agreement", 1.0),
               "qa": ("span_agreement", 1.0), "rerank": ("order_agreement", 1.0)}[task]
    assert report.metrics[perfect[0]] == pytest.approx(perfect[1], abs=1e-5)
    assert set(report.thresholds) and report.inputs > 0
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


@pytest.mark.parametrize("task", TASKS)
def test_verify_fails_a_broken_graph_with_its_figures(task: str, artifact, tmp_path: Path) -> None:
    src = artifact(task)
    broken = _copy_artifact(src, tmp_path / "broken")
    _break_weights(broken)
    report = verify(broken, src, texts=TEXTS)
    assert not report.passed and report.failed
    first = report.failed[0]
    assert first in report.thresholds and first in report.metrics
    assert report.messages[0].startswith(f"{first} {report.metrics[first]:.4f}")
    assert "FAILED" in report.summary() and report.to_dict()["failed"] == report.failed


def test_verify_against_the_pytorch_checkpoint(artifact, tiny_model_dir) -> None:
    src = artifact("classify")
    report = verify(src, tiny_model_dir("classify"), spec=_spec(src), tokenizer=src / "tokenizer.json", texts=TEXTS)
    assert report.passed and report.reference.endswith("/classify") and report.metrics["max_prob_error"] < 1e-4


def test_thresholds_are_configurable(artifact, tmp_path: Path) -> None:
    src = artifact("embed")
    slightly = _copy_artifact(src, tmp_path / "slightly")
    _break_weights(slightly, scale=0.05)
    strict = verify(slightly, src, texts=TEXTS)
    lenient = verify(slightly, src, texts=TEXTS, thresholds=Thresholds(cosine_min=0.5, cosine_mean=0.5))
    off = verify(slightly, src, texts=TEXTS, thresholds=Thresholds(cosine_min=None, cosine_mean=None))
    assert strict.metrics == lenient.metrics and 0.5 < strict.metrics["cosine_min"] < 0.999
    assert not strict.passed and lenient.passed and off.passed and off.thresholds == {}
    assert lenient.thresholds == {"cosine_min": 0.5, "cosine_mean": 0.5}


def test_verify_reads_a_users_file(artifact, tmp_path: Path) -> None:
    src = artifact("classify")
    texts = tmp_path / "mine.txt"
    texts.write_text("good\n\nbad\n物流很快\n", encoding="utf-8")
    report = verify(src, src, texts=texts)
    assert report.passed and report.inputs == 3
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="holds no texts"):
        verify(src, src, texts=empty)


def test_task_inputs_come_from_the_texts() -> None:
    texts = calibration_texts()
    assert 180 <= len(texts) <= 260
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(texts))  # Chinese
    assert max(len(t) for t in texts) > 1000 and min(len(t) for t in texts) <= 5  # very long and very short
    pairs = qa_inputs(texts)
    assert len(pairs) == 48 and all(len(p["context"]) >= 60 and p["question"] for p in pairs)
    rankings = rerank_inputs(texts)
    assert len(rankings) == 24 and all(len(r["texts"]) == 8 for r in rankings)
    assert task_inputs("ner", texts)[1] == {"aggregation_strategy": "simple"}


# -- choose -------------------------------------------------------------------------------------------------------


def test_choose_returns_the_fastest_passing_level_with_every_report(artifact, tmp_path: Path) -> None:
    src = artifact("embed")
    choice = choose(src / "model.onnx", _spec(src), tmp_path, texts=TEXTS, rounds=1)
    assert [r.level for r in choice.results] == ["int8", "fused", "none"]
    assert all(r.speed > 0 and r.report is not None for r in choice.results)
    chosen = choice.result(choice.level) if choice.level else None
    assert chosen is not None and chosen.passed and choice.path == Path(chosen.path) and choice.path.is_file()
    fastest = max(r.speed for r in choice.results if r.passed)
    assert chosen.speed >= fastest * 0.95
    for r in choice.results:  # a level that fails its verification is never the answer
        assert r.passed == r.report["passed"]
    json.dumps(choice.to_dict())


def test_choose_prefers_the_earlier_level_on_a_tie_and_none_when_nothing_passes(artifact, tmp_path: Path) -> None:
    src = artifact("embed")
    spec = _spec(src)
    tie = choose(src / "model.onnx", spec, tmp_path / "a", levels=("fused", "none"), texts=TEXTS, rounds=1, tolerance=1.0)
    assert tie.level == "fused"
    impossible = Thresholds(cosine_min=1.5)
    nothing = choose(src / "model.onnx", spec, tmp_path / "b", levels=("none",), texts=TEXTS, rounds=1, thresholds=impossible)
    assert nothing.level is None and nothing.path is None
    assert nothing.results[0].report["failed"] == ["cosine_min"]


def test_importing_the_modules_does_not_import_onnxruntime() -> None:
    code = (
        "import sys, berthing.packaging.optimize, berthing.packaging.verify, berthing.packaging.tune; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'onnx', 'torch')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_minilm_int8_passes_verification_and_is_smaller(settings: Settings, tmp_path: Path) -> None:
    src = prepare(default_model_path(), None, settings.cache_dir)
    spec = _spec(src)
    int8 = optimize_with_record(src / "model.onnx", "int8", tmp_path, spec)
    report = verify(int8.path, src / "model.onnx", spec=spec, tokenizer=src / "tokenizer.json")
    assert report.passed, report.summary()
    assert report.metrics["cosine_min"] >= 0.98 and report.metrics["cosine_mean"] >= 0.995
    assert int8.path.stat().st_size < 0.3 * (src / "model.onnx").stat().st_size  # weights and word embeddings int8
    assert int8.record["int8"]["outlier_inputs"] > 0


def test_onnxruntime_tools_do_not_chatter_in_server_logs(artifact, tmp_path: Path, caplog) -> None:
    """Their loggers are bare module names (onnx_model_bert, ...) logging at INFO; a server at INFO must not show them."""
    import logging

    src = artifact("embed")
    with caplog.at_level(logging.INFO):
        logging.getLogger("berthing.test").info("before")
        optimize_with_record(src / "model.onnx", "fused", tmp_path / "fused", _spec(src))
        optimize_with_record(src / "model.onnx", "int8", tmp_path / "int8", _spec(src))
        logging.getLogger("berthing.test").info("after")
    assert [r.getMessage() for r in caplog.records] == ["before", "after"]
