"""`berthing ray serve`: berthing's models as Ray Serve applications on a cluster, or as a Serve config file (imports Ray
only when it deploys)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

ray_app = typer.Typer(
    no_args_is_help=True, help="Serve models on a Ray cluster (pip install 'berthing\\[ray]'; docs/ray.md)."
)
console = Console(stderr=True, soft_wrap=True)

Models = Annotated[
    list[str] | None, typer.Argument(help="NAME=SOURCE or SOURCE, as `berthing serve` takes them; none = the default model.")
]
Host = Annotated[str, typer.Option(help="Address of Ray's HTTP proxy (when Serve starts on the cluster).")]
Port = Annotated[int, typer.Option(help="Port of Ray's HTTP proxy (when Serve starts on the cluster).")]
Replicas = Annotated[int | None, typer.Option(help="Replicas per model (default 1); or --autoscale.")]
Autoscale = Annotated[str | None, typer.Option(help="MIN:MAX replicas per model, scaled on ongoing requests.")]
Cpus = Annotated[float, typer.Option(help="CPUs each replica reserves; ONNX Runtime runs that many threads.")]
MaxOngoing = Annotated[
    int, typer.Option(help="Requests a replica holds at once (they feed its batcher; Ray's default 5 starves it).")
]
TargetOngoing = Annotated[float, typer.Option(help="Autoscaling target of ongoing requests per replica.")]
MaxQueued = Annotated[int, typer.Option(help="Requests queued per proxy before overload answers (-1 = unbounded).")]
OverloadStatus = Annotated[int, typer.Option(help="Status of Ray's overload answer, 503 or 429 (with Retry-After).")]
Config = Annotated[Path | None, typer.Option("--config", help="berthing's TOML settings file (batching, optimize, tokens...).")]
Token = Annotated[str | None, typer.Option(help="Bearer token for inference routes (Ray's cluster token does not cover them).")]
Default = Annotated[str | None, typer.Option(help="Model routed at '/' (default: the first); others are at /NAME.")]
Task = Annotated[str | None, typer.Option(help="Force the task instead of detecting it.")]
Optimize = Annotated[str | None, typer.Option(help="auto, none, fused or int8 (a checkpoint's ONNX graph).")]
Multiplex = Annotated[
    int, typer.Option(help="Serve every model from one application, a replica holding at most N (loaded on first use).")
]
Protocols = Annotated[list[str] | None, typer.Option("--protocols", help="Wire protocols served (all; all,-NAME).")]


SCALING = ("replicas", "autoscale", "cpus", "max_ongoing_requests", "target_ongoing_requests", "max_queued_requests",
           "overload_status", "multiplex")  # ServeArgs fields, as the flags name them
SETTINGS = {"default_model": "default_model", "inference_token": "inference_token", "task": "task", "optimize": "optimize",
            "protocols": "protocols", "config": "config_file"}  # flag -> berthing setting


def _plans(options: dict[str, Any]) -> list[Any]:
    """One AppPlan per Serve application, from the command's flags (settings resolved as `berthing serve` does)."""
    from pydantic import ValidationError

    from berthing.cli import _settings
    from berthing.ray.plan import plan
    from berthing.types import BerthingError

    if options["replicas"] is not None and options["autoscale"] is not None:
        console.print("[red]error:[/] give --replicas or --autoscale, not both")
        raise typer.Exit(2)
    flags = {name: options[flag] for flag, name in SETTINGS.items() if options[flag] is not None}
    settings = _settings(models=options["models"] or None, **flags)
    try:
        return plan(settings, {key: options[key] for key in SCALING})
    except ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]error:[/] {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        raise typer.Exit(2) from None
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from None


def _write_config(plans: list[Any], host: str, port: int, output: str) -> None:
    """The plan as a Serve config (`serve deploy`, `serve run`, a RayService's serveConfigV2), to a file or stdout."""
    import yaml

    from berthing.ray.plan import serve_config

    text = yaml.safe_dump(serve_config(plans, host, port), sort_keys=False, allow_unicode=True)
    if output == "-":
        typer.echo(text, nl=False)
        return
    Path(output).write_text(text, encoding="utf-8")
    console.print(f"[green]✓[/] wrote {output}: `serve deploy {output}` on a running cluster, or serveConfigV2 (docs/ray.md)")


@ray_app.command("serve")
def serve_command(
    models: Models = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to deploy to (host:port, auto, ray://...); default: start one here.")
    ] = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    replicas: Replicas = None,
    autoscale: Autoscale = None,
    cpus: Cpus = 1.0,
    max_ongoing_requests: MaxOngoing = 256,
    target_ongoing_requests: TargetOngoing = 32,
    max_queued_requests: MaxQueued = 1024,
    overload_status: OverloadStatus = 503,
    multiplex: Multiplex = 0,
    default_model: Default = None,
    inference_token: Token = None,
    task: Task = None,
    optimize: Optimize = None,
    protocols: Protocols = None,
    config: Config = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Deploy and return; the applications keep running on the cluster (--address).")
    ] = False,
    write_config: Annotated[
        str | None,
        typer.Option(help="Write these applications as a Serve config to this file ('-': stdout) instead of deploying."),
    ] = None,
) -> None:
    """Deploy each model as a Ray Serve application (its replicas run berthing's own server) and wait for Ctrl-C."""
    plans = _plans(dict(locals()))
    if write_config is not None:
        _write_config(plans, host, port, write_config)
        return
    if detach and address is None:
        console.print("[red]error:[/] --detach needs --address: a cluster started here ends with this command")
        raise typer.Exit(2)

    from berthing.ray.cluster import connect, deploy, disconnect

    started = connect(address, console)
    try:
        url = deploy(plans, host, port, console)
    except BaseException:
        disconnect(plans, started, console)
        raise
    for p in plans:
        for name in p.args.sources() or [p.name]:
            console.print(f"[green]✓[/] {name}: {url}{p.route_prefix.rstrip('/')}/predictions/{name} ({_scale_line(p.args)})")
    if detach:
        console.print("deployed; `serve status` shows them, `serve delete NAME` removes one (docs/ray.md)")
        return
    console.print("serving through Ray Serve (Ctrl-C or SIGTERM removes the applications)")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        disconnect(plans, started, console)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the wait as Ctrl-C does: the applications are removed on the way out


def _scale_line(args: Any) -> str:
    if args.multiplex:
        return f"multiplexed: at most {args.multiplex} models per replica, {args.replicas or args.autoscale or 1} replica(s)"
    if args.autoscale:
        return f"autoscaling {args.autoscale} replicas, {args.cpus:g} CPU each"
    return f"{args.replicas or 1} replica(s), {args.cpus:g} CPU each"
