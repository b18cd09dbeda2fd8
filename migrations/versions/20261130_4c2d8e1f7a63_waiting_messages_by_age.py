"""outbound messages waiting or sending, by status and age

The sweep reads outbound messages waiting or sending for a while, and staff alerts refused
in the last day, as ranges on `updated_at` within a status: with the age in the index, the
cost of those reads follows what is waiting, not every failed message ever kept. On
PostgreSQL the new index is built without blocking writes (CONCURRENTLY, outside the
migration's transaction): webhooks keep storing messages while a large table is indexed.

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


def _swap(new: str, columns: list[str], old: str) -> None:
    """Build `new` in place of `old`. Safe to run again after a failure half way: a new
    index left behind (on PostgreSQL, possibly INVALID after a failed concurrent build) is
    built afresh."""
    with op.get_context().autocommit_block():
        op.drop_index(new, table_name="messages", postgresql_concurrently=True, if_exists=True)
        op.create_index(new, "messages", columns, postgresql_concurrently=True)
        op.drop_index(old, table_name="messages", postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    _swap("ix_messages_waiting", ["direction", "status", "updated_at"], "ix_messages_pending")


def downgrade() -> None:
    _swap("ix_messages_pending", ["direction", "status"], "ix_messages_waiting")
