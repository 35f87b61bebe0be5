"""WordNet, offline: Debian's ``wordnet-base`` files read through nltk's own WordNet reader.

nltk's downloader cannot run here, and nlpaug's ``SynonymAug`` also needs nltk's POS-tagger data,
so nerloop reads WordNet directly: the Debian database files are copied (nltk refuses symlinked
corpora on some set-ups, and a copy survives package upgrades mid-run) into an nltk data folder
under a cache directory, with the ``lexnames`` file that Debian does not ship written beside them.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

DEBIAN_WORDNET = Path("/usr/share/wordnet")
# lexnames(5WN): the 45 lexicographer files, numbered in this order; the third field of each line
# is the syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb), read off the name's prefix.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
DATA_FILES = ("data.", "index.", ".exc")


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def default_cache_dir() -> Path:
    return Path(os.environ.get("NERLOOP_CACHE", Path.home() / ".cache" / "nerloop"))


def install(cache_dir: Path | None = None, source: Path = DEBIAN_WORDNET) -> Path:
    """Copy the WordNet database into ``<cache>/nltk_data/corpora/wordnet`` (once) and return it."""
    target = (cache_dir or default_cache_dir()) / "nltk_data" / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    files = [p for p in source.glob("*") if p.is_file() and any(mark in p.name for mark in DATA_FILES)]
    if not any(p.name == "data.noun" for p in files):
        raise FileNotFoundError(f"no WordNet database in {source}: install Debian's wordnet-base package")
    staging = target.with_name(f"wordnet.{os.getpid()}.tmp")
    staging.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, staging / path.name)
    (staging / "lexnames").write_text(lexnames_text())
    try:
        staging.rename(target)  # atomic: a concurrent worker sees all the files or none
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return target


@functools.lru_cache(maxsize=2)
def reader(cache_dir: Path | None = None):
    """nltk's ``WordNetCorpusReader`` over the installed copy (no Open Multilingual WordNet)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = install(cache_dir)
    data_dir = str(root.parent.parent)
    if data_dir not in nltk.data.path:  # nltk reads corpora only under its registered data folders
        nltk.data.path.append(data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none wanted
        return WordNetCorpusReader(str(root), None)
