"""The Dockerfiles and template.yaml, checked without Docker: cfn-lint on the template, and what the images run
(the handler string, their settings, the health check against a live server) run here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from berthing.config import Settings
from berthing.registry import Registry
from tests.support.dockerfiles import instructions
from tests.support.http import clone
from tests.support.servers import ThreadServer

ROOT = Path(__file__).resolve().parents[2]
LAMBDA = ROOT / "deploy" / "lambda" / "Dockerfile"
SERVER = ROOT / "deploy" / "server" / "Dockerfile"


def env_of(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(path)], capture_output=True, text=True)


def test_template_passes_cfn_lint(tmp_path: Path) -> None:
    result = cfn_lint(ROOT / "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "template.yaml"  # and cfn-lint does look: a property SAM does not know fails
    text = (ROOT / "template.yaml").read_text("utf-8")
    broken.write_text(text.replace("PackageType: Image", "PackageType: Image\n      Bogus: 1"))
    assert cfn_lint(broken).returncode != 0


def test_dockerfiles_pass_hadolint(tmp_path: Path) -> None:
    hadolint = str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(LAMBDA), str(SERVER)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    sloppy = tmp_path / "Dockerfile"  # and hadolint does look: an unpinned base image fails
    sloppy.write_text(SERVER.read_text("utf-8").replace("FROM python:3.11-slim", "FROM python:latest"))
    assert "DL3007" in subprocess.run([hadolint, str(sloppy)], capture_output=True, text=True).stdout


def test_template_builds_from_the_lambda_dockerfile() -> None:
    text = (ROOT / "template.yaml").read_text("utf-8")
    assert "Dockerfile: deploy/lambda/Dockerfile" in text and "DockerContext: ." in text
    assert "MODEL_DIR: deploy/lambda/model" in text and (ROOT / "deploy" / "lambda" / "model").is_dir()
    for route in ("/predictions/{model}", "/predictions/{model}/{version}", "/ping"):
        assert f"Path: {route}\n" in text


def test_lambda_image_runs_the_handler_on_aws_base_image() -> None:
    steps = instructions(LAMBDA)
    assert steps[0] == ("FROM", "public.ecr.aws/lambda/python:3.11")
    cmd = [rest for word, rest in steps if word == "CMD"]
    assert cmd == ['["berthing.serverless.handler"]']
    module, _, attribute = "berthing.serverless.handler".rpartition(".")
    code = f"import {module} as m; assert '{attribute}' in dir(m) or callable(m.__getattr__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    env = env_of(LAMBDA)
    assert env["BERTHING_CACHE_DIR"] == "/tmp/berthing" and env["BERTHING_MODEL"] == "${LAMBDA_TASK_ROOT}/model"


@pytest.mark.parametrize("dockerfile", [LAMBDA, SERVER], ids=["lambda", "server"])
def test_images_copy_what_exists_and_install_extras_that_exist(dockerfile: Path) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"]
    args = {rest.split("=")[0]: rest.split("=")[1] for word, rest in instructions(dockerfile) if word == "ARG" and "=" in rest}
    for word, rest in instructions(dockerfile):
        if word == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source)
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        if word == "RUN" and "pip install" in rest:
            wanted = re.search(r"\[([^\]]+)\]", rest).group(1)
            for extra in re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], wanted).split(","):
                assert extra in extras, f"{dockerfile.name} installs the extra {extra!r}, which pyproject.toml lacks"


@pytest.mark.parametrize("dockerfile", [LAMBDA, SERVER], ids=["lambda", "server"])
def test_the_images_environment_is_valid_settings(dockerfile: Path, monkeypatch) -> None:
    for key, value in env_of(dockerfile).items():
        monkeypatch.setenv(key, value.replace("${LAMBDA_TASK_ROOT}", "/var/task"))
    settings = Settings()
    if dockerfile is SERVER:
        assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    else:
        assert settings.lanes is False


def test_server_image_is_non_root_with_a_health_check_that_works(load, settings: Settings) -> None:
    steps = instructions(SERVER)
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11-slim")
    users = [rest for word, rest in steps if word == "USER"]
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert users == ["10001:10001"] and "useradd --create-home --uid 10001 --gid 10001" in runs  # numeric: runAsNonRoot
    assert [rest for word, rest in steps if word == "ENTRYPOINT"] == ['["berthing", "serve"]']
    check = next(rest for word, rest in steps if word == "HEALTHCHECK")
    command = json_list(check.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"] and "http://127.0.0.1:8080/ping" in command[2]
    registry = Registry()
    registry.add(clone(load("classify"), "sentiment"))
    with ThreadServer(registry, settings) as server:
        healthy = subprocess.run([sys.executable, "-c", command[2].replace(":8080", f":{server.port}")], timeout=30)
    assert healthy.returncode == 0
    down = subprocess.run([sys.executable, "-c", command[2].replace(":8080", f":{server.port}")], capture_output=True, timeout=30)
    assert down.returncode != 0  # the server is gone: the check fails, Docker marks the container unhealthy


def json_list(text: str) -> list[str]:
    import json

    return json.loads(text)
