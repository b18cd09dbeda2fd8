"""holiday subdivisions named in full

The holidays package names some subdivisions in words rather than a code ("São Paulo
Capital", "Aisén del General Carlos Ibañez del Campo"): the column held 16 characters.

Revision ID: e7c9a1b3d5f8
Revises: d4a6c8e0f2b1
Create Date: 2026-11-30 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e7c9a1b3d5f8"
down_revision: str | None = "d4a6c8e0f2b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("calendars", schema=None) as batch_op:
        batch_op.alter_column(
            "holiday_subdivision", type_=sa.String(64), existing_type=sa.String(16)
        )


def downgrade() -> None:
    # A name longer than the old column cannot be kept: cut, it would name no subdivision
    # and the calendar could not be built. The calendar keeps its country's holidays.
    calendars = sa.table("calendars", sa.column("holiday_subdivision", sa.String))
    op.execute(
        calendars.update()
        .where(sa.func.length(calendars.c.holiday_subdivision) > 16)
        .values(holiday_subdivision=None)
    )
    with op.batch_alter_table("calendars", schema=None) as batch_op:
        batch_op.alter_column(
            "holiday_subdivision", type_=sa.String(16), existing_type=sa.String(64)
        )
