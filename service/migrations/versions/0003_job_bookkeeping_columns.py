"""Job bookkeeping in columns of its own: the owner of a running job (host, pid, token), its heartbeat
and attempt, and the signs of a lost message of a queued one (sent_at, waiting_for, waiting_at) move
out of ``job.progress``, which keeps only what people are shown.

The values already in ``progress`` are moved over (and back on downgrade) row by row in Python: the
JSON functions differ between SQLite and PostgreSQL, and the job table is small.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:30:00
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMES = ("heartbeat_at", "sent_at", "waiting_at")


def columns() -> list[sa.Column]:
    return [
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("owner_host", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=True),
        sa.Column("owner_token", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        *(sa.Column(name, sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True) for name in TIMES),
        sa.Column("waiting_for", sa.Integer(), nullable=True),
    ]


# The keys revision 0002's workers wrote into progress, by the column that now holds each.
PROGRESS_KEYS = {"heartbeat_at": "heartbeat", "sent_at": "sent_at", "waiting_at": "waiting_at", "waiting_for": "waiting_for"}


def job_table() -> sa.Table:
    return sa.table("job", sa.column("id", sa.Integer()), sa.column("progress", sa.JSON()), *(sa.column(c.name, c.type) for c in columns()))


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        for column in columns():
            batch.add_column(column)
    job = job_table()
    connection = op.get_bind()
    for job_id, progress in connection.execute(sa.select(job.c.id, job.c.progress)).all():
        progress = dict(progress or {})
        owner = progress.pop("owner", None) or {}
        values = {
            "attempt": int(progress.pop("attempt", 0) or 0),
            "owner_host": owner.get("host"),
            "owner_pid": owner.get("pid"),
            "owner_token": owner.get("token"),
            **{column: progress.pop(key, None) for column, key in PROGRESS_KEYS.items()},
        }
        for column in TIMES:
            values[column] = datetime.fromisoformat(values[column]) if isinstance(values[column], str) else None
        connection.execute(sa.update(job).where(job.c.id == job_id).values(progress=progress, **values))


def downgrade() -> None:
    job = job_table()
    connection = op.get_bind()
    for row in connection.execute(sa.select(job)).mappings().all():
        progress = dict(row["progress"] or {})
        if row["attempt"]:
            progress["attempt"] = row["attempt"]
        if row["owner_token"] is not None:
            progress["owner"] = {"host": row["owner_host"], "pid": row["owner_pid"], "token": row["owner_token"]}
        for column, key in PROGRESS_KEYS.items():
            value = row[column]
            if value is not None:
                progress[key] = value.isoformat() if isinstance(value, datetime) else value
        connection.execute(sa.update(job).where(job.c.id == row["id"]).values(progress=progress))
    with op.batch_alter_table("job") as batch:
        for column in reversed(columns()):
            batch.drop_column(column.name)
