"""s3://bucket/key as a model source, against a real S3-compatible server (moto's, on 127.0.0.1): packages and
tar.gz checkpoints load, an unchanged ETag is never fetched twice, a new one is served after a cold start, and
missing buckets, keys and denied access say so."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from berthing.config import Settings
from berthing.loading import load_model
from berthing.packaging import s3
from berthing.packaging.package import pack
from berthing.packaging.sources import resolve
from berthing.types import ModelLoadError
from tests.support.http import free_port
from tests.support.models import LABELS
from tests.support.s3 import MotoServer

TEXTS = ["the parcel came late", "物流很快, 包装完好"]


pytestmark = pytest.mark.usefixtures("aws_env")  # the credential chain and BERTHING_S3_ENDPOINT_URL, at moto


@pytest.fixture(scope="module")
def packages(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """The tiny classifier packed twice: 1.0 with the checkpoint's labels, 2.0 with other labels."""
    out = tmp_path_factory.mktemp("s3packs")
    ckpt = tiny_model_dir("classify")
    first, _ = pack(ckpt, out, "sentiment", "1.0")
    second, _ = pack(ckpt, out, "sentiment", "2.0", labels=[f"v2-{label}" for label in LABELS])
    return {"1.0": first, "2.0": second}


def _bucket(moto: MotoServer, name: str) -> None:
    client = moto.client()
    if name not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=name)


def test_a_package_in_s3_loads_and_is_fetched_once_per_etag(moto: MotoServer, packages, tmp_path: Path) -> None:
    _bucket(moto, "models")
    client = moto.client()
    client.upload_file(str(packages["1.0"]), "models", "prod/sentiment.berth")
    cache = tmp_path / "cache"
    source = resolve("s3://models/prod/sentiment.berth", cache)
    assert (source.name, source.version) == ("sentiment", "1.0")
    local = resolve(str(packages["1.0"]), tmp_path / "local")
    options = Settings(cache_dir=cache).load_options()
    assert load_model(source, options).predict(TEXTS) == load_model(local, options).predict(TEXTS)
    again = s3.fetch("s3://models/prod/sentiment.berth", cache)
    assert again.downloaded is False  # a warm start asks for the ETag only
    assert again.etag == client.head_object(Bucket="models", Key="prod/sentiment.berth")["ETag"].strip('"')


def test_a_new_object_is_served_after_a_cold_start(moto: MotoServer, packages, tmp_path: Path, monkeypatch) -> None:
    """The Lambda path: BERTHING_MODEL=s3://..., a cold start per build_app()."""
    from berthing.serverless.lambda_handler import build_app

    _bucket(moto, "lambda-models")
    client = moto.client()
    client.upload_file(str(packages["1.0"]), "lambda-models", "sentiment.berth")
    monkeypatch.setenv("BERTHING_CACHE_DIR", str(tmp_path / "tmp-berthing"))
    monkeypatch.setenv("BERTHING_MODEL", "s3://lambda-models/sentiment.berth")
    first = build_app()
    answer = first({"input": TEXTS[0]})
    assert first.registry.get("sentiment").version == "1.0" and answer["label"] in LABELS
    client.upload_file(str(packages["2.0"]), "lambda-models", "sentiment.berth")  # a new ETag
    second = build_app()
    answer = second({"input": TEXTS[0]})
    assert second.registry.get("sentiment").version == "2.0" and answer["label"].startswith("v2-")


def test_a_checkpoint_tar_gz_loads_as_seed_002_stores_it(moto: MotoServer, tiny_model_dir, load, tmp_path: Path) -> None:
    ckpt = tiny_model_dir("qa")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ckpt, arcname="distilbert-squad")  # the checkpoint folder inside the archive
    _bucket(moto, "qa-models")
    moto.client().upload_file(str(archive), "qa-models", "bert-qa/model.tar.gz")
    settings = Settings(cache_dir=tmp_path / "cache")
    source = resolve("reader=s3://qa-models/bert-qa/model.tar.gz", settings.cache_dir)
    assert source.name == "reader" and (source.path / "config.json").is_file()
    question = {"question": "Who lives in London?", "context": "Sarah lives in London with her cat."}
    got, expected = load_model(source, settings.load_options()).predict(question), load("qa").predict(question)
    assert (got["answer"], got["start"], got["end"]) == (expected["answer"], expected["start"], expected["end"])
    assert got["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert resolve("s3://qa-models/bert-qa/model.tar.gz", settings.cache_dir).name == "model"


def test_missing_bucket_key_and_wrong_kind_say_so(moto: MotoServer, tmp_path: Path) -> None:
    _bucket(moto, "models")
    with pytest.raises(ModelLoadError) as missing_bucket:
        resolve("s3://no-such-bucket/m.berth", tmp_path)
    assert missing_bucket.value.message == "cannot read s3://no-such-bucket/m.berth: bucket 'no-such-bucket' does not exist"
    with pytest.raises(ModelLoadError) as missing_key:
        resolve("s3://models/nothing/here.berth", tmp_path)
    assert missing_key.value.message == (
        "cannot read s3://models/nothing/here.berth: no object 'nothing/here.berth' in bucket 'models'")
    with pytest.raises(ModelLoadError) as kind:
        resolve("s3://models/pytorch_model.bin", tmp_path)
    assert kind.value.message == (
        "s3://models/pytorch_model.bin: an S3 model is a .berth package or a checkpoint as .tar.gz, .tgz or .tar")
    with pytest.raises(ModelLoadError) as bare:
        resolve("s3://models", tmp_path)
    assert bare.value.message == (
        "'s3://models' is not an S3 object: write s3://BUCKET/KEY (a .berth package or a .tar.gz checkpoint)")


def test_an_unreachable_endpoint_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(s3.ENDPOINT_ENV, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelLoadError) as unreachable:
        resolve("s3://models/m.berth", tmp_path)
    assert unreachable.value.message.startswith("cannot read s3://models/m.berth: S3 endpoint unreachable (")


def test_access_denied_names_the_permission(packages, tmp_path: Path, monkeypatch) -> None:
    """moto enforces IAM after its first N actions: set up as admin, then read with a user that has no policy."""
    server = MotoServer(INITIAL_NO_AUTH_ACTION_COUNT="4")
    try:
        import boto3

        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="reader")  # 1
        key = iam.create_access_key(UserName="reader")["AccessKey"]  # 2
        admin = server.client()
        admin.create_bucket(Bucket="locked")  # 3
        admin.put_object(Bucket="locked", Key="m.berth", Body=packages["1.0"].read_bytes())  # 4
        monkeypatch.setenv(s3.ENDPOINT_ENV, server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with pytest.raises(ModelLoadError) as denied:
            resolve("s3://locked/m.berth", tmp_path)
    finally:
        server.close()
    assert denied.value.message == (
        "cannot read s3://locked/m.berth: access denied (403); the credentials in use need s3:GetObject on "
        "arn:aws:s3:::locked/m.berth")


def test_serve_and_register_from_s3(moto: MotoServer, packages, settings: Settings, tmp_path: Path) -> None:
    """`berthing serve s3://...` as a process, and the management API registering an allowed s3:// prefix."""
    from tests.integration.test_management import DualServer, call
    from tests.support.servers import cli_server

    _bucket(moto, "served")
    moto.client().upload_file(str(packages["1.0"]), "served", "team-a/sentiment.berth")
    moto.client().upload_file(str(packages["2.0"]), "served", "team-b/sentiment.berth")
    env = {"BERTHING_CACHE_DIR": str(tmp_path / "serve-cache"), "BERTHING_MANAGEMENT_TOKEN": "t"}
    with cli_server(["s3://served/team-a/sentiment.berth"], env=env) as (_, url):
        answer = httpx.post(f"{url}/predictions/sentiment", json={"input": TEXTS[0]}, timeout=60)
    assert answer.status_code == 200 and answer.json()["label"] in LABELS
    update = {"management_port": 0, "port": 0, "management_token_file": tmp_path / "key.json",
              "allowed_sources": ["s3://served/team-b/"], "cache_dir": tmp_path / "mgmt-cache"}
    with DualServer(settings.model_copy(update=update)) as server:
        ok = call(server, "POST", "/models", url="s3://served/team-b/sentiment.berth")
        refused = call(server, "POST", "/models", url="s3://served/team-a/sentiment.berth")
        answer = httpx.post(f"{server.url}/predictions/sentiment/2.0", json={"input": TEXTS[0]}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert (refused.status_code, refused.json()["message"]) == (
        403, "source 's3://served/team-a/sentiment.berth' is not allowed: only the model store, or a prefix on allowed_sources")
    assert answer.status_code == 200 and answer.json()["label"].startswith("v2-")


def test_pack_a_checkpoint_tar_gz_from_s3(moto: MotoServer, tiny_model_dir, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_model_dir("classify"), arcname="logbert")
    _bucket(moto, "ckpts")
    moto.client().upload_file(str(archive), "ckpts", "logbert/model.tar.gz")
    env = {**os.environ, "BERTHING_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "berthing.cli", "pack", "s3://ckpts/logbert/model.tar.gz", "--name", "logbert",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    package = Path(done.stdout.strip())
    assert package == tmp_path / "out" / "logbert-1.0.berth" and package.is_file()
    wrong = subprocess.run([sys.executable, "-m", "berthing.cli", "pack", "s3://ckpts/logbert/model.bin", "--name", "x"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert wrong.returncode == 1
    message = "s3://ckpts/logbert/model.bin: pack reads a checkpoint from S3 as .tar.gz, .tgz or .tar"
    assert message in " ".join(wrong.stderr.split())


def test_a_tar_with_an_entry_outside_its_folder_is_refused(moto: MotoServer, tmp_path: Path) -> None:
    evil = tmp_path / "evil.txt"
    evil.write_text("x")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(evil, arcname="../escape.txt")
    _bucket(moto, "unsafe")
    moto.client().upload_file(str(archive), "unsafe", "model.tar.gz")
    with pytest.raises(ModelLoadError) as refused:
        resolve("s3://unsafe/model.tar.gz", tmp_path / "cache")
    assert refused.value.message.startswith("s3://unsafe/model.tar.gz holds an unsafe entry: ")
    assert not (tmp_path / "cache" / "s3" / "escape.txt").exists()
