"""One model as a Ray Serve application: each replica is berthing's own ASGI app with the model loaded once.

The app goes behind `@serve.ingress` as a builder closure over plain settings, so Ray pickles a dict, never a model:
the replica calls the builder, which loads the model there. berthing's token-budget batcher stays the batcher (Ray's
`@serve.batch` counts items; it would replace what makes berthing fast), fed by a high `max_ongoing_requests`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve import Application

from berthing.ray.options import ServeArgs, deployment_options, replica_settings

# The replica's app, set by the builder when Ray calls it in the replica's process (one app per replica process).
_REPLICA: dict[str, Any] = {}


def _builder(settings: dict[str, Any], multiplexed: dict[str, str] | None) -> Callable[[], Any]:
    """A function Ray calls with no arguments on the replica; only plain values are pickled."""

    def build() -> Any:
        return _build_app(settings, multiplexed)  # a module function: sent by reference, so _REPLICA is the real one

    return build


def _loopback_internal_port() -> None:
    """Ray 2.60 binds each replica's inter-deployment gRPC port on every interface ("[::]:0" in its replica.py, no
    setting). On a cluster whose node addresses are loopback (what `berthing ray serve` starts, the tests' clusters),
    nothing needs it beyond loopback, so the replica binds it there. Runs before Ray starts that server."""
    import ray
    from ray.serve._private import replica as ray_replica

    original = getattr(ray_replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "loopback", False):
        return
    if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
        return

    def loopback(server: Any, address: str) -> Any:
        return original(server, "127.0.0.1:0" if address == "[::]:0" else address)

    loopback.loopback = True  # type: ignore[attr-defined]
    ray_replica.add_port_to_grpc_server = loopback


def _build_app(settings: dict[str, Any], multiplexed: dict[str, str] | None = None) -> Any:
    """Load the model and make the ASGI app, in the replica's process; multiplexed models load on first use instead."""
    _loopback_internal_port()
    # the tokenizer's thread pool: the replica's CPUs, not the node's (replicas on one node would oversubscribe it)
    os.environ.setdefault("RAYON_NUM_THREADS", str(settings.get("threads", 1)))
    from rich.console import Console

    from berthing.config import Settings
    from berthing.registry import Registry
    from berthing.server.app import create_app
    from berthing.server.runner import load_registry

    values = Settings(**settings)
    registry = Registry() if multiplexed else load_registry(values, Console(stderr=True, soft_wrap=True))
    app = create_app(registry, values, own_ports=False)
    _REPLICA["app"] = app
    _REPLICA["registry"] = registry
    if not multiplexed:
        return app
    from berthing.ray.multiplex import MultiplexApp, Multiplexer

    _REPLICA["multiplexer"] = Multiplexer(multiplexed, values, registry, app.state.metrics)
    return MultiplexApp(app, set(multiplexed), _REPLICA["instance"].get_model, values.max_body_bytes)


class _Replica:
    """Methods a DeploymentHandle calls on a replica, besides HTTP (which the ingress app answers)."""

    def __init__(self) -> None:
        _REPLICA["instance"] = self  # the multiplexed app loads models through this instance's get_model

    async def infer(self, inputs: list[Any], options: dict[str, Any] | None = None, model: str | None = None) -> list[Any]:
        """Results for parsed inputs (texts, pairs, {question, context}) through the replica's batcher: the path for
        Python callers inside the cluster, without Ray's HTTP proxy or JSON."""
        if "multiplexer" in _REPLICA:  # handle.options(multiplexed_model_id=NAME) routes to a replica holding it
            model = model or serve.get_multiplexed_model_id()
            if not model:
                raise ValueError("a multiplexed application needs the model: infer(..., model=NAME)")
            await self.get_model(model)  # type: ignore[attr-defined]
        return await _model(model).infer(list(inputs), dict(options or {}))

    def replica_info(self) -> dict[str, Any]:
        """Which process and node answered, with the models it holds: for operators and for tests that kill one."""
        import ray

        registry, app = _REPLICA.get("registry"), _REPLICA.get("app")
        answered = 0.0
        if app is not None:  # berthing_requests_total over every label: what this replica answered over HTTP
            answered = sum(s.value for f in app.state.metrics.requests.collect() for s in f.samples if s.name.endswith("_total"))
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "replica": serve.get_replica_context().replica_tag,
            "models": registry.names() if registry is not None else [],
            "requests": int(answered),
        }

    def check_health(self) -> None:
        """Ray's health check: a replica whose model's batcher stopped, or whose every runner is hung in a batch past
        batch_timeout_s, is replaced, not sent more traffic."""
        registry = _REPLICA.get("registry")
        if registry is None:
            raise RuntimeError("the berthing app is not built yet")
        from berthing.server.health import problem

        for model in registry.all():
            reason = problem(model, failures=False)  # a stopped batcher or a hung batch; not what inputs did
            if reason is not None and model.batcher is not None:  # "not started": Ray asks before the app's lifespan
                raise RuntimeError(f"model {model.name!r}: {reason}")


async def get_model(self: Any, name: str) -> Any:
    """Ray's multiplexed loader: the model loaded into this replica's registry (Ray evicts the least recently used).

    Named as the class attribute it becomes: Ray tells a method from a function by that name."""
    return await _REPLICA["multiplexer"].load(name)


def _model(name: str | None) -> Any:
    registry = _REPLICA.get("registry")
    if registry is None:
        raise RuntimeError("the berthing app is not built yet")
    return registry.get(name or registry.names()[0])


def build(args: ServeArgs | dict[str, Any]) -> Application:
    """The Serve application of one model: a deployment of berthing's ASGI app, with options set for this workload."""
    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    ingress = serve.ingress(_builder(replica_settings(args), args.sources() if args.multiplex else None))
    members: dict[str, Any] = {"__module__": __name__, "__doc__": _Replica.__doc__}
    if args.multiplex:
        members["get_model"] = serve.multiplexed(max_num_models_per_replica=args.multiplex)(get_model)
    replica = type("BerthingReplica", (_Replica,), members)
    deployment = serve.deployment(ingress(replica), **deployment_options(args))
    return deployment.bind()
