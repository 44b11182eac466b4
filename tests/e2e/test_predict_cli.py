"""`berthing predict` as a user runs it: files in, results in input order, bad lines reported, Ctrl-C clean."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.models import LABELS

TEXTS = ["the parcel came late", "物流很快, 包装完好", "ok", "a clear and friendly answer", "never again"]


def _predict(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "berthing.cli", "predict", *args], capture_output=True, text=True,
                            input=stdin, timeout=300, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def classifier(load, tiny_model_dir, settings) -> tuple[str, object]:
    """The tiny classifier's folder as a predict MODEL argument (its export cached), and the loaded model to compare."""
    model = load("classify")
    return f"sentiment={tiny_model_dir('classify')}", model


def _close(got: dict, expected: dict) -> bool:
    return got["label"] == expected["label"] and abs(got["score"] - expected["score"]) < 1e-4


def test_text_lines_to_jsonl_in_input_order(classifier, settings, tmp_path: Path) -> None:
    spec, model = classifier
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(300)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = _predict(spec, str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.jsonl"), "--cache-dir", str(settings.cache_dir))
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert [line["text"] for line in lines] == texts
    expected = model.predict(texts)
    assert all(_close(line["prediction"], e) for line, e in zip(lines, expected, strict=True))
    assert "✓ 300 predictions -> " in result.stderr and " items/s)" in result.stderr


def test_jsonl_bodies_fields_and_bad_lines(classifier, settings, tmp_path: Path, load, tiny_model_dir) -> None:
    spec, model = classifier
    rows = [{"id": 1, "text": TEXTS[0]}, {"id": 2, "text": ""}, {"id": 3, "text": TEXTS[1]}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{oops\n", "utf-8")
    result = _predict(spec, str(tmp_path / "rows.jsonl"), "--field", "text", "-o", str(tmp_path / "out.jsonl"),
                      "--cache-dir", str(settings.cache_dir))
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert [o.get("id") for o in out] == [1, 2, 3, None]
    assert _close(out[0]["prediction"], model.predict(TEXTS[0])) and _close(out[2]["prediction"], model.predict(TEXTS[1]))
    assert out[1] == {
        "id": 2, "text": "", "error": {"code": 422, "type": "InvalidInput", "message": "field 'text' is empty or blank"}}
    assert out[3]["error"]["type"] == "BadRequest" and out[3]["error"]["message"].startswith("line 4 is not valid JSON: ")
    assert "4 predictions, 2 with errors" in result.stderr
    # QA: each line is a request body, exactly as POST /predictions takes it (seed 002's {"context", "question"})
    qa = load("qa")
    body = {"question": "Who lives in London?", "context": "Sarah lives in London with her cat."}
    (tmp_path / "qa.jsonl").write_text(json.dumps(body) + "\n" + json.dumps({**body, "top_k": 2}) + "\n", "utf-8")
    _predict(f"reader={tiny_model_dir('qa')}", str(tmp_path / "qa.jsonl"), "-o", str(tmp_path / "qa-out.jsonl"),
             "--cache-dir", str(settings.cache_dir))
    got = [json.loads(line) for line in (tmp_path / "qa-out.jsonl").read_text("utf-8").splitlines()]
    assert got[0]["prediction"]["answer"] == qa.predict(body)["answer"]
    assert [a["answer"] for a in got[1]["prediction"]] == [a["answer"] for a in qa.predict(body, top_k=2)]


def test_csv_in_csv_out_with_label_and_score_columns(classifier, settings, tmp_path: Path) -> None:
    spec, model = classifier
    with (tmp_path / "in.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review"])
        writer.writerows([[i, text] for i, text in enumerate(TEXTS)])
    _predict(spec, str(tmp_path / "in.csv"), "--field", "review", "-o", str(tmp_path / "out.tsv"),
             "--cache-dir", str(settings.cache_dir))
    with (tmp_path / "out.tsv").open(encoding="utf-8", newline="") as f:
        out = list(csv.DictReader(f, delimiter="\t"))
    assert list(out[0]) == ["id", "review", "label", "score", "scores", "error"]
    assert set(json.loads(out[0]["scores"])) == set(LABELS) and out[0]["error"] == ""
    assert [row["review"] for row in out] == TEXTS
    expected = model.predict(TEXTS)
    for row, e in zip(out, expected, strict=True):
        assert row["label"] == e["label"] and abs(float(row["score"]) - e["score"]) < 1e-4
    assert {row["label"] for row in out} <= set(LABELS)


def test_wrong_column_and_missing_input_fail_before_writing(classifier, settings, tmp_path: Path) -> None:
    spec, _ = classifier
    (tmp_path / "in.csv").write_text("id,review\n1,good\n", encoding="utf-8")
    result = _predict(spec, str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--cache-dir", str(settings.cache_dir),
                      check=False)
    assert result.returncode == 1
    assert "error: the input has no column 'text' (columns: id, review); name the text column with --field" in result.stderr
    assert not (tmp_path / "out.csv").exists()
    missing = _predict(spec, str(tmp_path / "nope.txt"), "-o", str(tmp_path / "out.jsonl"), check=False)
    assert missing.returncode == 1 and f"error: input {tmp_path / 'nope.txt'} not found" in missing.stderr


def test_stdin_to_stdout(classifier, settings) -> None:
    spec, model = classifier
    result = _predict(spec, "-", "--format", "txt", "-o", "-", "--cache-dir", str(settings.cache_dir), stdin="\n".join(TEXTS))
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["text"] for o in out] == TEXTS and _close(out[0]["prediction"], model.predict(TEXTS[0]))


# A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT: the child gives Ctrl-C back
# to itself before running the CLI. Not with preexec_fn: that forces fork(), which aborts the child now and then when
# the test process holds gRPC threads (Ray's, from the cluster tests); without it Python spawns with vfork.
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv[0] = 'berthing'; runpy.run_module('berthing.cli', run_name='__main__')")


def test_ctrl_c_stops_cleanly_with_complete_lines_in_order(classifier, settings, tmp_path: Path) -> None:
    spec, _ = classifier
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(400_000)]
    (tmp_path / "big.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, "predict", spec, str(tmp_path / "big.txt"), "-o", str(out),
                             "--cache-dir", str(settings.cache_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.stat().st_size > 100_000):  # some results are on disk: interrupt mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = out.read_text("utf-8").splitlines()
    assert f"interrupted: {len(lines)} results written to {out}: complete lines, in input order" in " ".join(stderr.split())
    assert 0 < len(lines) < len(texts)
    assert [json.loads(line)["text"] for line in lines] == texts[: len(lines)]
