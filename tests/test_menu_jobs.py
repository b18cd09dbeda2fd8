"""The team menu's deadline on the clock: a job at the instant, and the sweep behind it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session

from whatsdesk import desk, jobs, pipeline_store, pipelines, whatsapp
from whatsdesk.alarms import clock_queue_name, never_before
from whatsdesk.config import Config
from whatsdesk.db import utcnow
from whatsdesk.models import Card, Message, StageVisit

from conftest import CLOSED_REDIS, MENU_YAML, inbound_form


def asked(session: Session, at: object) -> Card:
    pipeline_store.load(session, pipelines.parse(MENU_YAML), utcnow())
    inbound = whatsapp.parse_inbound(inbound_form(phone="+15550008001"))
    received = desk.receive_message(session, inbound, at)  # type: ignore[arg-type]
    session.commit()
    assert received.card is not None and received.menu_deadline is not None
    return received.card


def test_the_sweep_gives_an_unanswered_menu_to_the_default_pipeline(
    env: Config, session: Session
) -> None:
    now = utcnow()
    card = asked(session, now - timedelta(minutes=3))

    counts = jobs.reconcile(env, now)

    assert counts["fired"] == 1
    session.expire_all()
    assert (card.pipeline.key, card.stage.key, card.menu_deadline_at) == ("support", "new", None)
    ack = session.scalars(select(Message).where(Message.direction == "out")).all()[-1]
    assert "You are 1st in line; a person from our Support team" in ack.body
    assert jobs.reconcile(env, now + timedelta(seconds=5))["fired"] == 0  # once


def test_a_customer_who_sent_stop_at_the_menu_is_not_told_the_wait_when_it_times_out(
    env: Config, session: Session
) -> None:
    now = utcnow()
    card = asked(session, now - timedelta(minutes=3))
    stop = whatsapp.parse_inbound(inbound_form(phone="+15550008001", body="STOP"))
    desk.receive_message(session, stop, now - timedelta(minutes=2))
    session.commit()

    assert jobs.reconcile(env, now)["fired"] == 1

    session.expire_all()
    assert (card.pipeline.key, card.stage.key, card.menu_deadline_at) == ("support", "new", None)
    last = session.scalars(select(Message).where(Message.direction == "out")).all()[-1]
    assert last.body.startswith("You won't get any more messages from us")  # STOP's answer


def test_the_sweep_puts_a_lost_menu_timer_back_and_an_early_job_waits(
    env: Config, session: Session, redis: Redis
) -> None:
    now = utcnow()
    card = asked(session, now)
    registry = ScheduledJobRegistry(queue=Queue(clock_queue_name(env.queue_name), connection=redis))

    assert jobs.reconcile(env, now)["rearmed"] == 1
    assert registry.get_scheduled_time(f"menu-{card.id}") == never_before(
        now + timedelta(minutes=2)
    )
    assert jobs.menu_timeout(card.id) == "rescheduled"  # two minutes early: never early
    session.expire_all()
    assert card.menu_deadline_at is not None


TEMPLATE = "HX" + "ab" * 16


# The template's variable is the name, and Twilio refuses an empty one: a customer without a
# profile name gets the question as text.
@pytest.mark.parametrize(
    ("name", "sent_as"), [("Ann", (TEMPLATE, {"1": "Ann"})), ("", (None, None))]
)
def test_with_a_quick_reply_template_the_menu_goes_as_that_template(
    env: Config, session: Session, name: str, sent_as: tuple[object, object]
) -> None:
    pipeline_store.load(session, pipelines.parse(MENU_YAML + f"  template: {TEMPLATE}\n"), utcnow())
    inbound = whatsapp.parse_inbound(inbound_form(phone="+15550008002", name=name))

    received = desk.receive_message(session, inbound, utcnow())

    [ask] = received.outbound
    assert (ask.content_sid, ask.content_variables) == sent_as
    assert ask.body.endswith("1. Sales\n2. Support")  # what the history shows


def test_status_while_choosing_a_team_asks_the_question_again(
    env: Config, session: Session
) -> None:
    now = utcnow()
    asked(session, now)
    status = whatsapp.parse_inbound(inbound_form(phone="+15550008001", body="STATUS"))

    received = desk.receive_message(session, status, now)

    [answer] = received.outbound
    assert "Which team can help you? Reply with a number:" in answer.body
    assert answer.body.endswith("1. Sales\n2. Support")
    assert "in line" not in answer.body


def test_a_card_moved_while_its_customer_chooses_stays_where_it_was_put(
    env: Config, session: Session
) -> None:
    now = utcnow()
    card = asked(session, now - timedelta(minutes=3))
    moved = desk.move_card(session, card.id, "new", now - timedelta(minutes=2, seconds=30))
    session.commit()

    counts = jobs.reconcile(env, now)  # the menu's deadline has passed

    assert counts["fired"] == 0
    session.expire_all()
    assert (card.stage.key, card.menu_deadline_at) == ("new", None)
    visits = session.scalars(select(StageVisit).where(StageVisit.card_id == card.id)).all()
    assert [(v.id, v.entered_at, v.left_at) for v in visits] == [
        (moved.id, now - timedelta(minutes=2, seconds=30), None)
    ]
    assert session.scalars(select(Message.body).where(Message.direction == "out")).all() == [
        "Hi Maria! Thanks for your message, it has reached us. Which team can help you? "
        "Reply with a number:\n1. Sales\n2. Support"
    ]


def test_a_menu_timed_out_while_redis_is_down_is_kept_and_its_answer_sent_later(
    env: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    card = asked(session, now - timedelta(minutes=3))
    monkeypatch.setenv("REDIS_URL", CLOSED_REDIS)  # the job's Redis blinks as it runs

    assert jobs.menu_timeout(card.id) == "default pipeline"  # not an error RQ would retry

    session.expire_all()
    assert (card.pipeline.key, card.menu_deadline_at) == ("support", None)
    ack = session.scalars(select(Message).where(Message.direction == "out")).all()[-1]
    later = utcnow() + timedelta(seconds=jobs.STALE_SEND_SECONDS + 1)
    jobs.reconcile(env, later)  # Redis answers: the sweep hands the answer on
    assert "Support team" in ack.body
    assert f"send-{ack.id}" in Queue(env.queue_name, connection=redis).get_job_ids()
