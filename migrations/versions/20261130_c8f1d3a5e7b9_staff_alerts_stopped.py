"""staff who sent STOP get no alerts

A staff member's STOP was answered with the commands' help and alerts kept coming. The
account now keeps when its number sent STOP; START clears it, and so does a new number.

Revision ID: c8f1d3a5e7b9
Revises: b3e5a7c9d1f2
Create Date: 2026-11-30 10:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c8f1d3a5e7b9"
down_revision: str | None = "b3e5a7c9d1f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alerts_stopped_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("alerts_stopped_at")
