"""Ray's health check on a replica: a stopped batcher or a hung runtime replaces the replica; failing batches do not
(a client's inputs could make them fail, and would then restart replicas at will)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from berthing.engine.batcher import FAILURES_UNHEALTHY
from berthing.engine.model import Model
from berthing.registry import Registry
from berthing.server.health import problem
from tests.support.http import clone


def test_check_health_replaces_a_replica_for_a_hung_runtime_not_for_failing_batches(
    load: Callable[..., Model], monkeypatch: pytest.MonkeyPatch
) -> None:
    from berthing.ray import serve_app

    model = clone(load("classify"), "m")
    registry = Registry()
    registry.add(model)
    monkeypatch.setitem(serve_app._REPLICA, "registry", registry)
    replica = object.__new__(serve_app._Replica)

    async def scenario() -> None:
        model.start()
        batcher = model.batcher
        assert batcher is not None
        replica.check_health()  # serving: nothing raised
        batcher._failures = FAILURES_UNHEALTHY  # as after that many failed batches
        assert problem(model) is not None and problem(model, failures=False) is None
        replica.check_health()  # readiness says not ready; Ray keeps the replica
        batcher._hung.update(batcher._workers)  # every runner stuck past batch_timeout_s
        with pytest.raises(RuntimeError, match="a batch has run for over 60 s"):
            replica.check_health()
        batcher._hung.clear()
        await model.stop()
        with pytest.raises(RuntimeError, match="its batcher stopped"):
            replica.check_health()

    asyncio.run(scenario())
