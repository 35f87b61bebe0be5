"""Engine and sessions. SQLite is the embedded default, PostgreSQL the production database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from . import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from .settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}

# SQLite lets one writer in at a time and the others wait for it. The largest import (10,000 tasks
# with their annotations) holds the lock for seconds on a loaded 2-core machine, and a write that
# waits longer than this fails (503, see api/errors.py), so the wait is generous.
SQLITE_BUSY_TIMEOUT_MS = 60_000
SQLITE_LOCKED_RETRIES = 10  # init_db's tries when SQLite refuses a lock without waiting (see there)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first, so the pragmas below wait for a lock too
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # API, worker and CLI share the file
    cursor.close()


def _forget_parent_connections() -> None:
    """A forked child (Celery's prefork pool) must not share its parent's pooled connections: two
    processes talking over one PostgreSQL connection corrupt each other's transactions."""
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parent_connections)


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    if url not in _engines:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        _engines[url] = engine
    return _engines[url]


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for the migrations in service/migrations, against ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url or get_settings().database_url
    return config


def init_db(url: str | None = None) -> Engine:
    """Bring the schema up to the newest migration (``alembic upgrade head``) and return the engine.

    At head it only reads alembic_version, so a start takes no migration lock and never waits for
    another process's writes. Two processes that start on a fresh database take turns (see env.py).
    """
    url = url or get_settings().database_url
    engine = get_engine(url)
    config = alembic_config(url)
    # SQLite answers "database is locked" at once, without waiting out the busy timeout, where waiting
    # could deadlock (a fresh file switched to WAL while another process migrates it): the remedy is to
    # try again. CI saw it once, two processes starting on a fresh file.
    for attempt in Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, OperationalError) and engine.dialect.name == "sqlite" and "locked" in str(e)),
        stop=stop_after_attempt(SQLITE_LOCKED_RETRIES + 1),
        wait=wait_incrementing(start=0.2, increment=0.2),
        reraise=True,
    ):
        with attempt:
            with engine.connect() as connection:
                current = set(MigrationContext.configure(connection).get_current_heads())
            if current != set(ScriptDirectory.from_config(config).get_heads()):
                command.upgrade(config, "head")
    return engine


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error, so nothing is half-written."""
    with Session(get_engine(url)) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
