"""`berthing serve`: load every model (exporting once if needed), then run uvicorn until SIGTERM drains it."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

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
    specs = settings.models or [None]
    for spec in specs:
        source = resolve(spec)
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


def serve(settings: Settings, console: Console | None = None) -> None:
    """Load, bind, serve; returns after a graceful shutdown."""
    import uvicorn

    from berthing.server.app import create_app

    console = console or Console(stderr=True, soft_wrap=True)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"berthing: {available_cores()} cores available")
    registry = load_registry(settings, console)
    app = create_app(registry, settings)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving {', '.join(registry.names())} on http://{shown}:{port}  (Ctrl-C or SIGTERM drains and stops)")
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    _drained_server_class()(config).run(sockets=[sock])
