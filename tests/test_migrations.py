"""The schema is made by migrations alone, they agree with the models, and upgrading a
database that holds data keeps every row."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.db import Base, get_engine

from conftest import postgres_schema


def test_migrations_and_models_agree(config: Config) -> None:
    with get_engine(config.database_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrations_create_every_table(config: Config) -> None:
    tables = set(inspect(get_engine(config.database_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables


FIRST_REVISION = "3aa0b054ccee"
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it yet: an SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
        return
    with postgres_schema(f"wd_upgrade_{uuid.uuid4().hex[:8]}") as url:
        yield url


def upgrade(url: str, revision: str) -> None:
    cfg = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, revision)


T = "'2026-11-20 10:00:00+00:00'"
LATER = "'2026-11-20 10:05:00+00:00'"
# A desk in use under the first schema: staff, a pipeline with alert lists and an escalation
# level, a card that left one stage late and is in another, its breach and the alerts.
ROWS = [
    "INSERT INTO users (id, name, email, role, whatsapp, password_hash, active, created_at) "
    f"VALUES (1, 'Ana', 'ana@example.com', 'agent', 'whatsapp:+15550000001', 'x', true, {T})",
    "INSERT INTO users (id, name, email, role, whatsapp, password_hash, active, created_at) "
    f"VALUES (2, 'Sofia', 'sofia@example.com', 'supervisor', 'whatsapp:+15550000003', 'x', "
    f"true, {T})",
    "INSERT INTO pipelines (id, key, name, is_default) VALUES (1, 'support', 'Support', true)",
    "INSERT INTO stages (id, pipeline_id, key, name, position, sla_seconds, warning_seconds, "
    "always_open) VALUES (1, 1, 'new', 'New', 0, 120, 60, false)",
    "INSERT INTO stages (id, pipeline_id, key, name, position, always_open) "
    "VALUES (2, 1, 'open', 'Open', 1, false)",
    "INSERT INTO stage_alert_recipients (stage_id, user_id) VALUES (1, 1)",
    "INSERT INTO stage_escalations (id, stage_id, level, after_seconds) VALUES (1, 1, 1, 300)",
    "INSERT INTO stage_escalation_recipients (escalation_id, user_id) VALUES (1, 2)",
    f"INSERT INTO contacts (id, address, created_at) VALUES (1, 'whatsapp:+5511999990000', {T})",
    "INSERT INTO cards (id, contact_id, pipeline_id, stage_id, owner_id, status, opened_at) "
    f"VALUES (1, 1, 1, 2, 1, 'open', {T})",
    "INSERT INTO stage_visits (id, card_id, stage_id, entered_at, left_at, warning_at, "
    f"deadline_at, escalations_at, wall_seconds, business_seconds) VALUES (1, 1, 1, {T}, "
    f"{LATER}, '2026-11-20 10:01:00+00:00', '2026-11-20 10:02:00+00:00', '[]', 300, 300)",
    "INSERT INTO stage_visits (id, card_id, stage_id, entered_at, escalations_at) "
    f"VALUES (2, 1, 2, {LATER}, '[]')",
    "INSERT INTO sla_events (id, visit_id, kind, due_at, fired_at) VALUES "
    "(1, 1, 'breach', '2026-11-20 10:02:00+00:00', '2026-11-20 10:02:00+00:00')",
    "INSERT INTO messages (id, dedupe_key, direction, user_id, sla_event_id, from_address, "
    "to_address, body, media, status, attempts, created_at, updated_at) VALUES (1, 'sla-1-2', "
    "'out', 2, 1, '', 'whatsapp:+15550000003', 'breached', '[]', 'retrying', 1, "
    f"{T}, {LATER})",
]


def test_upgrading_a_database_in_use_keeps_every_row(empty_database: str) -> None:
    upgrade(empty_database, FIRST_REVISION)
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        for row in ROWS:
            conn.execute(text(row))

    upgrade(empty_database, "head")

    with engine.connect() as conn:
        count = {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in (
                "users",
                "stages",
                "stage_alert_recipients",
                "stage_escalations",
                "stage_escalation_recipients",
                "cards",
                "stage_visits",
                "sla_events",
                "messages",
            )
        }
        assert count == {
            "users": 2,
            "stages": 2,
            "stage_alert_recipients": 1,
            "stage_escalations": 1,
            "stage_escalation_recipients": 1,
            "cards": 1,
            "stage_visits": 2,
            "sla_events": 1,
            "messages": 1,
        }
        assert conn.execute(text("SELECT card_id FROM sla_events")).scalar_one() == 1
        # The breach is credited to the card's owner as the upgrade found it.
        assert conn.execute(text("SELECT owner_id FROM sla_events")).scalar_one() == 1
        outcomes = conn.execute(text("SELECT id, outcome FROM stage_visits ORDER BY id")).all()
        assert [tuple(o) for o in outcomes] == [(1, "breached"), (2, "ongoing")]
        assert conn.execute(text("SELECT sent_at FROM messages")).scalar_one() is not None
        card = conn.execute(text("SELECT resolution_used_seconds, paused_seconds FROM cards"))
        assert tuple(card.one()) == (0, 0)
    engine.dispose()
