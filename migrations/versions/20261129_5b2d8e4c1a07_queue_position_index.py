"""queue position index

Revision ID: 5b2d8e4c1a07
Revises: 3f233161c2ae
Create Date: 2026-11-29 08:35:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b2d8e4c1a07"
down_revision: str | None = "3f233161c2ae"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cards_pipeline_queue",
            ["status", "pipeline_id", "waiting_since", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.drop_index("ix_cards_pipeline_queue")
