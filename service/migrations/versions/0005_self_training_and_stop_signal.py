"""Self-training settings on the project: whether the active model's confident pseudo-labels of pool
texts join training, the task confidence they need and their loss weight. The stopping signal is
stored in ``modelversion.metrics`` (JSON) and needs no column.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def columns() -> list[sa.Column]:
    return [
        sa.Column("self_training", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("self_training_threshold", sa.Float(), nullable=False, server_default="0.99"),
        sa.Column("self_training_weight", sa.Float(), nullable=False, server_default="0.5"),
    ]


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:
        for column in columns():
            batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("project") as batch:
        for column in reversed(columns()):
            batch.drop_column(column.name)
