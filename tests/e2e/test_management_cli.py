"""`berthing serve` with a model store and no models: starts empty, registers over the management port, drains."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from berthing.config import Settings
from tests.support.servers import cli_server


def test_serve_from_an_empty_model_store(settings: Settings, tiny_model_dir, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_model_dir("classify"), store / "classify")
    env = {"BERTHING_CACHE_DIR": str(settings.cache_dir), "BERTHING_MODEL_STORE": str(store)}
    with cli_server([], env) as (proc, url):
        found = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output)
        assert found, proc.startup_output
        admin = found.group(1)
        assert "serving no models" in proc.startup_output
        token = json.loads((store / "key_file.json").read_text())["management"]["key"]
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{admin}/models", headers=auth).json() == {"models": []}
        registered = httpx.post(f"{admin}/models", params={"url": "classify", "model_name": "s"}, headers=auth, timeout=120)
        assert registered.status_code == 200, registered.text
        assert httpx.post(f"{url}/predictions/s", json=["good"]).status_code == 200
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_config_file_per_model_settings_and_metrics_address(settings: Settings, tiny_model_dir, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for kind in ("classify", "embed"):
        shutil.copytree(tiny_model_dir(kind), store / kind)
    config = tmp_path / "berthing.toml"
    config.write_text(
        f'models = ["s={store / "classify"}"]\nmodel_store = "{store}"\nmetrics_port = 0\n'
        "[per_model.s]\nworkers = 2\nmax_batch_size = 4\nmax_wait_ms = 1.5\n"
        "[per_model.e]\nworkers = 3\nmax_batch_tokens = 64\n"
    )
    env = {"BERTHING_CACHE_DIR": str(settings.cache_dir)}
    with cli_server(["--config", str(config)], env) as (proc, url):
        admin = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output)
        scrape = re.search(r"metrics at (http://127\.0\.0\.1:\d+)/metrics", proc.startup_output)
        assert admin and scrape, proc.startup_output
        auth = {"authorization": f"Bearer {json.loads((store / 'key_file.json').read_text())['management']['key']}"}
        described = httpx.get(f"{admin.group(1)}/models/s", headers=auth).json()[0]
        assert described["workers"] == 2
        assert described["batchSettings"] == {"maxBatchTokens": 512, "maxBatchSize": 4, "maxWaitMs": 1.5, "maxQueue": 2048}
        registered = httpx.post(f"{admin.group(1)}/models", params={"url": "embed", "model_name": "e"}, headers=auth, timeout=120)
        assert registered.json() == {"status": 'Model "e" Version: 1.0 registered with 3 initial workers'}
        described = httpx.get(f"{admin.group(1)}/models/e", headers=auth).json()[0]
        assert (described["workers"], described["batchSettings"]["maxBatchTokens"]) == (3, 64)
        assert httpx.post(f"{url}/predictions/s", json=["good"]).status_code == 200
        metrics = httpx.get(f"{scrape.group(1)}/metrics")
        served = 'berthing_requests_total{model="s:1.0",protocol="torchserve",route="predictions",status="200"} 1.0'
        assert metrics.status_code == 200 and served in metrics.text
        refused = httpx.post(f"{scrape.group(1)}/predictions/s", json=["good"])
        assert (refused.status_code, refused.json()) == (
            404, {"code": 404, "type": "NotFound", "message": "no route for POST /predictions/s (routes: /metrics)"}
        )


def test_models_all_and_names_relative_to_the_store(settings: Settings, tiny_model_dir, tmp_path: Path) -> None:
    from berthing.packaging.package import pack

    store = tmp_path / "store"
    for version in ("2.0", "10.0"):
        pack(tiny_model_dir("classify"), store, "s", version)
    shutil.copytree(tiny_model_dir("embed"), store / "embed")
    (store / "notes.txt").write_text("not a model")
    env = {"BERTHING_CACHE_DIR": str(settings.cache_dir)}
    with cli_server(["--model-store", str(store), "--models", "all"], env) as (proc, url):
        for path in ("s/2.0", "s/10.0", "s", "embed"):
            assert httpx.post(f"{url}/predictions/{path}", json=["good"]).status_code == 200, path
        admin = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output)
        assert admin, proc.startup_output
        auth = {"authorization": f"Bearer {json.loads((store / 'key_file.json').read_text())['management']['key']}"}
        versions = httpx.get(f"{admin.group(1)}/models/s", headers=auth).json()
        assert {(v["modelVersion"], v["isDefault"]) for v in versions} == {("2.0", False), ("10.0", True)}
    with cli_server(["--model-store", str(store), "--models", "old=s-2.0.berth"], env) as (_proc, url):
        assert httpx.post(f"{url}/predictions/old/2.0", json=["good"]).status_code == 200
    refused = subprocess.run(
        [sys.executable, "-m", "berthing.cli", "serve", "--models", "all", "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env, "BERTHING_MANAGEMENT_PORT": "0"},
    )
    assert refused.returncode == 1
    assert "--models all loads every model of the model store: give --model-store too" in refused.stderr
