"""Shared fixtures: one cache folder per run for tiny models and ONNX exports; servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from berthing.config import Settings
from berthing.engine.model import Model
from berthing.loading import load_model
from berthing.packaging.sources import ModelSource, default_model_path
from berthing.registry import Registry
from tests.support import models as tiny
from tests.support import ray_cluster
from tests.support.http import clone
from tests.support.s3 import MotoServer
from tests.support.servers import ThreadServer

# Most tests check fp32 parity with PyTorch to 1e-4, so their models load unoptimized (in this process and in every
# `berthing serve`/`pack` they start); tests of optimization pass their level, and test_config checks the default.
os.environ.setdefault("BERTHING_OPTIMIZE", "none")
# Protocols on ports of their own bind free ports in tests (never 8001 or 5555, which parallel runs would share).
os.environ.setdefault("BERTHING_GRPC_PORT", "0")
os.environ.setdefault("BERTHING_BERT_SERVING_PORT", "0")
os.environ.setdefault("BERTHING_BERT_SERVING_PORT_OUT", "0")
ray_cluster.configure_env()  # before any test module imports Ray, which reads auth and addresses at import

CACHE = Path(os.environ.get("BERTHING_TEST_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "tests"))


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """moto's S3-compatible server as a child process on a free loopback port, for one test module."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoServer) -> None:
    """The standard credential chain and berthing's S3 endpoint override (BERTHING_S3_ENDPOINT_URL), at moto."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where tiny models and ONNX artifacts live for the whole run (reused across runs, keyed by hash)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def settings(cache_dir: Path) -> Settings:
    return Settings(cache_dir=cache_dir / "berthing")


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir: Path):
    """Factory: tiny_model_dir('classify') -> folder of a seeded tiny model."""
    return lambda kind: tiny.build(kind, cache_dir / "tiny")


_LOADED: dict[tuple[str, str], Model] = {}


@pytest.fixture(scope="session")
def load(settings: Settings, tiny_model_dir):
    """Factory: load(kind, name=None, runtime='onnx') -> a Model, loaded once per run."""

    def _load(kind: str, name: str | None = None, runtime: str = "onnx") -> Model:
        key = (kind, runtime)
        if key not in _LOADED:
            path = default_model_path() if kind == "minilm" else tiny_model_dir(kind)
            options = settings.model_copy(update={"runtime": runtime}).load_options()
            _LOADED[key] = load_model(ModelSource(name or kind, path), options)
        return _LOADED[key]

    return _load


@pytest.fixture()
def server_factory(settings: Settings):
    """Factory: server_factory({name: model}, **setting_overrides) -> context manager of a ThreadServer."""

    def _make(models: dict[str, Model], **overrides: object) -> ThreadServer:
        registry = Registry()
        limits = overrides.pop("limits", None)
        for name, model in models.items():
            copy = clone(model, name)
            if limits is not None:
                copy.limits = limits  # type: ignore[assignment]
            registry.add(copy)
        return ThreadServer(registry, settings.model_copy(update=overrides))

    return _make


@pytest.fixture(scope="session")
def minilm_server(load, settings: Settings) -> Iterator[ThreadServer]:
    """The real all-MiniLM-L6-v2 behind a server, shared by the tests that only read from it."""
    registry = Registry()
    registry.add(load("minilm", "minilm"))
    with ThreadServer(registry, settings) as server:
        yield server


@pytest.fixture(scope="module")
def api(load, settings: Settings) -> Iterator[str]:
    """One server per test module with a classifier 'sentiment' and an embedder 'embedder'; yields its URL."""
    registry = Registry()
    registry.add(clone(load("classify"), "sentiment"))
    registry.add(clone(load("embed"), "embedder"))
    with ThreadServer(registry, settings) as server:
        yield server.url
