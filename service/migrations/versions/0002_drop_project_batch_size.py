"""Drop project.batch_size: Label Studio orders the whole pool by score, so no batch size applies
(retrain_every sets how many labels each model version waits for).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:  # SQLite rebuilds the table; PostgreSQL alters it
        batch.drop_column("batch_size")


def downgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("batch_size", sa.Integer(), nullable=False, server_default="50"))
