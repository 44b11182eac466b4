"""A real two-node Ray cluster on 127.0.0.1 for the tests, started and stopped through its own handles.

Never `ray stop`: it kills every Ray process on the machine. Usage stats are off, token auth is on with a token made
here, the object store is capped, and no dashboard starts. Every node address is loopback: Ray resolves 127.0.0.1 to
the host's outward address unless its "no multi-host cluster" switch is set, and nothing here may bind beyond it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.support.http import free_port

NODE_CPUS = 2  # logical CPUs per node: two one-CPU replicas fit on each
OBJECT_STORE_BYTES = 128 * 1024 * 1024

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node addresses stay 127.0.0.1 (see the module's docstring)
    "RAY_DEDUP_LOGS": "0",
    # autoscaling decides on metrics pushed every 10 s by default; the autoscaling test sets short delays and needs these
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@dataclass
class RayCluster:
    """The running cluster: its GCS address, the Serve proxy's HTTP port, and the worker node's id."""

    cluster: Any
    address: str
    http_port: int
    head_node_id: str
    worker_node_id: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def configure_env() -> None:
    """Ray reads these at import, so tests/conftest.py sets them before any test module can import Ray."""
    os.environ.update(RAY_ENV)
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """Start a head and a worker node (NODE_CPUS each), connect this process, start Serve on a free loopback port."""
    configure_env()
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    node = {"num_cpus": NODE_CPUS, "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={**node, "include_dashboard": False})
    worker = cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield RayCluster(cluster, cluster.address, port, cluster.head_node.node_id, worker.node_id)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


@contextmanager
def deployed(settings: Any, models: dict[str, Any], default: str | None = None, **scaling: Any) -> Iterator[list[Any]]:
    """Deploy {name: source} as berthing's Serve applications (as `berthing ray serve` plans them), side by side;
    remove them on exit so the next test has the cluster's CPUs. Yields the plans (name, route_prefix, args)."""
    from ray import serve

    from berthing.ray.plan import plan
    from berthing.ray.serve_app import build

    wanted = settings.model_copy(update={"models": [f"{n}={p}" for n, p in models.items()], "default_model": default})
    plans = plan(wanted, scaling)
    try:
        serve.run_many([serve.RunTarget(build(p.args), name=p.name, route_prefix=p.route_prefix) for p in plans])
        yield plans
    finally:
        for p in plans:
            serve.delete(p.name)


def replica_states(app: str) -> dict[str, int]:
    """How many replicas of the application's deployment are in each state (RUNNING, STARTING, STOPPING...)."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {str(k): v for k, v in status.deployments["berthing"].replica_states.items()}


def replicas(app: str, handle: Any, want: int, seconds: float = 60.0) -> dict[int, dict[str, Any]]:
    """replica_info of each of `want` replicas, by pid, asking through the handle until each has answered (bounded in
    time: a replacement replica reaches the handle's router a moment after Serve reports it RUNNING)."""
    import time

    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    while len(seen) < want and time.monotonic() < deadline:
        info = handle.replica_info.remote().result(timeout_s=30)
        seen[info["pid"]] = info
        if len(seen) < want:
            time.sleep(0.05)
    return seen
