"""Fixtures any test may use: the tiny encoder, a tagger trained on it, the shared corpora, a SQLite
database. Fixtures that start real servers are in servers.py; helpers that are not fixtures in
support.py; tiny models and the toy corpus in tiny.py."""

from pathlib import Path

import pytest

from support import SHARED_DATA, make_client, require
from tiny import LABELS, build_tiny_encoder, toy_corpus

pytest_plugins = ["servers"]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def trained_model(tiny_encoder, tmp_path_factory) -> Path:
    """A tiny tagger that has learnt the toy pattern (names PER, cities LOC), saved once per run."""
    from active_learning.tagger import LABELS_FILE, Tagger  # the code under test: see support.py
    from active_learning.training import TrainConfig, train

    directory = tmp_path_factory.getbasetemp() / "api-tagger"
    if not (directory / LABELS_FILE).is_file():
        tagger = Tagger.load(str(tiny_encoder), labels=LABELS, max_length=32, stride=8)
        config = TrainConfig(epochs=8, min_steps=0, learning_rate=3e-3, batch_size=16, freeze_word_embeddings=False)
        train(tagger, toy_corpus(120, seed=1), None, config)
        tagger.save(directory)
    return directory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared corpora (../shared/data): CI has them; a fresh clone without them skips these tests."""
    require("the shared corpora", None if SHARED_DATA.is_dir() else f"{SHARED_DATA} is missing")
    return SHARED_DATA


@pytest.fixture
def db_engine(tmp_path):
    """A fresh SQLite database with the schema, via ``service.db.init_db``."""
    from service.db import init_db

    return init_db(f"sqlite:///{tmp_path / 'nerloop.db'}")


@pytest.fixture
def client(tmp_path):
    """A client of the app with its own home and SQLite database (``support.make_client``)."""
    with make_client(tmp_path) as test_client:
        yield test_client
