"""index on the digest an alert went out in

Revision ID: f41b7c9e0d35
Revises: e3a91f06c2d4
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f41b7c9e0d35"
down_revision: str | None = "e3a91f06c2d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_messages_digest", "messages", ["digest_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_digest", table_name="messages")
