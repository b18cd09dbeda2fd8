"""index for the queue filtered by stage

Revision ID: b5e8c2f4a913
Revises: a7d3c5e9b218
Create Date: 2026-11-29 20:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b5e8c2f4a913"
down_revision: str | None = "a7d3c5e9b218"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_cards_stage_queue", "cards", ["status", "stage_id", "waiting_since", "id"])


def downgrade() -> None:
    op.drop_index("ix_cards_stage_queue", table_name="cards")
