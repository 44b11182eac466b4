"""Reaching a Ray cluster for `berthing ray serve`: connect to one, or start one here with safe defaults; deploy.

A cluster started here binds loopback, runs no dashboard and sends no usage stats; Ray's own token auth stays as Ray
sets it (on for clusters `ray.init` starts). Nothing here ever runs `ray stop`, which ends every Ray process on a host.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from berthing.ray.plan import AppPlan


def connect(address: str | None, console: Console) -> bool:
    """Connect to `address` (or RAY_ADDRESS), else start a local cluster; True when this process started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # one host: Ray's own ports stay on loopback
    import ray

    with console.status(f"connecting to the Ray cluster at {address}" if address else "starting a local Ray cluster"):
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            return False
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    console.print(f"started a local Ray cluster ({ray.cluster_resources().get('CPU', 0):g} CPUs); it ends with this command")
    return True


def deploy(plans: list[AppPlan], host: str, port: int, console: Console) -> str:
    """Start Serve's proxy on host:port (unless Serve already runs there) and deploy every application; its base URL."""
    from ray import serve

    from berthing.ray.serve_app import build

    serve.start(http_options={"host": host, "port": port})
    targets = [serve.RunTarget(build(p.args), name=p.name, route_prefix=p.route_prefix) for p in plans]
    names = ", ".join(p.name for p in plans)
    with console.status(f"deploying {names} (each replica loads its model)"):
        serve.run_many(targets)  # side by side: replicas of different models start at the same time
    return proxy_url(host, port)


def proxy_url(host: str, port: int) -> str:
    """Where Serve's proxy listens, as Ray reports it (an existing Serve keeps the options it started with)."""
    try:
        from ray.serve.context import _get_global_client

        options: Any = _get_global_client().http_config
        host, port = options.host, options.port
    except Exception:  # noqa: BLE001 - a private API; the asked address is the best answer without it
        pass
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def disconnect(plans: list[AppPlan], started: bool, console: Console) -> None:
    """Remove the applications this command deployed; stop Serve and the cluster too when this process started it."""
    import ray
    from ray import serve

    with console.status("removing the applications"):
        try:
            if started:
                serve.shutdown()
            else:
                for p in plans:
                    serve.delete(p.name)
        finally:
            ray.shutdown()
    console.print("stopped")
