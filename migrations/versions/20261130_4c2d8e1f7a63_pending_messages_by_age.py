"""outbound messages waiting or sending, by status and age

The sweep reads outbound messages waiting or sending for a while, and staff alerts refused
in the last day, as ranges on `updated_at` within a status: with the age in the index, the
cost of those reads follows what is waiting, not every failed message ever kept.

Revision ID: 4c2d8e1f7a63
Revises: b5e8c2f4a913
Create Date: 2026-11-30 05:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "4c2d8e1f7a63"
down_revision: str | None = "b5e8c2f4a913"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_messages_pending", table_name="messages")
    op.create_index("ix_messages_pending", "messages", ["direction", "status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_pending", table_name="messages")
    op.create_index("ix_messages_pending", "messages", ["direction", "status"])
