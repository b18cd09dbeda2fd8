"""snooze delay kept on re-timing

Revision ID: 9c4e1d7a2b60
Revises: 5b2d8e4c1a07
Create Date: 2026-11-29 11:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9c4e1d7a2b60"
down_revision: str | None = "5b2d8e4c1a07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stage_visits", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("escalation_delay_seconds", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("stage_visits", schema=None) as batch_op:
        batch_op.drop_column("escalation_delay_seconds")
