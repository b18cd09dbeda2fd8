"""Data generators: the staff and pipeline through the desk's own code, the bulk (cards,
visits, messages, history) with PostgreSQL's COPY."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text

from whatsdesk import accounts, pipeline_store, pipelines
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import Contact, Stage, User

PASSWORD = "bench-password-42"
AGENTS = [(f"Agent {n}", f"agent{n}@bench.test", "agent", f"+1555100{n:04d}") for n in range(8)]
SUPERVISORS = [
    (f"Supervisor {n}", f"supervisor{n}@bench.test", "supervisor", f"+1555200{n:04d}")
    for n in range(3)
]
ADMIN = ("Admin", "admin@bench.test", "admin", None)

PIPELINE_YAML = """
pipelines:
  - key: support
    name: Support
    default: true
    automation:
      new_conversation: new
      customer_message: reply
      agent_reply: waiting
    stages:
      - key: new
        name: Waiting for first response
        sla: 1h
        warning: 15m
      - key: reply
        name: Waiting for our reply
        sla: 2h
      - key: waiting
        name: Waiting on customer
        pause: true
notifications:
  digest_window: 30s
"""


def seed(database_url: str, now: datetime) -> dict[str, Any]:
    """Eight agents, three supervisors (their WhatsApp windows open), an admin, one pipeline."""
    with session_factory(database_url)() as session:
        for name, email, role, phone in [*AGENTS, *SUPERVISORS, ADMIN]:
            accounts.create_user(
                session,
                name=name,
                email=email,
                role=role,
                whatsapp=phone,
                password=PASSWORD,
                now=now,
            )
        pipeline_store.load(session, pipelines.parse(PIPELINE_YAML), now)
        for _name, _email, _role, phone in SUPERVISORS:
            session.add(Contact(address=f"whatsapp:{phone}", created_at=now, last_inbound_at=now))
        session.commit()
        stages = {s.key: s.id for s in session.scalars(select(Stage))}
        pipeline_id = session.scalars(select(Stage.pipeline_id)).first()
        agents = [u.id for u in session.scalars(select(User).where(User.role == "agent"))]
    return {"stages": stages, "pipeline": pipeline_id, "agents": agents}


def copy(
    database_url: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """COPY rows into a table; the number written."""
    raw = get_engine(database_url).raw_connection()
    written = 0
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copying:
            for row in rows:
                copying.write_row(row)
                written += 1
        raw.commit()
    finally:
        raw.close()
    return written


def next_id(database_url: str, table: str) -> int:
    with get_engine(database_url).connect() as conn:
        return int(conn.execute(text(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")).scalar_one())


def fix_sequences(database_url: str, tables: Sequence[str]) -> None:
    """COPY with explicit ids leaves the id sequences behind: move them past the rows. Then
    VACUUM (ANALYZE) the database, as PostgreSQL's autovacuum would soon after a bulk load in
    production (it is on by default; this machine's PostgreSQL runs with it off): without
    it no page is marked all-visible, so no index-only scan is possible."""
    engine = get_engine(database_url)
    with engine.begin() as conn:
        for table in tables:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))


def open_cards(
    database_url: str,
    seeded: dict[str, Any],
    count: int,
    now: datetime,
    deadlines: Sequence[datetime] | None = None,
    messages_per_card: int = 0,
    rng: random.Random | None = None,
) -> list[int]:
    """`count` open cards, each with its contact, its open visit and its messages. Without
    `deadlines` they look like a working desk's (stages, owners, SLA states mixed, nothing due
    for an hour); with them, visit i is due (breach only) at deadlines[i]. Their visit ids."""
    rng = rng or random.Random(7)
    contact0, card0, visit0 = (
        next_id(database_url, t) for t in ("contacts", "cards", "stage_visits")
    )
    stages = seeded["stages"]
    owners = [None, None, *seeded["agents"]]
    contacts, cards, visits = [], [], []
    for n in range(count):
        opened = now - timedelta(seconds=rng.randrange(60, 3 * 86400))
        stage = "new" if deadlines else rng.choice(["new", "new", "reply", "waiting"])
        waiting = stage != "waiting" and rng.random() < 0.7
        contacts.append(
            (
                contact0 + n,
                f"whatsapp:+55119{contact0 + n:08d}",
                f"Customer {contact0 + n}",
                opened,
                opened,
            )
        )
        cards.append(
            (
                card0 + n,
                contact0 + n,
                seeded["pipeline"],
                stages[stage],
                None if deadlines else rng.choice(owners),
                "open",
                opened,
                opened if waiting else None,
            )
        )
        if deadlines:
            deadline, warning = deadlines[n], None
        elif stage == "waiting":
            deadline = warning = None
        else:  # most on time, some approaching, a few already breached (and recorded)
            deadline = now + timedelta(
                seconds=rng.choice([-1, 1, 1, 1, 1]) * rng.randrange(4000, 90000)
            )
            warning = deadline - timedelta(minutes=15)
        due = deadline if deadlines else (warning if warning and warning > now else None)
        visits.append(
            (
                visit0 + n,
                card0 + n,
                stages[stage],
                opened,
                warning,
                deadline,
                "[]",
                stage == "waiting",
                "ongoing",
                due,
            )
        )
    copy(
        database_url,
        "contacts",
        ["id", "address", "profile_name", "created_at", "last_inbound_at"],
        contacts,
    )
    copy(
        database_url,
        "cards",
        [
            "id",
            "contact_id",
            "pipeline_id",
            "stage_id",
            "owner_id",
            "status",
            "opened_at",
            "waiting_since",
        ],
        cards,
    )
    copy(
        database_url,
        "stage_visits",
        [
            "id",
            "card_id",
            "stage_id",
            "entered_at",
            "warning_at",
            "deadline_at",
            "escalations_at",
            "paused",
            "outcome",
            "next_due_at",
        ],
        visits,
    )
    if messages_per_card:
        add_messages(database_url, cards, messages_per_card, now, rng)
    fix_sequences(database_url, ["contacts", "cards", "stage_visits", "messages"])
    return [v[0] for v in visits]


def add_messages(
    database_url: str,
    cards: list[tuple[Any, ...]],
    per_card: int,
    now: datetime,
    rng: random.Random,
) -> None:
    message0 = next_id(database_url, "messages")

    def rows() -> Iterable[tuple[Any, ...]]:
        n = message0
        for card in cards:
            card_id, contact_id, opened = card[0], card[1], card[6]
            address = f"whatsapp:+55119{contact_id:08d}"
            for k in range(per_card):
                at = opened + timedelta(seconds=k * rng.randrange(30, 600))
                inbound = k % 2 == 0
                yield (
                    n,
                    f"SM{n:032x}" if inbound else None,
                    "in" if inbound else "out",
                    card_id,
                    contact_id,
                    address if inbound else "whatsapp:+14155238886",
                    "whatsapp:+14155238886" if inbound else address,
                    "Hello, my order has not arrived yet" if inbound else "We are looking into it",
                    "[]",
                    "received" if inbound else "delivered",
                    1,
                    at,
                    at,
                )
                n += 1

    copy(
        database_url,
        "messages",
        [
            "id",
            "sid",
            "direction",
            "card_id",
            "contact_id",
            "from_address",
            "to_address",
            "body",
            "media",
            "status",
            "attempts",
            "created_at",
            "updated_at",
        ],
        rows(),
    )


def history(
    database_url: str, seeded: dict[str, Any], days: int, per_day: int, now: datetime
) -> int:
    """A year (`days`) of finished stage visits on resolved cards, with their breaches."""
    rng = random.Random(11)
    stages = seeded["stages"]
    contact0, card0, visit0, event0 = (
        next_id(database_url, t) for t in ("contacts", "cards", "stage_visits", "sla_events")
    )
    contacts, cards, visits, events = [], [], [], []
    total = days * per_day
    for n in range(total // 3):
        opened = now - timedelta(seconds=rng.randrange(3600, days * 86400))
        owner = rng.choice(seeded["agents"])
        contacts.append((contact0 + n, f"whatsapp:+55219{contact0 + n:08d}", opened, opened))
        at = opened
        for step, stage in enumerate(("new", "waiting", "reply")):
            spent = rng.randrange(60, 4 * 3600)
            sla_seconds = {"new": 3600, "reply": 7200}.get(stage)
            deadline = at + timedelta(seconds=sla_seconds) if sla_seconds else None
            left = at + timedelta(seconds=spent)
            breached = deadline is not None and left > deadline
            visit_id = visit0 + 3 * n + step
            visits.append(
                (
                    visit_id,
                    card0 + n,
                    stages[stage],
                    at,
                    left,
                    deadline,
                    "[]",
                    stage == "waiting",
                    spent,
                    spent,
                    "breached" if breached else ("no_sla" if not deadline else "met"),
                )
            )
            if breached:
                events.append(
                    (
                        event0 + len(events),
                        visit_id,
                        card0 + n,
                        "breach",
                        deadline,
                        deadline,
                        "{}",
                        owner,
                    )
                )
            at = left
        cards.append(
            (
                card0 + n,
                contact0 + n,
                seeded["pipeline"],
                stages["reply"],
                owner,
                "resolved",
                opened,
                at,
            )
        )
    copy(database_url, "contacts", ["id", "address", "created_at", "last_inbound_at"], contacts)
    copy(
        database_url,
        "cards",
        [
            "id",
            "contact_id",
            "pipeline_id",
            "stage_id",
            "owner_id",
            "status",
            "opened_at",
            "resolved_at",
        ],
        cards,
    )
    copy(
        database_url,
        "stage_visits",
        [
            "id",
            "card_id",
            "stage_id",
            "entered_at",
            "left_at",
            "deadline_at",
            "escalations_at",
            "paused",
            "wall_seconds",
            "business_seconds",
            "outcome",
        ],
        visits,
    )
    copy(
        database_url,
        "sla_events",
        ["id", "visit_id", "card_id", "kind", "due_at", "fired_at", "detail", "owner_id"],
        events,
    )
    fix_sequences(database_url, ["contacts", "cards", "stage_visits", "sla_events"])
    return len(visits)
