"""early status callbacks

Revision ID: a1c18d5b5999
Revises: f50db494c0c2
Create Date: 2026-11-28 22:28:56.800711
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1c18d5b5999"
down_revision: str | None = "f50db494c0c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "early_statuses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=16), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_early_statuses")),
    )
    with op.batch_alter_table("early_statuses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_early_statuses_sid"), ["sid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("early_statuses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_early_statuses_sid"))

    op.drop_table("early_statuses")
