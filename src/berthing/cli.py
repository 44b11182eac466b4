"""The `berthing` command line: serve (more commands arrive with their issues)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

import berthing
from berthing.config import Settings
from berthing.types import BerthingError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="BERT-family encoders, from checkpoint to service.")
console = Console(stderr=True, soft_wrap=True)


def _help(field: str) -> str:
    info = Settings.model_fields[field]
    env = f"BERTHING_{field.upper()}"
    default = info.get_default(call_default_factory=True)
    return f"{info.description} (env {env}; default {default})"


def _settings(**flags: Any) -> Settings:
    """Flags that were given override env vars and the TOML file; the rest fall through."""
    given = {k: v for k, v in flags.items() if v is not None and v != []}
    try:
        return Settings(**given)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            console.print(f"[red]error:[/] setting {where}: {err['msg']}")
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="NAME=SOURCE or SOURCE (checkpoint folder, hub id); none = the default model 'minilm'."),
    ] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    task: Annotated[str | None, typer.Option(help=_help("task"))] = None,
    runtime: Annotated[str | None, typer.Option(help=_help("runtime"))] = None,
    workers: Annotated[int | None, typer.Option(help=_help("workers"))] = None,
    threads: Annotated[int | None, typer.Option(help=_help("threads"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help=_help("max_batch_tokens"))] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=_help("max_batch_size"))] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help=_help("max_wait_ms"))] = None,
    max_queue: Annotated[int | None, typer.Option(help=_help("max_queue"))] = None,
    max_items: Annotated[int | None, typer.Option(help=_help("max_items"))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help=_help("max_body_bytes"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of settings (env BERTHING_CONFIG_FILE)")] = None,
) -> None:
    """Serve models over HTTP (TorchServe-compatible inference API, /metrics, /openapi.json)."""
    from berthing.server.runner import serve as run_server

    settings = _settings(
        models=models, host=host, port=port, task=task, runtime=runtime, workers=workers, threads=threads,
        cache_dir=cache_dir, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms, max_queue=max_queue, max_items=max_items, max_body_bytes=max_body_bytes,
        log_level=log_level, config_file=config,
    )
    try:
        run_server(settings, console)
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on {settings.host}:{settings.port}: {exc}")
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print berthing's version."""
    typer.echo(berthing.__version__)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
