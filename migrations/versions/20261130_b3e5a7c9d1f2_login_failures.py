"""failed logins counted in the database

The login throttle counted failures in Redis, so nobody could log in while Redis was
down, though every page reads only the database. Counts kept in Redis are not carried
over: a window still running there starts again.

Revision ID: b3e5a7c9d1f2
Revises: 7d2b9e4c1a58
Create Date: 2026-11-30 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3e5a7c9d1f2"
down_revision: str | None = "7d2b9e4c1a58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_failures")),
    )
    op.create_index(op.f("ix_login_failures_window_ends_at"), "login_failures", ["window_ends_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_login_failures_window_ends_at"), table_name="login_failures")
    op.drop_table("login_failures")
