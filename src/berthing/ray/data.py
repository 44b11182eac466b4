"""`berthing predict --ray`: the single-machine run's parsing and results, spread over a Ray Data actor pool.

A datasource numbers the lines (or rows) of each file exactly as batch.Reader does; each actor loads the model once,
with the settings the driver resolved (a node's own BERTHING_* variables change nothing), and runs each batch of lines
through batch.run, so parsing, engine calls and error records are the single-machine ones. One output file is
written by the driver from the results in input order; a directory or s3:// prefix by Ray's own writers, every row
carrying its input "line" to be joined back. s3:// paths are read and written through the filesystem berthing.ray.storage
builds (BERTHING_S3_ENDPOINT_URL, the driver's credentials), handed to Ray's reads and writes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy
from ray.data.datasource import FileBasedDatasource
from ray.util.debug import log_once

from berthing import batch
from berthing.ray import storage
from berthing.ray.options import absolute_source
from berthing.types import BerthingError

if TYPE_CHECKING:
    from rich.console import Console

    from berthing.config import Settings

LINE, RAW, FILE, OUT, FAILED = "__line", "__raw", "__file", "__json", "__failed"  # columns between the stages
INTERNAL = (LINE, RAW, FILE)
BLOCK_LINES = 4096  # lines a read task puts in one block
BATCH_LINES = batch.WINDOW  # lines one actor call takes: a single-machine window's worth keeps every engine batch full
FORMATS_IN = (*batch.FORMATS, "parquet")
FORMATS_OUT = ("jsonl", "parquet")
ERROR = pa.struct([("code", pa.int64()), ("type", pa.string()), ("message", pa.string())])


@dataclass
class Job:
    """What `berthing predict --ray` was asked to do (the flags, before any check)."""

    model: str
    input: str
    output: str
    input_format: str | None = None
    output_format: str | None = None
    text_field: str | None = None
    actors: int = 2
    cpus_per_actor: float = 1.0
    preserve_order: bool | None = None
    address: str | None = None


@dataclass
class Plan:
    """The job, checked before Ray starts: formats, where results go, whether in input order."""

    fmt_in: str
    fmt_out: str
    single: bool  # one file (or stdout) the driver writes; else a directory or prefix Ray's writers fill
    ordered: bool
    source: str  # the input as read tasks on any node see it (local paths made absolute, s3:// as bucket/key)
    target: str
    total: int | None  # lines, for the progress bar, where cheap to count
    source_fs: Any = None  # pyarrow's S3FileSystem for s3:// (storage.resolve); None: Ray resolves the path itself
    target_fs: Any = None


def _remote(path: str) -> bool:
    return "://" in path


def _suffix_format(name: str) -> str | None:
    suffix = PurePosixPath(name.rstrip("/")).suffix.lower()
    return "parquet" if suffix == ".parquet" else batch.detect_format(Path(f"x{suffix}"), None, "") or None


def plan(job: Job) -> Plan:
    """Formats and destinations from the flags and paths; every mistake a clear BerthingError before Ray starts."""
    if job.input == "-":
        raise BerthingError("--ray reads files (local or s3://), not stdin")
    local = not _remote(job.input)
    source_fs, source = storage.resolve(job.input)
    names = storage.listing(source_fs, source, job.input) if source_fs is not None else []
    if (local and not Path(job.input).exists()) or names is None:
        raise BerthingError(f"input {job.input} not found")
    if job.input_format is not None and job.input_format not in FORMATS_IN:
        raise BerthingError(f"unknown format {job.input_format!r} (formats: {', '.join(FORMATS_IN)})")
    fmt_in = job.input_format or _suffix_format(job.input)
    if fmt_in is None and local and Path(job.input).is_dir():
        names = sorted(p.name for p in Path(job.input).iterdir() if p.is_file())
    if fmt_in is None:  # a directory or prefix: its first file's suffix (Ray skips names starting with . or _)
        names = [name for name in names or [] if not name.startswith((".", "_"))]
        fmt_in = _suffix_format(names[0]) if names else None
    if fmt_in is None and local:
        fmt_in = "txt"  # a file with no known suffix holds a text per line, as on one machine
    if fmt_in is None:
        raise BerthingError(f"name the format of {job.input} with --format ({', '.join(FORMATS_IN)})")
    fmt_out = job.output_format or _suffix_format(job.output) or "jsonl"
    if fmt_out not in FORMATS_OUT or (job.output == "-" and fmt_out != "jsonl"):
        raise BerthingError(f"--ray writes jsonl or parquet files, or a directory of them, not {fmt_out} (-o FILE.jsonl)")
    # A directory (or s3:// prefix) unless the output is stdout or a file named .jsonl/.parquet
    directory = job.output != "-" and (
        _remote(job.output) or job.output.endswith(("/", os.sep)) or Path(job.output).is_dir()
        or _suffix_format(job.output) is None
    )
    target_fs, target = storage.resolve(job.output)
    if directory and (
        (not _remote(job.output) and Path(job.output).is_dir() and any(Path(job.output).iterdir()))
        or (target_fs is not None and storage.listing(target_fs, target, job.output))
    ):
        raise BerthingError(f"output directory {job.output} is not empty: Ray's writers would add files to what is there")
    total = None
    if local and Path(job.input).is_file():
        total = pq.ParquetFile(job.input).metadata.num_rows if fmt_in == "parquet" else batch.count_lines(Path(job.input))
    source = source if not local else str(Path(job.input).resolve())
    target = target if _remote(job.output) or job.output == "-" else str(Path(job.output).resolve())
    ordered = job.preserve_order if job.preserve_order is not None else not directory
    return Plan(fmt_in, fmt_out, not directory, ordered, source, target, total, source_fs, target_fs)


class LinesDatasource(FileBasedDatasource):
    """Files as blocks of numbered lines (JSONL, text), CSV rows of strings, or Parquet rows; line numbers are
    batch.Reader's, so every result names the line it came from."""

    def __init__(self, paths: str | list[str], fmt: str, scheme: str = "", **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self.fmt = fmt
        self.scheme = scheme  # "s3://" when the filesystem takes bucket/key: each row's "file" is the URL again

    def files(self) -> list[str]:
        """The files found under the input path(s)."""
        return self._paths()

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        if self.fmt == "parquet":  # Parquet needs random access (its footer comes first)
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        path = self.scheme + path
        if self.fmt == "parquet":
            start = 1
            for part in pq.ParquetFile(f).iter_batches(batch_size=BLOCK_LINES):
                numbers = list(range(start, start + part.num_rows))
                yield _numbered(dict(zip(part.schema.names, part.columns, strict=True)), numbers, path)
                start += part.num_rows
            return
        text = batch.text_stream(f)
        if self.fmt in ("csv", "tsv"):
            reader = batch.csv_reader(text, self.fmt)
            columns = list(reader.fieldnames or [])  # values stay strings, as csv.DictReader gives them
            for chunk in _chunks(batch.numbered_rows(reader), BLOCK_LINES):
                rows = {c: pa.array([row.get(c) for _, row in chunk], pa.string()) for c in columns}
                yield _numbered(rows, [n for n, _ in chunk], path)
            return
        for chunk in _chunks(batch.numbered_lines(text), BLOCK_LINES):
            yield _numbered({RAW: pa.array([line for _, line in chunk], pa.string())}, [n for n, _ in chunk], path)


def _numbered(columns: dict[str, pa.Array], numbers: list[int], path: str) -> pa.Table:
    """A block: the rows' columns, each row's line number, and its file (line numbers are per file)."""
    return pa.table({**columns, LINE: pa.array(numbers, pa.int64()), FILE: pa.array([path] * len(numbers), pa.string())})


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Collect:
    """A batch.Sink that keeps each line's output record instead of writing it."""

    def __init__(self) -> None:
        self.records: list[tuple[batch.Record, dict[str, Any], bool]] = []

    def write(self, record: batch.Record, result: Any, error: BerthingError | None) -> None:
        self.records.append((record, batch.output(record, result, error), error is not None))


class Predictor:
    """The actor's callable: the model loaded once, each batch of lines parsed and predicted as `berthing predict` does.

    Every line is its own engine call on the actor's event loop (batch.run), so one bad line gets its error record
    and never fails the batch; the model's batcher still groups the lines' items into full runtime batches."""

    def __init__(self, model: str, settings: dict[str, Any], fmt: str, text_field: str | None, mode: str,
                 with_line: bool, with_file: bool) -> None:
        from berthing.config import Settings

        values = Settings(**settings)
        self.model = batch.load(model, values)
        self.max_items = values.max_items
        self.fmt, self.field, self.mode = fmt, text_field, mode
        self.with_line, self.with_file = with_line, with_file
        self.loop = asyncio.new_event_loop()
        self.wanted: dict[tuple[str, ...], dict[str, str]] = {}

    def __call__(self, table: pa.Table) -> pa.Table:
        sink = _Collect()
        self.loop.run_until_complete(batch.run(self.model, iter(self._records(table)), sink))
        files = table.column(FILE).to_pylist()
        outputs = []
        for (record, out, _), path in zip(sink.records, files, strict=True):
            if self.with_line:
                out["line"] = record.number
            if self.with_file:
                out["file"] = path
            outputs.append(out)
        failed = pa.array([failed for _, _, failed in sink.records], pa.bool_())
        if self.mode == "json":
            lines = pa.array([batch.dumps(out) for out in outputs], pa.string())
            return pa.table({LINE: table.column(LINE), OUT: lines, FAILED: failed})
        return _rows_table(outputs)

    def _records(self, table: pa.Table) -> list[batch.Record]:
        task, field, most = self.model.task, self.field, self.max_items
        if self.fmt in ("jsonl", "txt"):
            lines = zip(table.column(LINE).to_pylist(), table.column(RAW).to_pylist(), strict=True)
            return [batch.parse_line(n, raw, self.fmt, task, field, most) for n, raw in lines]
        values = table.drop_columns([c for c in INTERNAL if c in table.column_names]).to_pylist()
        rows = zip(table.column(LINE).to_pylist(), values, strict=True)
        if self.fmt == "parquet":
            return [batch.parse_object_row(n, row, task, field, most) for n, row in rows]
        columns = tuple(c for c in table.column_names if c not in INTERNAL)
        if columns not in self.wanted:  # the CSV header check, once per header
            self.wanted[columns] = batch.row_fields(list(columns), self.model.spec.task, field)
        return [batch.parse_row(n, row, self.wanted[columns], task, most) for n, row in rows]


def _rows_table(outputs: list[dict[str, Any]]) -> pa.Table:
    """Output records as Arrow columns: nested values stay nested, "error" has one type in every block; a column
    whose values Arrow cannot give one type (an id that is sometimes a number, sometimes text) is written as JSON."""
    names = list(dict.fromkeys(key for out in outputs for key in out))
    names = [n for n in names if n not in ("prediction", "error", "line", "file")] + ["prediction", "error"]
    names += [n for n in ("line", "file") if outputs and n in outputs[0]]
    columns = {}
    for name in names:
        values = [out.get(name) for out in outputs]
        try:
            columns[name] = pa.array(values, ERROR if name == "error" else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else batch.dumps(v) for v in values], pa.string())
    return pa.table(columns)


def actor_settings(settings: Settings, cpus: float) -> dict[str, Any]:
    """The driver's settings as plain values for the actors: one worker whose threads are the CPUs it reserved."""
    values = settings.model_dump(mode="json")
    return {**values, "workers": 1, "threads": max(1, math.floor(cpus)), "lanes": False}


def connect(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local one; True when this call connected (so it disconnects)."""
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto", current):
            raise BerthingError(f"this process is already connected to the Ray cluster at {current}, not {address}")
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    return True


def dataset(job: Job, plan: Plan, settings: Settings) -> ray.data.Dataset:
    """Read, then predict in a pool of `job.actors` actors of `job.cpus_per_actor` CPUs each."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = plan.ordered
    context.raise_original_map_exception = True  # an actor's BerthingError reaches the driver as itself
    context.enable_progress_bars = not plan.single  # one file: berthing's bar; a directory: Ray's, while it writes
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not its INFO lines about each execution
    log_once("ray_data_progress_manager_disabled")  # nor its warning that the bars it would draw are off
    scheme = "s3://" if plan.source_fs is not None else ""
    source = LinesDatasource(plan.source, plan.fmt_in, scheme, filesystem=plan.source_fs)
    with_line = not (plan.single and plan.ordered)
    args = {
        "model": absolute_source(job.model) or "default", "settings": actor_settings(settings, job.cpus_per_actor),
        "fmt": plan.fmt_in, "text_field": job.text_field, "mode": "json" if plan.single and plan.fmt_out == "jsonl" else "rows",
        "with_line": with_line, "with_file": with_line and len(source.files()) > 1,  # line numbers are per file
    }
    # Reading reserves no CPU: it is light next to the model, and actors that hold every CPU would otherwise wait for
    # lines that no read task can be scheduled to give them.
    read = ray.data.read_datasource(source, num_cpus=0)
    return read.map_batches(
        Predictor, fn_constructor_kwargs=args, batch_size=BATCH_LINES, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=job.actors), num_cpus=job.cpus_per_actor, udf_modifying_row_count=False,
    )


def check_room(job: Job, console: Console) -> None:
    """Say so when the pool cannot fit: Ray would wait for CPUs (an autoscaling cluster may still add them)."""
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if job.actors * job.cpus_per_actor > cpus:
        console.print(
            f"[yellow]warning:[/] {job.actors} actors x {job.cpus_per_actor:g} CPUs is more than the cluster's {cpus:g} "
            "CPUs: the run waits until the cluster has them (fewer --actors or --cpus-per-actor start now)"
        )


def write_file(data: ray.data.Dataset, plan: Plan, summary: batch.Summary, step: Any) -> None:
    """One output file from the driver: JSONL lines as they arrive (byte for byte the single-machine file when in
    order), or one Parquet file at the end (its schema is every block's, unified). Nothing is created before the
    first results, so a run that fails at once (a wrong CSV column) leaves no file."""
    import sys

    parts: list[pa.Table] = []
    stream: Any = None
    try:
        for part in data.iter_batches(batch_size=None, batch_format="pyarrow"):
            if plan.fmt_out == "jsonl":
                if stream is None:
                    stream = sys.stdout if plan.target == "-" else open(plan.target, "w", encoding="utf-8", newline="")
                stream.write("".join(line + "\n" for line in part.column(OUT).to_pylist()))
                errors = part.column(FAILED).to_pylist().count(True)
            else:
                parts.append(part)
                errors = part.num_rows - part.column("error").null_count
            summary.done += part.num_rows
            summary.errors += errors
            step(part.num_rows)
        if plan.fmt_out == "parquet":
            pq.write_table(pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({}), plan.target)
        elif stream is None and plan.target != "-":
            Path(plan.target).write_text("", encoding="utf-8")  # no lines in: an empty file out, as on one machine
    finally:
        if stream is not None:
            stream.flush()
            if stream is not sys.stdout:
                stream.close()


def predict_command(job: Job, settings: Settings, console: Console, log_every_s: float) -> int:
    """`berthing predict --ray`: checks, cluster, predictions, a summary line; the exit status (0, 1, or 130)."""
    started = time.perf_counter()
    summary = batch.Summary()
    connected = False
    checked: Plan | None = None
    try:
        checked = plan(job)
        connected = connect(job.address)
        check_room(job, console)
        data = dataset(job, checked, settings)
        name = job.model.partition("=")[0] if "=" in job.model else Path(job.model).name or job.model
        if checked.single:
            with batch.progress(console, name, f"{name} (ray, {job.actors} actors)", checked.total, log_every_s) as step:
                write_file(data, checked, summary, step)
        elif checked.fmt_out == "jsonl":
            data.write_json(checked.target, filesystem=checked.target_fs,
                            pandas_json_args_fn=lambda: {"force_ascii": False, "double_precision": 15})
        else:
            data.write_parquet(checked.target, filesystem=checked.target_fs)
    except KeyboardInterrupt:
        where = job.output if job.output != "-" else "stdout"
        if checked is not None and checked.single and checked.fmt_out == "jsonl":
            console.print(f"[yellow]interrupted:[/] {summary.done} results written to {where}: complete lines")
        else:
            console.print(f"[yellow]interrupted:[/] {where} is incomplete")
        return 130
    except Exception as exc:  # noqa: BLE001 - Ray wraps the actors' errors; show berthing's own message when there is one
        console.print(f"[red]error:[/] {describe(exc)}")
        return 1
    finally:
        if connected:
            ray.shutdown()
    seconds = time.perf_counter() - started
    where = job.output if job.output != "-" else "stdout"
    if not checked or not checked.single:
        line = '; each row carries its input "line"'
        console.print(f"[green]✓[/] predictions -> {where} ({checked.fmt_out} files) in {seconds:.1f} s{line}")
        return 0
    errors = f", {summary.errors} with errors" if summary.errors else ""
    rate = summary.done / seconds if seconds > 0 else 0.0
    console.print(f"[green]✓[/] {summary.done} predictions{errors} -> {where} in {seconds:.1f} s ({rate:.0f} items/s)")
    return 0


def describe(exc: BaseException) -> str:
    """The first BerthingError in the chain of causes (an actor's, under Ray's wrappers), else the innermost error's
    type and first line (Ray's own wrappers say only where it happened)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    innermost = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BerthingError):
            return current.message
        innermost = current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    text = str(innermost).strip().splitlines()
    return f"{type(innermost).__name__}: {text[0] if text else ''}"
