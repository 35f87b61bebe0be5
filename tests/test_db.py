"""db.py and the Alembic migrations, on SQLite (a file in tmp_path) and on PostgreSQL.

The ``url`` fixture (servers.py) gives each test an empty database, a new SQLite file or the
session's own database on PostgreSQL, which is reached at NERLOOP_TEST_POSTGRES_URL (default: the
local server, trust auth, database `test`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from service import db
from service.db import MIGRATIONS, alembic_config, get_engine, init_db, session_scope
from service.models import (
    Annotation,
    AugmentedExample,
    Job,
    JobStatus,
    ModelStatus,
    ModelVersion,
    Prediction,
    Project,
    ReviewConfirmation,
    Suspect,
    SuspectStatus,
    Task,
    TaskState,
)
from support import REPO, wait_until

ENUM_TYPES = {"taskstate", "modelstatus", "jobstatus", "suspectstatus"}


def head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def table_names(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names())


def enum_types(url: str) -> set[str]:
    with get_engine(url).connect() as connection:
        return set(connection.scalars(text("SELECT typname FROM pg_type WHERE typtype = 'e'")))


def schema_diff(url: str) -> list:
    with get_engine(url).connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)


def test_upgrade_creates_every_table(url):
    init_db(url)
    assert table_names(url) == set(SQLModel.metadata.tables) | {"alembic_version"}
    assert current_revision(url) == head()
    if url.startswith("postgresql"):
        assert enum_types(url) == ENUM_TYPES


def test_migrations_match_the_models(url):
    init_db(url)
    assert schema_diff(url) == []


def test_downgrade_to_base_then_upgrade_again(url):
    init_db(url)
    config = alembic_config(url)
    command.downgrade(config, "base")
    assert table_names(url) == {"alembic_version"}
    assert current_revision(url) is None
    if url.startswith("postgresql"):
        assert enum_types(url) == set()
    command.upgrade(config, "head")
    assert table_names(url) == set(SQLModel.metadata.tables) | {"alembic_version"}
    assert schema_diff(url) == []


def test_job_arguments_move_out_of_progress_and_back(url):
    """0006: a queued job's task arguments, kept in progress["arguments"] until 0005, become the
    ``arguments`` column, so the sweep still sends the job as it was asked for; downgrading keeps them."""
    import sqlalchemy as sa

    config = alembic_config(url)
    command.upgrade(config, "0005")
    old_job = sa.table("job", *(sa.column(c) for c in ("project_id", "kind", "status", "attempt")),
                       sa.column("progress", sa.JSON), sa.column("created_at", sa.DateTime))
    engine = get_engine(url)
    with engine.begin() as connection:
        connection.execute(Project.__table__.insert().values(name="p", labels=[]))
        for progress in ({"arguments": {"method": "swap", "count": 2}, "stage": "x"}, {}):
            connection.execute(old_job.insert().values(project_id=1, kind="augment", status="queued", attempt=0,
                                                       progress=progress, created_at=datetime.now(UTC)))
    command.upgrade(config, "head")
    with session_scope(url) as session:
        jobs = session.exec(select(Job).order_by(Job.id)).all()
        assert [(j.arguments, j.progress) for j in jobs] == [({"method": "swap", "count": 2}, {"stage": "x"}), ({}, {})]
    command.downgrade(config, "0005")
    with engine.connect() as connection:
        progress = connection.execute(sa.select(old_job.c.progress)).scalars().all()
    assert sorted(progress, key=len) == [{}, {"stage": "x", "arguments": {"method": "swap", "count": 2}}]


def test_every_table_round_trips(url):
    init_db(url)
    pulled = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with session_scope(url) as session:
        project = Project(name="新闻 NER", labels=["PER", "LOC", "ORG", "人名"], ls_project_id=7, last_pulled_at=pulled)
        session.add(project)
        session.flush()
        task = Task(
            project_id=project.id,
            text="张三在北京工作。",
            meta={"source": "人民日报", "tags": ["新闻", "2024"], "nested": {"score": 0.5, "ok": True}},
            ls_task_id=101,
            content_hash="ab" * 32,
            state=TaskState.labelled,
            is_dev=True,
        )
        session.add(task)
        session.flush()
        model = ModelVersion(
            project_id=project.id,
            name="v1",
            path="/models/v1",
            status=ModelStatus.active,
            metrics={"f1": 0.81, "per_label": {"PER": {"f1": 0.9}}},
            dev_f1=0.81,
            train_size=120,
        )
        session.add(model)
        session.flush()
        rows = [
            project,
            task,
            model,
            Annotation(
                task_id=task.id,
                ls_annotation_id=5001,
                spans=[[0, 2, "PER"], [3, 5, "LOC"]],
                annotator="小李",
                ground_truth=True,
                accepted=True,
            ),
            Prediction(task_id=task.id, model_version_id=model.id, spans=[[0, 2, "PER", 0.93]], score=0.42),
            Job(
                project_id=project.id,
                kind="train",
                status=JobStatus.failed,
                progress={"step": 3, "of": 10, "message": "第三步"},
                error="CUDA 内存不足",
                celery_id="c-1",
                started_at=pulled,
                finished_at=pulled,
            ),
            AugmentedExample(
                project_id=project.id,
                source_task_id=task.id,
                method="mention_replacement",
                params={"p": 0.3, "pool": ["李四", "王五"]},
                seed=13,
                text="李四在上海工作。",
                spans=[[0, 2, "PER"], [3, 5, "LOC"]],
            ),
            Suspect(
                project_id=project.id,
                task_id=task.id,
                producer="cross-fit k=4",
                base_model="tiny-bert",
                model_version="v1",
                fingerprint="cd" * 20,
                score=0.031,
                kinds=["wrong_type"],
                issues=[{"kind": "wrong_type", "reason": "wrong_type@3:5:LOC", "annotated": [3, 5, "LOC"], "suggested": [3, 5, "ORG"]}],
                suggested=[[0, 2, "PER", 0.99], [3, 5, "ORG", 0.8]],
                status=SuspectStatus.confirmed,
                resolved_at=pulled,
            ),
            ReviewConfirmation(task_id=task.id, reason="wrong_type@3:5:LOC", fingerprint="cd" * 20, annotator="小李"),
        ]
        session.add_all(rows)
        session.flush()
        written = [(type(row), row.model_dump()) for row in rows]

    assert {table.__tablename__ for table, _ in written} == set(SQLModel.metadata.tables)
    with session_scope(url) as session:
        for table, values in written:
            assert session.get(table, values["id"]).model_dump() == values
        assert session.exec(select(Task)).one().state is TaskState.labelled
        assert session.exec(select(ModelVersion)).one().status is ModelStatus.active
        assert session.exec(select(Job)).one().status is JobStatus.failed


def seed_rows(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        project = Project(name="p", labels=["PER"], ls_project_id=1)
        session.add(project)
        session.flush()
        task = Task(project_id=project.id, text="Ann met Bob.", content_hash="h1")
        model = ModelVersion(project_id=project.id, name="v1")
        session.add_all([task, model])
        session.flush()
        annotation = Annotation(task_id=task.id, ls_annotation_id=11, spans=[[0, 3, "PER"]])
        session.add_all([annotation, Prediction(task_id=task.id, model_version_id=model.id, spans=[], score=0.5)])
        session.flush()
        return {"project": project.id, "task": task.id, "model": model.id, "annotation": annotation.id}


DUPLICATES = {
    "project.ls_project_id": lambda ids: Project(name="again", ls_project_id=1),
    "task.project_id+content_hash": lambda ids: Task(project_id=ids["project"], text="other", content_hash="h1"),
    "annotation.ls_annotation_id": lambda ids: Annotation(task_id=ids["task"], ls_annotation_id=11),
    "prediction.task_id+model_version_id": lambda ids: Prediction(
        task_id=ids["task"], model_version_id=ids["model"], score=0.1
    ),
}


def row_counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {
            table.__tablename__: session.exec(select(func.count()).select_from(table)).one()
            for table in (Project, Task, ModelVersion, Annotation, Prediction)
        }


@pytest.mark.parametrize("constraint", DUPLICATES)
def test_unique_constraint_rolls_back_the_whole_scope(url, constraint):
    init_db(url)
    ids = seed_rows(url)
    before = row_counts(url)
    with pytest.raises(IntegrityError):
        with session_scope(url) as session:
            # Written and flushed before the duplicate: must vanish with it.
            session.add(Task(project_id=ids["project"], text="fresh", content_hash="h2"))
            session.flush()
            session.add(DUPLICATES[constraint](ids))
    assert row_counts(url) == before
    with session_scope(url) as session:
        assert session.exec(select(Task.content_hash)).all() == ["h1"]
        assert session.get(Annotation, ids["annotation"]).spans == [[0, 3, "PER"]]


def test_init_db_twice_is_idempotent_and_skips_alembic_at_head(url, monkeypatch):
    engine = init_db(url)
    seed_rows(url)
    before = row_counts(url)

    def no_upgrade(*args, **kwargs):
        raise AssertionError("init_db ran the migrations although the database is at head")

    monkeypatch.setattr(db.command, "upgrade", no_upgrade)
    assert init_db(url) is engine
    assert current_revision(url) == head()
    assert row_counts(url) == before


RACER = """
import sys, time
from pathlib import Path
from service.db import init_db
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
init_db(sys.argv[1])
"""


def test_two_processes_initialise_a_fresh_database_at_once(url, tmp_path):
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, str(tmp_path / f"ready{i}"), str(go)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    wait_until(lambda: all((tmp_path / f"ready{i}").exists() for i in range(2)), 60, 0.01, "both processes to be ready")
    go.touch()
    errors = [racer.communicate(timeout=60)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], errors
    assert current_revision(url) == head()
    assert schema_diff(url) == []


def test_alembic_command_line(tmp_path):
    """env.py also serves `alembic`: the URL from -x url=..., else from NERLOOP_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    alembic = [sys.executable, "-m", "alembic", "-c", str(MIGRATIONS / "alembic.ini")]
    env = {**os.environ, "NERLOOP_HOME": str(tmp_path / "home")}
    env.pop("NERLOOP_DATABASE_URL", None)
    subprocess.run([*alembic, "-x", f"url={url}", "upgrade", "head"], cwd=tmp_path, env=env, check=True)
    env["NERLOOP_DATABASE_URL"] = url
    current = subprocess.run(
        [*alembic, "current"], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert f"{head()} (head)" in current
    assert table_names(url) == set(SQLModel.metadata.tables) | {"alembic_version"}
    get_engine(url).dispose()


def test_a_forked_process_opens_its_own_connections(postgres_database):
    """Celery's prefork pool forks after the parent connected: the child must not reuse the parent's
    pooled connection (two processes on one PostgreSQL session corrupt each other's transactions)."""
    engine = get_engine(postgres_database)
    with engine.connect() as connection:  # leaves one idle connection in the pool
        parent = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        try:
            with get_engine(postgres_database).connect() as connection:
                os.write(write, str(connection.execute(text("SELECT pg_backend_pid()")).scalar()).encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 64).decode()
    os.waitpid(child, 0)
    with engine.connect() as connection:  # the parent's connection still works
        assert connection.execute(text("SELECT pg_backend_pid()")).scalar() == parent
    assert answer and int(answer) != parent
