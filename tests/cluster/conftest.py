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


@pytest.fixture(scope="session")
def cluster() -> Iterator[RayCluster]:
    """The cluster, started once per run (about 10 s) and shut down through its own handles at the end."""
    with ray_cluster() as running:
        yield running
