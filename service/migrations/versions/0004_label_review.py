"""Label review: the suspect annotations a review job found, and what reviewers confirmed.

``suspect``: one row per task a review job flagged, with what produced it (the job, the base model
the folds were trained from, the active version after whose promotion it ran), the fingerprint of
the annotation it judged (a different one now means the verdict is stale), its cleanlab score, the
kinds of its issues, the issues and the held-out model's suggested spans. ``review_confirmation``:
the (task, reason) pairs a reviewer confirmed, never flagged again for that reason.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL keeps it as a type of its own: create_table makes it, downgrade must drop it.
ENUM_TYPE = "suspectstatus"


def upgrade() -> None:
    op.create_table(
        "suspect",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=True),
        sa.Column("annotation_updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("producer", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("base_model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model_version", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("issues", sa.JSON(), nullable=False),
        sa.Column("suggested", sa.JSON(), nullable=False),
        sa.Column("status", sa.Enum("open", "fixed", "confirmed", name=ENUM_TYPE), nullable=False),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("shown", sa.Boolean(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("resolved_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.ForeignKeyConstraint(["annotation_id"], ["annotation.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_suspect_project_id"), "suspect", ["project_id"], unique=False)
    op.create_index(op.f("ix_suspect_task_id"), "suspect", ["task_id"], unique=False)
    op.create_index(op.f("ix_suspect_score"), "suspect", ["score"], unique=False)

    op.create_table(
        "review_confirmation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("annotator", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "reason"),
    )
    op.create_index(op.f("ix_review_confirmation_task_id"), "review_confirmation", ["task_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_review_confirmation_task_id"), table_name="review_confirmation")
    op.drop_table("review_confirmation")
    op.drop_index(op.f("ix_suspect_score"), table_name="suspect")
    op.drop_index(op.f("ix_suspect_task_id"), table_name="suspect")
    op.drop_index(op.f("ix_suspect_project_id"), table_name="suspect")
    op.drop_table("suspect")
    sa.Enum(name=ENUM_TYPE).drop(op.get_bind(), checkfirst=True)
