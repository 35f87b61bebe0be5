"""The pool and test sets that demo and simulate run on."""

from __future__ import annotations

import random
from pathlib import Path

from .common import fail

CORPUS_HELP = "Corpus file or folder (CoNLL, JSONL, Label Studio JSON); default: a generated demo corpus"


def labels_of(*example_sets) -> list[str]:
    """The entity labels the examples use, sorted; a failure when there are none."""
    labels = sorted({span.label for examples in example_sets for example in examples for span in example.spans})
    if not labels:
        fail("the corpus has no entity spans")
    return labels


def load_pool_and_test(data: Path | None, test: Path | None, pool_size: int, test_size: int, seed: int):
    """The pool and test examples for a simulation.

    ``data`` may be a file, a folder holding ``*train`` and ``*testb``/``*test`` files (CoNLL-2003,
    Weibo), or nothing (the generated demo corpus). Without a test file a fixed 20% is held out.
    Sizes above zero take a fixed random sample.
    """
    from active_learning.corpus import CorpusError, read_corpus
    from active_learning.demo_corpus import generate

    try:
        if data is None:
            examples = generate(1500, seed=seed)
        elif data.is_dir():
            train_file = _find_split(data, ("train",))
            if train_file is None:
                fail(f"--data {data}: no file ending in 'train' in this folder")
            test = test or _find_split(data, ("testb", "test"))
            examples = read_corpus(train_file)
        else:
            examples = read_corpus(data)
        held_out = read_corpus(test) if test else None
    except CorpusError as error:
        fail(str(error))
    rng = random.Random(seed)
    if held_out is None:
        shuffled = examples[:]
        rng.shuffle(shuffled)
        cut = len(shuffled) // 5
        held_out, examples = shuffled[:cut], shuffled[cut:]
    pool = rng.sample(examples, pool_size) if 0 < pool_size < len(examples) else examples
    test_set = rng.sample(held_out, test_size) if 0 < test_size < len(held_out) else held_out
    return pool, test_set


def _find_split(directory: Path, endings: tuple[str, ...]) -> Path | None:
    for ending in endings:
        found = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(ending))
        if found:
            return found[0]
    return None
