"""a person's answer keeps since when the customer had waited

When the answer never reaches the customer (failed, undelivered), the sweep puts the
customer back in line since then (desk.reply_failed); before, they stayed "answered".

Revision ID: d4a6c8e0f2b1
Revises: c8f1d3a5e7b9
Create Date: 2026-11-30 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d4a6c8e0f2b1"
down_revision: str | None = "c8f1d3a5e7b9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answered_waiting_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("answered_waiting_since")
