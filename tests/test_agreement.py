import random

import pytest

from active_learning.agreement import Counts, agreement, compare, match_spans, task_agreement, total
from active_learning.spans import Span


def f1s(a, b, mode):
    return {label: c.f1 for label, c in compare(a, b, mode).items()}


A = [Span(0, 5, "PER"), Span(10, 15, "LOC"), Span(20, 25, "ORG")]
B = [Span(0, 5, "PER"), Span(10, 16, "LOC"), Span(30, 35, "ORG")]


def test_exact_and_overlap_f1_against_hand_computed_values():
    # exact: only PER matches -> per label 1, 0, 0; micro 2*1 / (3+3)
    assert f1s(A, B, "exact") == {"LOC": 0.0, "ORG": 0.0, "PER": 1.0}
    assert total(compare(A, B, "exact")).f1 == pytest.approx(1 / 3)
    # overlap: LOC 10-15 and 10-16 share characters too -> micro 2*2 / 6
    assert f1s(A, B, "overlap") == {"LOC": 1.0, "ORG": 0.0, "PER": 1.0}
    assert total(compare(A, B, "overlap")).f1 == pytest.approx(2 / 3)


def test_overlap_needs_the_same_label():
    assert total(compare([Span(0, 5, "ORG")], [Span(0, 5, "LOC")], "overlap")) == Counts(0, 1, 1)


def test_overlap_matching_is_one_to_one():
    """One long span against two short ones inside it: one match, not two (F1 2*1/3)."""
    long, halves = [Span(0, 10, "LOC")], [Span(0, 4, "LOC"), Span(5, 10, "LOC")]
    assert total(compare(long, halves, "overlap")) == Counts(1, 1, 2)
    assert total(compare(long, halves, "overlap")).f1 == pytest.approx(2 / 3)
    # ...and the pair kept is the one sharing the most characters
    assert match_spans(long, halves) == [(0, 1)]


def test_overlapping_spans_within_one_annotation():
    """Nested spans (allowed in some schemes) each need their own partner."""
    nested = [Span(0, 10, "ORG"), Span(4, 10, "ORG")]
    flat = [Span(0, 10, "ORG")]
    assert total(compare(nested, flat, "exact")) == Counts(1, 2, 1)
    assert total(compare(nested, flat, "overlap")) == Counts(1, 2, 1)
    assert total(compare(nested, nested, "overlap")).f1 == 1.0


def test_overlap_matching_finds_the_most_pairs():
    """Pairing by largest overlap first would take a1-b1 (8 characters) and leave a2 and b2
    without partners; the maximum matching pairs a1-b2 and a2-b1: F1 = 2*2 / 4."""
    a = [Span(0, 10, "LOC"), Span(8, 14, "LOC")]
    b = [Span(2, 12, "LOC"), Span(0, 3, "LOC")]
    assert sorted(match_spans(a, b)) == [(0, 1), (1, 0)]
    assert total(compare(a, b, "overlap")).f1 == 1.0


def test_f1_is_order_insensitive():
    rng = random.Random(0)

    def annotation():
        spans = []
        for _ in range(rng.randint(0, 6)):
            start = rng.randint(0, 40)
            spans.append(Span(start, start + rng.randint(1, 8), rng.choice("AB")))
        return spans

    for _ in range(300):
        a, b = annotation(), annotation()
        for mode in ("exact", "overlap"):
            assert f1s(a, b, mode) == f1s(b, a, mode)


def test_empty_annotations():
    assert total(compare([], [], "exact")).f1 is None
    assert total(compare([], [Span(0, 1, "X")], "overlap")).f1 == 0.0
    assert not task_agreement("t", {"ann": [], "bob": []}).flagged


def test_task_disagreement_score_and_flag():
    same = task_agreement(1, {"ann": A, "bob": list(A)})
    assert same.disagreement == 0.0 and not same.flagged
    # pairs: ann-bob exact 1/3, ann-cy 1.0, bob-cy 1/3 -> disagreement 1 - mean = 1 - 5/9
    three = task_agreement(2, {"bob": B, "ann": A, "cy": list(A)})
    assert three.disagreement == pytest.approx(4 / 9)
    assert three.flagged
    assert list(three.pairs) == [("ann", "bob"), ("ann", "cy"), ("bob", "cy")]
    assert not task_agreement(3, {"ann": A, "bob": B}, threshold=0.7).flagged  # 2/3 <= 0.7


def test_corpus_report_per_pair_and_label():
    tasks = [
        (1, {"ann": A, "bob": B}),
        (2, {"bob": [Span(0, 3, "PER")], "ann": [Span(0, 3, "PER")]}),  # annotator order swapped
        (3, {"ann": [Span(0, 3, "PER")]}),  # one annotator: nothing to compare
        (4, {"ann": [Span(0, 9, "LOC")], "cy": [Span(0, 4, "LOC")]}),
    ]
    report = agreement(tasks)
    assert [t.task for t in report.tasks] == [1, 2, 4]
    assert list(report.pairs) == [("ann", "bob"), ("ann", "cy")]
    ann_bob = report.pairs[("ann", "bob")]
    assert ann_bob.tasks == 2
    assert ann_bob.f1("exact", "PER") == 1.0  # 2 matched of 2 + 2
    assert ann_bob.f1("exact") == pytest.approx(2 * 2 / (4 + 4))
    assert ann_bob.f1("overlap") == pytest.approx(2 * 3 / 8)
    assert report.pairs[("ann", "cy")].f1("exact") == 0.0
    assert report.pairs[("ann", "cy")].f1("overlap") == 1.0
    # corpus micro F1 over both pairs: exact 2*2/(8+2), overlap 2*4/10
    assert report.f1("exact") == pytest.approx(0.4)
    assert report.f1("overlap") == pytest.approx(0.8)
    assert [t.task for t in report.flagged] == [4, 1]  # disagreement 1.0, then 2/3
    document = report.as_dict()
    assert document["per_label"]["LOC"] == {"exact": 0.0, "overlap": 1.0}
    assert len(document["flagged"]) == 2
