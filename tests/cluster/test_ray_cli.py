"""`berthing ray serve` (and its --write-config) as a user runs it: onto the test cluster (--address --detach), on a
cluster of its own (the README's command; Ctrl-C/SIGTERM removes everything), and the config file through Ray's own
`serve run`, which calls the `berthing.ray:app` builder with the file's args."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from berthing.config import Settings
from tests.support.http import free_port
from tests.support.ray_cluster import RayCluster, replica_states

BERTHING = [sys.executable, "-m", "berthing"]


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "BERTHING_CACHE_DIR": str(settings.cache_dir), "BERTHING_OPTIMIZE": "none"}


def test_detached_deploy_onto_a_running_cluster(cluster: RayCluster, load, tiny_model_dir, settings: Settings) -> None:
    from ray import serve

    load("classify")
    model = f"sentiment={tiny_model_dir('classify')}"
    done = subprocess.run(
        [*BERTHING, "ray", "serve", model, "--address", cluster.address, "--detach", "--cpus", "0.5"],
        env=_env(settings), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert f"sentiment: {cluster.url}/predictions/sentiment (1 replica(s), 0.5 CPU each)" in done.stderr
    try:
        answer = httpx.post(f"{cluster.url}/predictions/sentiment", json={"input": "hi"}, timeout=60).json()
        assert answer["label"] in ("negative", "neutral", "positive")
        assert replica_states("sentiment") == {"RUNNING": 1}
    finally:
        serve.delete("sentiment")


def test_config_file_runs_through_rays_own_serve_run(
    cluster: RayCluster, load, tiny_model_dir, settings: Settings, tmp_path: Path
) -> None:
    """--write-config writes what `serve run`/`serve deploy`/a RayService take; Ray builds it with our builder."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    load("embed")
    config = tmp_path / "serve.yaml"
    made = subprocess.run(
        [*BERTHING, "ray", "serve", f"vectors={tiny_model_dir('embed')}", "--cpus", "0.5", "--autoscale", "1:2",
         "--write-config", config],
        env=_env(settings), capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    text = yaml.safe_load(config.read_text())
    ServeDeploySchema.model_validate(text)
    assert text["http_options"] == {"host": "127.0.0.1", "port": 8000}  # never Ray's file default 0.0.0.0
    app = text["applications"][0]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("vectors", "/", "berthing.ray:app")
    assert app["args"]["autoscale"] == "1:2" and app["args"]["settings"]["optimize"] == "none"

    app["route_prefix"] = "/vectors"
    config.write_text(yaml.safe_dump(text))
    ran = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "run", str(config), "--address", cluster.address, "--non-blocking"],
        env=_env(settings), capture_output=True, text=True, timeout=240,
    )
    try:
        assert ran.returncode == 0, ran.stderr[-3000:]
        deadline = time.monotonic() + 120  # a config deploy returns at once; the replicas are still starting
        while serve.status().applications.get("vectors") is None or serve.status().applications["vectors"].status != "RUNNING":
            assert time.monotonic() < deadline, serve.status()
            time.sleep(0.5)
        vectors = httpx.post(f"{cluster.url}/vectors/predictions/vectors", json={"input": ["a", "b"]}, timeout=60).json()
        assert len(vectors) == 2 and len(vectors[0]) > 8
    finally:
        serve.delete("vectors")


def test_serve_on_a_cluster_of_its_own_then_sigterm(cluster: RayCluster, load, tiny_model_dir, settings: Settings) -> None:
    """No --address: berthing starts a one-host cluster (loopback, no dashboard), serves, and removes it all on SIGTERM."""
    load("embed")
    port = free_port()
    proc = subprocess.Popen(
        [*BERTHING, "ray", "serve", f"local={tiny_model_dir('embed')}", "--port", str(port)],
        env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving through Ray Serve" in line:
                break
        output = "".join(lines)
        assert "started a local Ray cluster" in output, output
        assert re.search(rf"local: http://127\.0\.0\.1:{port}/predictions/local", output), output
        vectors = httpx.post(f"http://127.0.0.1:{port}/predictions/local", json={"input": "hi"}, timeout=60).json()
        assert len(vectors) > 8
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output + rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
