"""Task files in and annotation files out, shared by the upload route and the CLI.

Uploads are JSONL (``{"text", "spans"?, ...}`` per line), CSV (a ``text`` column; other columns
are kept as task meta) or CoNLL column files, read with ``active_learning.corpus``. Every problem is
a ``CorpusError`` whose message names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
from enum import Enum
from pathlib import Path
from typing import Iterable, Sequence

from active_learning.corpus import CorpusError, read_conll, read_jsonl, write_conll, write_jsonl
from active_learning.spans import Example

from .schemas import MAX_TEXT

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


class TaskFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    conll = "conll"


SUFFIXES = {".jsonl": TaskFormat.jsonl, ".csv": TaskFormat.csv, ".conll": TaskFormat.conll, ".bio": TaskFormat.conll, ".iob": TaskFormat.conll, ".txt": TaskFormat.conll}


def detect_format(filename: str, given: TaskFormat | None = None) -> TaskFormat:
    if given is not None:
        return given
    found = SUFFIXES.get(Path(filename).suffix.lower())
    if found is None:
        known = ", ".join(sorted(SUFFIXES))
        raise CorpusError(f"{filename}: cannot tell the format from the name (known endings: {known}); name it, e.g. format=jsonl")
    return found


def read_tasks(filename: str, data: bytes, labels: Sequence[str], format: TaskFormat | None = None) -> list[Example]:
    """Examples from an uploaded file's bytes; spans must use ``labels``."""
    kind = detect_format(filename, format)
    if len(data) > MAX_UPLOAD_BYTES:
        raise CorpusError(f"{filename}: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{filename}: not UTF-8 (byte {error.start} is {data[error.start:error.start + 1]!r})") from None
    if kind is TaskFormat.csv:
        examples = _read_csv(filename, text)
    else:
        examples = _read_with_corpus(filename, text, kind, labels)
    if not examples:
        raise CorpusError(f"{filename}: no tasks found")
    _check(filename, examples, labels)
    return examples


def read_task_file(path: Path, labels: Sequence[str], format: TaskFormat | None = None) -> list[Example]:
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    return read_tasks(str(path), path.read_bytes(), labels, format)


def _read_with_corpus(filename: str, text: str, kind: TaskFormat, labels: Sequence[str]) -> list[Example]:
    upload = io.StringIO(text)
    if kind is TaskFormat.jsonl:
        return read_jsonl(upload, labels=labels, name=filename)
    return read_conll(upload, name=filename)


def _read_csv(filename: str, text: str) -> list[Example]:
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        header = reader.fieldnames or []
        if "text" not in header:
            raise CorpusError(f"{filename}: the CSV header has no 'text' column (found {header})")
        examples = []
        for row in reader:
            value = row.get("text")
            if not isinstance(value, str) or not value.strip():
                raise CorpusError(f"{filename}:{reader.line_num}: the 'text' column is empty")
            meta = {k: v for k, v in row.items() if k not in ("text", None) and v not in (None, "")}
            examples.append(Example(value, [], meta))
    except csv.Error as error:
        raise CorpusError(f"{filename}:{reader.line_num}: not valid CSV ({error})") from None
    return examples


def _check(filename: str, examples: Iterable[Example], labels: Sequence[str]) -> None:
    """What the readers leave to us: texts a database can store, and only the project's labels."""
    known = set(labels)
    for number, example in enumerate(examples, 1):
        where = f"{filename}: task {number}" + (f" (line {example.meta['line']})" if "line" in example.meta else "")
        if len(example.text) > MAX_TEXT:
            raise CorpusError(f"{where}: text longer than {MAX_TEXT} characters")
        if "\x00" in example.text:
            raise CorpusError(f"{where}: text contains a NUL character")
        try:
            example.text.encode("utf-8")
        except UnicodeEncodeError:
            raise CorpusError(f"{where}: text is not valid Unicode (lone surrogate)") from None
        for span in example.spans:
            if span.label not in known:
                raise CorpusError(f"{where}: unknown label {span.label!r}; the project's labels are {sorted(known)}")


def render_examples(examples: Sequence[Example], format: str) -> str:
    """JSONL or CoNLL text for ``examples``, through the corpus writers."""
    out = io.StringIO()
    (write_jsonl if format == "jsonl" else write_conll)(examples, out)
    return out.getvalue()
