"""Label-preserving augmentation: every output of every augmenter has valid spans that mean what
they meant in the source; duplicates and mangled outputs are counted, never emitted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from active_learning.corpus import read_conll
from active_learning.spans import Example, Span, validate
from augment import AUGMENTERS, AugmentError, ContextAugmenter, apply, faithful, run, wordnet
from augment.tokens import tokenize
from tiny import FILLER, build_tiny_marian, toy_corpus

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")  # Marian's optional normaliser


@pytest.fixture(scope="session")
def wordnet_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("nerloop-cache"))


@pytest.fixture(scope="session")
def corpus() -> list[Example]:
    examples = toy_corpus(60, seed=3)
    for i, example in enumerate(examples):
        example.meta["task_id"] = 1000 + i
    return examples


@pytest.fixture(scope="session")
def conll(shared_data) -> list[Example]:
    """Real sentences with entities, from the start of CoNLL-2003's training file."""
    examples = read_conll(shared_data / "conll2003" / "eng.train")
    return [e for e in examples if e.spans][:200]


@pytest.fixture(scope="session")
def marian(tmp_path_factory, corpus) -> dict[str, str]:
    """Two tiny translators: one writes filler words, one writes the city name 'paris'."""
    texts = [e.text for e in toy_corpus(200)]
    good = build_tiny_marian(tmp_path_factory.mktemp("marian-good"), texts, emit=[w for w in FILLER if w.isalpha()])
    bad = build_tiny_marian(tmp_path_factory.mktemp("marian-bad"), texts, emit=["paris"])
    return {"good": str(good), "bad": str(bad)}


def numbered(examples: list[Example]) -> list[Example]:
    """Copies whose task_id is their index."""
    return [Example(e.text, e.spans, {"task_id": i}) for i, e in enumerate(examples)]


def params_for(method: str, wordnet_cache: str, marian: dict | None = None) -> dict:
    if method == "synonym":
        return {"p": 0.5, "wordnet_cache": wordnet_cache}
    if method == "shuffle":
        return {"p": 0.8}  # toy sentences are short: most segments are one word and cannot move
    if method == "backtranslate":
        return {"forward": marian["good"], "backward": marian["good"], "max_length": 8, "sampling": True}
    return {}


def assert_label_preserving(source: Example, output: Example, keeps_mentions: bool) -> None:
    assert validate(output.text, output.spans) == output.spans
    assert [s.label for s in output.spans] == [s.label for s in source.spans]
    for mention in output.mentions():
        assert mention and mention == mention.strip()
    if keeps_mentions:
        assert output.mentions() == source.mentions()


def test_methods_and_whether_they_need_an_accelerator():
    assert {name: cls.needs_accelerator for name, cls in AUGMENTERS.items()} == {
        "backtranslate": True,
        "mention_replacement": False,
        "token_replacement": False,
        "synonym": False,
        "shuffle": False,
    }


@pytest.mark.parametrize("method", list(AUGMENTERS))
class TestEveryAugmenter:
    """What each augmenter of the registry promises: every output has valid, trimmed spans with the
    source's entity types in the source's order; a context-only one (``keeps_mentions``) carries the
    source's mentions verbatim; nothing it emits is dropped by the checks; the counts add up; and the
    same seed gives the same outputs, another seed others."""

    def test_every_output_is_label_preserving_on_the_toy_corpus(self, method, corpus, wordnet_cache, marian):
        by_id = {e.meta["task_id"]: e for e in corpus}
        report = run(method, corpus, n=2, seed=1, params=params_for(method, wordnet_cache, marian), labelled=corpus)
        assert len(report.examples) >= len(corpus) // 2, report.as_dict()
        assert report.dropped == 0  # these augmenters never produce a broken output themselves
        for output in report.examples:
            assert_label_preserving(by_id[output.meta["source"]], output, AUGMENTERS[method].keeps_mentions)
        counts = report.as_dict()
        assert counts["generated"] == 2 * len(corpus) == counts["kept"] + counts["dropped"] + counts["duplicates"]

    def test_every_output_is_label_preserving_on_conll(self, method, conll, wordnet_cache, marian):
        sources = numbered(conll[:60] if method == "backtranslate" else conll)
        report = run(method, sources, n=1, seed=0, params=params_for(method, wordnet_cache, marian), labelled=conll)
        assert report.examples and report.dropped == 0, report.as_dict()
        for output in report.examples:
            source = sources[output.meta["source"]]
            assert_label_preserving(source, output, AUGMENTERS[method].keeps_mentions)
            assert output.text != source.text

    def test_the_same_seed_gives_the_same_outputs(self, method, corpus, wordnet_cache, marian):
        sources = corpus[:20] if method == "backtranslate" else corpus
        params = params_for(method, wordnet_cache, marian)

        def outputs(seed):
            report = run(method, sources, n=2, seed=seed, params=params, labelled=corpus)
            return [(e.text, e.spans, e.meta["source"]) for e in report.examples]

        first = outputs(11)
        assert first == outputs(11)
        assert first != outputs(12)


def test_the_context_only_methods():
    assert {name for name, cls in AUGMENTERS.items() if cls.keeps_mentions} == {"synonym", "backtranslate"}


def test_outputs_are_deduplicated_against_source_each_other_and_the_labelled_set():
    source = Example("alice went home", [Span(0, 5, "PER")], {"task_id": 7})
    other = Example("bob slept", [Span(0, 3, "PER")])
    # the only other PER mention is "bob": three draws give one new text and two repeats of it
    report = run("mention_replacement", [source], n=3, params={"p": 1.0}, labelled=[other])
    assert [e.text for e in report.examples] == ["bob went home"]
    assert report.duplicates == 2 and report.dropped == 0
    # ... and nothing new when the labelled set already holds that text
    report = run("mention_replacement", [source], n=3, params={"p": 1.0}, labelled=[other, Example("bob went home", [Span(0, 3, "PER")])])
    assert report.examples == [] and report.duplicates == 3
    # p = 0 changes nothing: every output equals its source
    report = run("token_replacement", [source], n=2, params={"p": 0.0}, labelled=[other])
    assert report.examples == [] and report.duplicates == 2


def test_provenance_in_meta(corpus):
    report = run("shuffle", corpus, n=1, seed=5, params={"p": 0.9}, labelled=corpus)
    assert report.examples
    ids = {e.meta["task_id"] for e in corpus}
    for output in report.examples:
        assert output.meta == {"method": "shuffle", "source": output.meta["source"], "params": {"p": 0.9}, "seed": 5}
        assert output.meta["source"] in ids
    # params are recorded with the defaults filled in
    report = run("token_replacement", corpus, seed=5, labelled=corpus)
    assert report.examples[0].meta["params"] == {"p": 0.3}


@pytest.mark.parametrize(
    "method, params, n, field",
    [
        ("paraphrase", None, 1, "method"),
        ("shuffle", {"p": 1.5}, 1, "params.p: must be between 0 and 1"),
        ("synonym", {"p": -0.1}, 1, "params.p: must be between 0 and 1"),
        ("shuffle", {"q": 0.1}, 1, "params.q"),
        ("token_replacement", {"p": "high"}, 1, "params.p"),
        ("backtranslate", {"num_beams": 0}, 1, "params.num_beams"),
        ("backtranslate", {"sampling": "yes"}, 1, "params.sampling"),
        ("backtranslate", {"top_p": 0.0}, 1, "params.top_p"),
        ("mention_replacement", None, 0, "n:"),
        ("mention_replacement", None, True, "n:"),
    ],
)
def test_bad_method_params_or_n_name_the_field(method, params, n, field, corpus):
    with pytest.raises(AugmentError, match=field.replace(".", r"\.")):
        run(method, corpus[:3], n=n, params=params)
    assert issubclass(AugmentError, ValueError)


@pytest.mark.parametrize(
    "method, params, n, loc",
    [
        ("paraphrase", None, 1, ("method",)),
        ("shuffle", {"p": 1.5}, 1, ("params", "p")),
        ("backtranslate", {"top_p": 0.0}, 1, ("params", "top_p")),
        ("mention_replacement", None, 0, ("n",)),
    ],
)
def test_the_field_is_also_given_as_a_structured_location(method, params, n, loc, corpus):
    with pytest.raises(AugmentError) as error:
        run(method, corpus[:3], n=n, params=params)
    assert error.value.loc == loc
    assert str(error.value) == f"{'.'.join(loc)}: {error.value.reason}"


def test_a_model_that_cannot_be_loaded_names_the_field(tmp_path, corpus):
    with pytest.raises(AugmentError, match=r"params\.forward: cannot load"):
        run("backtranslate", corpus[:2], params={"forward": str(tmp_path / "missing"), "backward": str(tmp_path)})


def test_synonyms_replace_only_words_outside_mentions(conll, corpus, wordnet_cache):
    changed = 0
    for examples in (conll, corpus):
        sources = numbered(examples)
        report = run("synonym", sources, n=1, seed=2, params={"p": 1.0, "wordnet_cache": wordnet_cache})
        assert report.dropped == 0
        for output in report.examples:
            source = sources[output.meta["source"]]
            before, after = tokenize(source), tokenize(output)
            inside = lambda t: [w.text for w in t.words if w.entity is not None]  # noqa: E731
            assert inside(after) == inside(before)  # mention words untouched, in order
            assert output.mentions() == source.mentions()
            changed += 1
    assert changed > 50


def test_wordnet_is_copied_with_lexnames(wordnet_cache):
    root = wordnet.install(Path(wordnet_cache))
    lines = (root / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[18] == "18\tnoun.person\t1" and lines[44] == "44\tadj.ppl\t3"
    assert not (root / "data.noun").is_symlink() and (root / "data.noun").stat().st_size > 1_000_000
    assert "travel" in {lemma.name() for s in wordnet.reader(Path(wordnet_cache)).synsets("trip") for lemma in s.lemmas()}


def test_mention_replacement_uses_same_type_mentions_from_the_labelled_set(corpus):
    labelled = [Example("zed met ytown", [Span(0, 3, "PER"), Span(8, 13, "LOC")])]
    sources = [Example("erin saw quito", [Span(0, 4, "PER"), Span(9, 14, "LOC")])]
    # each type has one other mention, so p = 1 allows exactly one new text
    report = run("mention_replacement", sources, n=4, seed=0, params={"p": 1.0}, labelled=labelled)
    assert [e.text for e in report.examples] == ["zed saw ytown"]
    assert report.examples[0].spans == [Span(0, 3, "PER"), Span(8, 13, "LOC")]
    by_type = {}
    for example in corpus:
        for span, mention in zip(example.spans, example.mentions()):
            by_type.setdefault(span.label, set()).add(mention)
    for output in run("mention_replacement", corpus, n=2, labelled=corpus).examples:
        for span, mention in zip(output.spans, output.mentions()):
            assert mention in by_type[span.label]


def test_token_replacement_keeps_the_tag_sequence_and_draws_same_tag_words(corpus):
    by_id = {e.meta["task_id"]: e for e in corpus}
    words_by_tag: dict[str, set[str]] = {}
    for example in corpus:
        tokens = tokenize(example)
        for word, tag in zip(tokens.words, tokens.tags()):
            words_by_tag.setdefault(tag, set()).add(word.text)
    report = run("token_replacement", corpus, n=2, params={"p": 0.6}, labelled=corpus)
    assert report.examples
    for output in report.examples:
        before, after = tokenize(by_id[output.meta["source"]]), tokenize(output)
        assert after.tags() == before.tags()
        for word, tag in zip(after.words, after.tags()):
            assert word.text in words_by_tag[tag]


def test_shuffle_permutes_words_within_segments_only(corpus):
    by_id = {e.meta["task_id"]: e for e in corpus}
    report = run("shuffle", corpus, n=2, params={"p": 1.0}, labelled=corpus)
    assert report.examples
    for output in report.examples:
        before, after = tokenize(by_id[output.meta["source"]]), tokenize(output)
        assert after.tags() == before.tags()
        for run_before, run_after in zip(before.segments(), after.segments()):
            assert Counter(before.words[i].text for i in run_before) == Counter(after.words[i].text for i in run_after)


def test_back_translation_rewrites_context_and_keeps_mentions(corpus, marian):
    report = run("backtranslate", corpus, n=2, seed=0, params=params_for("backtranslate", "", marian), labelled=corpus)
    assert len(report.examples) > len(corpus)
    assert report.dropped == 0
    filler = set(FILLER)
    for output in report.examples:
        context = [w.text for w in tokenize(output).words if w.entity is None]
        assert set(context) <= filler  # the tiny translator writes only filler words there


def test_a_translator_that_mangles_mentions_is_dropped_and_counted(corpus, marian):
    """The 'bad' translator writes 'paris' into every context: an unlabelled LOC mention."""
    progress = []
    params = {"forward": marian["bad"], "backward": marian["bad"], "max_length": 4}
    report = run("backtranslate", corpus, n=2, seed=0, params=params, labelled=corpus, on_progress=lambda d, t: progress.append((d, t)))
    with_context = sum(any(c.strip(" ,.") for c in _contexts(e)) for e in corpus)
    assert report.examples == []
    assert report.dropped == 2 * with_context > 0
    assert report.dropped + report.duplicates == 2 * len(corpus)
    assert report.as_dict()["dropped"] == report.dropped
    assert progress[-1] == (len(corpus), len(corpus))


def _contexts(example: Example) -> list[str]:
    from augment.tokens import contexts

    return contexts(example)


def test_faithful_rejects_lost_or_mangled_mentions():
    source = Example("alice went to paris", [Span(0, 5, "PER"), Span(14, 19, "LOC")])
    assert faithful(source, "alice drove to paris", [Span(0, 5, "PER"), Span(15, 20, "LOC")], keeps_mentions=True)
    assert not faithful(source, "alice drove to pari", [Span(0, 5, "PER"), Span(15, 19, "LOC")], keeps_mentions=True)
    assert not faithful(source, "alice drove home", [Span(0, 5, "PER")], keeps_mentions=True)
    assert not faithful(source, "alice saw alice in paris", [Span(0, 5, "PER"), Span(19, 24, "LOC")], keeps_mentions=True)
    assert not faithful(source, "paris alice", [Span(0, 5, "LOC"), Span(6, 11, "PER")], keeps_mentions=False)
    assert not faithful(source, "alice x", [Span(0, 5, "PER"), Span(5, 9, "LOC")], keeps_mentions=False)  # out of range


def test_any_text_augmenter_runs_on_context_only(corpus):
    """nlpaug's character noise through ContextAugmenter: the mentions come through verbatim."""
    import nlpaug.augmenter.char as nac

    by_id = {e.meta["task_id"]: e for e in corpus}
    augmenter = ContextAugmenter.from_text_augmenter(nac.RandomCharAug(action="substitute", aug_char_p=0.5, min_char=2))
    report = apply(augmenter, corpus, n=1, seed=0, labelled=corpus)
    assert len(report.examples) > len(corpus) // 2
    for output in report.examples:
        assert output.meta["method"] == "context"
        assert_label_preserving(by_id[output.meta["source"]], output, keeps_mentions=True)
