"""Issue 4's user journey: pack two versions, serve an empty store, register, switch default, scale, unregister under load."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from berthing.config import Settings
from tests.support.servers import cli_server

TEXTS = ["the delivery was fast and the box was intact", "terrible support, never again", "it is fine I guess"]


def _pack(folder: Path, version: str, store: Path, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "berthing.cli", "pack", str(folder), "--name", "sentiment", "--version", version]
    cmd += ["-o", str(store)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (store / f"sentiment-{version}.berth").is_file()


def test_pack_register_switch_scale_unregister(settings: Settings, tiny_model_dir, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    env = {**os.environ, "BERTHING_CACHE_DIR": str(settings.cache_dir)}
    _pack(tiny_model_dir("classify"), "1.0", store, env)
    _pack(tiny_model_dir("multilabel"), "2.0", store, env)  # other weights and labels: answers must change
    with cli_server(["--model-store", str(store)], {"BERTHING_CACHE_DIR": str(settings.cache_dir)}) as (proc, url):
        admin = re.search(r"management API at (http://127\.0\.0\.1:\d+)", proc.startup_output).group(1)
        auth = {"authorization": "Bearer " + json.loads((store / "key_file.json").read_text())["management"]["key"]}
        with httpx.Client(headers=auth, timeout=120) as manage:
            assert manage.get(f"{admin}/models").json() == {"models": []}
            assert manage.post(f"{admin}/models", params={"url": "sentiment-1.0.berth"}).status_code == 200
            v1 = httpx.post(f"{url}/predictions/sentiment", json={"input": TEXTS}).json()
            assert {r["label"] for r in v1} <= {"negative", "neutral", "positive"}
            assert manage.post(f"{admin}/models", params={"url": "sentiment-2.0.berth"}).status_code == 200
            assert httpx.post(f"{url}/predictions/sentiment", json={"input": TEXTS}).json() == v1  # v1 is still default
            assert manage.put(f"{admin}/models/sentiment/2.0/set-default").status_code == 200
            v2 = httpx.post(f"{url}/predictions/sentiment", json={"input": TEXTS}).json()
            assert {r["label"] for r in v2} <= {"sports", "tech", "food"} and v2 != v1
            scaled = manage.put(f"{admin}/models/sentiment/1.0", params={"min_worker": 2})
            assert scaled.status_code == 200, scaled.text
            described = manage.get(f"{admin}/models/sentiment/1.0").json()
            assert described[0]["workers"] == 2

            gone = threading.Event()
            after: list[int] = []

            def hit(_: int) -> int:
                sent_after = gone.is_set()
                code = httpx.post(f"{url}/predictions/sentiment/1.0", json={"input": TEXTS[0]}, timeout=60).status_code
                if sent_after:
                    after.append(code)
                return code

            with cf.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(hit, i) for i in range(40)]
                deleted = manage.delete(f"{admin}/models/sentiment/1.0")
                gone.set()
                futures += [pool.submit(hit, i) for i in range(8)]
                codes = [f.result() for f in futures]
            assert deleted.status_code == 200, deleted.text
            assert set(codes) <= {200, 404}
            assert after and set(after) == {404}
            assert httpx.post(f"{url}/predictions/sentiment", json={"input": TEXTS[0]}).status_code == 200  # v2 serves on
        proc.terminate()
        assert proc.wait(timeout=60) == 0
