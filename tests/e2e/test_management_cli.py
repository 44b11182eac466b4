"""`berthing serve` with a model store and no models: starts empty, registers over the management port, drains."""

from __future__ import annotations

import json
import re
import shutil
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
