"""spans.py: validation of character spans and the two BIO edges (IOB1 → IOB2, tags ↔ spans)."""

import pytest

from active_learning.spans import (
    Example,
    Span,
    SpanError,
    bio_to_spans,
    iob1_to_iob2,
    spans_to_bio,
    validate,
)
from support import misaligned  # the test oracle for spans a word-level tagger cannot represent

# "John Smith visited New York ." with the character offsets of its whitespace tokens
TEXT = "John Smith visited New York ."
OFFSETS = [(0, 4), (5, 10), (11, 18), (19, 22), (23, 27), (28, 29)]


# ---- validate ---------------------------------------------------------------------------------


def test_validate_returns_sorted_span_tuples():
    spans = validate(TEXT, [[19, 27, "LOC"], (0, 10, "PER")], labels=["PER", "LOC"])
    assert spans == [Span(0, 10, "PER"), Span(19, 27, "LOC")]
    assert all(type(s) is Span for s in spans)


def test_validate_accepts_touching_spans_and_no_spans():
    assert validate("ab", [(1, 2, "B"), (0, 1, "A")]) == [Span(0, 1, "A"), Span(1, 2, "B")]
    assert validate("ab", []) == []


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None, 42])
def test_validate_rejects_empty_or_non_string_text(text):
    with pytest.raises(SpanError, match=r"^text: "):
        validate(text, [])


@pytest.mark.parametrize(
    "spans, fragment",
    [
        ([(3, 3, "PER")], "less than"),
        ([(4, 2, "PER")], "less than"),
        ([(0, 30, "PER")], "out of range"),
        ([(-1, 3, "PER")], "out of range"),
        ([(29, 30, "PER")], "out of range"),
        ([("0", 4, "PER")], "integers"),
        ([(0, 4.0, "PER")], "integers"),
        ([(None, 4, "PER")], "integers"),
        ([(True, 4, "PER")], "integers"),
        ([(0, 4)], "expected [start, end, label]"),
        ([5], "expected [start, end, label]"),
        ([(0, 4, "")], "label must be a non-empty string"),
        ([(0, 4, None)], "label must be a non-empty string"),
    ],
)
def test_validate_names_the_offending_span(spans, fragment):
    with pytest.raises(SpanError) as error:
        validate(TEXT, spans)
    assert str(error.value).startswith("spans[0]: ")
    assert fragment in str(error.value)


def test_validate_reports_the_index_of_a_later_bad_span():
    with pytest.raises(SpanError, match=r"^spans\[2\]: .*out of range for a text of 29 characters"):
        validate(TEXT, [(0, 4, "PER"), (5, 10, "PER"), (28, 31, "PER")])


def test_validate_rejects_an_unknown_label_and_lists_the_known_ones():
    with pytest.raises(SpanError) as error:
        validate(TEXT, [(0, 4, "PER"), (19, 27, "GPE")], labels=["PER", "LOC"])
    message = str(error.value)
    assert message.startswith("spans[1]: unknown label 'GPE'")
    assert "['LOC', 'PER']" in message


@pytest.mark.parametrize(
    "text, spans, loc, reason",
    [
        ("", [], ("text",), "must be a non-empty string"),
        (TEXT, [(0, 4, "PER"), (0, 40, "PER")], ("spans", 1), "(0, 40) is out of range for a text of 29 characters"),
        (TEXT, [(0, 10, "PER"), (5, 18, "LOC")], ("spans",), "(0, 10, 'PER') and (5, 18, 'LOC') overlap"),
    ],
)
def test_the_offending_field_is_also_a_structured_location(text, spans, loc, reason):
    with pytest.raises(SpanError) as error:
        validate(text, spans)
    assert (error.value.loc, error.value.reason) == (loc, reason)


def test_validate_without_labels_accepts_any_label():
    assert validate(TEXT, [(0, 4, "ANYTHING")]) == [Span(0, 4, "ANYTHING")]


@pytest.mark.parametrize(
    "spans",
    [
        [(0, 10, "PER"), (5, 18, "LOC")],  # partial overlap
        [(19, 27, "LOC"), (0, 4, "PER"), (20, 22, "LOC")],  # nested, given out of order
        [(0, 4, "PER"), (0, 4, "ORG")],  # same offsets, two labels
    ],
)
def test_validate_rejects_overlapping_spans(spans):
    with pytest.raises(SpanError, match=r"^spans: .* overlap$"):
        validate(TEXT, spans)


def test_validate_rejects_a_boolean_end():
    with pytest.raises(SpanError, match=r"^spans\[0\]: start and end must be integers"):
        validate("abc", [(0, True, "PER")])


# ---- Example ----------------------------------------------------------------------------------


def test_example_sorts_spans_and_reads_mentions():
    example = Example(TEXT, [(19, 27, "LOC"), [0, 10, "PER"]])
    assert example.spans == [Span(0, 10, "PER"), Span(19, 27, "LOC")]
    assert example.mentions() == ["John Smith", "New York"]


# ---- iob1_to_iob2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iob1, iob2",
    [
        # IOB1: an entity starts with I-, B- only directly after a same-type entity
        (["I-PER", "I-PER", "B-PER"], ["B-PER", "I-PER", "B-PER"]),
        (["I-PER", "I-PER", "B-PER", "I-PER", "O"], ["B-PER", "I-PER", "B-PER", "I-PER", "O"]),
        (["O", "I-LOC", "I-LOC", "O", "I-ORG"], ["O", "B-LOC", "I-LOC", "O", "B-ORG"]),
        # I- right after another type starts a new entity
        (["I-PER", "I-LOC"], ["B-PER", "B-LOC"]),
        (["B-PER", "I-LOC", "I-LOC"], ["B-PER", "B-LOC", "I-LOC"]),
        # stray I- after O in an IOB2 file
        (["B-PER", "O", "I-PER"], ["B-PER", "O", "B-PER"]),
        # eng.train quirk: B-MISC after O stays a B-
        (["O", "B-MISC", "I-MISC"], ["O", "B-MISC", "I-MISC"]),
        # hyphenated type names compare as a whole
        (["I-WORK-OF-ART", "I-WORK-OF-ART", "I-WORK"], ["B-WORK-OF-ART", "I-WORK-OF-ART", "B-WORK"]),
        ([], []),
        (["O", "O"], ["O", "O"]),
    ],
)
def test_iob1_to_iob2(iob1, iob2):
    assert iob1_to_iob2(iob1) == iob2


def test_iob1_to_iob2_leaves_valid_iob2_unchanged():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]
    assert iob1_to_iob2(tags) == tags


# ---- bio_to_spans / spans_to_bio --------------------------------------------------------------


def test_bio_to_spans_on_handmade_offsets():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    spans = bio_to_spans(tags, OFFSETS)
    assert spans == [Span(0, 10, "PER"), Span(19, 27, "LOC")]
    assert [TEXT[s:e] for s, e, _ in spans] == ["John Smith", "New York"]


@pytest.mark.parametrize(
    "tags, expected",
    [
        # adjacent entities of one type stay two spans
        (["B-PER", "B-PER", "O", "O", "O", "O"], [Span(0, 4, "PER"), Span(5, 10, "PER")]),
        # a stray I- starts a span, after O and after another type
        (["O", "I-PER", "O", "B-LOC", "I-ORG", "O"], [Span(5, 10, "PER"), Span(19, 22, "LOC"), Span(23, 27, "ORG")]),
        # an entity that runs to the last token is closed
        (["O", "O", "O", "O", "B-LOC", "I-LOC"], [Span(23, 29, "LOC")]),
        # hyphenated type names survive
        (["B-WORK-OF-ART", "I-WORK-OF-ART", "O", "O", "O", "O"], [Span(0, 10, "WORK-OF-ART")]),
        (["O"] * 6, []),
    ],
)
def test_bio_to_spans_edge_cases(tags, expected):
    assert bio_to_spans(tags, OFFSETS) == expected


@pytest.mark.parametrize(
    "tags",
    [
        ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"],
        ["B-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"],
        ["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC"],
        ["O"] * 6,
    ],
)
def test_bio_round_trip_through_spans(tags):
    spans = bio_to_spans(tags, OFFSETS)
    assert spans_to_bio(spans, OFFSETS) == tags
    assert misaligned(spans, OFFSETS) == []


def test_spans_to_bio_round_trip_on_character_tokens():
    text = "张三在北京工作"
    offsets = [(i, i + 1) for i in range(len(text))]
    spans = [Span(0, 2, "PER"), Span(3, 5, "LOC")]
    tags = spans_to_bio(spans, offsets)
    assert tags == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O"]
    assert bio_to_spans(tags, offsets) == spans


def test_spans_to_bio_accepts_unsorted_spans():
    spans = [Span(19, 27, "LOC"), Span(0, 4, "PER")]
    assert spans_to_bio(spans, OFFSETS) == ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]


def test_partly_overlapped_tokens_get_the_label_and_are_reported_misaligned():
    # span "ohn Smi" starts inside "John" and ends inside "Smith"
    partial = Span(1, 8, "PER")
    aligned = Span(19, 27, "LOC")
    tags = spans_to_bio([partial, aligned], OFFSETS)
    assert tags == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    assert misaligned([partial, aligned], OFFSETS) == [partial]


def test_misaligned_checks_start_and_end_separately():
    start_inside = Span(2, 10, "PER")  # ends on a boundary, starts inside "John"
    end_inside = Span(0, 7, "PER")  # starts on a boundary, ends inside "Smith"
    across_the_gap = Span(0, 5, "PER")  # end 5 is the start of "Smith", not the end of a token
    assert misaligned([start_inside, end_inside, across_the_gap], OFFSETS) == [start_inside, end_inside, across_the_gap]
    assert misaligned([Span(0, 4, "PER"), Span(5, 29, "X")], OFFSETS) == []


def test_spans_to_bio_skips_empty_tokens_and_spans_over_whitespace_only():
    offsets = [(0, 4), (4, 4), (5, 10)]
    assert spans_to_bio([Span(0, 10, "PER")], offsets) == ["B-PER", "O", "I-PER"]
    # a span covering only the space between two tokens tags nothing
    assert spans_to_bio([Span(4, 5, "PER")], OFFSETS) == ["O"] * 6
    # and an empty-token boundary is not a token boundary for misaligned
    assert misaligned([Span(4, 10, "PER")], offsets) == [Span(4, 10, "PER")]
