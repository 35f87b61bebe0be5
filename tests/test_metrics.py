"""metrics.evaluate: strict entity-level P/R/F1 (type and both character boundaries must match)."""

import pytest

from active_learning.metrics import Scores, evaluate
from active_learning.spans import Example, Span

TEXT = "John Smith lives in New York"  # John Smith = (0, 10), New York = (20, 28)


def test_one_exact_match_and_one_boundary_mismatch():
    gold = [Example(TEXT, [(0, 10, "PER"), (20, 28, "LOC")])]
    predicted = [[Span(0, 10, "PER"), Span(24, 28, "LOC")]]  # "York" only
    scores = evaluate(gold, predicted)
    assert scores.precision == pytest.approx(0.5)
    assert scores.recall == pytest.approx(0.5)
    assert scores.f1 == pytest.approx(0.5)
    assert scores.per_type["PER"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    assert scores.per_type["LOC"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})


def test_perfect_prediction_scores_one():
    gold = [Example(TEXT, [(0, 10, "PER"), (20, 28, "LOC")]), Example("Oslo", [(0, 4, "LOC")])]
    scores = evaluate(gold, [list(e.spans) for e in gold])
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    assert scores.per_type["LOC"]["support"] == 2


def test_micro_average_over_examples_and_types():
    gold = [
        Example(TEXT, [(0, 10, "PER"), (20, 28, "LOC")]),
        Example("Acme hired Ada", [(0, 4, "ORG"), (11, 14, "PER")]),
    ]
    predicted = [
        [Span(0, 4, "PER"), Span(20, 28, "LOC")],  # PER too short, LOC right
        [Span(0, 4, "ORG"), Span(11, 14, "LOC"), Span(5, 10, "ORG")],  # ORG right, wrong type, spurious
    ]
    scores = evaluate(gold, predicted)
    # 5 predicted, 4 gold, 2 exact matches
    assert scores.precision == pytest.approx(2 / 5)
    assert scores.recall == pytest.approx(2 / 4)
    assert scores.f1 == pytest.approx(2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4))
    assert scores.per_type["PER"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2})
    assert scores.per_type["LOC"] == pytest.approx({"precision": 1 / 2, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert scores.per_type["ORG"] == pytest.approx({"precision": 1 / 2, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert set(scores.per_type) == {"PER", "LOC", "ORG"}


def test_wrong_type_is_a_miss_and_a_false_positive():
    scores = evaluate([Example(TEXT, [(0, 10, "PER")])], [[Span(0, 10, "ORG")]])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)
    assert scores.per_type["ORG"]["support"] == 0
    assert scores.per_type["PER"]["support"] == 1


def test_boundaries_inside_words_are_compared_exactly():
    # boundaries that do not fall on whitespace: the segmentation is cut at every span edge
    gold = [Example("Hamburg-based firms", [(0, 7, "LOC")]), Example("张三在北京", [(0, 2, "PER"), (3, 5, "LOC")])]
    predicted = [[Span(0, 13, "LOC")], [Span(0, 1, "PER"), Span(3, 5, "LOC")]]
    scores = evaluate(gold, predicted)
    assert scores.precision == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(1 / 3)
    assert scores.per_type["LOC"]["f1"] == pytest.approx(0.5)
    assert scores.per_type["PER"]["f1"] == 0.0


def test_adjacent_entities_of_one_type_are_two_entities():
    gold = [Example("张三李四", [(0, 2, "PER"), (2, 4, "PER")])]
    merged = evaluate(gold, [[Span(0, 4, "PER")]])
    assert (merged.precision, merged.recall) == (0.0, 0.0)
    split = evaluate(gold, [[Span(0, 2, "PER"), Span(2, 4, "PER")]])
    assert (split.precision, split.recall) == (1.0, 1.0)


def test_no_predictions_gives_zero_recall():
    scores = evaluate([Example(TEXT, [(0, 10, "PER")]), Example("nothing", [])], [[], []])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)
    assert scores.per_type["PER"]["support"] == 1


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 gold examples but 1 predictions"):
        evaluate([Example("a", []), Example("b", [])], [[]])


def test_report_and_as_dict():
    scores = evaluate([Example(TEXT, [(0, 10, "PER"), (20, 28, "LOC")])], [[Span(0, 10, "PER")]])
    assert isinstance(scores, Scores)
    assert "PER" in scores.report and "LOC" in scores.report
    as_dict = scores.as_dict()
    assert as_dict["precision"] == 1.0
    assert as_dict["recall"] == pytest.approx(0.5)
    assert as_dict["per_type"]["LOC"]["recall"] == 0.0
    assert set(as_dict) == {"precision", "recall", "f1", "per_type"}


def test_no_entities_anywhere_scores_zero_instead_of_raising():
    scores = evaluate([Example("nothing to see", [])], [[]])
    assert (scores.precision, scores.recall, scores.f1) == (0.0, 0.0, 0.0)
    assert scores.per_type == {}
