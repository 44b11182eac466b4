"""The `berthing` command line: serve, pack, inspect, predict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

import berthing
from berthing.config import Settings, SettingsError
from berthing.types import BerthingError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="BERT-family encoders, from checkpoint to service.")
console = Console(stderr=True, soft_wrap=True)
_LOG_EVERY_S = 10.0  # berthing predict without a terminal: a progress line this often


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
    except (FileNotFoundError, SettingsError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _threshold_flags(items: list[str] | None) -> dict[str, str] | None:
    from berthing.packaging.tune import parse_threshold_flags

    try:
        return parse_threshold_flags(items) or None
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="NAME=SOURCE or SOURCE (folder, package, s3://bucket/key, hub id); none = the default 'minilm'."),
    ] = None,
    models_option: Annotated[
        list[str] | None,
        typer.Option("--models", help="Like the arguments, TorchServe-style: NAME=FILE in --model-store, or 'all'."),
    ] = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    task: Annotated[str | None, typer.Option(help=_help("task"))] = None,
    runtime: Annotated[str | None, typer.Option(help=_help("runtime"))] = None,
    workers: Annotated[int | None, typer.Option(help=_help("workers"))] = None,
    threads: Annotated[int | None, typer.Option(help=_help("threads"))] = None,
    lanes: Annotated[bool | None, typer.Option("--lanes/--no-lanes", help=_help("lanes"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help=_help("max_batch_tokens"))] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=_help("max_batch_size"))] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help=_help("max_wait_ms"))] = None,
    max_queue: Annotated[int | None, typer.Option(help=_help("max_queue"))] = None,
    max_queue_ms: Annotated[float | None, typer.Option(help=_help("max_queue_ms"))] = None,
    batch_timeout_s: Annotated[float | None, typer.Option(help=_help("batch_timeout_s"))] = None,
    drain_timeout_s: Annotated[float | None, typer.Option(help=_help("drain_timeout_s"))] = None,
    header_timeout_s: Annotated[float | None, typer.Option(help=_help("header_timeout_s"))] = None,
    max_items: Annotated[int | None, typer.Option(help=_help("max_items"))] = None,
    input_field: Annotated[str | None, typer.Option(help=_help("input_field"))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help=_help("max_body_bytes"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
    allow_pickle: Annotated[bool | None, typer.Option("--allow-pickle", help=_help("allow_pickle"))] = None,
    model_store: Annotated[Path | None, typer.Option(help=_help("model_store"))] = None,
    management_host: Annotated[str | None, typer.Option(help=_help("management_host"))] = None,
    management_port: Annotated[int | None, typer.Option(help=_help("management_port"))] = None,
    management_token: Annotated[str | None, typer.Option(help=_help("management_token"))] = None,
    management_token_file: Annotated[Path | None, typer.Option(help=_help("management_token_file"))] = None,
    management_auth: Annotated[
        bool | None, typer.Option("--management-auth/--no-management-auth", help=_help("management_auth"))
    ] = None,
    inference_token: Annotated[str | None, typer.Option(help=_help("inference_token"))] = None,
    protocols: Annotated[list[str] | None, typer.Option("--protocols", "--protocol", help=_help("protocols"))] = None,
    default_model: Annotated[str | None, typer.Option(help=_help("default_model"))] = None,
    grpc_host: Annotated[str | None, typer.Option(help=_help("grpc_host"))] = None,
    grpc_port: Annotated[int | None, typer.Option(help=_help("grpc_port"))] = None,
    bert_serving_host: Annotated[str | None, typer.Option(help=_help("bert_serving_host"))] = None,
    bert_serving_port: Annotated[int | None, typer.Option(help=_help("bert_serving_port"))] = None,
    bert_serving_port_out: Annotated[int | None, typer.Option(help=_help("bert_serving_port_out"))] = None,
    allowed_sources: Annotated[list[str] | None, typer.Option(help=_help("allowed_sources"))] = None,
    cors_origins: Annotated[list[str] | None, typer.Option("--cors-origins", "--cors-origin", help=_help("cors_origins"))] = None,
    ui: Annotated[bool | None, typer.Option("--ui/--no-ui", help=_help("ui"))] = None,
    default_workers: Annotated[int | None, typer.Option(help=_help("default_workers"))] = None,
    trust_handlers: Annotated[bool | None, typer.Option("--trust-handlers", help=_help("trust_handlers"))] = None,
    metrics_host: Annotated[str | None, typer.Option(help=_help("metrics_host"))] = None,
    metrics_port: Annotated[int | None, typer.Option(help=_help("metrics_port"))] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help=_help("ssl_certfile"))] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help=_help("ssl_keyfile"))] = None,
    optimize: Annotated[str | None, typer.Option(help=_help("optimize"))] = None,
    optimize_force: Annotated[bool | None, typer.Option("--optimize-force", help=_help("optimize_force"))] = None,
    on_verify_fail: Annotated[str | None, typer.Option(help=_help("on_verify_fail"))] = None,
    verify_on_load: Annotated[str | None, typer.Option(help=_help("verify_on_load"))] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration-file", "--calibration", help=_help("calibration_file"))
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option("--threshold", "--thresholds", help="NAME=VALUE, repeatable. " + _help("thresholds")),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML settings file (env BERTHING_CONFIG_FILE); \\[per_model.NAME] tables for one model"),
    ] = None,
) -> None:
    """Serve models over HTTP (TorchServe-compatible inference API, /metrics, /openapi.json; management API)."""
    from berthing.server.runner import serve as run_server

    named = [part.strip() for item in [*(models or []), *(models_option or [])] for part in item.split(",") if part.strip()]
    settings = _settings(
        models=named, host=host, port=port, task=task, runtime=runtime, workers=workers, threads=threads,
        lanes=lanes, cache_dir=cache_dir, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms, max_queue=max_queue, max_queue_ms=max_queue_ms, batch_timeout_s=batch_timeout_s,
        drain_timeout_s=drain_timeout_s, header_timeout_s=header_timeout_s, max_items=max_items, max_body_bytes=max_body_bytes,
        input_field=input_field, log_level=log_level, config_file=config, allow_pickle=allow_pickle, model_store=model_store,
        management_host=management_host, management_port=management_port, management_token=management_token,
        management_token_file=management_token_file, management_auth=management_auth, inference_token=inference_token,
        allowed_sources=allowed_sources, cors_origins=cors_origins, ui=ui, default_workers=default_workers,
        trust_handlers=trust_handlers, metrics_host=metrics_host, metrics_port=metrics_port, optimize=optimize,
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        optimize_force=optimize_force, on_verify_fail=on_verify_fail, verify_on_load=verify_on_load,
        calibration_file=calibration, thresholds=_threshold_flags(threshold),
        protocols=[part.strip() for item in protocols for part in item.split(",") if part.strip()] if protocols else None,
        default_model=default_model, grpc_host=grpc_host, grpc_port=grpc_port, bert_serving_host=bert_serving_host,
        bert_serving_port=bert_serving_port, bert_serving_port_out=bert_serving_port_out,
    )
    launched = sys.argv[2:] if sys.argv[1:2] == ["serve"] else None  # a `berthing serve` process, not a library call
    try:
        run_server(settings, console, record_startup=launched)
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    except OSError as exc:
        console.print(
            f"[red]error:[/] cannot listen on {settings.host}:{settings.port} "
            f"(management {settings.management_host}:{settings.management_port}): {exc}"
        )
        raise typer.Exit(1) from None


@app.command()
def pack(
    checkpoint_arg: Annotated[
        str | None,
        typer.Argument(metavar="CHECKPOINT", help="HF checkpoint folder or s3://bucket/key.tar.gz (omit with --from-mar)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Package name (default: the .mar's model name).")] = None,
    version: Annotated[str | None, typer.Option(help="Package version (default: the .mar's, else 1.0).")] = None,
    task: Annotated[str | None, typer.Option(help="Force the task instead of detecting it.")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels replacing id2label (classify, ner).")] = None,
    handler: Annotated[Path | None, typer.Option(help="handler.py to carry (runs only under --trust-handlers).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the package into.")] = Path("."),
    no_archive: Annotated[bool, typer.Option("--no-archive", help="Write a folder NAME-VERSION/ instead of a .berth.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept pytorch_model.bin (loaded with torch's weights-only loader).")
    ] = False,
    from_mar: Annotated[Path | None, typer.Option("--from-mar", help="Pack a TorchServe .mar instead of a folder.")] = None,
    optimize: Annotated[
        str,
        typer.Option(
            envvar="BERTHING_OPTIMIZE",
            help="auto (the fastest level that passes verification against PyTorch), none, fused or int8.",
        ),
    ] = "auto",
    calibration: Annotated[
        Path | None, typer.Option(help="Texts, one a line, for int8 calibration and verification (default: built-in sample).")
    ] = None,
    threshold: Annotated[
        list[str] | None, typer.Option(help="Verification threshold NAME=VALUE (repeatable), e.g. cosine_min=0.97 or ...=off.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Keep the requested level even if it fails verification.")] = False,
    int8_only: Annotated[
        bool, typer.Option("--int8-only", help="Leave out the fp32 graph an int8 package falls back to (~4x smaller).")
    ] = False,
) -> None:
    """Export a checkpoint, optimize and verify it, write NAME-VERSION.berth (ONNX, tokenizer, spec, figures, checksums)."""
    import tempfile

    from berthing.packaging.package import pack as build
    from berthing.packaging.pair_bound import cpu_line
    from berthing.packaging.probe import figures
    from berthing.packaging.tune import OptimizeRequest, summary
    from berthing.runtime.cpu import detect

    thresholds = _threshold_flags(threshold)
    checkpoint = Path(checkpoint_arg) if checkpoint_arg and not checkpoint_arg.startswith("s3://") else None
    try:
        request = OptimizeRequest(optimize, calibration, thresholds or {}, force)
    except BerthingError as exc:  # a wrong flag: usage error, before any export
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from None
    try:
        with tempfile.TemporaryDirectory(prefix="berthing-pack-") as work:
            label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
            source: dict[str, Any] | None = None
            origin = "--labels"
            if from_mar is not None:
                from berthing.packaging.mar import open_mar

                if checkpoint_arg is not None:
                    raise BerthingError("give either a CHECKPOINT folder or --from-mar, not both")
                mar = open_mar(from_mar, Path(work))
                checkpoint, name, version = mar.folder, name or mar.name, version or mar.version
                task = task or mar.task
                if label_list is None and mar.labels and task in ("classify", "ner", None):
                    label_list, origin = mar.labels, "index_to_name.json"
                source = {"mar": from_mar.name, "torchserve_handler": mar.handler}
            if checkpoint_arg and checkpoint_arg.startswith("s3://"):
                from berthing.packaging import s3

                if not s3.is_tar(checkpoint_arg):
                    raise BerthingError(f"{checkpoint_arg}: pack reads a checkpoint from S3 as .tar.gz, .tgz or .tar")
                with console.status(f"fetching {checkpoint_arg}"):
                    checkpoint = s3.checkpoint_folder(s3.fetch(checkpoint_arg, Settings().cache_dir))
            if checkpoint is None or not name:
                raise BerthingError("pack needs a CHECKPOINT folder (or --from-mar FILE) and --name")
            if not checkpoint.is_dir():
                raise BerthingError(f"{checkpoint} is not a checkpoint folder")
            with console.status(f"packing {name}-{version or '1.0'}") as status:

                def progress(message: str) -> None:
                    status.update(f"packing {name}-{version or '1.0'}: {message}")
                    if not console.is_terminal:
                        console.print(f"{name}: {message}")

                path, manifest = build(
                    checkpoint, output, name, version or "1.0", archive=not no_archive, task=task, labels=label_list,
                    labels_origin=origin, handler=handler, allow_pickle=allow_pickle, source=source,
                    optimize=request, progress=progress, int8_only=int8_only,
                )
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    error = manifest["verification"]["max_abs_error"]
    console.print(f"[green]✓[/] {path} ({manifest['task']}, ONNX max abs error vs PyTorch {error:.1e})")
    console.print(f"  {summary(manifest.get('optimization'))}")
    console.print(f"  {cpu_line(detect(), (manifest.get('optimization') or {}).get('level'))}")
    if probe := manifest.get("probe"):
        shown = figures(probe["metrics"], probe["thresholds"])
        console.print(
            f"  probe: {probe['inputs']} inputs ({probe['bytes'] / 1024:.0f} KB), {shown} here in {probe['seconds']:.2f} s; "
            "checked again where the CPU class or onnxruntime differs"
        )
    typer.echo(str(path))


@app.command()
def inspect(
    package: Annotated[Path, typer.Argument(help="A .berth archive or a package folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a package's manifest: what it serves, how it was verified, and every file's checksum."""
    import json

    from rich.table import Table

    from berthing.packaging.package import read_manifest

    try:
        manifest = read_manifest(package)
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
        return
    out = Console(soft_wrap=True)
    table = Table(title=f"{manifest['name']}-{manifest['version']}", show_header=False)
    for key, value in manifest.items():
        if key not in ("files", "optimization", "probe"):
            table.add_row(key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    out.print(table)
    _print_optimization(out, manifest.get("optimization"))
    _print_probe(out, manifest)
    files = Table("file", "bytes")
    files.add_column("sha256", overflow="fold")
    for rel, entry in manifest["files"].items():
        files.add_row(rel, str(entry.get("size", "")), entry["sha256"])
    out.print(files)


def _print_probe(out: Console, manifest: dict[str, Any]) -> None:
    """Where the package was verified and what it checks where it loads."""
    from berthing.packaging.probe import figures
    from berthing.runtime.cpu import CpuInfo, detect

    probe = manifest.get("probe")
    if not probe:
        out.print("verified on: not recorded (packed before berthing recorded the CPU); no probe, not checked at load")
        return
    cpu = CpuInfo.from_dict(probe.get("cpu") or {})
    shown = figures(probe.get("metrics", {}), probe.get("thresholds", {}))
    fallback = "fp32/model.onnx" in manifest["files"]
    out.print(
        f"verified on: {cpu.describe()}, class {cpu.cpu_class}, onnxruntime {probe.get('onnxruntime')}; probe: {probe['inputs']} "
        f"inputs, {shown} there; this host: {detect().describe()}, class {detect().cpu_class}; "
        f"fp32 fallback: {'carried' if fallback else 'not carried (--int8-only)'}"
    )


def _print_optimization(out: Console, record: dict[str, Any] | None) -> None:
    """The optimization record as a table: every level tried, its figures against PyTorch, speed and size."""
    from rich.table import Table

    if not record:
        out.print("optimization: none recorded (fp32 export, checked against PyTorch on the export's check batches)")
        return
    calib = record.get("calibration", {})
    title = (
        f"optimization: {record['level']} (requested {record['requested']}"
        f"{', FORCED past its thresholds' if record.get('forced') else ''}); verified against {record.get('reference')} "
        f"on {calib.get('texts')} texts ({calib.get('source')}); thresholds "
        + ", ".join(f"{k} {v}" for k, v in record.get("thresholds", {}).items())
    )
    table = Table("level", "passed", "inputs/s", "figures", "size MB", title=title, title_justify="left")
    for level in record.get("levels", []):
        figures = ", ".join(f"{k} {v:.4f}" for k, v in level.get("metrics", {}).items())
        if level.get("failed"):
            figures += " (" + "; ".join(level["failed"]) + ")"
        if level.get("error"):
            figures = f"not built: {level['error']}"
        size = level.get("size_bytes")
        mark = "*" if level["level"] == record["level"] else ""
        table.add_row(
            f"{level['level']}{mark}", "yes" if level["passed"] else "NO", f"{level.get('inputs_per_s', 0):.0f}", figures,
            f"{size / 1e6:.1f}" if size else "",
        )
    out.print(table)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="NAME=SOURCE or SOURCE (folder, package, s3://..., hub id); 'default'.")],
    input_path: Annotated[str, typer.Argument(metavar="INPUT", help="JSONL, CSV, TSV or text (a text per line); - = stdin.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where results go (- = stdout); its suffix picks the format.")],
    input_format: Annotated[
        str | None, typer.Option("--format", help="Input format: jsonl, csv, tsv, txt (default: the suffix).")
    ] = None,
    output_format: Annotated[
        str | None, typer.Option(help="Output format: jsonl, csv, tsv (default: -o's suffix, else the input's).")
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option("--field", help="JSONL field or CSV column with the text (default: a JSONL line is a body; CSV: text)."),
    ] = None,
    task: Annotated[str | None, typer.Option(help=_help("task"))] = None,
    runtime: Annotated[str | None, typer.Option(help=_help("runtime"))] = None,
    threads: Annotated[int | None, typer.Option(help=_help("threads"))] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help=_help("max_batch_tokens"))] = None,
    optimize: Annotated[str | None, typer.Option(help=_help("optimize"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help=_help("cache_dir"))] = None,
    on_ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray Data: an actor pool, inputs and outputs local or s3:// (docs/ray-data.md).")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="--ray: the cluster to join (ray.init address; default: start a local one).")
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="--ray: actors, each holding the model once.")] = 2,
    cpus_per_actor: Annotated[
        float, typer.Option(min=0.01, help="--ray: CPUs each actor reserves; ONNX Runtime gets as many threads (at least 1).")
    ] = 1.0,
    preserve_order: Annotated[
        bool | None,
        typer.Option("--preserve-order/--no-preserve-order", help="--ray: results in input order (default: on for one file)."),
    ] = None,
) -> None:
    """Predict every line of a file through the same engine and batcher as the server; results in input order.

    Each line is one request, as a POST /predictions body would be (JSONL objects, a text per line, a CSV row);
    a line that fails gets an error record and the run goes on. Ctrl-C stops cleanly with what is done written.
    With --ray, the same parsing and results on Ray Data, also from and to Parquet, directories and s3://.
    """
    import asyncio

    from berthing import batch

    settings = _settings(task=task, runtime=runtime, threads=threads, max_batch_tokens=max_batch_tokens, optimize=optimize,
                         cache_dir=cache_dir)
    if on_ray:
        from berthing.ray.data import Job, predict_command

        job = Job(model, input_path, output, input_format, output_format, text_field, actors, cpus_per_actor, preserve_order,
                  address)
        raise typer.Exit(predict_command(job, settings, console, _LOG_EVERY_S))
    if address is not None or preserve_order is not None or actors != 2 or cpus_per_actor != 1.0:
        console.print("[red]error:[/] --address, --actors, --cpus-per-actor and --preserve-order go with --ray")
        raise typer.Exit(2)
    in_path = None if input_path == "-" else Path(input_path)
    out_path = None if output == "-" else Path(output)
    try:
        if in_path is not None and not in_path.is_file():
            raise BerthingError(f"input {input_path} not found")
        fmt_in = batch.detect_format(in_path, input_format, "jsonl" if in_path is None else "txt")
        fmt_out = batch.detect_format(out_path, output_format, fmt_in if fmt_in != "txt" else "jsonl")
        if fmt_out == "txt":
            raise BerthingError("results are structured: write them as jsonl, csv or tsv (-o FILE.jsonl)")
        with console.status(f"loading {model}"):
            loaded = batch.load(model, settings)
        total = batch.count_lines(in_path) if in_path is not None else None
        stream = batch.open_input(input_path)
        reader = batch.Reader(stream, fmt_in, loaded, text_field, settings.max_items)
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    out = sys.stdout if out_path is None else out_path.open("w", encoding="utf-8", newline="")
    summary = batch.Summary()
    try:
        with batch.progress(console, loaded.name, f"{loaded.name} ({loaded.spec.task})", total, _LOG_EVERY_S) as step:
            asyncio.run(batch.run(loaded, iter(reader), batch.Writer(out, fmt_out), step, summary=summary))
    except KeyboardInterrupt:
        summary.interrupted = True
    except BerthingError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    finally:
        out.flush()
        if out is not sys.stdout:
            out.close()
        stream.close()
    where = output if out_path is not None else "stdout"
    if summary.interrupted:
        console.print(
            f"[yellow]interrupted:[/] {summary.done} results written to {where}: complete lines, in input order"
        )
        raise typer.Exit(130)
    errors = f", {summary.errors} with errors" if summary.errors else ""
    rate = f"{summary.seconds:.1f} s ({summary.rate:.0f} items/s)"
    console.print(f"[green]✓[/] {summary.done} predictions{errors} -> {where} in {rate}")


@app.command()
def version() -> None:
    """Print berthing's version."""
    typer.echo(berthing.__version__)


app.command("train", no_args_is_help=True)(__import__("berthing.cli_train", fromlist=["_"]).train_command)  # berthing train
app.add_typer(__import__("berthing.cli_ray", fromlist=["_"]).ray_app, name="ray")  # berthing ray serve|config


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
