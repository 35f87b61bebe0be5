"""corpus.py: readers and writers, checked against the real corpora beside the checkout
(../shared/data; tests marked ``real_corpora`` skip without them, except under CI) and on small
handmade files for the edge cases."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from active_learning.corpus import (
    CorpusError,
    accepted_annotation,
    read_conll,
    read_corpus,
    read_jsonl,
    read_label_studio,
    to_conll_rows,
    word_offsets,
    write_conll,
    write_jsonl,
)
from active_learning.spans import Example, Span, iob1_to_iob2, spans_to_bio
from support import SHARED_DATA as DATA

real_corpora = pytest.mark.usefixtures("shared_data")  # read DATA: skipped (locally) or failed (CI) without it

# Sentence and entity counts copied from each folder's SOURCE.txt.
REAL = {
    "conll2003/eng.train": (14041, {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}),
    "conll2003/eng.testa": (3250, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}),
    "conll2003/eng.testb": (3453, {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}),
    "weibo_ner/weiboNER_2nd_conll.train": (
        1350,
        {"GPE.NAM": 205, "GPE.NOM": 8, "LOC.NAM": 56, "LOC.NOM": 51, "ORG.NAM": 183, "ORG.NOM": 42, "PER.NAM": 578, "PER.NOM": 772},
    ),
    "weibo_ner/weiboNER_2nd_conll.dev": (
        270,
        {"GPE.NAM": 26, "GPE.NOM": 1, "LOC.NAM": 6, "LOC.NOM": 6, "ORG.NAM": 47, "ORG.NOM": 5, "PER.NAM": 90, "PER.NOM": 208},
    ),
    "weibo_ner/weiboNER_2nd_conll.test": (
        270,
        {"GPE.NAM": 47, "GPE.NOM": 2, "LOC.NAM": 19, "LOC.NOM": 9, "ORG.NAM": 39, "ORG.NOM": 17, "PER.NAM": 113, "PER.NOM": 172},
    ),
    "peoples_daily_dev_test_only/example.dev": (2318, {"LOC": 1951, "ORG": 984, "PER": 884}),
    "peoples_daily_dev_test_only/example.test": (4636, {"LOC": 3658, "ORG": 2185, "PER": 1864}),
}
TOTAL_ENTITIES = {  # the "entities=" figure of SOURCE.txt, checked separately from the per-type sum
    "conll2003/eng.train": 23499,
    "conll2003/eng.testa": 5942,
    "conll2003/eng.testb": 5648,
    "weibo_ner/weiboNER_2nd_conll.train": 1895,
    "weibo_ner/weiboNER_2nd_conll.dev": 389,
    "weibo_ner/weiboNER_2nd_conll.test": 418,
    "peoples_daily_dev_test_only/example.dev": 3819,
    "peoples_daily_dev_test_only/example.test": 7707,
}
CHINESE = [name for name in REAL if not name.startswith("conll2003/")]



def _params(names):
    return list(names)


@cache
def examples_of(name: str) -> tuple[Example, ...]:
    return tuple(read_conll(DATA / name))


@cache
def original_sentences(name: str) -> tuple[tuple[list[str], list[str]], ...]:
    """The file parsed independently of corpus.py: (tokens, tags) per blank-line-separated block.
    Weibo tokens carry a position suffix ('科0'); the text is their first character."""
    sentences, tokens, tags = [], [], []
    weibo = name.startswith("weibo_ner/")
    with open(DATA / name, encoding="utf-8") as handle:
        for line in handle:
            columns = line.split()
            if not columns or columns[0] == "-DOCSTART-":
                if tokens:
                    sentences.append((tokens, tags))
                tokens, tags = [], []
                continue
            tokens.append(columns[0][0] if weibo else columns[0])
            tags.append(columns[-1])
    if tokens:
        sentences.append((tokens, tags))
    return tuple(sentences)


def original_entities(tokens: list[str], tags: list[str], separator: str) -> list[tuple[str, str]]:
    """(mention, type) per entity, by SOURCE.txt's rule: a new entity starts at B- or at an I- whose
    type differs from the previous token's."""
    entities, current, previous_type = [], None, None
    for token, tag in zip(tokens, tags):
        kind, _, label = tag.partition("-")
        if kind == "I" and current is not None and label == previous_type:
            current[0].append(token)
        else:
            if current is not None:
                entities.append(current)
            current = ([token], label) if kind in ("B", "I") else None
        previous_type = label if kind in ("B", "I") else None
    if current is not None:
        entities.append(current)
    return [(separator.join(words), label) for words, label in entities]


# ---- the real corpora -------------------------------------------------------------------------


@real_corpora
@pytest.mark.parametrize("name", list(REAL))
def test_real_corpus_counts_match_source_txt(name):
    sentences, per_type = REAL[name]
    examples = examples_of(name)
    assert len(examples) == sentences
    assert Counter(span.label for example in examples for span in example.spans) == Counter(per_type)
    assert sum(len(example.spans) for example in examples) == TOTAL_ENTITIES[name]


@real_corpora
@pytest.mark.parametrize("name", list(REAL))
def test_real_corpus_text_and_mentions_match_the_original_tokens(name):
    separator = "" if name in CHINESE else " "
    examples, originals = examples_of(name), original_sentences(name)
    assert len(examples) == len(originals)
    for example, (tokens, tags) in zip(examples, originals):
        assert example.text == separator.join(tokens)
        expected = original_entities(tokens, tags, separator)
        assert [(example.text[s.start : s.end], s.label) for s in example.spans] == expected


@real_corpora
@pytest.mark.parametrize("name", CHINESE)
def test_real_chinese_corpus_round_trips_at_character_level(name):
    """What the reader keeps of a character corpus: one character per original token, and IOB2 tags
    per character equal to the original tags (IOB1/stray I- repaired)."""
    for example, (tokens, tags) in zip(examples_of(name), original_sentences(name)):
        characters = [(i, i + 1) for i in range(len(example.text))]
        assert list(example.text) == tokens
        assert spans_to_bio(example.spans, characters) == iob1_to_iob2(tags)


@real_corpora
@pytest.mark.parametrize("name", _params(REAL))
def test_real_corpus_round_trips_through_conll_rows(name):
    mismatched = []
    for number, (example, (tokens, tags)) in enumerate(zip(examples_of(name), original_sentences(name))):
        rows = to_conll_rows(example)
        if [token for token, _ in rows] != tokens or [tag for _, tag in rows] != iob1_to_iob2(tags):
            mismatched.append(number)
    assert mismatched == [], f"{len(mismatched)} sentences differ, first {mismatched[:5]}"


@real_corpora
def test_real_iob1_file_is_converted():
    """eng.train is IOB1 (entities start with I-), so its rows must start every entity with B-."""
    rows = [row for example in examples_of("conll2003/eng.train")[:300] for row in to_conll_rows(example)]
    starts = Counter(tag[:2] for _, tag in rows if tag != "O")
    assert starts["B-"] > 300
    original_starts = Counter(
        tag[:2] for _, tags in original_sentences("conll2003/eng.train")[:300] for tag in tags if tag != "O"
    )
    assert original_starts["B-"] < 5  # the file itself almost never writes B-


@real_corpora
@pytest.mark.parametrize("name", ["conll2003/eng.testa", "weibo_ner/weiboNER_2nd_conll.dev", "peoples_daily_dev_test_only/example.dev"])
def test_real_examples_survive_write_conll_then_read_conll(name, tmp_path):
    assert_conll_round_trip(examples_of(name)[:300], tmp_path)


@real_corpora
def test_all_wide_chinese_examples_survive_write_conll_then_read_conll(tmp_path):
    """The Chinese round trip holds while every character is wide (each one its own token)."""
    examples = [e for e in examples_of("peoples_daily_dev_test_only/example.dev") if len(word_offsets(e.text)) == len(e.text)][:300]
    assert len(examples) == 300
    assert_conll_round_trip(examples, tmp_path)


def test_chinese_text_with_latin_letters_survives_write_conll_then_read_conll(tmp_path):
    assert_conll_round_trip([Example("姚明加盟NBA火箭队", [(0, 2, "PER"), (4, 7, "ORG")])], tmp_path)


def assert_conll_round_trip(examples, tmp_path):
    write_conll(examples, tmp_path / "out.conll")
    back = read_conll(tmp_path / "out.conll")
    assert [(e.text, e.spans) for e in back] == [(e.text, e.spans) for e in examples]


@real_corpora
@pytest.mark.parametrize("name", list(REAL))
def test_real_examples_survive_write_jsonl_then_read_jsonl(name, tmp_path):
    examples = examples_of(name)[:300]
    write_jsonl(examples, tmp_path / "out.jsonl")
    back = read_jsonl(tmp_path / "out.jsonl")
    assert [e.text for e in back] == [e.text for e in examples]
    assert [e.spans for e in back] == [e.spans for e in examples]
    assert [e.meta for e in back] == [e.meta for e in examples]
    if name in CHINESE:  # written as UTF-8, not \u escapes
        assert examples[0].text[:5] in (tmp_path / "out.jsonl").read_text(encoding="utf-8")


@real_corpora
def test_weibo_label_map_renames_and_drops_types():
    name = "weibo_ner/weiboNER_2nd_conll.dev"
    label_map = {"PER.NAM": "PER", "ORG.NAM": "ORG", "LOC.NAM": "LOC", "GPE.NAM": "LOC",
                 "PER.NOM": None, "ORG.NOM": None, "LOC.NOM": None, "GPE.NOM": None}
    examples = read_conll(DATA / name, label_map=label_map)
    counts = Counter(s.label for e in examples for s in e.spans)
    assert counts == {"PER": 90, "ORG": 47, "LOC": 6 + 26}
    assert [e.text for e in examples] == [e.text for e in examples_of(name)]


# ---- handmade CoNLL files ---------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_conll_tab_and_space_columns_extra_columns_and_docstart(tmp_path):
    path = write(
        tmp_path / "mixed.conll",
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "John NNP B-NP I-PER\n"
        "Smith\tNNP\tI-NP\tI-PER\n"
        "lives VBZ I-VP O\n"
        "in IN I-PP O\n"
        "New\tI-LOC\n"
        "York  NNP   I-NP    I-LOC\n"
        " \t \n"  # whitespace-only line: a sentence break
        "Paris I-LOC\n"
        "-DOCSTART- -X- -X- O\n"  # a document break without a blank line before it
        "Oslo I-LOC\n"
        "Bergen B-LOC\n",
    )
    examples = read_conll(path)
    assert [e.text for e in examples] == ["John Smith lives in New York", "Paris", "Oslo Bergen"]
    assert examples[0].spans == [Span(0, 10, "PER"), Span(20, 28, "LOC")]
    assert examples[1].spans == [Span(0, 5, "LOC")]
    assert examples[2].spans == [Span(0, 4, "LOC"), Span(5, 11, "LOC")]
    assert [e.meta["line"] for e in examples] == [3, 10, 12]
    assert examples[0].meta["source"] == str(path)


def test_read_conll_of_characters_joins_without_spaces(tmp_path):
    path = write(tmp_path / "zh.bio", "张 B-PER\n三 I-PER\n在 O\n北 B-LOC\n京 I-LOC\n\n好 O\n")
    examples = read_conll(path)
    assert [e.text for e in examples] == ["张三在北京", "好"]
    assert examples[0].mentions() == ["张三", "北京"]


def test_read_conll_of_weibo_style_tokens_keeps_the_first_character(tmp_path):
    path = write(tmp_path / "weibo.conll", "科0\tB-ORG.NAM\n技1\tI-ORG.NAM\np10\tO\n好0\tB-PER.NOM\n")
    (example,) = read_conll(path, label_map={"PER.NOM": None, "ORG.NAM": "ORG"})
    assert example.text == "科技p好"
    assert example.spans == [Span(0, 2, "ORG")]


@pytest.mark.parametrize(
    "body, line, fragment",
    [
        ("John I-PER\nSmith I-PERSON-X Y\n", 2, "is not a BIO tag"),
        ("John I-PER\n\nSmith PER\n", 3, "'PER' is not a BIO tag"),
        ("John O\nSmith E-PER\n", 2, "'E-PER'"),
        ("John O\nSmith B-\n", 2, "'B-'"),
        ("John O\nlonely\n", 2, "expected 'TOKEN ... TAG'"),
    ],
)
def test_read_conll_bad_line_names_file_and_line(tmp_path, body, line, fragment):
    path = write(tmp_path / "bad.conll", body)
    with pytest.raises(CorpusError) as error:
        read_conll(path)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert fragment in str(error.value)


def test_read_conll_of_an_empty_file_is_empty(tmp_path):
    assert read_conll(write(tmp_path / "empty.conll", "\n\n-DOCSTART- -X- O\n\n")) == []


# ---- JSONL ------------------------------------------------------------------------------------


def test_read_jsonl_accepts_lists_objects_blank_lines_and_keeps_meta(tmp_path):
    path = write(
        tmp_path / "in.jsonl",
        json.dumps({"text": "John Smith in Oslo", "spans": [[14, 18, "LOC"], [0, 10, "PER"]], "id": 7}) + "\n"
        "\n"
        + json.dumps({"text": "Oslo", "spans": [{"start": 0, "end": 4, "label": "LOC"}]}) + "\n"
        + json.dumps({"text": "nothing here"}) + "\n",
    )
    examples = read_jsonl(path, labels=["PER", "LOC"])
    assert [e.text for e in examples] == ["John Smith in Oslo", "Oslo", "nothing here"]
    assert examples[0].spans == [Span(0, 10, "PER"), Span(14, 18, "LOC")]
    assert examples[1].spans == [Span(0, 4, "LOC")]
    assert examples[2].spans == []
    assert [e.meta for e in examples] == [{"id": 7}, {}, {}]


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ('{"text": "a", "spans": [', "not valid JSON"),
        ('{"spans": []}', "expected an object with a 'text' field"),
        ('["a", []]', "expected an object with a 'text' field"),
        ('{"text": "abcdef", "spans": [[0, 3, "A"], [2, 5, "B"]]}', "overlap"),
        ('{"text": "abcdef", "spans": [[0, 9, "A"]]}', "spans[0]: (0, 9) is out of range"),
        ('{"text": "abcdef", "spans": [{"start": 0, "end": 2}]}', "spans[0] lacks 'label'"),
        ('{"text": "", "spans": []}', "text: must be a non-empty string"),
        ('{"text": "abcdef", "spans": [[0, 2, "GPE"]]}', "unknown label 'GPE'"),
    ],
)
def test_read_jsonl_bad_line_names_file_and_line(tmp_path, bad_line, fragment):
    good = json.dumps({"text": "abc", "spans": [[0, 1, "A"]]})
    path = write(tmp_path / "bad.jsonl", f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(CorpusError) as error:
        read_jsonl(path, labels=["A", "B"])
    assert str(error.value).startswith(f"{path}:3: ")
    assert fragment in str(error.value)


# ---- Label Studio export ----------------------------------------------------------------------


def _annotation(id, spans, updated_at, ground_truth=False, was_cancelled=False):
    return {
        "id": id,
        "updated_at": updated_at,
        "ground_truth": ground_truth,
        "was_cancelled": was_cancelled,
        "result": [
            {"from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": s, "end": e, "text": "?", "labels": [label]}}
            for s, e, label in spans
        ],
    }


LS_TEXT = "Ada Lovelace met Babbage in London"


@pytest.fixture
def label_studio_export(tmp_path):
    tasks = [
        {  # ground truth wins over a later annotation
            "id": 1,
            "data": {"text": LS_TEXT},
            "annotations": [
                _annotation(11, [(0, 12, "PER")], "2024-05-01T10:00:00.000000Z", ground_truth=True),
                _annotation(10, [(0, 3, "PER")], "2024-05-03T10:00:00.000000Z"),
            ],
        },
        {  # no ground truth: the latest non-cancelled annotation
            "id": 2,
            "data": {"text": LS_TEXT},
            "annotations": [
                _annotation(21, [(17, 24, "PER"), (28, 34, "LOC")], "2024-05-02T10:00:00.000000Z"),
                _annotation(20, [(28, 34, "LOC")], "2024-05-01T10:00:00.000000Z"),
                _annotation(22, [(0, 3, "LOC")], "2024-05-09T10:00:00.000000Z", was_cancelled=True),
            ],
        },
        {  # every annotation cancelled (skipped): no accepted annotation
            "id": 3,
            "data": {"text": "skipped text"},
            "annotations": [_annotation(30, [(0, 7, "PER")], "2024-05-01T10:00:00.000000Z", was_cancelled=True)],
        },
        {"id": 4, "data": {"text": "never labelled"}, "annotations": []},
        {  # a cancelled ground truth does not count either; non-label results are ignored
            "id": 5,
            "data": {"text": LS_TEXT},
            "annotations": [
                _annotation(50, [(0, 12, "PER")], "2024-05-05T10:00:00.000000Z", ground_truth=True, was_cancelled=True),
                _annotation(51, [(28, 34, "LOC")], "2024-05-01T10:00:00.000000Z"),
            ],
        },
    ]
    tasks[4]["annotations"][1]["result"].append(
        {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": ["news"]}}
    )
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


def test_read_label_studio_picks_the_accepted_annotation(label_studio_export):
    examples = read_label_studio(label_studio_export)
    assert [e.meta["task_id"] for e in examples] == [1, 2, 5]
    assert [e.spans for e in examples] == [
        [Span(0, 12, "PER")],
        [Span(17, 24, "PER"), Span(28, 34, "LOC")],
        [Span(28, 34, "LOC")],
    ]
    assert examples[0].mentions() == ["Ada Lovelace"]
    assert all(e.meta["labelled"] for e in examples)


def test_read_label_studio_can_include_unlabelled_tasks(label_studio_export):
    examples = read_label_studio(label_studio_export, include_unlabelled=True)
    assert [(e.meta["task_id"], e.meta["labelled"], e.spans) for e in examples][2:4] == [
        (3, False, []),
        (4, False, []),
    ]
    assert [e.text for e in examples][2:4] == ["skipped text", "never labelled"]


def test_accepted_annotation_rules():
    a = _annotation(1, [], "2024-01-02T00:00:00Z")
    b = _annotation(2, [], "2024-01-03T00:00:00Z")
    truth = _annotation(3, [], "2024-01-01T00:00:00Z", ground_truth=True)
    cancelled = _annotation(4, [], "2024-01-09T00:00:00Z", was_cancelled=True)
    assert accepted_annotation([a, b, cancelled]) is b
    assert accepted_annotation([b, truth, a]) is truth
    assert accepted_annotation([cancelled]) is None
    assert accepted_annotation([]) is None
    # same timestamp: the higher id (the later one) wins
    twin = _annotation(5, [], "2024-01-03T00:00:00Z")
    assert accepted_annotation([twin, b]) is twin


def test_read_label_studio_errors(tmp_path):
    bad_json = write(tmp_path / "bad.json", "[{")
    with pytest.raises(CorpusError, match="not valid JSON"):
        read_label_studio(bad_json)
    not_list = write(tmp_path / "obj.json", "{}")
    with pytest.raises(CorpusError, match="expected a JSON list"):
        read_label_studio(not_list)
    no_text = write(tmp_path / "notext.json", json.dumps([{"id": 9, "data": {"body": "x"}}]))
    with pytest.raises(CorpusError, match=r"task 0 has no data\.text"):
        read_label_studio(no_text)
    assert read_label_studio(no_text, text_key="body", include_unlabelled=True)[0].text == "x"
    overlap = write(
        tmp_path / "overlap.json",
        json.dumps([{"id": 8, "data": {"text": LS_TEXT},
                     "annotations": [_annotation(1, [(0, 12, "PER"), (4, 16, "PER")], "2024")]}]),
    )
    with pytest.raises(CorpusError, match=r"task 8: spans: .* overlap"):
        read_label_studio(overlap)


# ---- read_corpus dispatch ---------------------------------------------------------------------


def test_read_corpus_dispatches_on_suffix(tmp_path, label_studio_export):
    jsonl = write(tmp_path / "a.jsonl", json.dumps({"text": "Oslo", "spans": [[0, 4, "LOC"]]}) + "\n")
    conll = write(tmp_path / "a.txt", "Oslo B-LOC\n")
    no_suffix = write(tmp_path / "eng_like", "Oslo I-LOC\nis O\n")
    assert [(e.text, e.spans) for e in read_corpus(jsonl)] == [("Oslo", [Span(0, 4, "LOC")])]
    assert [(e.text, e.spans) for e in read_corpus(conll)] == [("Oslo", [Span(0, 4, "LOC")])]
    assert [(e.text, e.spans) for e in read_corpus(no_suffix)] == [("Oslo is", [Span(0, 4, "LOC")])]
    assert [e.meta["task_id"] for e in read_corpus(label_studio_export)] == [1, 2, 5]
    assert len(read_corpus(label_studio_export, include_unlabelled=True)) == 5
    with pytest.raises(CorpusError, match="unknown label"):
        read_corpus(jsonl, labels=["PER"])
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path)  # a directory is not a corpus


@real_corpora
def test_read_corpus_of_the_real_conll_file():
    assert len(read_corpus(DATA / "conll2003/eng.testb")) == 3453


# ---- word_offsets and to_conll_rows -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, cuts, expected",
    [
        ("John  Smith", (), [(0, 4), (6, 11)]),
        ("a\tb\n\nc   d ", (), [(0, 1), (2, 3), (5, 6), (9, 10)]),
        ("\n  lead and trail \t", (), [(3, 7), (8, 11), (12, 17)]),
        ("", (), []),
        (" \t\n", (), []),
        ("hi😀there", (), [(0, 2), (2, 3), (3, 8)]),  # emoji are wide: a word of their own
        ("我爱NLP！", (), [(0, 1), (1, 2), (2, 5), (5, 6)]),  # CJK and full-width punctuation
        ("中\u3000文", (), [(0, 1), (2, 3)]),  # ideographic space separates
        ("New-York-based", (3, 4, 8), [(0, 3), (3, 4), (4, 8), (8, 14)]),
        ("New York", (0, 3, 4, 8), [(0, 3), (4, 8)]),  # cuts at edges or on spaces change nothing
        ("abc", (99,), [(0, 3)]),
    ],
)
def test_word_offsets(text, cuts, expected):
    assert word_offsets(text, cuts) == expected


def test_to_conll_rows_cuts_tokens_at_span_boundaries():
    example = Example("Hamburg-based firm hired Smith", [(0, 7, "LOC"), (25, 30, "PER")])
    assert to_conll_rows(example) == [
        ("Hamburg", "B-LOC"),
        ("-based", "O"),
        ("firm", "O"),
        ("hired", "O"),
        ("Smith", "B-PER"),
    ]


def test_write_conll_format(tmp_path):
    path = tmp_path / "out.conll"
    write_conll([Example("New York", [(0, 8, "LOC")]), Example("ok", [])], path)
    assert path.read_text(encoding="utf-8") == "New B-LOC\nYork I-LOC\n\nok O\n\n"
