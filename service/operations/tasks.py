"""Tasks: import them (from request bodies or files, deduplicated by content) and serve the next ones to label.

Task files are JSONL (``{"text", "spans"?, ...}`` per line), CSV (a ``text`` column; other columns
are kept as task meta) or CoNLL column files, read with ``active_learning.corpus``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from active_learning.corpus import CorpusError, read_conll, read_jsonl
from active_learning.spans import Example, SpanError, validate, validate_meta

from .. import sync
from ..errors import Conflict, Invalid, UpstreamError
from ..label_studio import LabelStudioClient, LabelStudioError
from ..models import Prediction, Project, Task, TaskState
from ..schemas import MAX_TEXT, EntityOut, ImportReport, NextTask, TaskFormat, TaskIn
from ..versions import active_version

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
# Tasks per uploaded file: what one request stores in seconds (10,000 short tasks: about 6 s on 2 CPU
# cores; 750,000, which 50 MiB of them are, took 8 minutes). ``nerloop import`` reads local files of any size.
MAX_UPLOAD_TASKS = 10_000
IMPORT_ATTEMPTS = 5  # each lost race leaves fewer new texts, so a few attempts settle any number of parallel imports
MAX_ERRORS = 50  # reported per request; a file of bad tasks would otherwise answer megabytes


SUFFIXES = {
    ".jsonl": TaskFormat.jsonl, ".csv": TaskFormat.csv,
    ".conll": TaskFormat.conll, ".bio": TaskFormat.conll, ".iob": TaskFormat.conll, ".txt": TaskFormat.conll,
}


def examples_from_tasks(project: Project, tasks: Sequence[TaskIn]) -> list[Example]:
    """Validate spans against their text and the project's labels; every problem names its task."""
    examples, errors = [], []
    for i, task in enumerate(tasks):
        raw = [(s.start, s.end, s.label) for s in task.spans]
        try:
            spans = validate(task.text, raw, project.labels)
        except SpanError as error:
            errors.append((("tasks", i, *error.loc), error.reason))
            continue
        examples.append(Example(task.text, spans, dict(task.meta)))
    if errors:
        raise Invalid(errors[:MAX_ERRORS])
    return examples


def examples_from_upload(project: Project, filename: str | None, data: bytes, format: TaskFormat | None) -> list[Example]:
    """Examples from an uploaded file's bytes; its spans must use the project's labels. At most
    ``MAX_UPLOAD_TASKS`` (a JSONL file is counted by its lines before it is parsed)."""
    filename = filename or "upload"
    too_many = f"{filename}: more than {MAX_UPLOAD_TASKS} tasks in one upload; split the file, or use `nerloop import`"
    try:
        if _detect_format(filename, format) is TaskFormat.jsonl and sum(1 for line in data.splitlines() if line.strip()) > MAX_UPLOAD_TASKS:
            raise CorpusError(too_many)
        examples = _read_tasks(filename, data, project.labels, format)
        if len(examples) > MAX_UPLOAD_TASKS:
            raise CorpusError(too_many)
        return examples
    except CorpusError as error:
        raise Invalid.one(("file",), str(error)) from error


def examples_from_path(project: Project, path: Path, format: TaskFormat | None) -> list[Example]:
    """Examples from a task file on this machine; its spans must use the project's labels."""
    try:
        if not path.is_file():
            raise CorpusError(f"{path}: no such file")
        return _read_tasks(str(path), path.read_bytes(), project.labels, format)
    except CorpusError as error:
        raise Invalid.one(("file",), str(error)) from error


def import_examples(
    session: Session, project: Project, examples: Sequence[Example], client: LabelStudioClient | None, dev_share: float
) -> ImportReport:
    """Store new tasks (deduplicated by content hash); pool tasks are pushed to Label Studio when attached.

    Idempotent under concurrency: when a parallel import stored some of the same texts first (the
    unique content hash refuses ours), the import is made again, and those count as duplicates, as
    they would for an import made after it."""
    for _ in range(IMPORT_ATTEMPTS):
        try:
            result = sync.import_examples(session, project, list(examples), client=client, dev_share=dev_share)
            session.commit()
            return ImportReport(created=len(result.created), duplicates=result.duplicates)
        except IntegrityError:
            session.rollback()  # a parallel import stored some of these texts first
        except LabelStudioError as error:
            session.rollback()
            raise UpstreamError.one((), f"Label Studio: {error}") from error
        except SpanError as error:  # checked before already; kept so a disagreement is refused, not a crash
            session.rollback()
            raise Invalid.one((), str(error)) from error
    raise Conflict.one((), "parallel imports of the same texts kept colliding; import again")


def next_tasks(session: Session, project: Project, limit: int) -> list[NextTask]:
    """The pool tasks to label next, in the order Label Studio's uncertainty sampling serves them: the
    lowest score of the active version first; tasks it has not scored after, in an order fixed by
    their content hash (pseudo-random, so a cold start samples the pool evenly)."""
    version = active_version(session, project.id)
    version_id = version.id if version is not None else -1
    rows = session.exec(
        select(Task, Prediction)
        .outerjoin(Prediction, (Prediction.task_id == Task.id) & (Prediction.model_version_id == version_id))
        .where(Task.project_id == project.id, Task.state == TaskState.pool)
        # The hash's second half: its first half decides dev membership, and must not decide the order.
        .order_by(Prediction.score.is_(None), Prediction.score, func.substr(Task.content_hash, 33))
        .limit(limit)
    ).all()
    out = []
    for task, prediction in rows:
        spans = prediction.spans if prediction else []
        entities = [EntityOut(start=s, end=e, label=label, text=task.text[s:e], score=p) for s, e, label, p in spans]
        out.append(
            NextTask(
                id=task.id, text=task.text, meta=task.meta, score=prediction.score if prediction else None,
                model_version=version.name if prediction else None, predictions=entities,
            )
        )
    return out


# ---- task files -----------------------------------------------------------------------------------


def _detect_format(filename: str, given: TaskFormat | None) -> TaskFormat:
    if given is not None:
        return given
    found = SUFFIXES.get(Path(filename).suffix.lower())
    if found is None:
        known = ", ".join(sorted(SUFFIXES))
        raise CorpusError(f"{filename}: cannot tell the format from the name (known endings: {known}); name it, e.g. format=jsonl")
    return found


def _read_tasks(filename: str, data: bytes, labels: Sequence[str], format: TaskFormat | None) -> list[Example]:
    """Every problem is a ``CorpusError`` whose message names the file and, where there is one, the line."""
    kind = _detect_format(filename, format)
    if len(data) > MAX_UPLOAD_BYTES:
        raise CorpusError(f"{filename}: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{filename}: not UTF-8 (byte {error.start} is {data[error.start:error.start + 1]!r})") from None
    if kind is TaskFormat.csv:
        examples = _read_csv(filename, text)
    elif kind is TaskFormat.jsonl:
        examples = read_jsonl(io.StringIO(text), labels=labels, name=filename)
    else:
        examples = read_conll(io.StringIO(text), name=filename)
    if not examples:
        raise CorpusError(f"{filename}: no tasks found")
    _check(filename, examples, labels)
    return examples


def _read_csv(filename: str, text: str) -> list[Example]:
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    # strict: a quote opened and never closed is an error, not a field that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect, strict=True)
    row_starts = 1  # the line the record being read begins on; a record may span lines (quoted newlines)
    try:
        header = reader.fieldnames or []
        if "text" not in header:
            raise CorpusError(f"{filename}: the CSV header has no 'text' column (found {header})")
        examples = []
        row_starts = reader.line_num + 1
        for row in reader:
            value = row.get("text")
            if not isinstance(value, str) or not value.strip():
                raise CorpusError(f"{filename}:{row_starts}: the 'text' column is empty")
            meta = {k: v for k, v in row.items() if k not in ("text", None) and v not in (None, "")}
            examples.append(Example(value, [], meta))
            row_starts = reader.line_num + 1
    except csv.Error as error:
        unclosed = " (a quote opened there is never closed)" if "unexpected end of data" in str(error) else ""
        raise CorpusError(f"{filename}:{row_starts}: not valid CSV: {error}{unclosed}") from None
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
        try:
            validate_meta(example.meta)
        except SpanError as error:
            raise CorpusError(f"{where}: {error}") from None
