"""Alembic environment for nerloop's schema.

The database URL comes from, in order: the Config that ``service.db.alembic_config`` builds,
``alembic -x url=...``, or the settings (``NERLOOP_DATABASE_URL``, else the SQLite file under
``NERLOOP_HOME``). Each run holds a lock for its whole transaction, so two processes that migrate
the same database at once take turns and the second finds the schema already at head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import context
from sqlalchemy import Connection, Engine, create_engine, event, pool, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from service import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from service.db import get_engine
from service.settings import get_settings

# Any constant will do: PostgreSQL advisory locks are per database, and only migrations take this one.
POSTGRES_MIGRATION_LOCK = 7_233_417_001


def database_url() -> str:
    return (
        context.config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or get_settings().database_url
    )


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_connect(dbapi_connection, _record) -> None:
    # pysqlite commits before every DDL statement by itself; with isolation_level=None it leaves the
    # transaction to us, so a migration is all or nothing. Foreign keys stay off (SQLite's default)
    # because batch migrations copy and drop tables that other tables refer to.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=300000")  # wait for another process's migration to finish
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    # Take the write lock before reading alembic_version, so a concurrent run waits and then sees head.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def migration_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, poolclass=pool.NullPool)
    if parsed.database in (None, "", ":memory:"):
        return get_engine(url)  # an in-memory database exists only in the application's connection
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin_immediate)
    return engine


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=SQLModel.metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    engine = migration_engine(url)
    # One transaction around the lock and every migration; Alembic joins it and leaves the commit to us.
    with engine.connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK})
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            render_as_batch=is_sqlite(url),
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
