"""`berthing serve`: load every model (exporting once if needed), then run uvicorn until SIGTERM drains it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from berthing import prefetch
from berthing.config import Settings
from berthing.engine.model import Model
from berthing.loading import load_model
from berthing.packaging.sources import resolve
from berthing.registry import Registry
from berthing.runtime.threads import available_cores
from berthing.types import ModelLoadError

KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds
EXIT_DRAIN_CUT = 1  # exit status when the drain timeout or a second SIGTERM ended requests unanswered
APP_SHUTDOWN_FLOOR_S = 1.0  # the application's shutdown (listeners, models) gets this long even past the drain timeout
RECORD_STARTUP_AFTER_S = 0.5  # the startup-file list is written after the first requests (and what they import)


def _natural(text: str) -> list[Any]:
    """Sort key where sentiment-2.0 comes before sentiment-10.0."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def store_entries(store: Path) -> list[Path]:
    """What `--models all` serves: every .berth archive, package folder and checkpoint folder in the store."""
    from berthing.packaging.package import is_package

    if not store.is_dir():
        raise ModelLoadError(f"model store {store} is not a folder")
    found = [p for p in store.iterdir() if not p.name.startswith(".") and (is_package(p) or (p / "config.json").is_file())]
    return sorted(found, key=lambda p: _natural(p.name))


def model_specs(settings: Settings) -> list[str | None]:
    """The models to load at start: `all` expands to the store's entries; relative sources are looked up in the store
    first, as TorchServe's --models names files of its --model-store."""
    store = settings.model_store
    if not settings.models:
        return [] if store else [None]
    specs: list[str | None] = []
    for spec in settings.models:
        if spec == "all":
            if store is None:
                raise ModelLoadError("--models all loads every model of the model store: give --model-store too")
            specs.extend(str(p) for p in store_entries(store))
            continue
        name, sep, source = spec.partition("=")
        if not sep:
            name, source = "", spec
        if store is not None and source and not Path(source).is_absolute() and (store / source).exists():
            source = str(store / source)
        specs.append(f"{name}={source}" if name else source)
    return specs


def load_registry(settings: Settings, console: Console) -> Registry:
    """Load the configured models (the default model when none is named), with a spinner per model."""
    from berthing.packaging.pair_bound import cpu_line
    from berthing.packaging.tune import summary
    from berthing.runtime.cpu import detect

    registry = Registry()
    for spec in model_specs(settings):
        source = resolve(spec, settings.cache_dir)
        with console.status(f"loading {source.name} from {source.path}") as status:

            def progress(message: str, status=status, name=source.name) -> None:
                status.update(message)
                if not console.is_terminal:  # logs should still say that an export happened
                    console.print(f"{name}: {message}")

            options = settings.load_options(source.name)
            options.registry = registry
            model = load_model(source, options, progress=progress)
        model.on_lanes = console.print
        registry.add(model)
        console.print(
            f"[green]✓[/] {model.name} v{model.version}: task={model.spec.task} runtime={model.runtimes[0].name} "
            f"workers={len(model.runtimes)} threads/worker={model.runtimes[0].threads} "
            f"max_length={model.spec.max_length} loaded in {model.load_seconds:.2f}s"
        )
        if model.runtimes[0].name == "onnx":
            console.print(f"  {summary(model.optimization)}")
            check = model.verification or {}
            level = "none" if check.get("outcome") == "fallback" else (model.optimization or {}).get("level")
            console.print(f"  {cpu_line(detect(), level)}; load check: {check.get('outcome')} ({check.get('note')})")
    return registry


def thread_plan(registry: Registry, cores: int) -> str:
    """What the server runs on how many cores: ONNX Runtime's threads per model, the tokenizer, the event loop."""
    models = [registry.get(name) for name in registry.names()]
    intra = sum(len(m.runtimes) * m.runtimes[0].threads for m in models)
    tokenizer = "1 thread" if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("false", "0") else "rayon, 1/core"
    per_model = ", ".join(_model_threads(m) for m in models)
    line = f"threads: {cores} cores; {intra} model threads ({per_model or 'no models yet'}); tokenizer {tokenizer}; 1 event loop"
    if intra > cores:
        line += " - models busy at the same time share the cores (set --threads or [per_model.NAME] threads to split them)"
    return line


def _model_threads(model: Model) -> str:
    line = f"{model.name}: {len(model.runtimes)} worker x {model.runtimes[0].threads}"
    if model.lanes_planned():
        threads = model.lane_threads()
        per = str(threads[0]) if len(set(threads)) == 1 else "+".join(map(str, threads))
        line += f", or {len(threads)} lanes x {per} under load"
    return line


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so port 0 works and the real port can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the listener says TCP, and
    # without it each kept-alive request waits ~40 ms for a delayed ACK (uvloop sets it either way)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _drained_server_class():
    """uvicorn's Server with berthing's SIGTERM drain (docs/reliability.md).

    On the first SIGTERM (or Ctrl-C) the listeners stop: connections already in their queues are accepted first,
    later ones are refused. Every request in progress is answered (with `Connection: close`), a connection without
    one gets DRAIN_IDLE_GRACE_S to send it, then the application shuts down (models finish queued work). A completed
    drain exits 0 (uvicorn would re-raise SIGTERM: exit -15). All of it is bounded by drain_timeout_s
    (uvicorn's timeout_graceful_shutdown): past it, or on a second SIGTERM/Ctrl-C, the process ends at once, with
    EXIT_DRAIN_CUT when requests or the application's shutdown were cut short, else 0."""
    import uvicorn

    from berthing.server.connections import accept_backlog

    log = logging.getLogger("uvicorn.error")

    class DrainedServer(uvicorn.Server):
        after_start: Callable[[], None] | None = None  # run in a thread RECORD_STARTUP_AFTER_S after the server is up
        exit_now: Callable[[int], Any] = staticmethod(os._exit)  # a cut drain does not wait for threads still computing

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                getattr(self, "_captured_signals", []).clear()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:  # a second signal: uvicorn forces only on a second SIGINT, we on SIGTERM too
                self.force_exit = True
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.after_start is not None and not self.should_exit:
                loop = asyncio.get_running_loop()
                loop.call_later(RECORD_STARTUP_AFTER_S, loop.run_in_executor, None, self.after_start)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            loop = asyncio.get_running_loop()
            timeout = self.config.timeout_graceful_shutdown
            deadline = loop.time() + (timeout if timeout is not None else float("inf"))
            state = self.server_state
            log.info("Shutting down")
            state.draining = True  # type: ignore[attr-defined]  # read by connections accepted from here on
            queued: list[socket.socket] = []
            for index, server in enumerate(self.servers):  # uvicorn made one server per socket, in order
                if sockets and index < len(sockets):  # accept its queue, then close at once: a client whose
                    queued += accept_backlog([sockets[index]])  # handshake ends in between (microseconds) is reset
                server.close()
            for sock in sockets or []:
                sock.close()
            for connection in list(state.connections):
                connection.shutdown()
            handshakes = [loop.create_task(self._adopt(conn)) for conn in queued]
            log.info(
                "draining: %d requests on %d connections (+%d accepted from the queue), up to %g s; new connections "
                "are refused; a second SIGTERM stops at once", len(state.tasks), len(state.connections), len(queued),
                timeout or float("inf"),
            )
            while (state.tasks or any(map(_delivering, state.connections)) or not all(t.done() for t in handshakes)):
                if self.force_exit or loop.time() >= deadline:
                    break
                await asyncio.sleep(0.05)
            if state.tasks:
                why = "a second signal" if self.force_exit else f"the drain timeout ({timeout:g} s)"
                self._cut(f"{len(state.tasks)} requests were still running at {why}")
            for connection in list(state.connections):  # answered, idle, or slow to send a request: nothing admitted
                if connection.transport.is_closing():
                    connection.transport.abort()
                else:
                    connection.transport.close()
            finishing = loop.create_task(self.lifespan.shutdown())
            until = max(deadline, loop.time() + APP_SHUTDOWN_FLOOR_S)  # slow clients may have used the whole timeout
            while not finishing.done() and not self.force_exit and loop.time() < until:
                await asyncio.sleep(0.05)
            if not finishing.done():
                why = "a second signal" if self.force_exit else f"the drain timeout ({timeout:g} s)"
                self._cut(f"the application had not finished shutting down (models' queued work) at {why}")

        async def _adopt(self, conn: socket.socket) -> None:
            """Serve a connection taken from a listener's queue as the listener would have."""
            loop = asyncio.get_running_loop()

            def protocol() -> asyncio.Protocol:
                return self.config.http_protocol_class(  # type: ignore[call-arg]
                    config=self.config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
                )

            try:
                await loop.connect_accepted_socket(protocol, sock=conn, ssl=self.config.ssl)
            except (OSError, ValueError):  # a failed TLS handshake (ssl.SSLError), a client gone: carry on
                conn.close()

        def _cut(self, reason: str) -> None:
            log.error("drain cut short: %s; exiting with status %d", reason, EXIT_DRAIN_CUT)
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            self.exit_now(EXIT_DRAIN_CUT)

    return DrainedServer


def _delivering(connection: Any) -> bool:
    """Whether a connection may still carry an answer: open, or closing with bytes not yet sent. A TLS connection
    whose client keeps it open after its answer waits for the client's close_notify, up to 30 s: not worth waiting."""
    transport = getattr(connection, "transport", None)
    return transport is not None and (not transport.is_closing() or transport.get_write_buffer_size() > 0)


class PortRouter:
    """One ASGI app for one uvicorn server with several sockets: each port's requests go to its own app.

    One server means one event loop, one lifespan (the inference app's) and one SIGTERM drain for all of them."""

    def __init__(self, inference: Any, by_port: dict[int, Any]) -> None:
        self.inference, self.by_port = inference, by_port

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        server = scope.get("server") or (None, None)
        app = self.inference if scope["type"] == "lifespan" else self.by_port.get(server[1], self.inference)
        await app(scope, receive, send)


def build_apps(
    settings: Settings, registry: Registry, say: Callable[[str], None] | None = None
) -> tuple[PortRouter, list[socket.socket], str | None]:
    """Check the management address, write the key file, bind the ports (inference, management, metrics if asked)."""
    from berthing.server.app import create_app, create_metrics_app
    from berthing.server.management import create_management_app
    from berthing.server.metrics import Metrics
    from berthing.server.security import check_bind, prepare_token

    check_bind(settings)
    token = prepare_token(settings)
    metrics = Metrics()
    sock = bind(settings.host, settings.port)
    management_sock = bind(settings.management_host, settings.management_port)
    sockets = [sock, management_sock]
    by_port = {management_sock.getsockname()[1]: create_management_app(registry, settings, metrics, token)}
    if settings.metrics_port is not None:
        metrics_sock = bind(settings.metrics_host, settings.metrics_port)
        sockets.append(metrics_sock)
        by_port[metrics_sock.getsockname()[1]] = create_metrics_app(metrics)
    return PortRouter(create_app(registry, settings, metrics, say), by_port), sockets, token


def serve(settings: Settings, console: Console | None = None, record_startup: Sequence[str] | None = None) -> None:
    """Load, bind, serve; returns after a graceful shutdown.

    `record_startup`: the `berthing serve` arguments this process was launched with; the files its start read are
    then listed for the next start's read-ahead (berthing.prefetch)."""

    console = console or Console(stderr=True, soft_wrap=True)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Tokenize on the calling thread: rayon's pool (one thread per core) would compete with ONNX Runtime's intra-op
    # threads, which already take every core; measured equal or better (benchmarks/README.md, issue 5).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    registry = load_registry(settings, console)
    console.print(thread_plan(registry, available_cores()))
    app, sockets, token = build_apps(settings, registry, console.print)
    host, port = sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(registry.names()) or "no models"
    scheme = "https" if settings.ssl_certfile else "http"
    console.print(f"serving {names} on {scheme}://{shown}:{port}  (Ctrl-C or SIGTERM drains and stops)")
    http = [p for p in settings.enabled_protocols() if p not in ("kserve-grpc",)]
    console.print(f"protocols on this port: {', '.join(http) or 'none'} (--protocols; docs/protocols.md)")
    if settings.ui:
        console.print(f"playground: {scheme}://{shown}:{port}/ in a browser; API docs at /docs (--no-ui turns both off)")
    m_host, m_port = sockets[1].getsockname()[:2]
    auth = "token in the key file" if token else "no token"
    m_shown = f"[{m_host}]" if ":" in m_host else m_host
    console.print(f"management API at {scheme}://{m_shown}:{m_port} ({auth})")
    if len(sockets) > 2:
        x_host, x_port = sockets[2].getsockname()[:2]
        x_shown = f"[{x_host}]" if ":" in x_host else x_host
        console.print(f"metrics at {scheme}://{x_shown}:{x_port}/metrics (and on the inference port)")
    server = _drained_server_class()(uvicorn_config(app, settings))
    if record_startup is not None:
        artifacts = [f for m in map(registry.get, registry.names()) for r in m.runtimes[:1] for f in _artifact_files(r)]
        server.after_start = functools.partial(prefetch.record, list(record_startup), artifacts)
    server.run(sockets=sockets)


def uvicorn_config(app: Any, settings: Settings) -> Any:
    """The server's settings: TLS when asked, idle connections closed, slow or oversized request heads refused
    (server/connections.py), no proxy header believed."""
    import uvicorn

    from berthing.server.connections import protocol_class

    return uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol_class(settings.header_timeout_s),
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # bounds DrainedServer's whole drain
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
        ssl_certfile=settings.ssl_certfile,  # every port of this server: inference, management, metrics
        ssl_keyfile=settings.ssl_keyfile,
        proxy_headers=False,  # X-Forwarded-For is whatever a client writes: never trusted (a proxy in front logs it)
        server_header=False,
    )


def _artifact_files(runtime: Any) -> list[Path]:
    """The files next to the model file a runtime loaded (model.onnx, tokenizer.json, berthing.json, ...)."""
    model_path = getattr(runtime, "model_path", None)
    if not isinstance(model_path, Path):
        return []
    return sorted(p for p in model_path.parent.iterdir() if p.is_file())
