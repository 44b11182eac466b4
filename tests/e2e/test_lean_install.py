"""`pip install berthing[s3]`, what both Dockerfiles run, installs no torch and still serves a package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import importlib.util, json, sys
from berthing.serverless import handler
answer = handler({"input": ["lean", "image"]}, None)
print(json.dumps({"vectors": len(answer), "torch": importlib.util.find_spec("torch") is not None,
                  "transformers": importlib.util.find_spec("transformers") is not None}))
"""


def test_the_images_install_line_brings_no_torch_and_serves_a_package(load, tmp_path: Path) -> None:
    src = tmp_path / "src-copy"  # what the Dockerfiles COPY: pyproject.toml, README.md, src/
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{src}[s3]"], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr
    artifact = load("embed").source  # the tiny embedder's checkpoint; its export is in the test cache
    from berthing.packaging.export import prepare
    from tests.conftest import CACHE

    folder = prepare(artifact, None, CACHE / "berthing")  # an exported artifact folder: serves without export tools
    env = {"BERTHING_MODEL": str(folder), "BERTHING_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(venv / "bin" / "python"), "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"vectors": 2, "torch": False, "transformers": False}
