"""`berthing serve` as a user runs it: a real process on loopback, several models, SIGTERM drains."""

from __future__ import annotations

import concurrent.futures as cf
import re
import subprocess
import sys
import time

import httpx

from berthing.config import Settings
from tests.support.servers import cli_server
from tests.support.texts import mixed_sentences


def _env(settings: Settings) -> dict[str, str]:
    return {"BERTHING_CACHE_DIR": str(settings.cache_dir)}


def test_serve_several_models_by_name_and_by_folder(load, settings: Settings, tiny_model_dir, tmp_path) -> None:
    load("classify")
    load("embed")
    note = tmp_path / "note.txt"
    note.write_text("如何使用torchserve部署模型\n", encoding="utf-8")
    args = [f"sentiment={tiny_model_dir('classify')}", str(tiny_model_dir("embed"))]
    with cli_server(args, _env(settings)) as (_, url):
        assert httpx.get(f"{url}/ping").json() == {"status": "Healthy"}
        one = httpx.post(f"{url}/predictions/sentiment", json={"input": "教练, 我想打篮球."}).json()
        assert one["label"] in ("negative", "neutral", "positive") and set(one["scores"]) == {"negative", "neutral", "positive"}
        vectors = httpx.post(f"{url}/predictions/embed/1.0", json={"input": ["a", "b"]}).json()
        assert len(vectors) == 2 and len(vectors[0]) == 32
        raw = httpx.post(f"{url}/predictions/embed", content=note.read_bytes()).json()
        assert len(raw) == 32 and isinstance(raw[0], float)


def test_sigterm_drains_in_flight_requests(load, settings: Settings) -> None:
    load("minilm")
    texts = [t for t in mixed_sentences(400) if len(t) > 200][:48]
    with cli_server(["minilm"], _env(settings)) as (proc, url):
        with httpx.Client(timeout=120) as client, cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.post, f"{url}/predictions/minilm", json={"input": texts}) for _ in range(6)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # wait until the server holds (nearly) all of the work
                depth = re.search(r'berthing_queue_depth\{model="minilm:1.0"\} (\d+)', client.get(f"{url}/metrics").text)
                if depth and int(float(depth.group(1))) >= 3 * len(texts):
                    break
                time.sleep(0.02)
            proc.terminate()
            responses = [f.result() for f in futures]
        assert proc.wait(timeout=60) == 0
    assert [r.status_code for r in responses] == [200] * 6
    assert all(len(r.json()) == len(texts) for r in responses)


def test_a_served_start_lists_the_files_it_read_for_the_next_start(load, settings: Settings, tiny_model_dir) -> None:
    model = load("embed")
    folder = str(tiny_model_dir("embed"))
    listed_at = settings.cache_dir / "startup-files.txt"
    listed_at.unlink(missing_ok=True)
    with cli_server([folder], _env(settings), module="berthing") as (_, url):
        assert httpx.post(f"{url}/predictions/embed", json={"input": "hello"}).status_code == 200
        deadline = time.monotonic() + 30
        while not listed_at.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        listed = listed_at.read_text(encoding="utf-8").splitlines()
        assert str(model.runtimes[0].model_path.resolve()) in listed
        assert any(p.endswith("berthing/server/app.py") or "berthing/server/__pycache__/app." in p for p in listed)
        assert any("onnxruntime" in p and p.endswith(".so") for p in listed)
    with cli_server([folder], _env(settings), module="berthing") as (_, url):  # reads it ahead
        assert httpx.post(f"{url}/predictions/embed", json={"input": "hello"}).status_code == 200


def test_serve_help_documents_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "berthing.cli", "serve", "--help"], capture_output=True, text=True, env={"COLUMNS": "200"},
        timeout=60,
    ).stdout
    for field in Settings.model_fields:
        if field in ("models", "config_file", "per_model"):  # per_model: TOML tables only, named by --config's help
            continue
        assert f"--{field.replace('_', '-')}" in out, field
        assert f"BERTHING_{field.upper()}" in out, field
    assert "--config" in out and "[per_model.NAME]" in out


def test_bad_setting_and_missing_model_exit_with_a_message(settings: Settings, tmp_path) -> None:
    cmd = [sys.executable, "-m", "berthing.cli", "serve"]
    bad = subprocess.run([*cmd, "--max-batch-size", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "max_batch_size" in bad.stderr
    toml = tmp_path / "b.toml"
    toml.write_text("port = 80\nport = 81\n", encoding="utf-8")
    broken = subprocess.run([*cmd, "--config", str(toml)], capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2
    assert f"error: config file {toml} is not valid TOML: Cannot overwrite a value (at line 2" in " ".join(broken.stderr.split())
    missing = subprocess.run([*cmd, "./no-such-folder"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "model source './no-such-folder' not found" in " ".join(missing.stderr.split())
