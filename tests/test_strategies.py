"""Query strategies against hand-computed scores, batch selection under budgets, and the BIO-
constrained decoding of word marginals. Predictions are built by hand: no model is loaded."""

import itertools
import math

import numpy as np
import pytest

from active_learning.strategies import (
    BALD,
    MNLP,
    STRATEGIES,
    LeastConfidence,
    Margin,
    RandomSampling,
    TokenEntropy,
    make_strategy,
    select,
)
from active_learning.tagger import TaggedText, bio_tags, constrained_decode


def prediction(marginals, samples=None) -> TaggedText:
    marginals = np.array(marginals, dtype=float)
    words = [(2 * i, 2 * i + 1) for i in range(len(marginals))]
    return TaggedText(spans=[], words=words, marginals=marginals,
                      samples=None if samples is None else np.array(samples, dtype=float))


# Three texts over 3 tags (O, B-PER, I-PER)
A = prediction([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]])
B = prediction([[0.5, 0.4, 0.1], [0.7, 0.2, 0.1], [0.98, 0.01, 0.01]])
C = prediction([[0.99, 0.005, 0.005], [0.95, 0.03, 0.02]])
EMPTY = prediction(np.zeros((0, 3)))


def h(*p):
    """Entropy of one distribution, written out (0 log 0 = 0)."""
    return -sum(x * math.log(x) for x in p if x > 0)


def ranking(scores):
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]


# ---- per-strategy scores ----------------------------------------------------------------------


def test_least_confidence():
    scores = LeastConfidence().scores([A, B, C, EMPTY])
    assert scores == pytest.approx([1 - 0.9 * 0.6, 1 - 0.5 * 0.7 * 0.98, 1 - 0.99 * 0.95, 0.0])
    assert ranking(scores) == [1, 0, 2, 3]


def test_mnlp():
    scores = MNLP().scores([A, B, C, EMPTY])
    assert scores == pytest.approx([
        -(math.log(0.9) + math.log(0.6)) / 2,
        -(math.log(0.5) + math.log(0.7) + math.log(0.98)) / 3,
        -(math.log(0.99) + math.log(0.95)) / 2,
        0.0,
    ])
    assert ranking(scores) == [1, 0, 2, 3]


def test_least_confidence_prefers_long_texts_and_mnlp_does_not():
    long = prediction([[0.9, 0.05, 0.05]] * 10)
    short = prediction([[0.6, 0.3, 0.1]])
    lc = LeastConfidence().scores([long, short])
    mnlp = MNLP().scores([long, short])
    assert lc == pytest.approx([1 - 0.9**10, 1 - 0.6])
    assert mnlp == pytest.approx([-math.log(0.9), -math.log(0.6)])
    assert ranking(lc) == [0, 1]
    assert ranking(mnlp) == [1, 0]


def test_token_entropy_mean_and_max():
    a = [h(0.9, 0.05, 0.05), h(0.6, 0.3, 0.1)]
    b = [h(0.5, 0.4, 0.1), h(0.7, 0.2, 0.1), h(0.98, 0.01, 0.01)]
    mean = TokenEntropy("mean").scores([A, B, EMPTY])
    largest = TokenEntropy("max").scores([A, B, EMPTY])
    assert mean == pytest.approx([sum(a) / 2, sum(b) / 3, 0.0])
    assert largest == pytest.approx([max(a), max(b), 0.0])
    # the aggregate decides: A is more uncertain on average, B has the single most uncertain word
    assert ranking(mean)[:2] == [0, 1]
    assert ranking(largest)[:2] == [1, 0]


def test_token_entropy_of_a_uniform_word_is_log_of_the_tag_count():
    uniform = prediction([[1 / 3, 1 / 3, 1 / 3]])
    certain = prediction([[1.0, 0.0, 0.0]])
    assert TokenEntropy().scores([uniform, certain]) == pytest.approx([math.log(3), 0.0])


def test_token_entropy_rejects_an_unknown_aggregate():
    with pytest.raises(ValueError, match="aggregate"):
        TokenEntropy("median")


def test_margin():
    scores = Margin().scores([A, B, C, EMPTY])
    assert scores == pytest.approx([1 - (0.6 - 0.3), 1 - (0.5 - 0.4), 1 - (0.95 - 0.03), 0.0])
    assert ranking(scores) == [1, 0, 2, 3]


def test_bald_mutual_information():
    disagree = prediction(
        [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]],
        samples=[
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]],  # pass 1
            [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],  # pass 2: word 0 flips, word 1 is equally unsure
        ],
    )
    soft = prediction([[0.5, 0.5, 0.0]], samples=[[[0.8, 0.2, 0.0]], [[0.2, 0.8, 0.0]]])
    agree = prediction(
        [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]],
        samples=[[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]] * 4,
    )
    empty = prediction(np.zeros((0, 3)), samples=np.zeros((2, 0, 3)))
    scores = BALD().scores([disagree, soft, agree, empty])
    assert scores == pytest.approx([
        ((math.log(2) - 0.0) + (math.log(2) - math.log(2))) / 2,  # H[mean] - mean H, per word, averaged
        math.log(2) - h(0.8, 0.2),
        0.0,
        0.0,
    ], abs=1e-9)
    assert ranking(scores)[:3] == [0, 1, 2]


def test_bald_is_zero_when_all_samples_agree_even_if_uncertain():
    uncertain = [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]]
    scores = BALD().scores([prediction(uncertain, samples=[uncertain] * 5)])
    assert scores == pytest.approx([0.0], abs=1e-9)
    assert TokenEntropy().scores([prediction(uncertain)])[0] > 0.9  # yet its entropy is high


def test_bald_needs_samples():
    assert BALD.mc_samples > 0 and MNLP.mc_samples == 0
    with pytest.raises(ValueError, match="mc_samples"):
        BALD().scores([A])


def test_random_sampling_is_seeded():
    first = RandomSampling(seed=7).scores([A, B, C, A, B])
    again = RandomSampling(seed=7).scores([A, B, C, A, B])
    other = RandomSampling(seed=8).scores([A, B, C, A, B])
    assert first.shape == (5,)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert ((0 <= first) & (first < 1)).all()


# ---- the contract every registered strategy keeps ---------------------------------------------


def pool(size: int, seed: int = 0) -> list:
    """``size`` texts of 1-6 words over 3 tags, plus one without words, all with MC-dropout samples
    (so that every strategy, BALD too, can score them)."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 7, size=size)]
    texts = [prediction(rng.dirichlet(np.ones(3), size=n), rng.dirichlet(np.ones(3), size=(4, n))) for n in lengths]
    return texts + [prediction(np.zeros((0, 3)), samples=np.zeros((4, 0, 3)))]


@pytest.mark.parametrize("name", list(STRATEGIES))
class TestEveryStrategy:
    """What each strategy of the registry promises, as small-text's strategy tests check it: one
    finite score per text, a batch of the size asked for and of the best scores, the whole pool once
    it is exhausted, the same scores for the same seed, and MC-dropout samples needed exactly when
    the strategy asks for them."""

    def test_it_is_registered_under_its_name(self, name):
        assert make_strategy(name).name == name

    def test_one_finite_score_per_text(self, name):
        scores = np.asarray(make_strategy(name).scores(pool(9)))
        assert scores.shape == (10,) and np.isfinite(scores).all()

    def test_a_batch_has_the_size_asked_for_and_the_best_scores(self, name):
        scores = np.asarray(make_strategy(name).scores(pool(20)))
        batch = select(scores, [1] * len(scores), budget=5)
        assert len(batch) == len(set(batch)) == 5
        assert scores[batch].min() >= np.delete(scores, batch).max()
        assert list(scores[batch]) == sorted(scores[batch], reverse=True)  # the most informative first

    def test_an_exhausted_pool_gives_each_text_once(self, name):
        scores = make_strategy(name).scores(pool(4))
        assert sorted(select(scores, [1] * 5, budget=50)) == [0, 1, 2, 3, 4]
        nothing = make_strategy(name).scores([])
        assert len(nothing) == 0 and select(nothing, [], budget=50) == []

    def test_the_same_seed_gives_the_same_scores(self, name):
        texts = pool(12, seed=4)
        assert np.array_equal(make_strategy(name, seed=5).scores(texts), make_strategy(name, seed=5).scores(texts))

    def test_it_needs_samples_exactly_when_it_asks_for_them(self, name):
        strategy = make_strategy(name)
        without_samples = [prediction(text.marginals) for text in pool(5)]
        if strategy.mc_samples:
            with pytest.raises(ValueError, match="mc_samples"):
                strategy.scores(without_samples)
        else:
            assert len(strategy.scores(without_samples)) == 6


@pytest.mark.parametrize("name", [name for name in STRATEGIES if name != "random"])
def test_every_uncertainty_strategy_puts_the_uncertain_text_first(name):
    """A text whose words are a toss-up (and on which dropout passes disagree) beats a confident one."""
    certain = prediction([[0.98, 0.01, 0.01]] * 3, samples=[[[0.98, 0.01, 0.01]] * 3] * 3)
    sure_of_each_pass = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]
    uncertain = prediction([[1 / 3] * 3] * 3, samples=[[row] * 3 for row in sure_of_each_pass])
    certain_score, uncertain_score = make_strategy(name).scores([certain, uncertain])
    assert uncertain_score > certain_score


# ---- make_strategy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls, strategy_name",
    [
        ("least_confidence", LeastConfidence, "least_confidence"),
        ("mnlp", MNLP, "mnlp"),
        ("entropy_mean", TokenEntropy, "entropy_mean"),
        ("entropy_max", TokenEntropy, "entropy_max"),
        ("margin", Margin, "margin"),
        ("bald", BALD, "bald"),
        ("random", RandomSampling, "random"),
    ],
)
def test_make_strategy(name, cls, strategy_name):
    strategy = make_strategy(name)
    assert type(strategy) is cls
    assert strategy.name == strategy_name


def test_make_strategy_passes_the_seed_to_random():
    assert np.array_equal(make_strategy("random", seed=3).scores([A] * 4), RandomSampling(3).scores([A] * 4))


def test_make_strategy_unknown_name():
    with pytest.raises(ValueError) as error:
        make_strategy("coreset")
    assert "'coreset'" in str(error.value)
    assert all(name in str(error.value) for name in STRATEGIES)


# ---- select -----------------------------------------------------------------------------------


def test_select_with_a_sentence_budget_takes_the_best_first():
    assert select([0.2, 0.9, 0.5, 0.7], [1, 1, 1, 1], budget=2) == [1, 3]
    assert select([0.2, 0.9, 0.5, 0.7], [1, 1, 1, 1], budget=10) == [1, 3, 2, 0]
    assert select([0.2, 0.9, 0.5, 0.7], [1, 1, 1, 1], budget=0) == []


def test_select_ties_keep_the_pool_order():
    assert select([0.5, 0.5, 0.5, 0.5], [1, 1, 1, 1], budget=3) == [0, 1, 2]


def test_select_with_a_token_budget_skips_what_no_longer_fits():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    tokens = [5, 10, 3, 2, 1]
    # 0 (5 tokens) → 1 (would reach 15 > 10, skipped) → 2 (8) → 3 (10 = budget, stop)
    assert select(scores, tokens, budget=10) == [0, 2, 3]
    # an item larger than the whole budget never blocks the smaller ones after it
    assert select([0.9, 0.1, 0.05], [50, 4, 4], budget=8) == [1, 2]


def test_select_spreads_the_batch_over_embedding_clusters():
    rng = np.random.default_rng(0)
    near_origin = rng.normal(0.0, 0.01, size=(4, 2))
    far_away = rng.normal(10.0, 0.01, size=(2, 2))
    embeddings = np.vstack([near_origin, far_away])  # items 0-3 in one cluster, 4-5 in another
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    costs = [1] * 6
    assert select(scores, costs, budget=2) == [0, 1]  # by score alone, both from one cluster
    diverse = select(scores, costs, budget=2, embeddings=embeddings)
    assert diverse == [0, 4]  # the best of each cluster, best cluster first
    # the same holds for a token budget (expected batch = budget / mean cost = 2 texts)
    assert select(scores, [3] * 6, budget=6, embeddings=embeddings) == [0, 4]


def test_select_counts_the_diverse_batch_in_the_texts_the_scores_would_pick():
    # The best texts are short fragments of one kind (0-3), then short texts of another (4-5), then
    # two long ones (6-7) that raise the pool's mean cost to 3.25 tokens. A 2-token batch is 2 texts:
    # counted by the mean cost it would be 1 and its candidates all of the first kind.
    rng = np.random.default_rng(0)
    embeddings = np.vstack([rng.normal(0.0, 0.01, (4, 2)), rng.normal(10.0, 0.01, (2, 2)), rng.normal(-10.0, 0.01, (2, 2))])
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    costs = [1, 1, 1, 1, 1, 1, 10, 10]
    assert select(scores, costs, budget=2) == [0, 1]
    assert select(scores, costs, budget=2, embeddings=embeddings) == [0, 4]


def test_select_with_embeddings_and_a_single_item():
    assert select([0.3], [1], budget=5, embeddings=np.zeros((1, 4))) == [0]


# ---- constrained_decode -----------------------------------------------------------------------


def bio_rules(tags):
    """I-X may follow only B-X or I-X and may not start a text (the tagger's rules)."""
    allowed = np.ones((len(tags), len(tags)), dtype=bool)
    starts = np.array([not t.startswith("I-") for t in tags])
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            for i, before in enumerate(tags):
                allowed[i, j] = before != "O" and before[2:] == tag[2:]
    return allowed, starts


def is_valid(path, tags):
    previous = "O"
    for tag in (tags[i] for i in path):
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            return False
        previous = tag
    return True


def test_bio_tags():
    assert bio_tags(["LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert bio_tags([]) == ["O"]


def test_constrained_decode_repairs_o_then_i():
    tags = bio_tags(["PER"])  # O, B-PER, I-PER
    allowed, starts = bio_rules(tags)
    marginals = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    assert marginals.argmax(1).tolist() == [0, 2]  # O, I-PER: not a BIO path
    # valid paths: O O 0.12, O B 0.18, B I 0.15, B B 0.09, B O 0.06 → O B-PER
    assert constrained_decode(marginals, allowed, starts) == [0, 1]
    # tilt the first word towards B-PER: B I = 0.4*0.6 = 0.24 beats O B = 0.5*0.3 = 0.15
    assert constrained_decode(np.array([[0.5, 0.4, 0.1], [0.1, 0.3, 0.6]]), allowed, starts) == [1, 2]


def test_constrained_decode_never_starts_with_i_nor_switches_type():
    tags = bio_tags(["LOC", "PER"])
    allowed, starts = bio_rules(tags)
    assert constrained_decode(np.array([[0.1, 0.2, 0.6, 0.05, 0.05]]), allowed, starts) == [1]  # B-LOC
    # B-PER then argmax I-LOC: I-LOC may not follow B-PER
    marginals = np.array([[0.05, 0.05, 0.05, 0.8, 0.05], [0.05, 0.1, 0.55, 0.05, 0.25]])
    path = constrained_decode(marginals, allowed, starts)
    assert is_valid(path, tags)
    assert path == [3, 4]  # B-PER I-PER: 0.8*0.25 = 0.2 beats B-LOC I-LOC 0.05*0.55 and B-PER B-LOC 0.08


def test_constrained_decode_is_the_best_valid_path():
    tags = bio_tags(["LOC", "PER"])
    allowed, starts = bio_rules(tags)
    rng = np.random.default_rng(1)
    for _ in range(20):
        marginals = rng.dirichlet(np.ones(len(tags)) * 0.5, size=3)
        path = constrained_decode(marginals, allowed, starts)
        assert is_valid(path, tags)
        best = max(
            (p for p in itertools.product(range(len(tags)), repeat=3) if is_valid(p, tags)),
            key=lambda p: np.prod([marginals[i, t] for i, t in enumerate(p)]),
        )
        assert path == list(best)


def test_constrained_decode_of_nothing():
    allowed, starts = bio_rules(bio_tags(["PER"]))
    assert constrained_decode(np.zeros((0, 3)), allowed, starts) == []
