"""A job's task arguments in a column of their own (``job.arguments``), no longer a key of its progress.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "arguments"  # where 0003-0005 kept them: job.progress["arguments"]
job = sa.table("job", sa.column("id", sa.Integer), sa.column("progress", sa.JSON), sa.column(KEY, sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column(KEY, sa.JSON(), nullable=False, server_default="{}"))
    connection = op.get_bind()
    for row in connection.execute(sa.select(job.c.id, job.c.progress)):
        if isinstance(row.progress, dict) and KEY in row.progress:
            progress = {k: v for k, v in row.progress.items() if k != KEY}
            connection.execute(job.update().where(job.c.id == row.id).values(progress=progress, arguments=row.progress[KEY]))


def downgrade() -> None:
    connection = op.get_bind()
    for row in connection.execute(sa.select(job.c.id, job.c.progress, job.c.arguments)):
        if row.arguments:
            connection.execute(job.update().where(job.c.id == row.id).values(progress={**(row.progress or {}), KEY: row.arguments}))
    with op.batch_alter_table("job") as batch:
        batch.drop_column(KEY)
