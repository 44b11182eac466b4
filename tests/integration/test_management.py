"""The management API against real servers on loopback: register, describe, version, scale, unregister, and refuse."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import shutil
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from berthing.config import Settings
from berthing.registry import Registry
from berthing.server.runner import build_apps, load_registry
from berthing.types import BerthingError
from tests.support.http import WAIT_S, metric, wait_for
from tests.support.servers import DualServer

TEXTS = ["a fine day", "this is terrible", "ok"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir) -> Path:
    """A model store with tiny checkpoints, a corrupt one, and two links that point outside it."""
    root = tmp_path_factory.mktemp("store")
    for kind in ("classify", "embed", "multilabel"):
        shutil.copytree(tiny_model_dir(kind), root / kind)
    shutil.copytree(tiny_model_dir("classify"), root / "corrupt")
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(tiny_model_dir("classify"), outside / "model")
    (root / "escape").symlink_to(outside / "model", target_is_directory=True)
    shutil.copytree(tiny_model_dir("classify"), root / "sneaky")
    (root / "sneaky" / "vocab.txt").unlink()
    (root / "sneaky" / "vocab.txt").symlink_to("/etc/passwd")
    return root


@pytest.fixture(scope="module")
def server(store: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DualServer]:
    key = tmp_path_factory.mktemp("key") / "key_file.json"
    update = {"model_store": store, "management_port": 0, "port": 0, "management_token_file": key}
    with DualServer(settings.model_copy(update=update)) as running:
        running.key = key
        yield running


def call(server: DualServer, method: str, path: str, token: str | None = "", **params: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {server.token if token == '' else token}"} if token is not None else {}
    return httpx.request(method, f"{server.admin}{path}", params=params, headers=headers, timeout=WAIT_S * 4)


def register(server: DualServer, url: str, name: str, **params: Any) -> httpx.Response:
    return call(server, "POST", "/models", url=url, model_name=name, **params)


def predict(server: DualServer, path: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predictions/{path}", json=TEXTS, timeout=WAIT_S)


def assert_error(response: httpx.Response, code: int, kind: str, message: str) -> None:
    assert (response.status_code, response.json()) == (code, {"code": code, "type": kind, "message": message})


def test_key_file_is_private_and_holds_the_token(server: DualServer) -> None:
    assert stat.S_IMODE(os.stat(server.key).st_mode) == 0o600
    assert json.loads(server.key.read_text())["management"]["key"] == server.token


def test_auth_is_required(server: DualServer) -> None:
    message = "the management API needs the header 'Authorization: Bearer <token>' (see the key file)"
    assert_error(call(server, "GET", "/models", token=None), 401, "Unauthorized", message)
    assert_error(call(server, "GET", "/models", token="wrong"), 401, "Unauthorized", "wrong token for the management API")
    assert call(server, "GET", "/models").status_code == 200


def test_management_routes_are_not_on_the_inference_port(server: DualServer) -> None:
    # GET /models there is Infinity's read-only model list; nothing on the inference port registers, scales or deletes
    for method, path in (("POST", "/models?url=x.berth"), ("PUT", "/models/s?min_worker=2"), ("DELETE", "/models/s/1.0")):
        assert httpx.request(method, f"{server.url}{path}").status_code in (404, 405), (method, path)
    assert httpx.get(f"{server.admin}/ping").status_code == 404


def refusals(store: Path) -> list[tuple[str, int, str, str]]:
    root = store.resolve()
    allowed = "only the model store, or a prefix on allowed_sources"
    return [
        ("http://169.254.169.254/latest/meta-data", 403, "Forbidden",
         f"source 'http://169.254.169.254/latest/meta-data' is not allowed: {allowed}"),
        ("file:///etc/passwd", 403, "Forbidden", f"source 'file:///etc/passwd' is not allowed: {allowed}"),
        ("../../x.berth", 403, "Forbidden",
         f"source '../../x.berth' resolves to {(root / '../../x.berth').resolve()}, outside the model store {root}"),
        ("/etc", 403, "Forbidden", f"source '/etc' is outside the model store {root}"),
        ("escape", 403, "Forbidden",
         f"source 'escape' resolves to {(root / 'escape').resolve()}, outside the model store {root}"),
        ("sneaky", 403, "Forbidden", f"source 'sneaky' holds vocab.txt, a link outside the model store {root}"),
        ("", 400, "BadRequest", "parameter 'url' is required: a package or folder in the model store"),
        ("missing", 400, "BadRequest", f"source 'missing' not found in the model store {root}"),
    ]


def test_sources_outside_the_store_are_refused(server: DualServer, store: Path) -> None:
    for url, code, kind, message in refusals(store):
        assert_error(register(server, url, "intruder"), code, kind, message)
    assert_error(call(server, "GET", "/models/intruder"), 404, "ModelNotFound", _not_found(server, "intruder"))


def _not_found(server: DualServer, name: str) -> str:
    return f"model '{name}' not found (models: {', '.join(server.registry.names()) or 'none'})"


def test_register_list_describe_predict(server: DualServer) -> None:
    response = register(server, "classify", "sentiment", initial_workers=2)
    assert response.json() == {"status": 'Model "sentiment" Version: 1.0 registered with 2 initial workers'}
    assert register(server, "embed", "embedder").status_code == 200
    listed = call(server, "GET", "/models").json()["models"]
    assert {"modelName": "sentiment", "modelUrl": "classify"} in listed
    assert {"modelName": "embedder", "modelUrl": "embed"} in listed
    first = call(server, "GET", "/models", limit=1).json()
    assert len(first["models"]) == 1
    rest = call(server, "GET", "/models", limit=100, next_page_token=first["nextPageToken"]).json()
    assert "nextPageToken" not in rest and first["models"] + rest["models"] == listed
    [described] = call(server, "GET", "/models/sentiment").json()
    assert described["modelVersion"] == "1.0" and described["isDefault"] and described["workers"] == 2
    assert described["task"] == "classify" and described["runtime"] == "onnx" and described["memoryBytes"] > 0
    assert call(server, "GET", "/models/sentiment/1.0").json() == [described]
    assert predict(server, "sentiment").status_code == 200
    assert len(predict(server, "embedder").json()) == len(TEXTS)
    assert metric(server.url, "berthing_model_workers", model="sentiment:1.0") == 2
    duplicate = "model 'sentiment' version '1.0' is already registered"
    assert_error(register(server, "classify", "sentiment"), 409, "Conflict", duplicate)


def test_second_version_and_set_default(server: DualServer) -> None:
    assert register(server, "classify", "versioned").status_code == 200
    assert register(server, "multilabel", "versioned", model_version="2.0").status_code == 200
    v1, v2 = predict(server, "versioned/1.0").json(), predict(server, "versioned/2.0").json()
    assert v1 != v2
    assert predict(server, "versioned").json() == v1
    assert_error(call(server, "DELETE", "/models/versioned/1.0"), 409, "Conflict",
                 "version '1.0' is the default of model 'versioned'; set another default first (versions: 2.0)")
    assert call(server, "PUT", "/models/versioned/2.0/set-default").status_code == 200
    assert predict(server, "versioned").json() == v2
    assert [d["isDefault"] for d in call(server, "GET", "/models/versioned").json()] == [False, True]
    assert call(server, "DELETE", "/models/versioned/1.0").status_code == 200
    assert predict(server, "versioned/1.0").status_code == 404
    assert predict(server, "versioned").json() == v2


def _load(server: DualServer, path: str, count: int, threads: int = 4) -> list[int]:
    with cf.ThreadPoolExecutor(threads) as pool:
        return [r.status_code for r in pool.map(lambda _: predict(server, path), range(count))]


def test_scale_workers_while_requests_run(server: DualServer) -> None:
    assert register(server, "classify", "scaled").status_code == 200
    with cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(_load, server, "scaled", 120)
        for workers in (3, 1, 2):
            response = call(server, "PUT", "/models/scaled", min_worker=workers, max_worker=4)
            assert response.json() == {"status": f'Workers of model "scaled" version 1.0 scaled to {workers}'}
        assert running.result() == [200] * 120
    assert call(server, "GET", "/models/scaled").json()[0]["workers"] == 2
    assert metric(server.url, "berthing_model_workers", model="scaled:1.0") == 2


def test_unregister_under_load(server: DualServer) -> None:
    assert register(server, "classify", "doomed").status_code == 200
    assert metric(server.url, "berthing_model_workers", model="doomed:1.0") == 1
    gone = threading.Event()
    results: list[tuple[bool, int]] = []

    def hammer() -> None:
        for _ in range(60):
            after = gone.is_set()
            results.append((after, predict(server, "doomed/1.0").status_code))

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer) for _ in range(4)]
        wait_for(lambda: len(results) >= 8, "some requests to finish")
        assert call(server, "DELETE", "/models/doomed/1.0").status_code == 200
        gone.set()
        for future in futures:
            future.result()
    assert {status for _, status in results} <= {200, 404}
    assert all(status == 404 for after, status in results if after)
    assert any(status == 200 for _, status in results)
    assert metric(server.url, "berthing_model_workers", model="doomed:1.0") is None
    assert_error(predict(server, "doomed/1.0"), 404, "ModelNotFound", _not_found(server, "doomed"))


def test_corrupt_model_fails_alone(server: DualServer, store: Path) -> None:
    assert register(server, "classify", "survivor").status_code == 200
    message = (f"cannot load the weights of {(store / 'corrupt').resolve()}: "
               "Error while deserializing header: invalid header length")
    assert_error(register(server, "corrupt", "corrupt"), 500, "ModelLoadError", message)
    assert "corrupt" not in server.registry.names()
    assert predict(server, "survivor").status_code == 200


def test_asynchronous_registration(server: DualServer) -> None:
    response = register(server, "embed", "later", synchronous="false")
    started = 'Model "later" Version: 1.0 registration started; GET /models/later/1.0 shows its status'
    assert (response.status_code, response.json()) == (202, {"status": started})
    wait_for(lambda: call(server, "GET", "/models/later/1.0").json()[0]["status"] == "READY", "the background registration")
    assert predict(server, "later").status_code == 200


def test_failed_asynchronous_registration_is_shown_then_cleared(server: DualServer, store: Path) -> None:
    assert register(server, "corrupt", "broken", synchronous="false").status_code == 202
    wait_for(lambda: call(server, "GET", "/models/broken").json()[0]["status"] != "LOADING", "the background load to end")
    message = (f"cannot load the weights of {(store / 'corrupt').resolve()}: "
               "Error while deserializing header: invalid header length")
    failed = {"modelName": "broken", "modelVersion": "1.0", "modelUrl": "corrupt", "status": "FAILED",
              "error": {"code": 500, "type": "ModelLoadError", "message": message}}
    assert call(server, "GET", "/models/broken").json() == [failed]
    assert call(server, "GET", "/models/broken/1.0").json() == [failed]
    listed = call(server, "GET", "/models", limit=1000).json()["models"]
    assert {"modelName": "broken", "modelUrl": "corrupt", "status": "FAILED"} in listed
    assert_error(predict(server, "broken"), 404, "ModelNotFound", _not_found(server, "broken"))
    cleared = call(server, "DELETE", "/models/broken/1.0")
    assert cleared.json() == {"status": 'Failed registration of model "broken" version 1.0 cleared'}
    assert call(server, "GET", "/models/broken").status_code == 404


def test_bad_parameters(server: DualServer) -> None:
    assert_error(register(server, "classify", "x", initial_workers="zero"), 400, "BadRequest",
                 "parameter 'initial_workers' must be an integer >= 1, not 'zero'")
    assert_error(call(server, "PUT", "/models/nothing", min_worker=1), 404, "ModelNotFound", _not_found(server, "nothing"))


def test_network_address_without_token_is_refused(settings: Settings, tmp_path: Path) -> None:
    update = {"management_host": "0.0.0.0", "management_auth": False, "management_port": 0, "port": 0}
    with pytest.raises(BerthingError) as refused:
        build_apps(settings.model_copy(update=update), Registry())
    assert refused.value.message == (
        "refusing to serve the management API on 0.0.0.0 without a token: "
        "management_auth=false is allowed only on a loopback address (127.0.0.1, ::1, localhost)"
    )


def test_loopback_without_auth_and_inference_token(settings: Settings, store: Path, tmp_path: Path) -> None:
    outside = (store / "escape").resolve()  # a checkpoint outside the store, allowed by prefix below
    update = {
        "model_store": store, "management_auth": False, "management_port": 0, "port": 0, "inference_token": "s3cret",
        "management_token_file": tmp_path / "key.json", "allowed_sources": [str(outside.parent)],
    }
    configured = settings.model_copy(update=update)
    assert load_registry(configured, Console(file=io.StringIO())).names() == []  # a store and no models: none loaded
    with DualServer(configured) as open_server:
        assert open_server.token is None
        assert httpx.post(f"{open_server.admin}/models", params={"url": "embed", "model_name": "e"}).status_code == 200
        assert_error(httpx.post(f"{open_server.url}/predictions/e", json=TEXTS), 401, "Unauthorized",
                     "the inference API needs the header 'Authorization: Bearer <token>' (see the key file)")
        authorized = {"authorization": "Bearer s3cret"}
        assert httpx.post(f"{open_server.url}/predictions/e", json=TEXTS, headers=authorized).status_code == 200
        allowed = httpx.post(f"{open_server.admin}/models", params={"url": str(outside), "model_name": "o"}, timeout=120)
        assert allowed.status_code == 200, allowed.text
        sneaky = f"{outside.parent}/../etc"
        refused = httpx.post(f"{open_server.admin}/models", params={"url": sneaky, "model_name": "p"})
        assert_error(refused, 403, "Forbidden", f"source {sneaky!r} is outside the model store {store.resolve()}")
        bad_name = httpx.post(f"{open_server.admin}/models", params={"url": "embed", "model_name": "a=/etc"})
        assert (bad_name.status_code, bad_name.json()["type"]) == (400, "BadRequest")
        assert bad_name.json()["message"].startswith("invalid model name 'a=/etc'")


def test_a_package_refused_for_what_it_holds_is_the_senders_error(server: DualServer, store: Path) -> None:
    """422 InvalidPackage naming what is wrong, not a 500: the server did nothing wrong (issue 18)."""
    garbage = store / "garbage.berth"
    garbage.write_bytes(b"not a zip archive at all")
    bare = store / "bare.berth"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("model.onnx", b"x")
    partial = store / "partial"
    partial.mkdir()
    (partial / "MANIFEST.json").write_text('{"format": 1, "name": "partial"}')
    try:
        refused = register(server, "garbage.berth", "garbage")
        assert (refused.status_code, refused.json()["type"]) == (422, "InvalidPackage")
        assert refused.json()["message"].startswith(f"cannot read the manifest of {garbage.resolve()}: ")
        assert_error(register(server, "bare.berth", "bare"), 422, "InvalidPackage",
                     f"{bare.resolve()} is not a berthing package: it has no MANIFEST.json")
        refused = register(server, "partial", "partial")
        assert (refused.status_code, refused.json()["type"]) == (422, "InvalidPackage")
        assert refused.json()["message"].startswith(f"{partial.resolve()}: MANIFEST.json lacks ")
        assert {"garbage", "bare", "partial"}.isdisjoint(server.registry.names())
    finally:
        garbage.unlink()
        bare.unlink()
        shutil.rmtree(partial)
