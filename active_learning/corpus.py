"""Corpus readers and writers. Everything they return or take is an ``Example`` (text + char spans).

Formats: CoNLL/BIO column files (IOB1 or IOB2), JSONL (``{"text", "spans"}``) and Label Studio's
JSON export. ``read_corpus`` picks the reader from the file name.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO

from .spans import Example, Span, SpanError, bio_to_spans, boundaries, iob1_to_iob2, spans_to_bio, validate, validate_meta

_TAG = re.compile(r"^(O|[BI]-\S+)$")
# Weibo NER writes each character followed by its position in its jieba word ("科0", "p10"); a few
# emoji were mangled into two U+FFFD characters ("��0"). The text is the first character.
_CHAR_WITH_POSITION = re.compile(r"^\S\D?\d{1,2}$")


class CorpusError(ValueError):
    """A file that cannot be read as the format it claims; the message names the file and line."""


Source = str | Path | IO[str]  # a file's path, or an open text stream (an upload, say)


@contextmanager
def _opened(source: Source, mode: str = "r") -> Iterator[IO[str]]:
    if hasattr(source, "read") or hasattr(source, "write"):
        yield source
    else:
        with open(source, mode, encoding="utf-8") as handle:
            yield handle


def _sentences(source: Source, name: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """Yield (first line number, [(token, tag)]) per sentence of a column file."""
    rows: list[tuple[str, str]] = []
    first = 0
    with _opened(source) as handle:
        for number, line in enumerate(handle, 1):
            columns = line.split()  # tabs or spaces; whitespace-only lines are sentence breaks
            if not columns or columns[0] == "-DOCSTART-":
                if rows:
                    yield first, rows
                rows = []
                continue
            if len(columns) < 2:
                raise CorpusError(f"{name}:{number}: expected 'TOKEN ... TAG', got {line.strip()!r}")
            if not _TAG.match(columns[-1]):
                raise CorpusError(f"{name}:{number}: {columns[-1]!r} is not a BIO tag (O, B-X or I-X)")
            if not rows:
                first = number
            rows.append((columns[0], columns[-1]))
    if rows:
        yield first, rows


def _is_wide(char: str) -> bool:
    """True for characters written without spaces between them (CJK ideographs, kana, full width)."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def read_conll(source: Source, label_map: Mapping[str, str | None] | None = None, name: str | None = None) -> list[Example]:
    """Read a CoNLL-style column file (a path or a text stream; ``name`` for messages and meta):
    first column the token, last column the tag.

    IOB1 and IOB2 are both read (IOB1 is converted). Tokens are joined with one space, except that
    files with one character per token (Chinese corpora) are joined without spaces. ``label_map``
    renames entity types; mapping a type to ``None`` drops it (e.g. Weibo's ``*.NOM``).
    """
    name = name or str(source)
    sentences = list(_sentences(source, name))
    tokens_seen = [token for _, rows in sentences for token, _ in rows]
    with_positions = bool(tokens_seen) and all(_CHAR_WITH_POSITION.match(t) for t in tokens_seen)
    char_level = with_positions or (bool(tokens_seen) and all(len(t) == 1 for t in tokens_seen))
    examples = []
    for line, rows in sentences:
        tokens = [t[0] if with_positions else t for t, _ in rows]
        separator = "" if char_level else " "
        offsets, cursor = [], 0
        for token in tokens:
            offsets.append((cursor, cursor + len(token)))
            cursor += len(token) + len(separator)
        spans = bio_to_spans(iob1_to_iob2([tag for _, tag in rows]), offsets)
        if label_map:
            spans = [Span(s.start, s.end, label_map.get(s.label, s.label)) for s in spans]
            spans = [s for s in spans if s.label is not None]
        meta = {"source": name, "line": line, **({"char_level": True} if char_level else {})}
        examples.append(Example(separator.join(tokens), spans, meta))
    return examples


def word_offsets(text: str, cut_at: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Character offsets of the words of ``text``: runs of non-space characters, with each wide
    (CJK) character a word of its own, also cut at every offset in ``cut_at`` (span boundaries)."""
    cuts = set(cut_at)
    offsets: list[tuple[int, int]] = []
    start = None
    for i, char in enumerate(text):
        if char.isspace():
            if start is not None:
                offsets.append((start, i))
            start = None
            continue
        if start is not None and (i in cuts or _is_wide(char) or _is_wide(text[i - 1])):
            offsets.append((start, i))
            start = None
        if start is None:
            start = i
    if start is not None:
        offsets.append((start, len(text)))
    return offsets


def to_conll_rows(example: Example) -> list[tuple[str, str]]:
    """(token, IOB2 tag) rows for one example; tokens are cut at span boundaries so none is lost.

    A text read from a character-level file, or with any wide (CJK) character, is written one
    character per row, as Chinese corpora are, so ``read_conll`` joins it back without spaces.
    """
    if example.meta.get("char_level") or any(_is_wide(char) for char in example.text):
        offsets = [(i, i + 1) for i, char in enumerate(example.text) if not char.isspace()]
    else:
        offsets = word_offsets(example.text, boundaries(example.spans))
    tags = spans_to_bio(example.spans, offsets)
    return [(example.text[s:e], tag) for (s, e), tag in zip(offsets, tags)]


def write_conll(examples: Iterable[Example], target: Source) -> None:
    with _opened(target, "w") as out:
        for example in examples:
            for token, tag in to_conll_rows(example):
                out.write(f"{token} {tag}\n")
            out.write("\n")


def _spans_from_json(raw, where: str) -> list:
    spans = []
    for i, span in enumerate(raw or []):
        if isinstance(span, Mapping):
            try:
                span = (span["start"], span["end"], span["label"])
            except KeyError as missing:
                raise CorpusError(f"{where}: spans[{i}] lacks {missing}") from None
        spans.append(span)
    return spans


def _json(document: str, where: str):
    """``document`` parsed, or a ``CorpusError`` naming ``where`` (also for nesting deeper than the stack)."""
    try:
        return json.loads(document)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{where}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise CorpusError(f"{where}: JSON nested too deeply to read") from None


def read_jsonl(source: Source, labels: Iterable[str] | None = None, name: str | None = None) -> list[Example]:
    """One JSON object per line: ``{"text": ..., "spans": [[start, end, label], ...], ...}``.

    Spans may also be objects with start/end/label. Other keys are kept in ``meta``. ``source`` is a
    path or a text stream; ``name`` names it in error messages.
    """
    path = name or str(source)
    labels = list(labels) if labels is not None else None
    examples = []
    with _opened(source) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            record = _json(line, where)
            if not isinstance(record, dict) or "text" not in record:
                raise CorpusError(f"{where}: expected an object with a 'text' field")
            try:
                spans = validate(record["text"], _spans_from_json(record.get("spans"), where), labels)
                meta = validate_meta({k: v for k, v in record.items() if k not in ("text", "spans")})
            except SpanError as error:
                raise CorpusError(f"{where}: {error}") from None
            examples.append(Example(record["text"], spans, meta))
    return examples


def write_jsonl(examples: Iterable[Example], target: Source) -> None:
    with _opened(target, "w") as out:
        for example in examples:
            record = {"text": example.text, "spans": [list(s) for s in example.spans], **example.meta}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def accepted_annotation(annotations: Iterable[Mapping]) -> Mapping | None:
    """The one annotation of a task that counts when several annotators labelled it.

    Rule: a ground-truth annotation wins; otherwise the most recently updated one that was not
    cancelled (skipped). Cancelled annotations never count.
    """
    candidates = [a for a in annotations if not a.get("was_cancelled")]
    if not candidates:
        return None
    return max(candidates, key=lambda a: (bool(a.get("ground_truth")), _timestamp(a.get("updated_at")), a.get("id") or 0))


def _timestamp(value) -> float:
    """Seconds since the epoch of an ISO 8601 time (as Label Studio writes them); 0 if absent."""
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp() if value else 0.0
    except ValueError:
        return 0.0


def spans_from_results(results: Iterable[Mapping]) -> list[Span]:
    """Character spans from Label Studio ``labels`` results (``value.start/end/labels``)."""
    spans = []
    for result in results:
        value = result.get("value", {})
        if result.get("type") not in (None, "labels") or "start" not in value:
            continue
        for label in value.get("labels", []):
            spans.append(Span(int(value["start"]), int(value["end"]), label))
    return spans


def read_label_studio(path: str | Path, text_key: str = "text", include_unlabelled: bool = False) -> list[Example]:
    """Label Studio's JSON export: a list of tasks with ``data`` and ``annotations``.

    Each task's accepted annotation (see ``accepted_annotation``) gives its spans. Tasks with no
    accepted annotation are skipped unless ``include_unlabelled``.
    """
    path = Path(path)
    tasks = _json(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(tasks, list):
        raise CorpusError(f"{path}: expected a JSON list of Label Studio tasks")
    examples = []
    for i, task in enumerate(tasks):
        text = (task.get("data") or {}).get(text_key)
        if text is None:
            raise CorpusError(f"{path}: task {i} has no data.{text_key}")
        annotation = accepted_annotation(task.get("annotations") or [])
        if annotation is None and not include_unlabelled:
            continue
        try:
            spans = validate(text, spans_from_results(annotation["result"]) if annotation else [])
        except SpanError as error:
            raise CorpusError(f"{path}: task {task.get('id', i)}: {error}") from None
        examples.append(Example(text, spans, {"task_id": task.get("id"), "labelled": annotation is not None}))
    return examples


def read_corpus(path: str | Path, **options) -> list[Example]:
    """Read any supported file: ``.jsonl`` → JSONL, ``.json`` → Label Studio export, else CoNLL."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return read_jsonl(path, **options)
    if path.suffix == ".json":
        return read_label_studio(path, **options)
    return read_conll(path, **options)
