"""`berthing serve`: load every model (exporting once if needed), then run uvicorn until SIGTERM drains it."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from berthing.config import Settings
from berthing.engine.model import load_model
from berthing.packaging.sources import resolve
from berthing.registry import Registry
from berthing.runtime.threads import available_cores

GRACEFUL_SHUTDOWN_S = 60


def load_registry(settings: Settings, console: Console) -> Registry:
    """Load the configured models (the default model when none is named), with a spinner per model."""
    registry = Registry()
    specs: list[str | None] = list(settings.models) or ([] if settings.model_store else [None])
    for spec in specs:
        source = resolve(spec, settings.cache_dir)
        with console.status(f"loading {source.name} from {source.path}") as status:

            def progress(message: str, status=status, name=source.name) -> None:
                status.update(message)
                if not console.is_terminal:  # logs should still say that an export happened
                    console.print(f"{name}: {message}")

            model = load_model(source, settings.load_options(), progress=progress)
        registry.add(model)
        console.print(
            f"[green]✓[/] {model.name} v{model.version}: task={model.spec.task} runtime={model.runtimes[0].name} "
            f"workers={len(model.runtimes)} threads/worker={model.runtimes[0].threads} "
            f"max_length={model.spec.max_length} loaded in {model.load_seconds:.2f}s"
        )
    return registry


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so port 0 works and the real port can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _drained_server_class():
    """uvicorn re-raises SIGTERM after its graceful shutdown (exit -15); a completed drain exits 0 instead."""
    import uvicorn

    class DrainedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                getattr(self, "_captured_signals", []).clear()

    return DrainedServer


class PortRouter:
    """One ASGI app for one uvicorn server with two sockets: the management port goes to the management app.

    One server means one event loop, one lifespan (the inference app's) and one SIGTERM drain for both."""

    def __init__(self, inference: Any, management: Any, management_port: int) -> None:
        self.inference, self.management, self.management_port = inference, management, management_port

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        server = scope.get("server") or (None, None)
        app = self.management if scope["type"] != "lifespan" and server[1] == self.management_port else self.inference
        await app(scope, receive, send)


def build_apps(settings: Settings, registry: Registry) -> tuple[PortRouter, list[socket.socket], str | None]:
    """Check the management address, write the key file, bind both ports; the router serves both apps."""
    from berthing.server.app import create_app
    from berthing.server.management import create_management_app
    from berthing.server.metrics import Metrics
    from berthing.server.security import check_bind, prepare_token

    check_bind(settings)
    token = prepare_token(settings)
    metrics = Metrics()
    sock = bind(settings.host, settings.port)
    management_sock = bind(settings.management_host, settings.management_port)
    router = PortRouter(
        create_app(registry, settings, metrics),
        create_management_app(registry, settings, metrics, token),
        management_sock.getsockname()[1],
    )
    return router, [sock, management_sock], token


def serve(settings: Settings, console: Console | None = None) -> None:
    """Load, bind, serve; returns after a graceful shutdown."""
    import uvicorn

    console = console or Console(stderr=True, soft_wrap=True)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"berthing: {available_cores()} cores available")
    registry = load_registry(settings, console)
    app, sockets, token = build_apps(settings, registry)
    host, port = sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(registry.names()) or "no models"
    console.print(f"serving {names} on http://{shown}:{port}  (Ctrl-C or SIGTERM drains and stops)")
    m_host, m_port = sockets[1].getsockname()[:2]
    auth = "token in the key file" if token else "no token"
    m_shown = f"[{m_host}]" if ":" in m_host else m_host
    console.print(f"management API at http://{m_shown}:{m_port} ({auth})")
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    _drained_server_class()(config).run(sockets=sockets)
