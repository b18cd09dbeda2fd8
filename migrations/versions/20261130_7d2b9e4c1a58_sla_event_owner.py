"""whose card it was when an SLA event fired

Reports and the dashboard credited a breach to whoever owns the card now: with a
reassignment on breach, the agent who received the overdue card. Each event now keeps the
owner of its card at that moment. Breaches, escalation levels and resolution breaches
recorded before this get their card's owner as of the upgrade (the best the database knows:
what the reports showed until now).

Revision ID: 7d2b9e4c1a58
Revises: 4c2d8e1f7a63
Create Date: 2026-11-30 08:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d2b9e4c1a58"
down_revision: str | None = "4c2d8e1f7a63"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTED = "kind IN ('breach', 'resolution-breach') OR kind LIKE 'level-%'"


def upgrade() -> None:
    with op.batch_alter_table("sla_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_sla_events_owner_id_users"), "users", ["owner_id"], ["id"]
        )
    op.execute(
        "UPDATE sla_events SET owner_id = "
        "(SELECT cards.owner_id FROM cards WHERE cards.id = sla_events.card_id) "
        f"WHERE {COUNTED}"
    )


def downgrade() -> None:
    with op.batch_alter_table("sla_events", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_sla_events_owner_id_users"), type_="foreignkey")
        batch_op.drop_column("owner_id")
