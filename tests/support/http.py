"""Helpers for tests that talk to a server over HTTP: model clones, /metrics samples, polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from berthing.engine.model import Model
from berthing.runtime.base import Runtime

WAIT_S = 30.0  # upper bound for waits on a server's observable state; never a timing assertion


def free_port() -> int:
    """A port free on loopback now (for servers started by other processes, which cannot be handed a socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clone(model: Model, name: str, runtimes: list[Runtime] | None = None) -> Model:
    """A fresh Model (own batcher) sharing the loaded encoder and, unless given, the runtimes."""
    return Model(
        name, model.version, model.spec, model.encoder, runtimes or model.runtimes, model.limits, model.source,
        model.load_seconds,
    )


def metric(url: str, name: str, **labels: str) -> float | None:
    """One sample of the server's /metrics, parsed (the first whose labels include `labels`); None when absent."""
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Poll `check` until true; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def torchserve_answer(url: str, model: str, body: Any) -> Any:
    """The TorchServe route's answer for the same input: what every other protocol must agree with."""
    response = httpx.post(f"{url}/predictions/{model}", json=body, timeout=WAIT_S)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal structure and labels; numbers equal to 1e-5 (the same ONNX model on the same CPU)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list) and want and isinstance(want[0], int | float) and not isinstance(want[0], bool):
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), atol=1e-5, err_msg=where)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5), where
    else:
        assert got == want, where
