"""Benchmark: nerloop's label-preserving back-translation vs nlpaug's BackTranslationAug, side by side
on the same Marian pair and the same CoNLL-2003 sentences.

No real opus-mt models are available offline, so the pair is a tiny Marian model built here: a
SentencePiece vocabulary and a 1+1-layer MarianMT trained for a few hundred steps on CoNLL-2003
eng.train to reproduce its input. That is far too little to copy well (on this shared CPU a good
copier takes much longer): it writes CoNLL-like text of plausible length, not a translation, and it
serves as both the forward and the backward model. So the absolute speeds say little about real
opus-mt models (~75M parameters) and the mention survival of a plain back-translation here is a
floor; what the run does show is the cost of nerloop's per-segment translation against
whole-sentence translation on the same model (same greedy decoding, same batch size, one CPU
thread), and that nerloop emits no output whose mentions did not survive. Writes
bench/results/augment_throughput.json:

- sentences/s for each side (model loading excluded: both load once and run a warm-up first);
- the share of outputs that still carry every entity mention of their source verbatim
  (nerloop: of what it keeps; it drops and counts the rest).

    .venv/bin/python bench/augment_throughput.py [--sentences 500] [--train-steps 300]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from active_learning.corpus import read_conll  # noqa: E402
from active_learning.spans import Example  # noqa: E402
from augment import run  # noqa: E402
from augment.tokens import mention_count  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "conll2003"
RESULTS = ROOT / "bench" / "results"


def build_copy_marian(directory: Path, texts: list[str], steps: int) -> dict:
    """Train a tiny MarianMT to copy CoNLL sentences; save it like an opus-mt model."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts[:8000]), model_prefix=str(directory / "spm"), vocab_size=1000,
        model_type="unigram", character_coverage=1.0, minloglevel=2,
    )
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes((directory / "spm.model").read_bytes())
    processor = spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(processor.get_piece_size()):
        vocab.setdefault(processor.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(*(str(directory / n) for n in ("source.spm", "target.spm", "vocab.json")))
    config = MarianConfig(
        vocab_size=len(vocab), d_model=128, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, dropout=0.0, max_position_embeddings=256,
        pad_token_id=vocab["<pad>"], eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0,
    )
    torch.manual_seed(0)
    model = MarianMTModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))
    rng = random.Random(0)
    started, losses = time.time(), []
    model.train()
    for step in range(1, steps + 1):
        batch = rng.sample(texts, 32)
        encoded = tokenizer(batch, text_target=batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        encoded["labels"][encoded["labels"] == tokenizer.pad_token_id] = -100
        loss = model(**encoded).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"copy model step {step}: loss {sum(losses[-100:]) / 100:.3f} ({time.time() - started:.0f} s)", flush=True)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"steps": steps, "final_loss": round(sum(losses[-100:]) / min(100, len(losses)), 3), "train_s": round(time.time() - started, 1),
            "parameters": sum(p.numel() for p in model.parameters())}


def carries_every_mention(output: str, source: Example) -> bool:
    needed: dict[str, int] = {}
    for mention in source.mentions():
        needed[mention] = needed.get(mention, 0) + 1
    return all(mention_count(output, m) >= k for m, k in needed.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_texts = [e.text for e in read_conll(DATA / "eng.train") if len(e.text.split()) <= 30]
    sources = [e for e in read_conll(DATA / "eng.testa") if e.spans][: args.sentences]
    texts = [e.text for e in sources]
    model_dir = ROOT / "runs" / "augment_throughput" / "copy-marian"
    model_info = build_copy_marian(model_dir, train_texts, args.train_steps)
    params = {"forward": str(model_dir), "backward": str(model_dir), "num_beams": 1, "max_length": 64,
              "batch_size": args.batch_size, "device": "cpu"}
    result = {
        "command": ".venv/bin/python bench/augment_throughput.py " + " ".join(sys.argv[1:]),
        "machine": "2-core CPU shared with other jobs, torch threads=1, no GPU",
        "model": {
            "what": "tiny MarianMT built by this script (not a real translation pair: no opus-mt models offline): "
                    "SentencePiece unigram 1000 + 1 encoder / 1 decoder layer, d_model 128, trained briefly to copy CoNLL-2003 "
                    "eng.train sentences (it does not copy well: CoNLL-like text of plausible length); the same model "
                    "serves as forward and backward direction",
            **model_info,
        },
        "sentences": f"the first {len(sources)} sentences with entities of CoNLL-2003 eng.testa",
        "decoding": f"greedy (num_beams 1), max 64 tokens, batch {args.batch_size}, one output per sentence",
    }

    # nerloop: contexts between mentions only, mentions put back, every output checked.
    numbered = [Example(e.text, e.spans, {"task_id": i}) for i, e in enumerate(sources)]
    run("backtranslate", numbered[:5], params=params)  # load and warm up
    started = time.time()
    report = run("backtranslate", numbered, params=params)
    elapsed = time.time() - started
    verbatim = [carries_every_mention(out.text, sources[out.meta["source"]]) for out in report.examples]
    result["nerloop"] = {
        "sentences_per_s": round(len(sources) / elapsed, 2),
        "seconds": round(elapsed, 2),
        **report.as_dict(),
        "share_of_outputs_with_every_mention_verbatim": sum(verbatim) / max(1, len(verbatim)),
        "share_of_sources_with_a_kept_output": len({o.meta["source"] for o in report.examples}) / len(sources),
    }

    # nlpaug: the whole sentence there and back.
    try:
        import nlpaug.augmenter.word as naw

        augmenter = naw.BackTranslationAug(from_model_name=str(model_dir), to_model_name=str(model_dir), device="cpu",
                                           batch_size=args.batch_size, max_length=64)
        augmenter.augment(texts[:5])
        started = time.time()
        outputs = augmenter.augment(texts)
        elapsed = time.time() - started
        how = "nlpaug.augmenter.word.BackTranslationAug (runs with the installed transformers)"
    except Exception as error:  # noqa: BLE001 - any failure means: measure the loop it performs instead
        how = f"nlpaug's BackTranslationAug failed ({type(error).__name__}: {error}); measured the same translate-there-and-back loop"
        from augment.backtranslation import Translator

        translator = Translator(str(model_dir), "cpu", "forward")
        options = {**params, "sampling": False, "top_p": 1.0, "temperature": 1.0}
        started = time.time()
        outputs = [v[0] for v in translator([v[0] for v in translator(texts, 1, options)], 1, options)]
        elapsed = time.time() - started
    verbatim = [carries_every_mention(out, source) for out, source in zip(outputs, sources)]
    result["nlpaug_backtranslation"] = {
        "how": how,
        "sentences_per_s": round(len(sources) / elapsed, 2),
        "seconds": round(elapsed, 2),
        "outputs": len(outputs),
        "share_of_outputs_with_every_mention_verbatim": sum(verbatim) / max(1, len(verbatim)),
        "labels": "none: BackTranslationAug returns plain text, so even outputs that kept a mention carry no spans",
        "identical_to_input": sum(o == t for o, t in zip(outputs, texts)) / len(texts),
    }
    result["examples"] = [
        {"source": s.text, "mentions": s.mentions(), "nlpaug": o}
        for s, o in list(zip(sources, outputs))[:5]
    ] + [{"nerloop": e.text, "mentions": e.mentions()} for e in report.examples[:5]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "augment_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("nerloop", "nlpaug_backtranslation")}, indent=2))


if __name__ == "__main__":
    main()
