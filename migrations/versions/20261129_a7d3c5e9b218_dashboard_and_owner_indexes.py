"""indexes for the dashboard's open visits and the queue by owner

Revision ID: a7d3c5e9b218
Revises: f41b7c9e0d35
Create Date: 2026-11-29 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7d3c5e9b218"
down_revision: str | None = "f41b7c9e0d35"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_stage_visits_open_deadline",
        "stage_visits",
        ["deadline_at", "card_id", "stage_id", "warning_at", "paused"],
        sqlite_where=sa.text("left_at IS NULL"),
        postgresql_where=sa.text("left_at IS NULL"),
    )
    op.create_index("ix_cards_owner_queue", "cards", ["status", "owner_id", "waiting_since", "id"])


def downgrade() -> None:
    op.drop_index("ix_cards_owner_queue", table_name="cards")
    op.drop_index("ix_stage_visits_open_deadline", table_name="stage_visits")
