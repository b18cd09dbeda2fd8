"""What one inbound message costs the desk: its SQL statements, and the Redis work it arms."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from whatsdesk import desk, pipeline_store, pipelines, whatsapp
from whatsdesk.alarms import clock_queue_name, never_before
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Card, Contact, Message, StageVisit

from conftest import (
    MENU_YAML,
    commit_once_it_waits,
    inbound_form,
    query_plan,
    signed_post,
    statements,
)

INBOUND = "/twilio/whatsapp"


def post(client: FlaskClient, config: Config, form: dict[str, str]) -> None:
    answer = signed_post(client, config, INBOUND, form)
    assert getattr(answer, "status_code", None) == 200


def sqlite_lock(config: Config) -> int:
    """SQLite's BEGIN IMMEDIATE, a statement of its own, before the first read locks."""
    return 1 if config.database_url.startswith("sqlite") else 0


def test_a_message_on_an_open_conversation_takes_three_statements(
    client: FlaskClient, seeded: Config
) -> None:
    post(client, seeded, inbound_form(body="Hello?"))
    with statements(seeded) as seen:
        post(client, seeded, inbound_form(body="Anyone there?"))
    # Is the sid stored, is the sender staff, their open card (locked), in one read; the
    # contact's latest; the message.
    assert len(seen) == 3 + sqlite_lock(seeded), seen


def test_a_message_on_an_open_conversation_is_stored_as_the_first_one_was(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    post(client, seeded, inbound_form(body="Hello?"))  # opens the conversation
    post(client, seeded, inbound_form(body="Anyone there?"))  # joins it

    messages = Message.__table__
    first, second = session.execute(
        select(messages, messages.c.content_variables.is_(None).label("sql_null"))
        .where(messages.c.direction == "in")
        .order_by(messages.c.id)
    ).all()
    differ = {"id", "sid", "body", "created_at", "updated_at"}
    assert {k: v for k, v in first._mapping.items() if k not in differ} == {
        k: v for k, v in second._mapping.items() if k not in differ
    }
    assert second.sql_null and second.card_id is not None and second.body == "Anyone there?"


def test_a_new_conversation_from_a_new_number_takes_ten_statements(
    client: FlaskClient, seeded: Config
) -> None:
    with statements(seeded) as seen:
        post(client, seeded, inbound_form(body="My order never arrived"))
    # The sid, sender (not known) and open card (none), in one read; the contact, made;
    # the pipeline with its stages; the team menu setting; the card and its stage visit;
    # the customer's place and the recent waits; the message; the acknowledgement. Each
    # write is one INSERT, none through the unit of work.
    expected = 10 + sqlite_lock(seeded)
    assert len(seen) == expected, "\n".join(s[:90] for s in seen)


def test_a_resolution_target_adds_no_statement_to_a_new_conversation(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    spec = pipeline_store.dump(session)
    support = replace(spec.pipelines[0], resolution_seconds=1800)
    pipeline_store.load(session, replace(spec, pipelines=[support]), utcnow())
    session.commit()
    with statements(seeded) as seen:
        post(client, seeded, inbound_form(body="My order never arrived"))
    # A card opened just now has recorded no resolution event: none is read.
    assert len(seen) == 10 + sqlite_lock(seeded), "\n".join(s[:90] for s in seen)
    visit = session.scalars(select(StageVisit)).one()
    assert visit.resolution_at is not None


def test_a_contact_the_session_already_holds_is_brought_up_to_date(
    seeded: Config, session: Session
) -> None:
    first_at = utcnow()
    first = whatsapp.parse_inbound(inbound_form(name="Maria"))
    contact = desk.receive_message(session, first, first_at).message.contact
    assert contact is not None and contact.profile_name == "Maria"

    later = first_at + timedelta(minutes=1)
    again = whatsapp.parse_inbound(inbound_form(name="Maria Silva"))
    received = desk.receive_message(session, again, later)

    assert received.message.contact is contact
    assert (contact.profile_name, contact.last_inbound_at) == ("Maria Silva", later)
    session.commit()
    stored = session.scalars(select(Contact)).one()
    assert (stored.profile_name, stored.last_inbound_at) == ("Maria Silva", later)


def test_a_card_the_session_already_holds_is_read_as_it_now_is(
    seeded: Config, session: Session
) -> None:
    first_at = utcnow()
    card = desk.receive_message(session, whatsapp.parse_inbound(inbound_form()), first_at).card
    assert card is not None
    session.commit()
    with session_factory(seeded.database_url)() as elsewhere:  # an agent moves the card
        moved = elsewhere.get_one(Card, card.id)
        other = next(s for s in moved.pipeline.stages if s.id != moved.stage_id)
        moved.stage_id = other.id
        elsewhere.commit()

    again = whatsapp.parse_inbound(inbound_form(body="Is anyone there?"))
    received = desk.receive_message(session, again, first_at + timedelta(minutes=1))

    assert received.card is card
    assert card.stage.key == other.key
    assert received.message.card is card
    assert received.message.body == "Is anyone there?"


def test_a_message_that_waited_on_its_twin_joins_the_card_the_twin_opened(
    seeded: Config, session: Session
) -> None:
    if make_url(seeded.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has no row locks: it runs one writer at a time")
    at = utcnow()
    session.add(Contact(address="whatsapp:+5511999990000", created_at=at))  # wrote before
    session.commit()
    twin = desk.receive_message(session, whatsapp.parse_inbound(inbound_form()), at)
    assert twin.card is not None
    joined: list[desk.Received] = []
    raced: list[str] = []

    def second() -> None:  # as the webhook takes it: raced, it starts again
        form = inbound_form(body="And it was paid already")
        with session_factory(seeded.database_url)() as other:
            for _attempt in (1, 2):
                try:
                    joined.append(desk.receive_message(other, whatsapp.parse_inbound(form), at))
                    other.commit()
                    return
                except desk.Raced as exc:
                    other.rollback()
                    raced.append(str(exc))

    commit_once_it_waits(session, seeded.database_url, second)

    assert len(raced) == 1  # it waited on the contact, saw the new card and started again
    [received] = joined
    assert received.card is not None and received.card.id == twin.card.id
    session.expire_all()
    assert len(session.scalars(select(Card)).all()) == 1


def test_a_message_without_a_profile_name_keeps_the_one_known(
    seeded: Config, session: Session
) -> None:
    desk.receive_message(session, whatsapp.parse_inbound(inbound_form(name="Maria")), utcnow())
    form = inbound_form()
    del form["ProfileName"], form["WaId"]
    desk.receive_message(session, whatsapp.parse_inbound(form), utcnow())
    session.commit()

    contact = session.scalars(select(Contact)).one()
    assert (contact.profile_name, contact.wa_id) == ("Maria", "5511999990000")


def test_a_team_menu_arms_its_deadline_with_the_question_s_send(
    client: FlaskClient, seeded: Config, session: Session, redis: Redis
) -> None:
    pipeline_store.load(session, pipelines.parse(MENU_YAML), utcnow())
    session.commit()

    post(client, seeded, inbound_form(phone="+15550008003"))

    session.expire_all()
    card = session.scalars(select(Card)).one()
    [ask] = session.scalars(select(Message).where(Message.direction == "out")).all()
    assert card.menu_deadline_at is not None
    clock = Queue(clock_queue_name(seeded.queue_name), connection=redis)
    scheduled = ScheduledJobRegistry(queue=clock).get_scheduled_time(f"menu-{card.id}")
    assert scheduled == never_before(card.menu_deadline_at)
    assert f"send-{ask.id}" in Queue(seeded.queue_name, connection=redis).get_job_ids()


def test_a_new_customers_place_in_the_queue_is_counted_on_an_index(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    """The acknowledgement's count of waiting customers reads an index range, however long
    the queue (a table scan would grow with every open card of every pipeline)."""
    post(client, seeded, inbound_form(phone="+5511900000001"))
    card = session.scalars(select(Card)).one()
    # Many open conversations, answered (nobody waiting on them), so that the planner's
    # choice is the one a real desk gets: on a table of one row, or with every open card
    # waiting ahead, every index of open cards costs the same.
    at = utcnow()
    contacts = session.scalars(
        insert(Contact).returning(Contact.id),
        [{"address": f"whatsapp:+55118{n:08d}", "created_at": at} for n in range(1000)],
    ).all()
    open_ = {"pipeline_id": card.pipeline_id, "stage_id": card.stage_id, "status": "open"}
    session.execute(
        insert(Card),
        [{"contact_id": c, "opened_at": at, "waiting_since": None, **open_} for c in contacts],
    )
    session.commit()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE cards"))
        session.commit()  # the statistics are the transaction's until it commits
    plan = query_plan(session, desk.waiting_ahead(card, utcnow()))
    assert "ix_cards_pipeline_queue" in plan, plan
