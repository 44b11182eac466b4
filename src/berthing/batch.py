"""Offline predictions over a file: stream lines in, run them through the model's batcher, write results in order.

Every input line is one request, as one POST /predictions body would be, so lines of any task mix freely in the
dynamic batches; a bounded window of lines is in flight at a time, so memory does not grow with the file. A line
that cannot be predicted gets an error record and the run goes on.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson

from berthing.engine.model import Model
from berthing.tasks.base import Task
from berthing.types import BadRequest, BerthingError, TextInput

if TYPE_CHECKING:
    from rich.console import Console

    from berthing.config import Settings

FORMATS = ("jsonl", "csv", "tsv", "txt")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}
WINDOW = 1024  # lines in flight: enough to keep every batch full, small enough to bound memory


def detect_format(path: Path | None, given: str | None, default: str) -> str:
    """The format from --format, else the file's suffix, else `default`."""
    if given:
        if given not in FORMATS:
            raise BadRequest(f"unknown format {given!r} (formats: {', '.join(FORMATS)})")
        return given
    if path is None:
        return default
    return _SUFFIXES.get(path.suffix.lower(), default)


@dataclass
class Record:
    """One input line: what goes to the model and what is written back beside the result."""

    number: int  # 1-based line (or row) number
    inputs: list[TextInput] = field(default_factory=list)
    single: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    keep: dict[str, Any] | None = None  # the input fields to write back (JSONL objects, CSV rows)
    error: BerthingError | None = None  # the line could not even be parsed


class Reader:
    """Lines of a JSONL / CSV / TSV / text file as Records, parsed with the model's task."""

    def __init__(self, stream: IO[str], fmt: str, model: Model, text_field: str | None, max_items: int) -> None:
        self.stream = stream
        self.fmt = fmt
        self.model = model
        self.field = text_field
        self.max_items = max_items
        self.columns: list[str] = []
        self._csv: csv.DictReader[str] | None = None
        self._wanted: dict[str, str] = {}
        if fmt in ("csv", "tsv"):  # read and check the header now: a wrong column fails before any output
            self._csv = csv_reader(stream, fmt)
            self.columns = list(self._csv.fieldnames or [])
            self._wanted = row_fields(self.columns, model.spec.task, text_field)

    def __iter__(self) -> Iterator[Record]:
        task = self.model.task
        if self._csv is not None:
            for number, row in numbered_rows(self._csv):
                yield parse_row(number, row, self._wanted, task, self.max_items)
            return
        for number, line in numbered_lines(self.stream):
            yield parse_line(number, line, self.fmt, task, self.field, self.max_items)


def numbered_lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    """The non-blank lines with their 1-based numbers (blank lines count, but are not requests)."""
    for number, line in enumerate(stream, 1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line


def parse_line(number: int, line: str, fmt: str, task: Task, text_field: str | None, max_items: int) -> Record:
    """One JSONL or text line as a Record; a line that does not parse gets its error, not an exception."""
    record = Record(number)
    try:
        if fmt == "txt":
            record.inputs, record.single = [line], True
            record.keep = {"text": line}
        else:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"line {number} is not valid JSON: {exc}") from None
            _parse_value(record, value, task, text_field, max_items)
    except BerthingError as exc:
        record.error = exc
    return record


def parse_object_row(number: int, row: dict[str, Any], task: Task, text_field: str | None, max_items: int) -> Record:
    """A row that is already a dict (a Parquet row) as a Record, read as a JSONL object line would be."""
    record = Record(number)
    try:
        _parse_value(record, row, task, text_field, max_items)
    except BerthingError as exc:
        record.error = exc
    return record


def _parse_value(record: Record, value: Any, task: Task, text_field: str | None, max_items: int) -> None:
    if isinstance(value, dict):
        record.keep = value
        if text_field is not None:
            if text_field not in value:
                raise BadRequest(f"line {record.number} has no field {text_field!r} (fields: {', '.join(value)})")
            record.inputs, record.single = task.parse(value[text_field], text_field, max_items)
        else:
            record.inputs, record.single, record.options = task.parse_object(value, max_items)
    else:
        record.keep = {"input": value}
        record.inputs, record.single = task.parse(value, "input", max_items)


def csv_reader(stream: IO[str], fmt: str) -> csv.DictReader[str]:
    """A CSV or TSV reader whose values stay strings, as they were written."""
    return csv.DictReader(stream, delimiter="," if fmt == "csv" else "\t")


def numbered_rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV rows with their line numbers (row 1 is the header)."""
    return enumerate(reader, 2)


def parse_row(number: int, row: dict[str, Any], wanted: dict[str, str], task: Task, max_items: int) -> Record:
    """One CSV row as a Record: the `wanted` columns (from row_fields) make the request body; all are kept."""
    record = Record(number, keep=dict(row))
    try:
        body = {key: row.get(column) or "" for key, column in wanted.items()}
        record.inputs, record.single, record.options = task.parse_object(body, max_items)
    except BerthingError as exc:
        record.error = exc
    return record


def row_fields(columns: list[str], task: str, text_field: str | None) -> dict[str, str]:
    """Which columns feed the model: --field, else the task's own names (text, question/context, text/text_pair)."""
    if text_field is not None:
        names = {"input": text_field}
    elif task == "qa":
        names = {"question": "question", "context": "context"}
    elif "text_pair" in columns:
        names = {"text": "text", "text_pair": "text_pair"}
    else:
        names = {"input": "text"}
    if task == "rerank":
        raise BadRequest("a reranking model takes {query, texts} objects: give it JSONL, one object per line")
    missing = [column for column in names.values() if column not in columns]
    if missing:
        raise BadRequest(
            f"the input has no column {missing[0]!r} (columns: {', '.join(columns) or 'none'}); "
            "name the text column with --field"
        )
    return names


def output(record: Record, result: Any, error: BerthingError | None) -> dict[str, Any]:
    """A JSONL result record: the input's fields, then the prediction or the error."""
    keep = record.keep or {}
    return {**keep, "error": error.to_dict()} if error else {**keep, "prediction": result}


class Sink(Protocol):
    """Where run() puts each record's result, in input order: a Writer, or a collector (berthing.ray.data)."""

    def write(self, record: Record, result: Any, error: BerthingError | None) -> None: ...


class Writer:
    """Results in input order: JSONL records, or CSV/TSV rows with the input's columns plus the prediction's."""

    def __init__(self, stream: IO[str], fmt: str) -> None:
        self.stream = stream
        self.fmt = "jsonl" if fmt == "txt" else fmt
        self.csv: Any = None
        self.fields: list[str] = []

    def write(self, record: Record, result: Any, error: BerthingError | None) -> None:
        keep = record.keep or {}
        if self.fmt == "jsonl":
            self.stream.write(dumps(output(record, result, error)) + "\n")
            return
        row = dict(keep)
        if error is not None:
            row["error"] = error.message
        elif isinstance(result, dict):  # {label, score, scores}, {answer, score, start, end}: a column per key
            row.update({k: v if not isinstance(v, dict | list) else dumps(v) for k, v in result.items()})
        else:
            row["prediction"] = dumps(result)
        if self.csv is None:
            self.fields = [*keep, *[k for k in row if k not in keep], "error"]
            self.fields = list(dict.fromkeys(self.fields))
            delimiter = "," if self.fmt == "csv" else "\t"
            self.csv = csv.DictWriter(self.stream, self.fields, delimiter=delimiter, extrasaction="ignore", lineterminator="\n")
            self.csv.writeheader()
        self.csv.writerow(row)


def dumps(value: Any) -> str:
    """JSON as every berthing output writes it (orjson; numpy arrays and scalars as numbers)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


@dataclass
class Summary:
    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


async def run(
    model: Model,
    records: Iterator[Record],
    writer: Sink,
    progress: Callable[[int], None] | None = None,
    window: int = WINDOW,
    summary: Summary | None = None,
) -> Summary:
    """Predict every record through the model's batcher with at most `window` lines in flight; write in order.

    `summary` is filled as lines are written, so a caller still has the counts when Ctrl-C ends the run."""
    summary = summary if summary is not None else Summary()
    started = time.perf_counter()
    model.start()
    pending: deque[tuple[Record, asyncio.Task[list[Any]] | None]] = deque()

    async def drain(limit: int) -> None:
        while len(pending) > limit:
            record, task = pending.popleft()
            error = record.error
            result = None
            if task is not None:
                try:
                    results = await task
                    result = results[0] if record.single else results
                except BerthingError as exc:
                    error = exc
            writer.write(record, result, error)
            summary.done += 1
            summary.errors += error is not None
            if progress is not None:
                progress(1)

    try:
        for record in records:
            task = None if record.error else asyncio.ensure_future(model.infer(record.inputs, record.options))
            pending.append((record, task))
            await drain(window)
        await drain(0)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels us; what is written stays, in order
        summary.interrupted = True
        for _, task in pending:
            if task is not None:
                task.cancel()
        raise
    finally:
        summary.seconds = time.perf_counter() - started
    await model.stop()
    return summary


def load(model: str, settings: Settings) -> Model:
    """The model that `berthing predict MODEL` names, loaded with its settings: in the CLI, and in each Ray Data actor."""
    from berthing.loading import load_model
    from berthing.packaging.sources import resolve

    source = resolve(None if model in ("default", "") else model, settings.cache_dir)
    return load_model(source, settings.load_options(source.name))


@contextmanager
def progress(console: Console, name: str, label: str, total: int | None, log_every_s: float) -> Iterator[Callable[[int], None]]:
    """A step(n) function that moves a rich bar on a terminal; without one (logs), a line every `log_every_s`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} items/s"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    started = time.perf_counter()
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        job = bar.add_task(label, total=total, rate="-")
        logged = [started]

        def step(n: int) -> None:
            done = bar.tasks[0].completed + n
            now = time.perf_counter()
            rate = done / (now - started) if now > started else 0.0
            bar.update(job, advance=n, rate=f"{rate:.0f}")
            if not console.is_terminal and now - logged[0] >= log_every_s:  # logs get a line, not a bar
                logged[0] = now
                left = f", eta {(total - done) / rate:.0f} s" if total and rate else ""
                console.print(f"{name}: {done}{f'/{total}' if total else ''} lines, {rate:.0f} items/s{left}")

        yield step


def count_lines(path: Path) -> int:
    """Lines in the file (for the progress bar's total and ETA), counted in 1 MiB blocks."""
    total = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            total += block.count(b"\n")
    return total


def open_input(path: str) -> IO[str]:
    """The input file, or stdin for '-', as UTF-8 text (a BOM is skipped)."""
    return text_stream(sys.stdin.buffer if path == "-" else Path(path).open("rb"))


def text_stream(binary: IO[bytes] | Any) -> IO[str]:
    """Bytes as the lines every reader splits alike: UTF-8 with a BOM skipped, newlines kept for numbered_lines."""
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
