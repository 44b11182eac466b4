"""One real two-node Ray cluster on 127.0.0.1 for every test under tests/cluster (they are marked `ray`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_cluster import RayCluster, ray_cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="package")
def cluster() -> Iterator[RayCluster]:
    """The cluster, started once for tests/cluster (about 10 s) and shut down through its own handles after them, so
    the rest of the run does not share the CPUs with an idle cluster."""
    with ray_cluster() as running:
        yield running
