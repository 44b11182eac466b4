"""A model held at overload: one batch stuck in the runtime and the queue full, so the next request is shed (503)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from berthing.engine.batcher import BatchLimits
from berthing.engine.model import Model
from berthing.runtime.base import Runtime
from berthing.tasks.tokenize import Features
from tests.support.http import WAIT_S, clone, metric, wait_for
from tests.support.servers import ThreadServer


class GatedRuntime:
    """Holds every batch until `release` is set, so a test can fill the queue deterministically."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.name, self.threads = inner, inner.name, inner.threads
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, features: Features) -> np.ndarray:
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        return self.inner.run(features)


@contextmanager
def overloaded(
    base: Model, name: str, server_factory: Callable[..., ThreadServer], fill: Callable[[str], object], **settings: object
) -> Iterator[ThreadServer]:
    """A server whose model `name` (a clone of `base`) has one batch in the runtime and one item queued (max_queue=1).

    `fill(server_url)` sends one single-item request through any protocol; it is called twice (the running batch,
    then the queued item) in threads. Inside the block every new request to the model is shed; on leaving, the gate
    opens and both fillers must have been answered."""
    gate = GatedRuntime(base.runtimes[0])
    model = clone(base, name, [gate])
    with server_factory({name: model}, limits=BatchLimits(max_queue=1), **settings) as server, cf.ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(fill, server.url)
            assert gate.entered.wait(WAIT_S), "first request never reached the runtime"
            queued = pool.submit(fill, server.url)
            wait_for(lambda: metric(server.url, "berthing_queue_depth", model=f"{name}:1.0") == 1.0, "one queued item")
            yield server
        finally:
            gate.release.set()
        running.result()
        queued.result()
