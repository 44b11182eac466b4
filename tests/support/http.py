"""Helpers for tests that talk to a server over HTTP: model clones, /metrics samples, polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
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
