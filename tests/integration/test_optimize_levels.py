"""`--optimize` end to end: pack picks and records a verified level, refuses one that misses its thresholds (unless
forced), and a checkpoint's first load optimizes once into the cache. MiniLM's cases are the real reference."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

import berthing
from berthing.packaging.export import prepare
from berthing.packaging.int8 import Int8Config
from berthing.packaging.optimize import optimize_with_record
from berthing.packaging.package import read_manifest
from berthing.packaging.sources import default_model_path
from berthing.packaging.verify import verify
from berthing.runtime.cpu import detect
from berthing.spec import ModelSpec
from tests.support.servers import cli_server
from tests.support.texts import mixed_sentences

TEXTS = mixed_sentences(60, seed=11)  # not the calibration texts
LEVEL_KEYS = {"level", "passed", "inputs_per_s", "metrics", "failed", "inputs", "size_bytes", "error"}


def _cli(*args: str, optimize: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BERTHING_OPTIMIZE"} | {"COLUMNS": "200"}
    if optimize is not None:
        env["BERTHING_OPTIMIZE"] = optimize
    result = subprocess.run([sys.executable, "-m", "berthing.cli", *args], capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
def test_pack_minilm_by_default_keeps_the_fastest_level_that_passes(tmp_path: Path) -> None:
    result = _cli("pack", str(default_model_path()), "--name", "minilm", "-o", str(tmp_path))  # no --optimize: auto
    manifest = read_manifest(Path(result.stdout.strip()))
    record = manifest["optimization"]
    assert record["requested"] == "auto" and record["reference"] == "pytorch" and not record["forced"]
    assert record["calibration"]["source"] == "built-in" and record["calibration"]["texts"] >= 200
    assert record["thresholds"] == {"cosine_min": 0.98, "cosine_mean": 0.995}
    levels = {lv["level"]: lv for lv in record["levels"]}
    assert list(levels) == ["int8", "fused", "none"] and all(set(lv) == LEVEL_KEYS for lv in levels.values())
    assert levels["none"]["passed"] and levels["none"]["metrics"]["cosine_min"] > 0.9999  # fp32 ONNX == PyTorch
    # On this machine's CPU, whatever its class: int8 must hold here (pair-bounded weights), not only where it was tuned.
    assert levels["int8"]["passed"] and levels["int8"]["metrics"]["cosine_min"] >= 0.98, (detect().describe(), levels["int8"])
    assert manifest["probe"]["cpu"] == detect().to_dict() and manifest["probe"]["passed"]
    assert "fp32/model.onnx" in manifest["files"] if record["level"] == "int8" else "fp32/model.onnx" not in manifest["files"]
    assert levels["int8"]["size_bytes"] < 0.7 * levels["none"]["size_bytes"]
    passing = [lv["inputs_per_s"] for lv in levels.values() if lv["passed"]]
    kept = levels[record["level"]]
    assert kept["passed"] and kept["inputs_per_s"] >= 0.95 * max(passing)  # the recorded speeds explain the choice
    assert f"optimization: {record['level']} (cosine_min" in _flat(result.stderr)
    assert f"cpu: {detect().describe()} -> " in _flat(result.stderr)

    shown = _flat(_cli("inspect", result.stdout.strip()).stdout)
    assert f"optimization: {record['level']} (requested auto); verified against pytorch on" in shown
    assert "thresholds cosine_min 0.98, cosine_mean 0.995" in shown
    assert f"{record['level']}* │ yes" in shown
    assert f"verified on: {detect().describe()}, class {detect().cpu_class}, onnxruntime " in shown

    # What a client gets from the package is within the thresholds of sentence-transformers' vectors.
    from sentence_transformers import SentenceTransformer

    model = berthing.load(result.stdout.strip(), cache_dir=tmp_path / "cache")
    got = np.asarray(model.predict(TEXTS))
    want = SentenceTransformer(str(default_model_path()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() >= 0.98 and cosines.mean() >= 0.995


@pytest.mark.slow
def test_default_quantize_dynamic_does_not_pass_on_minilm(tmp_path: Path) -> None:
    """The thresholds are honest: onnxruntime's plain dynamic int8 (per-tensor weights) drifts on MiniLM."""
    src = prepare(default_model_path(), None, tmp_path / "cache")
    spec = ModelSpec.from_dict(json.loads((src / "berthing.json").read_text("utf-8")))
    plain = Int8Config(per_channel=False, op_types=None, outlier_channels=0, smooth_alpha=0)
    graph = optimize_with_record(src / "model.onnx", "int8", tmp_path / "plain", spec, config=plain).path
    report = verify(graph, default_model_path(), spec=spec, tokenizer=src / "tokenizer.json")
    assert not report.passed and "cosine_min" in report.failed and report.metrics["cosine_min"] < 0.9


def test_a_level_that_misses_its_threshold_is_refused_with_its_figures(tiny_model_dir, tmp_path: Path) -> None:
    ckpt = str(tiny_model_dir("embed"))
    refused = _cli("pack", ckpt, "--name", "e", "-o", str(tmp_path), "--optimize", "int8",
                   "--threshold", "cosine_min=1.01", check=False)
    assert refused.returncode == 1
    message = _flat(refused.stderr)
    assert re.search(
        r"error: optimization level 'int8' did not pass verification against the PyTorch model: int8: cosine_min [01]\.\d{4}, "
        r"cosine_mean [01]\.\d{4} -> FAILED cosine_min [01]\.\d{4} < 1\.01\. Use another level, loosen a threshold "
        r"\(--threshold NAME=VALUE\), or --force to accept it anyway$", message,
    ), message
    assert not list(tmp_path.glob("*.berth"))

    forced = _cli("pack", ckpt, "--name", "e", "-o", str(tmp_path), "--optimize", "int8",
                  "--threshold", "cosine_min=1.01", "--force")
    record = read_manifest(Path(forced.stdout.strip()))["optimization"]
    assert (record["level"], record["requested"], record["forced"]) == ("int8", "int8", True)
    assert record["thresholds"] == {"cosine_min": 1.01, "cosine_mean": 0.995}
    assert [lv["level"] for lv in record["levels"]] == ["int8"] and not record["levels"][0]["passed"]
    assert "int8 FORCED past its thresholds" in _flat(forced.stderr)
    assert "FORCED past its thresholds" in _flat(_cli("inspect", forced.stdout.strip()).stdout)


def test_calibration_file_thresholds_off_and_bad_flags(tiny_model_dir, tmp_path: Path) -> None:
    texts = tmp_path / "mine.txt"
    texts.write_text("first review\n\n很好用\nthird one, longer than the others\n", encoding="utf-8")
    out = _cli("pack", str(tiny_model_dir("classify")), "--name", "c", "-o", str(tmp_path), "--optimize", "none",
               "--calibration", str(texts), "--threshold", "max_prob_error=off")
    record = read_manifest(Path(out.stdout.strip()))["optimization"]
    assert record["calibration"]["source"] == "mine.txt" and record["calibration"]["texts"] == 3
    assert record["thresholds"] == {"label_agreement": 0.99}
    assert record["levels"][0]["inputs"] == 3 and record["levels"][0]["metrics"]["label_agreement"] == 1.0

    ckpt = str(tiny_model_dir("classify"))
    bad = _cli("pack", ckpt, "--name", "c", "-o", str(tmp_path), "--threshold", "cosine=1", check=False)
    assert bad.returncode == 2
    assert _flat(bad.stderr) == (
        "error: unknown verification threshold 'cosine' (thresholds: cosine_min, cosine_mean, label_agreement, "
        "max_prob_error, entity_agreement, span_agreement, order_agreement, max_score_error)"
    )
    missing = _cli("pack", str(tiny_model_dir("classify")), "--name", "c", "-o", str(tmp_path), "--calibration",
                   str(tmp_path / "nope.txt"), check=False)
    assert _flat(missing.stderr) == f"error: calibration file {tmp_path / 'nope.txt'} not found (one text per line)"
    level = _cli("pack", str(tiny_model_dir("classify")), "--name", "c", "-o", str(tmp_path), "--optimize", "int4", check=False)
    assert _flat(level.stderr) == "error: unknown optimization level 'int4' (levels: auto, none, fused, int8)"


def test_first_load_of_a_checkpoint_optimizes_once_into_the_cache(tiny_model_dir, tmp_path: Path) -> None:
    ckpt = tiny_model_dir("classify")
    env = {"BERTHING_CACHE_DIR": str(tmp_path), "BERTHING_OPTIMIZE": "int8"}
    body = {"input": ["the parcel came late", "很好用"]}
    with cli_server([f"s={ckpt}"], env=env, timeout=300) as (proc, url):
        first = proc.startup_output
        int8 = httpx.post(f"{url}/predictions/s", json=body, timeout=30).json()
    assert "optimizing: int8, then verifying it (once, cached)" in first
    assert "optimization: int8 (label_agreement 1.0000" in first
    cores = len(os.sched_getaffinity(0))  # ONNX Runtime takes every core; tokenizing stays on one thread
    count = min(cores, 4)
    split = [cores // count + (1 if i < cores % count else 0) for i in range(count)]
    per = str(split[0]) if len(set(split)) == 1 else "+".join(map(str, split))
    lanes = f", or {count} lanes x {per} under load" if cores > 1 else ""
    plan = f"threads: {cores} cores; {cores} model threads (s: 1 worker x {cores}{lanes}); tokenizer 1 thread; 1 event loop"
    assert plan in first
    built = sorted(p.name for p in (tmp_path / "onnx").iterdir() if not p.name.startswith("."))
    assert len(built) == 2 and built[1].startswith(built[0] + "-")  # the fp32 export and its int8 twin
    meta = json.loads((tmp_path / "onnx" / built[1] / "berthing.json").read_text("utf-8"))
    assert meta["optimization"]["level"] == "int8" and meta["optimization"]["levels"][0]["passed"]

    with cli_server([f"s={ckpt}"], env=env | {"BERTHING_MANAGEMENT_AUTH": "false"}) as (proc, url):
        again = proc.startup_output
        assert httpx.post(f"{url}/predictions/s", json=body, timeout=30).json() == int8
        admin = re.search(r"management API at (http://127\.0\.0\.1:\d+)", again)
        assert admin, again
        described = httpx.get(f"{admin.group(1)}/models/s", timeout=30).json()[0]
        assert described["optimization"] == {
            "level": "int8", "requested": "int8", "forced": False, "passed": True,
            "metrics": meta["optimization"]["levels"][0]["metrics"],
        }
    assert "optimizing" not in again and "optimization: int8" in again
    with cli_server([f"s={ckpt}"], env=env | {"BERTHING_OPTIMIZE": "none"}) as (proc, url):
        fp32 = httpx.post(f"{url}/predictions/s", json=body, timeout=30).json()
        assert "optimization: none (not verified against PyTorch beyond the export check)" in proc.startup_output
    assert [r["label"] for r in fp32] == [r["label"] for r in int8]
