"""Label quality: which accepted annotations are probably wrong, and how.

Honest predictions first. Every labelled example is predicted by a model that did not train on
it: k-fold cross-fitting (default k=4) with the project's training recipe
(``active_learning.training``), folds fixed by a hash of the text so that an example stays in its
fold from one run to the next and duplicate texts never sit on both sides of a split. A model
scoring its own training data only finds what it failed to memorise.

cleanlab does the scoring (``cleanlab.token_classification``, Wang & Mueller 2022, "Detecting
label errors in token classification data"); we do not write it again:

- ``get_label_quality_scores`` gives each word a quality score (the held-out probability of its
  given tag, "self-confidence") and each example the minimum over its words: the example's
  ``score``, in [0, 1], lower = more likely wrong. Reviewers work through suspects in that order.
- ``find_label_issues`` decides which words are label issues by confident learning: per-class
  thresholds (the mean self-confidence of each class) and pruning by the estimated noise rates,
  so no hand-set cut-off decides what is suspect, and a class the model is generally unsure of
  does not flood the list.

Both run on word-level class probabilities. Words: the tagger's words (the tokenizer's
pre-tokenizer pieces, read from its offset mapping: whitespace/punctuation-separated words, single
CJK characters). These are the units the tagger trains and predicts on (each word labelled on its
first sub-word), so the given labels come from the annotation's character spans exactly as
training derives them (``spans_to_bio``) and given label and probability always describe the
same word; sub-word tokens would repeat each word and carry no trained label past the first piece.
Classes: O and one class per entity type, the word's BIO marginals summed over B-X and I-X (as
cleanlab's own token-classification tutorial merges them). Keeping B- and I- apart would make
I- of mostly one-word types a rare class, and confident learning can barely flag rare classes
(it keeps ``min_examples_per_class`` of each and estimates a per-class threshold from a handful
of words), so a span stretched over the next word would go unseen; B/I order is the decoder's
business anyway. What this gives up: an entity cut into two adjacent entities of its type has no
word of the wrong class, so it is not flagged.

Kinds. A flag on a word says "this tag looks wrong", not what is wrong with the entity. The kind
comes from comparing the annotation's spans with the held-out model's (constrained-decoded)
spans, pairing them one-to-one by overlap (``agreement.match_spans``, labels ignored):

- ``missed_entity``: the model finds an entity where the annotation has none;
- ``spurious_entity``: the annotation has an entity the model sees no entity at all in;
- ``wrong_type``: they overlap with different labels (same boundaries, or different ones too:
  the type is the larger error, and the suggestion carries the model's boundaries);
- ``wrong_boundary``: same label, different start or end.

Only differences that touch a word cleanlab flagged become issues: a difference the model itself
is unsure of is the model's error more often than the annotator's. An example with at least one
issue is a suspect; its ``suggested`` spans are the held-out model's full prediction (what a
reviewer sees as a pre-annotation).

Confirmations. Each issue has a ``reason``: its kind and where it sits in the annotation (e.g.
``wrong_type@0:5:ORG``, ``missed_entity@12:18``). When a reviewer confirms an annotation, the
service stores ``(example key, reason)`` for each issue shown; passing those back as
``confirmed`` drops exactly those issues, so a confirmed annotation is not flagged again for the
same reason, while a new reason on the same example still is. A changed annotation changes its
``fingerprint`` (stale results) and, where a span changed, the reasons on it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
from cleanlab.token_classification.filter import find_label_issues
from cleanlab.token_classification.rank import get_label_quality_scores

from .agreement import match_spans
from .spans import Example, Span, spans_to_bio
from .tagger import LABELS_FILE, ScoredSpan, Tagger, bio_tags, default_base_model
from .training import TrainConfig, train

DEFAULT_FOLDS = 4


def fold_config() -> TrainConfig:
    """The fold models' recipe: the project's, with fewer epochs (k small trainings per review)."""
    return TrainConfig(epochs=4, min_steps=100)


class IssueKind(str, Enum):
    MISSED_ENTITY = "missed_entity"
    SPURIOUS_ENTITY = "spurious_entity"
    WRONG_TYPE = "wrong_type"
    WRONG_BOUNDARY = "wrong_boundary"


@dataclass(frozen=True)
class SpanDifference:
    """One way the annotation and the model's spans differ."""

    kind: IssueKind
    annotated: Span | None  # the annotation's span (None for a missed entity)
    suggested: ScoredSpan | None  # the model's span (None for a spurious entity)

    @property
    def reason(self) -> str:
        """Stable name of this difference within its example, for confirmations."""
        if self.annotated is not None:
            return f"{self.kind.value}@{self.annotated.start}:{self.annotated.end}:{self.annotated.label}"
        return f"{self.kind.value}@{self.suggested.start}:{self.suggested.end}"

    def covers(self) -> tuple[int, int]:
        """The characters this difference is about: both spans together."""
        spans = [s for s in (self.annotated, self.suggested) if s is not None]
        return min(s.start for s in spans), max(s.end for s in spans)


@dataclass(frozen=True)
class SpanIssue(SpanDifference):
    """A difference that cleanlab backs: at least one of its words is a flagged label issue."""

    quality: float = 1.0  # lowest cleanlab word quality score over the words it covers


@dataclass
class HeldOut:
    """What a model that did not train on an example says about it."""

    fold: int
    words: list[tuple[int, int]]  # character offsets of the tagger's words
    marginals: np.ndarray  # (words, tags): P(tag | text) per word, tags in ``bio_tags(labels)`` order
    spans: list[ScoredSpan]  # the model's decoded spans


@dataclass
class Assessment:
    """The label-quality verdict on one labelled example."""

    index: int  # position in the examples given
    key: str  # ``example_key``: the task id when the example carries one
    fingerprint: str  # of the annotation scored; a different one means this verdict is stale
    score: float  # cleanlab's example quality score in [0, 1]: lower = more likely wrong
    fold: int
    issues: list[SpanIssue] = field(default_factory=list)
    confirmed: list[SpanIssue] = field(default_factory=list)  # issues a reviewer already confirmed
    suggested: list[ScoredSpan] = field(default_factory=list)  # the held-out model's spans

    @property
    def suspect(self) -> bool:
        return bool(self.issues)

    @property
    def kinds(self) -> list[str]:
        return sorted({issue.kind.value for issue in self.issues})

    def as_dict(self) -> dict:
        def issue(i: SpanIssue) -> dict:
            return {
                "kind": i.kind.value,
                "reason": i.reason,
                "annotated": list(i.annotated) if i.annotated else None,
                "suggested": list(i.suggested) if i.suggested else None,
                "quality": i.quality,
            }

        return {
            "index": self.index,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "score": self.score,
            "fold": self.fold,
            "suspect": self.suspect,
            "issues": [issue(i) for i in self.issues],
            "confirmed": [issue(i) for i in self.confirmed],
            "suggested": [list(s) for s in self.suggested],
        }


@dataclass
class LabelQualityReport:
    assessments: list[Assessment]  # one per example, in the order given
    labels: list[str]
    folds: int | None = None  # how the held-out predictions were made (set by ``find_suspects``)
    base_model: str | None = None
    config: dict | None = None  # the fold models' TrainConfig

    @property
    def suspects(self) -> list[Assessment]:
        """Examples with at least one unconfirmed issue, most likely wrong first."""
        return sorted((a for a in self.assessments if a.suspect), key=lambda a: (a.score, a.index))

    def ranked(self) -> list[Assessment]:
        """Every example, most likely wrong first (the order to review in when time allows)."""
        return sorted(self.assessments, key=lambda a: (a.score, a.index))

    def as_dict(self) -> dict:
        counts: dict[str, int] = {}
        for a in self.assessments:
            for i in a.issues:
                counts[i.kind.value] = counts.get(i.kind.value, 0) + 1
        return {
            "labels": self.labels,
            "folds": self.folds,
            "base_model": self.base_model,
            "config": self.config,
            "examples": len(self.assessments),
            "suspects": len(self.suspects),
            "issues_by_kind": counts,
            "assessments": [a.as_dict() for a in self.assessments],
        }


def example_key(example: Example) -> str:
    """An example's name in reports and confirmations: its task id, else a hash of its text."""
    for name in ("task_id", "key", "id"):
        if example.meta.get(name) is not None:
            return str(example.meta[name])
    return "text:" + hashlib.sha1(example.text.encode("utf-8")).hexdigest()[:16]


def annotation_fingerprint(example: Example) -> str:
    """A hash of the text and its spans: changes whenever the annotation does."""
    payload = example.text + "\x00" + ";".join(f"{s.start},{s.end},{s.label}" for s in example.spans)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def fold_of(text: str, k: int) -> int:
    """The cross-fitting fold of a text: a hash, so it never moves between runs."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") % k


def cross_fit(
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    k: int = DEFAULT_FOLDS,
    base_model: str | None = None,
    config: TrainConfig | None = None,
    tagger_options: dict | None = None,
    on_progress: Callable[[float, int], None] | None = None,
) -> list[HeldOut]:
    """Predict every example with a tagger trained on the other k-1 folds.

    ``base_model`` is the encoder each fold starts from (default: the project's default base
    model); it must not be a tagger already trained on these examples. ``config`` is the fold
    models' recipe (default ``fold_config()``); ``tagger_options`` go to ``Tagger.load``
    (``max_length``, ``stride``). ``on_progress(done, k)`` reports folds done, fractions included.
    """
    if k < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    base = base_model or default_base_model()
    if (Path(base) / LABELS_FILE).is_file():
        raise ValueError(f"{base} is a trained nerloop tagger; each fold must start from a base encoder that has not seen the labelled set")
    config = config or fold_config()
    folds = [fold_of(e.text, k) for e in examples]
    held: list[HeldOut | None] = [None] * len(examples)
    for fold in range(k):
        test = [i for i, f in enumerate(folds) if f == fold]
        if not test:
            continue
        train_set = [e for e, f in zip(examples, folds) if f != fold]
        if not train_set:
            raise ValueError("every example hashes into one fold; cross-fitting needs more examples")
        tagger = Tagger.load(base, labels=list(labels), **(tagger_options or {}))
        on_step = (lambda step, steps, loss, fold=fold: on_progress(fold + step / steps, k)) if on_progress else None
        train(tagger, train_set, None, config, on_step=on_step)
        for i, prediction in zip(test, tagger.predict([examples[i].text for i in test])):
            held[i] = HeldOut(fold, list(prediction.words), prediction.marginals, list(prediction.spans))
        del tagger  # free this fold's model before the next one loads
        if on_progress:
            on_progress(fold + 1, k)
    return held


def span_differences(annotated: Sequence[Span], predicted: Sequence[ScoredSpan | Span]) -> list[SpanDifference]:
    """How an annotation and a model's spans differ, each difference with its kind.

    Identical spans agree. The rest are paired one-to-one by overlap whatever their labels
    (``match_spans``): a pair is a wrong type when the labels differ, else a wrong boundary; an
    annotated span left unpaired is spurious, a predicted one a missed entity.
    """
    predicted = [s if isinstance(s, ScoredSpan) else ScoredSpan(*s, 1.0) for s in predicted]
    exact = {Span(*s) for s in annotated} & {s.span for s in predicted}
    ours = [Span(*s) for s in annotated if Span(*s) not in exact]
    theirs = [s for s in predicted if s.span not in exact]
    pairs = match_spans(ours, [s.span for s in theirs], same_label=False)
    differences = []
    for i, j in pairs:
        kind = IssueKind.WRONG_TYPE if ours[i].label != theirs[j].label else IssueKind.WRONG_BOUNDARY
        differences.append(SpanDifference(kind, ours[i], theirs[j]))
    paired_ours, paired_theirs = {i for i, _ in pairs}, {j for _, j in pairs}
    differences += [SpanDifference(IssueKind.SPURIOUS_ENTITY, s, None) for i, s in enumerate(ours) if i not in paired_ours]
    differences += [SpanDifference(IssueKind.MISSED_ENTITY, None, s) for j, s in enumerate(theirs) if j not in paired_theirs]
    return sorted(differences, key=lambda d: d.covers())


def given_classes(example: Example, words: Sequence[tuple[int, int]], labels: Sequence[str]) -> list[int]:
    """The annotation's class per word: 0 for O, 1 + the label's index for a word in an entity."""
    unknown = {s.label for s in example.spans} - set(labels)
    if unknown:
        raise ValueError(f"{example_key(example)}: labels {sorted(unknown)} are not among {list(labels)}")
    class_of = {"O": 0, **{f"{prefix}-{label}": 1 + i for i, label in enumerate(labels) for prefix in ("B", "I")}}
    return [class_of[tag] for tag in spans_to_bio(example.spans, words)]


def class_probabilities(marginals: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """(words, 1 + labels) probabilities from BIO marginals (``bio_tags`` order): B-X + I-X per type."""
    tags = bio_tags(labels)
    p = np.clip(marginals.astype(np.float64), 1e-12, None)
    p = p / p.sum(1, keepdims=True)
    merged = [p[:, 0]] + [p[:, tags.index(f"B-{label}")] + p[:, tags.index(f"I-{label}")] for label in labels]
    return np.stack(merged, axis=1)


def score(
    examples: Sequence[Example],
    held_out: Sequence[HeldOut],
    labels: Sequence[str],
    *,
    confirmed: Collection[tuple[str, str]] = (),
    key: Callable[[Example], str] = example_key,
) -> LabelQualityReport:
    """Score annotations against held-out predictions with cleanlab; find and classify issues.

    ``confirmed`` holds ``(key(example), reason)`` pairs a reviewer already confirmed: those issues
    move to ``Assessment.confirmed`` and no longer make the example a suspect.
    """
    if len(examples) != len(held_out):
        raise ValueError(f"{len(examples)} examples but {len(held_out)} held-out predictions")
    n_tags = len(bio_tags(labels))
    confirmed = set(confirmed)
    given, probabilities, scored = [], [], []
    for i, (example, held) in enumerate(zip(examples, held_out)):
        if held.marginals.shape != (len(held.words), n_tags):
            raise ValueError(f"{key(example)}: marginals of shape {held.marginals.shape}, expected ({len(held.words)}, {n_tags})")
        if not held.words:
            continue
        given.append(given_classes(example, held.words, labels))
        probabilities.append(class_probabilities(held.marginals, labels))
        scored.append(i)

    example_scores: dict[int, float] = {}
    word_scores: dict[int, np.ndarray] = {}
    flagged: dict[int, set[int]] = {}
    if scored:
        with warnings.catch_warnings():
            # A label nobody used yet leaves a cleanlab class with no examples; that is expected.
            warnings.filterwarnings("ignore", message=".*too few examples.*")
            sentence, per_word = get_label_quality_scores(given, probabilities)
            # One process: the review job already owns its worker's cores (cleanlab forks one per core).
            issues = find_label_issues(given, probabilities, n_jobs=1)
        for row, i in enumerate(scored):
            example_scores[i] = float(sentence[row])
            word_scores[i] = np.asarray(per_word[row], dtype=float)
        for row, word in issues:
            flagged.setdefault(scored[row], set()).add(int(word))

    assessments = []
    for i, (example, held) in enumerate(zip(examples, held_out)):
        name = key(example)
        found, already = [], []
        for difference in span_differences(example.spans, held.spans):
            start, end = difference.covers()
            covered = [w for w, (ws, we) in enumerate(held.words) if ws < end and start < we]
            if not flagged.get(i, set()) & set(covered):
                continue
            quality = float(min(word_scores[i][covered]))
            issue = SpanIssue(difference.kind, difference.annotated, difference.suggested, quality)
            (already if (name, issue.reason) in confirmed else found).append(issue)
        assessments.append(
            Assessment(
                index=i,
                key=name,
                fingerprint=annotation_fingerprint(example),
                score=example_scores.get(i, 1.0),
                fold=held.fold,
                issues=found,
                confirmed=already,
                suggested=list(held.spans),
            )
        )
    return LabelQualityReport(assessments, list(labels))


def find_suspects(
    examples: Sequence[Example],
    labels: Sequence[str],
    *,
    k: int = DEFAULT_FOLDS,
    base_model: str | None = None,
    config: TrainConfig | None = None,
    tagger_options: dict | None = None,
    confirmed: Iterable[tuple[str, str]] = (),
    key: Callable[[Example], str] = example_key,
    on_progress: Callable[[float, int], None] | None = None,
) -> LabelQualityReport:
    """The review job's core: cross-fit, then score every example (see the module docstring)."""
    config = config or fold_config()
    held = cross_fit(examples, labels, k=k, base_model=base_model, config=config, tagger_options=tagger_options, on_progress=on_progress)
    report = score(examples, held, labels, confirmed=set(confirmed), key=key)
    report.folds, report.base_model, report.config = k, base_model or default_base_model(), asdict(config)
    return report
