"""One live server per fuzz module, with a model of every task, and the check that it still serves afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from berthing.registry import Registry
from tests.fuzz.targets import PREDICTION, TASKS, Target, targets
from tests.support.http import WAIT_S, clone
from tests.support.servers import ThreadServer


@pytest.fixture(scope="module")
def fuzz_server(load, settings) -> Iterator[ThreadServer]:
    """A real uvicorn server on loopback with models named after their tasks (the first, 'embed', is the default)."""
    registry = Registry()
    for task in TASKS:
        registry.add(clone(load(task), task))
    with ThreadServer(registry, settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(fuzz_server: ThreadServer) -> Iterator[httpx.Client]:
    """A connection per request: on a kept-alive one, each answer waited ~40 ms for a delayed ACK (the listening
    socket's accepted connections lacked TCP_NODELAY), which bounded how much could be fuzzed in a minute."""
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=fuzz_server.url, timeout=WAIT_S * 4, limits=limits) as http:
        yield http


@pytest.fixture(scope="module")
def found(fuzz_server: ThreadServer) -> list[Target]:
    """Every POST route of the server, each with a valid body."""
    return targets(fuzz_server.app)


@pytest.fixture(autouse=True)
def still_serving(client: httpx.Client) -> Iterator[None]:
    """After each test: never a worker lost."""
    yield
    assert_still_serving(client)


def assert_still_serving(client: httpx.Client) -> None:
    """Every model is ready and answers a valid request."""
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    for task in TASKS:
        response = client.post(f"/predictions/{task}", json=PREDICTION[task])
        assert response.status_code == 200, (task, response.text)
