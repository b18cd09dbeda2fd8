"""SLA events and sends as the worker runs them: real database, real Redis, jobs in-process."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from sqlalchemy import create_engine, make_url, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from whatsdesk import desk, escalation, jobs, sla, whatsapp
from whatsdesk.alarms import (
    MAX_SEND_ATTEMPTS,
    TICK_AHEAD_SECONDS,
    Alarms,
    clock_queue_name,
    never_before,
    pulse,
    second_of,
    send_job_id,
    tick_job_id,
)
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import EarlyStatus, Message, SlaEvent, StageVisit, User

from conftest import (
    STAFF,
    commit_once_it_waits,
    inbound_form,
    query_plan,
    seed,
    signed_post,
    statements,
)
from twilio_server import TwilioServer

# The seeded first stage "New": SLA 2 min, warning 1 min before; alerts go to Ana and Bruno.
T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
WARNING_AT = T0 + timedelta(minutes=1)
BREACH_AT = T0 + timedelta(minutes=2)
CUSTOMER = "+5511999990000"
ADDRESS = {email.split("@")[0]: f"whatsapp:{phone}" for _, email, _, phone in STAFF}
SUPERVISORS = sorted([ADDRESS["sofia"], ADDRESS["otto"]])
# Nothing listens on port 1: connections are refused at once.
CLOSED_TWILIO_URL = "http://127.0.0.1:1"


# --- helpers ------------------------------------------------------------------------------------


def open_card(
    session: Session, at: datetime = T0, name: str = "Maria", phone: str = CUSTOMER
) -> desk.Received:
    """A customer's first message opens a card in the first stage; committed."""
    inbound = whatsapp.parse_inbound(inbound_form(phone=phone, name=name))
    received = desk.receive_message(session, inbound, at)
    session.commit()
    assert received.new_visit is not None
    return received


def sla_events(config: Config) -> list[SlaEvent]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(SlaEvent).order_by(SlaEvent.id)))


def alerts(config: Config) -> list[Message]:
    """Outbound messages that belong to an SLA event."""
    with session_factory(config.database_url)() as s:
        return list(
            s.scalars(select(Message).where(Message.sla_event_id.is_not(None)).order_by(Message.id))
        )


def message(config: Config, message_id: int) -> Message:
    with session_factory(config.database_url)() as s:
        found = s.get(Message, message_id)
        assert found is not None
        return found


def queue_of(config: Config, redis: Redis) -> Queue:
    return Queue(config.queue_name, connection=redis)


def queued_ids(config: Config, redis: Redis) -> list[str]:
    return queue_of(config, redis).job_ids


def scheduled(config: Config, redis: Redis) -> dict[str, datetime]:
    """Job id → the instant RQ's scheduler will enqueue it (timers are on the clock queue)."""
    found = {}
    for name in (config.queue_name, clock_queue_name(config.queue_name)):
        registry = ScheduledJobRegistry(queue=Queue(name, connection=redis))
        found |= {job_id: registry.get_scheduled_time(job_id) for job_id in registry.get_job_ids()}
    return found


def whole_second(instant: datetime) -> datetime:
    """RQ keeps scheduled times in whole seconds."""
    return instant.replace(microsecond=0)


def ticks(*instants: datetime) -> dict[str, datetime]:
    """The clock jobs these instants need: one per second, woken a second before it."""
    return {
        tick_job_id(second_of(i)): whole_second(i) - timedelta(seconds=TICK_AHEAD_SECONDS)
        for i in instants
    }


def lose_redis_data(redis: Redis) -> None:
    """Redis restarted without persistence (the run's claim on its database lives elsewhere)."""
    redis.flushdb()


def set_user(session: Session, email: str, **values: object) -> User:
    """Change a seeded staff member (not committed)."""
    user = session.scalars(select(User).where(User.email == email)).one()
    for name, value in values.items():
        setattr(user, name, value)
    return user


def early_statuses(config: Config) -> list[EarlyStatus]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(EarlyStatus).order_by(EarlyStatus.id)))


def outbound_since(session: Session, at: datetime, status: str, sid: str | None = None) -> Message:
    """An outbound message in `status` since `at` (not tied to a card); committed."""
    out = desk.queue_outbound(
        session, to=ADDRESS["ana"], body="Hi", now=at, dedupe_key="test-" + uuid.uuid4().hex
    )
    out.status, out.sid = status, sid
    session.commit()
    return out


def alert_jobs_for(messages: list[Message]) -> set[str]:
    """The jobs that deliver these staff alerts: one per person (see deliver_alerts)."""
    return {f"alerts-{m.user_id}" for m in messages}


# --- who is told what ---------------------------------------------------------------------------


def test_warning_goes_to_each_member_of_the_stage_alert_list(
    seeded: Config, session: Session
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None

    escalation.fire(session, visit.id, "warning", WARNING_AT)
    session.commit()

    [event] = sla_events(seeded)
    assert (event.visit_id, event.kind) == (visit.id, "warning")
    assert event.due_at == WARNING_AT and event.fired_at == WARNING_AT
    sent = alerts(seeded)
    assert sorted(m.to_address for m in sent) == sorted([ADDRESS["ana"], ADDRESS["bruno"]])
    for m in sent:
        assert (m.direction, m.status, m.sla_event_id) == ("out", "pending", event.id)
        assert "SLA warning" in m.body
        assert f"Maria ({CUSTOMER})" in m.body
        assert "Support › New" in m.body
        assert "waited 1m 00s" in m.body
        assert "deadline is in 1m 00s" in m.body


def test_warning_goes_only_to_the_card_owner_when_there_is_one(
    seeded: Config, session: Session
) -> None:
    received = open_card(session)
    assert received.card is not None and received.new_visit is not None
    bruno = session.scalars(select(User).where(User.email == "bruno@example.com")).one()
    received.card.owner = bruno
    session.commit()

    escalation.fire(session, received.new_visit.id, "warning", WARNING_AT)
    session.commit()

    [event] = sla_events(seeded)
    [alert] = alerts(seeded)
    assert alert.to_address == ADDRESS["bruno"]
    assert alert.user_id == bruno.id and alert.sla_event_id == event.id
    assert "Maria" in alert.body


def test_breach_goes_to_every_supervisor_naming_customer_stage_and_wait(
    seeded: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None

    assert jobs.fire_and_send(seeded, visit.id, "breach", BREACH_AT + timedelta(seconds=5))

    [event] = sla_events(seeded)
    assert (event.kind, event.due_at) == ("breach", BREACH_AT)
    sent = alerts(seeded)
    assert sorted(m.to_address for m in sent) == sorted([ADDRESS["sofia"], ADDRESS["otto"]])
    for m in sent:
        assert "SLA breached" in m.body
        assert f"Maria ({CUSTOMER})" in m.body
        assert "Support › New" in m.body
        assert "waited 2m 05s" in m.body
    assert set(queued_ids(seeded, redis)) == alert_jobs_for(sent)


@pytest.mark.parametrize("alert_list", ["empty", "nobody reachable"])
def test_warning_nobody_on_the_alert_list_can_get_goes_to_the_supervisors(
    seeded: Config, session: Session, alert_list: str
) -> None:
    visit = open_card(session).new_visit  # unowned
    assert visit is not None
    if alert_list == "empty":
        visit.stage.alert_users.clear()
    else:
        set_user(session, "ana@example.com", active=False)
        set_user(session, "bruno@example.com", whatsapp=None)
    session.commit()

    escalation.fire(session, visit.id, "warning", WARNING_AT)
    session.commit()

    [event] = sla_events(seeded)
    assert event.kind == "warning"
    sent = alerts(seeded)
    assert sorted(m.to_address for m in sent) == SUPERVISORS
    assert all("SLA warning" in m.body and m.sla_event_id == event.id for m in sent)


def test_warning_to_an_owner_without_whatsapp_goes_to_the_reachable_alert_list(
    seeded: Config, session: Session
) -> None:
    received = open_card(session)
    assert received.card is not None and received.new_visit is not None
    received.card.owner = set_user(session, "bruno@example.com", whatsapp=None)
    session.commit()

    escalation.fire(session, received.new_visit.id, "warning", WARNING_AT)
    session.commit()

    [alert] = alerts(seeded)  # Bruno is on the alert list too, but cannot be reached
    assert alert.to_address == ADDRESS["ana"]
    assert "SLA warning" in alert.body


def test_breach_with_no_reachable_supervisor_is_recorded_without_messages(
    seeded: Config, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None
    set_user(session, "sofia@example.com", active=False)
    set_user(session, "otto@example.com", whatsapp=None)
    session.commit()

    with caplog.at_level(logging.WARNING, logger="whatsdesk.escalation"):
        sent = escalation.fire(session, visit.id, "breach", BREACH_AT)
        session.commit()

    assert sent is not None and sent.told == []
    [event] = sla_events(seeded)
    assert (event.visit_id, event.kind) == (visit.id, "breach")
    assert alerts(seeded) == []  # the agents, reachable as they are, are not told instead
    assert f"breach of visit {visit.id} reaches nobody" in caplog.text


# --- once, and only when due --------------------------------------------------------------------


def test_firing_the_same_event_twice_records_and_queues_it_once(
    seeded: Config, session: Session
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None

    first = escalation.fire(session, visit.id, "warning", WARNING_AT)
    session.commit()
    again = escalation.fire(session, visit.id, "warning", WARNING_AT + timedelta(seconds=3))
    session.commit()

    assert first is not None and len(first.told) == 2
    assert again is None
    assert len(sla_events(seeded)) == 1
    assert len(alerts(seeded)) == 2


def test_fire_and_send_twice_records_sends_and_enqueues_once(
    seeded: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None

    assert jobs.fire_and_send(seeded, visit.id, "breach", BREACH_AT) is True
    assert jobs.fire_and_send(seeded, visit.id, "breach", BREACH_AT) is False

    assert len(sla_events(seeded)) == 1
    sent = alerts(seeded)
    assert len(sent) == 2
    assert sorted(queued_ids(seeded, redis)) == sorted(alert_jobs_for(sent))


def test_firing_before_the_instant_does_nothing(
    seeded: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None

    just_before = WARNING_AT - timedelta(microseconds=1)
    assert jobs.fire_and_send(seeded, visit.id, "warning", just_before) is False
    assert jobs.fire_and_send(seeded, visit.id, "breach", BREACH_AT - timedelta(seconds=1)) is False

    assert sla_events(seeded) == []
    assert alerts(seeded) == []
    assert queued_ids(seeded, redis) == []


def test_timers_of_a_stage_the_card_has_left_do_nothing(
    seeded: Config, session: Session, redis: Redis
) -> None:
    received = open_card(session)
    assert received.card is not None and received.new_visit is not None
    old_visit_id = received.new_visit.id
    desk.move_card(session, received.card.id, "open", T0 + timedelta(seconds=30))
    session.commit()

    assert jobs.fire_and_send(seeded, old_visit_id, "warning", WARNING_AT) is False
    assert jobs.fire_and_send(seeded, old_visit_id, "breach", BREACH_AT) is False

    assert sla_events(seeded) == []
    assert alerts(seeded) == []
    assert queued_ids(seeded, redis) == []


def test_warning_not_fired_by_the_deadline_is_never_fired(
    env: Config, seeded: Config, session: Session
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None

    assert escalation.fire(session, visit.id, "warning", BREACH_AT) is None
    assert escalation.fire(session, visit.id, "warning", BREACH_AT + timedelta(hours=1)) is None
    session.commit()
    # The clock job of the warning's second, woken late: nothing is owed any more.
    assert jobs.fire_second(second_of(visit.warning_at)) == "fired 0"

    assert sla_events(env) == []
    assert alerts(env) == []


@pytest.mark.usefixtures("without_sqlite_write_lock")
def test_two_workers_firing_at_once_record_one_event_and_one_set_of_alerts(
    seeded: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None
    if session.get_bind().dialect.name == "sqlite":
        # No row locks: make both workers see "not recorded yet" before either writes, the
        # worst interleaving; the unique (visit, kind) constraint must still make it once.
        # (On PostgreSQL the card's row lock lets the second read only after the first
        # committed, so that interleaving cannot happen there.)
        both_read_what_is_recorded(monkeypatch)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(jobs.fire_and_send, seeded, visit.id, "warning", WARNING_AT)
            for _ in range(2)
        ]
        results = sorted(f.result(timeout=30) for f in futures)

    assert results == [False, True]
    [event] = sla_events(seeded)
    assert event.kind == "warning"
    sent = alerts(seeded)
    assert sorted(m.to_address for m in sent) == sorted([ADDRESS["ana"], ADDRESS["bruno"]])
    assert {m.sla_event_id for m in sent} == {event.id}
    assert sorted(queued_ids(seeded, redis)) == sorted(alert_jobs_for(sent))


def both_read_what_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two firings each read what is recorded, then wait for the other to have read too (the
    first read of each; any later one, such as a retry, goes on alone)."""
    both_checked = threading.Barrier(2)
    real_recorded_of = escalation.recorded_of
    reads = iter(range(2))

    def recorded_of_then_wait(s: Session, visits: Any) -> dict[int, set[str]]:
        recorded = real_recorded_of(s, visits)
        if next(reads, None) is not None:
            both_checked.wait(timeout=10)
        return recorded

    monkeypatch.setattr(escalation, "recorded_of", recorded_of_then_wait)


@pytest.mark.usefixtures("without_sqlite_write_lock")
def test_two_workers_firing_the_same_batch_at_once_record_each_event_and_alert_once(
    seeded: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock job and the sweep can take the same second's events together: on PostgreSQL
    the cards' locks serialise them; on SQLite without its write lock the unique constraints
    fail the second batch, which then tries each event alone and finds it recorded."""
    visits = [open_card(session, phone=f"+55119999800{n:02d}").new_visit for n in range(3)]
    owed = [(v.id, "warning") for v in visits if v is not None]
    if session.get_bind().dialect.name == "sqlite":
        both_read_what_is_recorded(monkeypatch)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(jobs.fire_events, seeded, owed, lambda: WARNING_AT) for _ in range(2)
        ]
        firings = sorted((f.result(timeout=30) for f in futures), key=lambda f: f.fired)

    assert firings == [jobs.Firing(fired=0, failed=0), jobs.Firing(fired=3, failed=0)]
    events = sla_events(seeded)
    assert sorted((e.visit_id, e.kind) for e in events) == sorted(owed)
    sent = alerts(seeded)
    assert len(sent) == 2 * 3  # ana and bruno, once per event
    assert {(m.sla_event_id, m.to_address) for m in sent} == {
        (e.id, a) for e in events for a in (ADDRESS["ana"], ADDRESS["bruno"])
    }
    assert sorted(queued_ids(seeded, redis)) == sorted(alert_jobs_for(sent))


# --- the timer job ------------------------------------------------------------------------------


@pytest.fixture
def short_sla(env: Config) -> Config:
    """The first stage with an SLA of 2 s and a warning at 1 s; jobs read the environment."""
    seed(env.database_url, sla="2s", warning="1s")
    return env


def test_a_job_for_an_instant_is_scheduled_for_the_whole_second_after_it() -> None:
    """RQ's scheduler drops the fraction and wakes a job once that second has begun."""
    on_the_second = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)

    assert never_before(on_the_second) == on_the_second
    assert never_before(on_the_second + timedelta(microseconds=1)) == on_the_second + timedelta(
        seconds=1
    )
    assert never_before(on_the_second - timedelta(milliseconds=400)) == on_the_second


def test_clock_job_woken_before_its_second_waits_for_the_instant_then_fires(
    short_sla: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session, at=utcnow()).new_visit
    assert visit is not None and visit.warning_at is not None
    assert visit.warning_at > utcnow()  # about one second early, as the job is woken

    assert jobs.fire_second(second_of(visit.warning_at)) == "fired 1"

    [event] = sla_events(short_sla)
    assert event.kind == "warning" and event.due_at == visit.warning_at
    assert event.due_at <= event.fired_at < event.due_at + timedelta(seconds=1)
    sent = alerts(short_sla)
    assert sorted(m.to_address for m in sent) == sorted([ADDRESS["ana"], ADDRESS["bruno"]])
    assert sorted(queued_ids(short_sla, redis)) == sorted(alert_jobs_for(sent))


@pytest.mark.parametrize("again", ["", "-again"])
def test_clock_job_woken_far_too_early_reschedules_itself_for_its_second_under_another_id(
    again: str, env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    """The id a job runs under is marked finished when it returns: a job putting itself
    back takes the other of its two ids."""
    visit = open_card(session, at=utcnow()).new_visit  # breach two minutes from now
    assert visit is not None and visit.deadline_at is not None
    second = second_of(visit.deadline_at)
    [(job_id, at)] = ticks(visit.deadline_at).items()
    lose_redis_data(redis)
    clock = Queue(clock_queue_name(env.queue_name), connection=redis)
    clock.enqueue("whatsdesk.jobs.fire_second", second, job_id=job_id + again)  # woken now

    SimpleWorker([clock], connection=redis).work(burst=True)

    assert clock.fetch_job(job_id + again).return_value() == "rescheduled"  # type: ignore[union-attr]
    assert sla_events(env) == []
    assert alerts(env) == []
    other = job_id if again else f"{job_id}-again"
    assert scheduled(env, redis) == {other: at}


def test_one_clock_job_fires_every_event_of_its_second_in_order(
    short_sla: Config, session: Session, redis: Redis
) -> None:
    """Deadlines sharing a second share a job, which fires each at its own instant."""
    now = utcnow()
    visits = [open_card(session, at=now, phone=f"+55119999900{n:02d}").new_visit for n in range(3)]
    assert all(v is not None and v.deadline_at is not None for v in visits)
    assert len(ticks(*[v.deadline_at for v in visits if v and v.deadline_at])) == 1

    assert jobs.fire_second(second_of(now + timedelta(seconds=1))) == "fired 3"  # warnings
    assert jobs.fire_second(second_of(now + timedelta(seconds=2))) == "fired 3"  # breaches

    events = sla_events(short_sla)
    assert sorted(e.kind for e in events) == ["breach"] * 3 + ["warning"] * 3
    assert [e.fired_at for e in events] == sorted(e.fired_at for e in events)
    assert all(e.due_at <= e.fired_at for e in events)  # never early
    breaches = [e for e in events if e.kind == "breach"]
    assert all(e.fired_at < e.due_at + timedelta(seconds=1) for e in breaches)


def test_a_clock_job_leaves_an_earlier_seconds_events_to_that_seconds_job(
    short_sla: Config, session: Session
) -> None:
    """Two jobs never wait on each other for the same events: the breaches' job, started
    while the warnings are still to come, fires its own second only."""
    now = utcnow()
    visit = open_card(session, at=now).new_visit
    assert visit is not None

    assert jobs.fire_second(second_of(now + timedelta(seconds=2))) == "fired 1"

    assert [e.kind for e in sla_events(short_sla)] == ["breach"]


def test_a_clock_job_fires_what_a_lost_job_left_overdue(
    short_sla: Config, session: Session
) -> None:
    """Redis lost the job of an earlier second: the next job that runs fires what it owed
    (the breach; the warning no longer counts once the deadline has passed)."""
    now = utcnow()
    visit = open_card(session, at=now - timedelta(seconds=10)).new_visit
    assert visit is not None and visit.deadline_at is not None

    assert jobs.fire_second(second_of(now)) == "fired 1"

    [event] = sla_events(short_sla)
    assert (event.kind, event.due_at) == ("breach", visit.deadline_at)


def test_events_fired_when_redis_fails_after_the_commit_stay_recorded_and_their_alerts_wait(
    seeded: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep finds alerts whose job never reached Redis (see _waiting_outbound)."""
    visit = open_card(session).new_visit
    assert visit is not None

    def redis_gone(self: Alarms, *user_ids: int, overdue: bool = False) -> None:
        raise RedisConnectionError("connection reset")

    monkeypatch.setattr(Alarms, "enqueue_alerts", redis_gone)

    assert jobs.fire_events(seeded, [(visit.id, "warning")], lambda: WARNING_AT).fired == 1
    [event] = sla_events(seeded)
    assert event.kind == "warning"
    assert {m.status for m in alerts(seeded)} == {"pending"}


def test_opening_a_card_by_webhook_schedules_its_timers(
    seeded: Config, client: FlaskClient, redis: Redis
) -> None:
    answer = signed_post(client, seeded, "/twilio/whatsapp", inbound_form(phone=CUSTOMER))
    assert answer.status_code == 200

    with session_factory(seeded.database_url)() as s:
        visit = s.scalars(select(StageVisit)).one()
    assert visit.warning_at is not None and visit.deadline_at is not None
    assert visit.deadline_at - visit.entered_at == timedelta(minutes=2)
    assert scheduled(seeded, redis) == ticks(visit.warning_at, visit.deadline_at)
    job = Job.fetch(tick_job_id(second_of(visit.deadline_at)), connection=redis)
    assert (job.func_name, job.args) == (
        "whatsdesk.jobs.fire_second",
        (second_of(visit.deadline_at),),
    )


# --- reconciling after Redis lost its data ------------------------------------------------------


def test_reconcile_rearms_future_timers_redis_lost(
    seeded: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None
    Alarms(seeded.redis_url, seeded.queue_name).schedule_timers(
        visit.id, sla.Timers(visit.warning_at, visit.deadline_at)
    )
    lose_redis_data(redis)
    assert scheduled(seeded, redis) == {}

    counts = jobs.reconcile(seeded, T0 + timedelta(seconds=10))

    assert counts["rearmed"] == 2 and counts["fired"] == 0
    assert scheduled(seeded, redis) == ticks(WARNING_AT, BREACH_AT)
    assert jobs.reconcile(seeded, T0 + timedelta(seconds=11))["rearmed"] == 0
    assert sla_events(seeded) == []


def test_reconcile_fires_overdue_timers_exactly_once(
    seeded: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None
    lose_redis_data(redis)

    first = jobs.reconcile(seeded, WARNING_AT + timedelta(seconds=30))
    # The breach, still to come, is back on the clock from the run that fired the warning.
    assert scheduled(seeded, redis) == ticks(BREACH_AT)
    second = jobs.reconcile(seeded, WARNING_AT + timedelta(seconds=40))

    assert (first["fired"], second["fired"]) == (1, 0)
    [event] = sla_events(seeded)
    assert (event.kind, event.due_at) == ("warning", WARNING_AT)
    assert event.fired_at == WARNING_AT + timedelta(seconds=30)
    sent = alerts(seeded)
    assert sorted(m.to_address for m in sent) == sorted([ADDRESS["ana"], ADDRESS["bruno"]])
    assert alert_jobs_for(sent) <= set(queued_ids(seeded, redis))
    # The breach, still to come, is back on the clock.
    assert scheduled(seeded, redis) == ticks(BREACH_AT)


def test_reconcile_reenqueues_pending_sends_whose_job_is_gone(
    seeded: Config, session: Session, redis: Redis
) -> None:
    ack = open_card(session).outbound[0]  # pending since T0, its send job never reached Redis
    assert message(seeded, ack.id).status == "pending"

    stale_after = jobs.STALE_SEND_SECONDS
    too_soon = jobs.reconcile(seeded, T0 + timedelta(seconds=stale_after - 1))
    assert too_soon["resent"] == 0
    assert f"send-{ack.id}" not in queued_ids(seeded, redis)

    stale = jobs.reconcile(seeded, T0 + timedelta(seconds=stale_after + 1))
    assert stale["resent"] == 1
    assert queued_ids(seeded, redis).count(f"send-{ack.id}") == 1

    again = jobs.reconcile(seeded, T0 + timedelta(seconds=stale_after + 15))
    assert again["resent"] == 0  # its job is waiting in the queue
    assert queued_ids(seeded, redis).count(f"send-{ack.id}") == 1


def test_the_sweep_resends_the_sends_whose_job_is_lost_and_leaves_those_whose_job_lives(
    seeded: Config, session: Session, redis: Redis
) -> None:
    """A job waiting in its queue, or running in a worker that is alive, is left alone; one
    lost with Redis, run by a worker that died, or taken from the queue by a worker killed
    before it started, is queued again."""
    acks = [open_card(session, phone=f"+551199999{n:04d}").outbound[0].id for n in range(5)]
    waiting, running, died, taken, gone = acks
    alarms = Alarms(seeded.redis_url, seeded.queue_name)
    queue_key = f"rq:queue:{seeded.queue_name}"
    for message_id in (waiting, running, died, taken):
        alarms.enqueue_send(message_id)
    for message_id, worker in ((running, "worker-alive"), (died, "worker-died")):
        redis.lrem(queue_key, 0, send_job_id(message_id))
        redis.hset(
            Job.key_for(send_job_id(message_id)),
            mapping={"status": JobStatus.STARTED.value, "worker_name": worker},
        )
    pulse(redis, "worker-alive")
    pulse(redis, "worker-died")
    redis.delete("whatsdesk:alive:worker-died")  # its pulse stopped
    redis.lrem(queue_key, 0, send_job_id(taken))  # taken, never started

    counts = jobs.reconcile(seeded, T0 + timedelta(seconds=jobs.STALE_SEND_SECONDS + 1))

    assert counts["resent"] == 3
    assert sorted(queued_ids(seeded, redis)) == sorted(
        send_job_id(m) for m in (waiting, died, taken, gone)
    )


def test_a_send_job_left_as_a_partial_record_is_resent_and_the_sweep_goes_on(
    seeded: Config, session: Session, redis: Redis
) -> None:
    """Redis losing data while a worker wrote to a job can leave a record RQ refuses to
    read: that job is as good as lost, and the sweep does not stop at it."""
    ack = open_card(session).outbound[0].id
    redis.hset(Job.key_for(send_job_id(ack)), mapping={"status": JobStatus.STARTED.value})

    counts = jobs.reconcile(seeded, T0 + timedelta(seconds=jobs.STALE_SEND_SECONDS + 1))

    assert counts["resent"] == 1
    assert queued_ids(seeded, redis) == [send_job_id(ack)]


def test_the_sweep_leaves_a_second_whose_clock_job_put_itself_back_under_its_other_id(
    seeded: Config, session: Session, redis: Redis
) -> None:
    """A clock job woken early comes back as `tick-S-again`: that second is armed, and the
    sweep adds no second job for it (two would fight over the same cards)."""
    visit = open_card(session).new_visit
    assert visit is not None
    lose_redis_data(redis)
    for instant in (WARNING_AT, BREACH_AT):
        job_id, at = next(iter(ticks(instant).items()))
        Queue(clock_queue_name(seeded.queue_name), connection=redis).enqueue_at(
            at, "whatsdesk.jobs.fire_second", second_of(instant), job_id=f"{job_id}-again"
        )

    counts = jobs.reconcile(seeded, T0 + timedelta(seconds=10))

    assert counts["rearmed"] == 0
    assert set(scheduled(seeded, redis)) == {f"{j}-again" for j in ticks(WARNING_AT, BREACH_AT)}


def test_a_database_restart_in_the_middle_of_a_sweep_still_lets_it_resend_a_lost_send(
    seeded: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads in one transaction, fires, re-arms and resends, then settles kept
    callbacks in another: its connection ended in between (PostgreSQL restarted) is
    replaced, not the sweep's end."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("a SQLite connection is a file: nothing can end it from outside")
    ack = open_card(session).outbound[0]  # pending, its send job never reached Redis
    session.add(EarlyStatus(sid="SM-unknown", status="delivered", error_code=None, received_at=T0))
    session.commit()  # a kept callback: the sweep settles it in a transaction of its own
    seconds_to_arm, armed_seconds = jobs._seconds_to_arm, Alarms.armed_seconds
    sweeps: list[int] = []  # the server process of the sweep's connection

    def noting_the_connection(session: Session, *args: Any) -> set[int]:
        sweeps.append(session.connection().connection.dbapi_connection.info.backend_pid)  # type: ignore[union-attr]
        return seconds_to_arm(session, *args)

    def database_restarts_meanwhile(self: Alarms, horizon: datetime) -> set[int]:
        with create_engine(seeded.database_url, poolclass=NullPool).connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": sweeps[0]})
        return armed_seconds(self, horizon)

    monkeypatch.setattr(jobs, "_seconds_to_arm", noting_the_connection)
    monkeypatch.setattr(Alarms, "armed_seconds", database_restarts_meanwhile)
    counts = jobs.reconcile(seeded, T0 + timedelta(seconds=jobs.STALE_SEND_SECONDS + 1))

    assert counts["resent"] == 1
    assert f"send-{ack.id}" in queued_ids(seeded, redis)


def test_sweep_after_the_deadline_with_nothing_recorded_sends_only_the_breach(
    seeded: Config, session: Session, redis: Redis
) -> None:
    visit = open_card(session).new_visit
    assert visit is not None
    lose_redis_data(redis)  # both timers lost; the sweep runs only after the deadline

    counts = jobs.reconcile(seeded, BREACH_AT + timedelta(seconds=10))
    later = jobs.reconcile(seeded, BREACH_AT + timedelta(minutes=5))

    assert (counts["fired"], later["fired"]) == (1, 0)
    [event] = sla_events(seeded)
    assert (event.kind, event.due_at) == ("breach", BREACH_AT)
    sent = alerts(seeded)
    assert sorted(m.to_address for m in sent) == SUPERVISORS
    assert all("SLA breached" in m.body and "warning" not in m.body for m in sent)
    assert scheduled(seeded, redis) == {}  # nothing left to arm


def test_events_the_sweep_fires_record_when_each_was_fired_not_when_the_sweep_began(
    env: Config, seeded: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep firing many events takes a while: each records the time it was fired, so
    the lateness that reports and /metrics show is what the customer really waited."""
    sweep_began = utcnow()
    open_card(session, at=sweep_began - timedelta(minutes=5))  # its breach is overdue
    seconds = itertools.count()  # a clock that moves on a second at each reading
    monkeypatch.setattr(jobs, "utcnow", lambda: sweep_began + timedelta(seconds=next(seconds)))

    assert jobs.sweep()["fired"] == 1

    [event] = sla_events(seeded)
    assert event.kind == "breach"
    assert event.fired_at > sweep_began


def test_reconcile_ignores_overdue_visits_of_resolved_cards(
    seeded: Config, session: Session, redis: Redis
) -> None:
    received = open_card(session)
    assert received.card is not None
    received.card.status = "resolved"
    received.card.resolved_at = T0 + timedelta(seconds=30)
    session.commit()
    lose_redis_data(redis)

    before = jobs.reconcile(seeded, T0 + timedelta(seconds=40))
    after = jobs.reconcile(seeded, BREACH_AT + timedelta(minutes=1))

    assert (before["rearmed"], before["fired"]) == (0, 0)
    assert (after["rearmed"], after["fired"]) == (0, 0)
    assert sla_events(seeded) == []
    assert alerts(seeded) == []
    assert scheduled(seeded, redis) == {}


def test_reconcile_does_not_rearm_timers_already_in_redis(
    seeded: Config, client: FlaskClient, redis: Redis
) -> None:
    answer = signed_post(client, seeded, "/twilio/whatsapp", inbound_form(phone=CUSTOMER))
    assert answer.status_code == 200
    armed = scheduled(seeded, redis)
    assert len(armed) == 2

    first = jobs.reconcile(seeded, utcnow())
    second = jobs.reconcile(seeded, utcnow())
    assert (first["rearmed"], second["rearmed"]) == (0, 0)
    assert scheduled(seeded, redis) == armed

    lose_redis_data(redis)
    assert jobs.reconcile(seeded, utcnow())["rearmed"] == 2
    assert scheduled(seeded, redis) == armed
    assert jobs.reconcile(seeded, utcnow())["rearmed"] == 0


def test_reconcile_fails_a_send_interrupted_over_five_minutes_ago_and_does_not_resend_it(
    config: Config, session: Session, redis: Redis
) -> None:
    now = T0 + timedelta(hours=1)
    stuck = outbound_since(session, now - timedelta(minutes=5, seconds=1), "sending")
    recent = outbound_since(session, now - timedelta(minutes=4), "sending")

    counts = jobs.reconcile(config, now)

    assert (counts["interrupted"], counts["resent"]) == (1, 0)
    failed = message(config, stuck.id)
    assert failed.status == "failed"
    assert failed.error_message == "interrupted while sending; not retried to avoid a duplicate"
    assert message(config, recent.id).status == "sending"  # may still be talking to Twilio
    assert queued_ids(config, redis) == []
    assert jobs.reconcile(config, now + timedelta(seconds=30))["resent"] == 0
    assert message(config, stuck.id).status == "failed"


def test_reconcile_applies_a_status_callback_the_send_job_missed(
    config: Config, session: Session
) -> None:
    """The callback was stored as early while the send job, not seeing it yet, saved the sid."""
    sid = "SM" + uuid.uuid4().hex
    session.add(EarlyStatus(sid=sid, status="failed", error_code="63016", received_at=T0))
    sent = outbound_since(session, T0, "queued", sid=sid)

    counts = jobs.reconcile(config, T0 + timedelta(minutes=1))

    assert counts["late_statuses"] == 1
    row = message(config, sent.id)
    assert (row.status, row.error_code) == ("failed", "63016")
    assert early_statuses(config) == []


def test_reconcile_forgets_status_callbacks_that_matched_nothing_for_a_day(
    config: Config, session: Session
) -> None:
    now = T0 + timedelta(days=3)
    for age in (timedelta(hours=24, seconds=1), timedelta(hours=23)):
        sid = "SM" + uuid.uuid4().hex
        session.add(
            EarlyStatus(sid=sid, status="delivered", error_code=None, received_at=now - age)
        )
    session.commit()

    counts = jobs.reconcile(config, now)

    assert counts["late_statuses"] == 0
    [kept] = early_statuses(config)
    assert kept.received_at == now - timedelta(hours=23)


# --- sending ------------------------------------------------------------------------------------


def test_simulator_send_stores_a_sid_and_delivered_once(env: Config, session: Session) -> None:
    seed(env.database_url)
    ack = open_card(session).outbound[0]

    assert jobs.send_message(ack.id) == "sent"
    sent = message(env, ack.id)
    assert sent.sid is not None and len(sent.sid) == 34 and sent.sid.startswith("SM")
    assert (sent.status, sent.attempts) == ("delivered", 1)

    assert jobs.send_message(ack.id) == "already handled"
    again = message(env, ack.id)
    assert (again.sid, again.status, again.attempts) == (sent.sid, "delivered", 1)


@pytest.fixture
def twilio(env: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[TwilioServer]:
    """A local Twilio the send job talks to (the environment names it)."""
    seed(env.database_url)
    with TwilioServer() as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        yield server


def test_twilio_send_stores_twilios_sid_and_status(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    ack = open_card(session).outbound[0]

    assert jobs.send_message(ack.id) == "sent"

    [form] = twilio.messages
    assert form["To"] == f"whatsapp:{CUSTOMER}"
    assert form["From"] == "whatsapp:+14155238886"
    assert form["Body"] == ack.body and "Maria" in form["Body"]
    sent = message(env, ack.id)
    assert (sent.sid, sent.status, sent.attempts) == (twilio.sids[0], "queued", 1)
    assert jobs.send_message(ack.id) == "already handled"
    assert len(twilio.requests) == 1


def test_send_records_the_business_number_it_sent_from(
    twilio: TwilioServer, env: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_WHATSAPP_FROM", "whatsapp:+15557654321")
    ack = open_card(session).outbound[0]
    assert ack.from_address == ""

    assert jobs.send_message(ack.id) == "sent"

    [form] = twilio.messages
    assert form["From"] == "whatsapp:+15557654321"
    assert message(env, ack.id).from_address == "whatsapp:+15557654321"


def test_send_keeps_the_number_a_message_was_queued_from(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    out = desk.queue_outbound(
        session,
        to=f"whatsapp:{CUSTOMER}",
        body="Hello from the second line",
        now=utcnow(),
        dedupe_key="second-line",
        from_address="whatsapp:+15550009999",
    )
    session.commit()

    assert jobs.send_message(out.id) == "sent"

    [form] = twilio.messages
    assert form["From"] == "whatsapp:+15550009999"
    assert message(env, out.id).from_address == "whatsapp:+15550009999"


@pytest.mark.parametrize(
    ("status", "code"),
    # 63018: WhatsApp's per-sender rate limit; the code alone makes it worth retrying.
    [(429, 20429), (500, 20500), (429, 63018), (400, 63018)],
)
def test_twilio_busy_marks_the_message_retrying_and_raises_for_rq(
    twilio: TwilioServer, env: Config, session: Session, status: int, code: int
) -> None:
    ack = open_card(session).outbound[0]
    twilio.fail_next(status, code)

    with pytest.raises(whatsapp.TransientSendError, match=str(status)):
        jobs.send_message(ack.id)

    retrying = message(env, ack.id)
    assert (retrying.status, retrying.attempts, retrying.sid) == ("retrying", 1, None)
    assert twilio.messages == [] and len(twilio.requests) == 1
    # The next attempt goes through.
    assert jobs.send_message(ack.id) == "sent"
    assert message(env, ack.id).sid == twilio.sids[0]


def test_twilio_unreachable_marks_the_message_retrying_and_raises_for_rq(
    twilio: TwilioServer, env: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    ack = open_card(session).outbound[0]
    monkeypatch.setenv("TWILIO_API_URL", CLOSED_TWILIO_URL)

    with pytest.raises(whatsapp.TransientSendError, match="Twilio unreachable"):
        jobs.send_message(ack.id)

    retrying = message(env, ack.id)
    assert (retrying.status, retrying.attempts, retrying.sid) == ("retrying", 1, None)
    assert "Twilio unreachable" in (retrying.error_message or "")
    # Twilio back: the retry goes through.
    monkeypatch.setenv("TWILIO_API_URL", twilio.url)
    assert jobs.send_message(ack.id) == "sent"
    assert [form["Body"] for form in twilio.messages] == [ack.body]


def test_rq_schedules_a_retry_of_a_send_twilio_was_too_busy_for(
    twilio: TwilioServer, env: Config, session: Session, redis: Redis
) -> None:
    ack = open_card(session).outbound[0]
    twilio.fail_next(429, 20429)
    alarms = Alarms(env.redis_url, env.queue_name)
    alarms.enqueue_send(ack.id)

    SimpleWorker([alarms.queue], connection=redis).work(burst=True)

    job = Job.fetch(f"send-{ack.id}", connection=redis)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.retries_left == MAX_SEND_ATTEMPTS - 2
    assert f"send-{ack.id}" in scheduled(env, redis)
    assert message(env, ack.id).status == "retrying"


def test_the_sweep_leaves_a_send_waiting_out_a_429_under_its_other_id(
    twilio: TwilioServer, env: Config, session: Session, redis: Redis
) -> None:
    """A send handed on (a template after 63016, an in-doubt send Twilio never had) runs as
    send-N-again; RQ's backoff after a 429 keeps that job: a second one would double the
    calls to a Twilio asking for fewer."""
    ack = open_card(session).outbound[0]
    twilio.fail_next(429, 20429)
    alarms = Alarms(env.redis_url, env.queue_name)
    alarms.enqueue_send(ack.id, again=True)
    SimpleWorker([alarms.queue], connection=redis).work(burst=True)
    assert list(scheduled(env, redis)) == [f"send-{ack.id}-again"]

    # Its retry was stamped just now (the clock's deadlines of T0 are long past: alerts).
    counts = jobs.reconcile(env, utcnow() + timedelta(seconds=jobs.STALE_SEND_SECONDS + 1))

    assert counts["resent"] == 0
    sends = [i for i in [*queued_ids(env, redis), *scheduled(env, redis)] if i.startswith("send")]
    assert sends == [f"send-{ack.id}-again"]


def test_twilio_busy_on_every_attempt_fails_the_message_after_the_last(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    ack = open_card(session).outbound[0]
    twilio.fail_next(429, 20429, times=MAX_SEND_ATTEMPTS)

    for _ in range(MAX_SEND_ATTEMPTS - 1):
        with pytest.raises(whatsapp.TransientSendError):
            jobs.send_message(ack.id)
        assert message(env, ack.id).status == "retrying"
    assert jobs.send_message(ack.id) == "failed"  # no exception: RQ has no retry left

    failed = message(env, ack.id)
    assert (failed.status, failed.attempts) == ("failed", MAX_SEND_ATTEMPTS)
    assert jobs.send_message(ack.id) == "already handled"
    assert len(twilio.requests) == MAX_SEND_ATTEMPTS and twilio.messages == []


def test_twilio_refusal_fails_the_message_without_retry(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    ack = open_card(session).outbound[0]
    twilio.fail_next(400, 63016, message="Outside the allowed window")

    assert jobs.send_message(ack.id) == "failed"

    failed = message(env, ack.id)
    assert (failed.status, failed.error_code, failed.sid) == ("failed", "63016", None)
    assert "Outside the allowed window" in (failed.error_message or "")
    assert jobs.send_message(ack.id) == "already handled"
    assert len(twilio.requests) == 1


def test_wrong_twilio_credentials_fail_the_message(
    twilio: TwilioServer, env: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    ack = open_card(session).outbound[0]
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-the-token")

    assert jobs.send_message(ack.id) == "failed"

    failed = message(env, ack.id)
    assert (failed.status, failed.error_code) == ("failed", "20003")
    assert twilio.requests == [] and twilio.messages == []


# --- the indexed sweep --------------------------------------------------------------------------


def next_due(config: Config, visit_id: int) -> datetime | None:
    with session_factory(config.database_url)() as s:
        visit = s.get(StageVisit, visit_id)
        assert visit is not None
        return visit.next_due_at


def test_a_visit_points_at_its_next_instant_until_it_breaches_or_leaves(
    seeded: Config, session: Session
) -> None:
    first = open_card(session).new_visit
    assert first is not None and next_due(seeded, first.id) == WARNING_AT

    jobs.fire_and_send(seeded, first.id, "warning", WARNING_AT)
    assert next_due(seeded, first.id) == BREACH_AT
    jobs.fire_and_send(seeded, first.id, "breach", BREACH_AT)
    assert next_due(seeded, first.id) is None

    moved = desk.move_card(session, first.card_id, "open", BREACH_AT)
    session.commit()
    assert next_due(seeded, first.id) is None
    assert next_due(seeded, moved.id) == BREACH_AT + timedelta(hours=1)


def test_sweep_rearms_a_lost_timer_once_it_is_within_the_lookahead(
    seeded: Config, session: Session, redis: Redis
) -> None:
    """Timers far ahead are not looked for (that would cost a scan of every open card): each
    is put back in Redis once it rings within the next five minutes, well before its instant."""
    visit = open_card(session).new_visit
    assert visit is not None
    lose_redis_data(redis)

    far_before = T0 - timedelta(minutes=10)
    assert jobs.reconcile(seeded, far_before)["rearmed"] == 0
    assert jobs.reconcile(seeded, T0)["rearmed"] == 2
    assert jobs.reconcile(seeded, T0 + timedelta(seconds=5))["rearmed"] == 0
    assert scheduled(seeded, redis) == ticks(WARNING_AT, BREACH_AT)


def test_only_one_sweep_runs_at_a_time(env: Config, seeded: Config, redis: Redis) -> None:
    alarms = Alarms(env.redis_url, env.queue_name)
    with alarms.exclusive("sweep", ttl=60) as mine:
        assert mine
        assert jobs.sweep() == {}  # another sweep still holds the lock
    assert "fired" in jobs.sweep()


def test_a_visit_that_cannot_fire_does_not_stop_the_sweep(
    seeded: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = open_card(session, name="Broken").new_visit
    assert broken is not None
    inbound = whatsapp.parse_inbound(inbound_form(phone="+5511888880000", name="Fine"))
    fine = desk.receive_message(session, inbound, T0).new_visit
    session.commit()
    assert fine is not None
    real = escalation._fire_locked

    def fire(s: Session, visit: StageVisit, *rest: Any) -> escalation.Fired | None:
        if visit.id == broken.id:
            raise RuntimeError("a bad row")
        return real(s, visit, *rest)

    monkeypatch.setattr(escalation, "_fire_locked", fire)

    counts = jobs.reconcile(seeded, WARNING_AT)

    assert (counts["fired"], counts["errors"]) == (1, 1)
    assert [(e.visit_id, e.kind) for e in sla_events(seeded)] == [(fine.id, "warning")]


def test_a_batch_with_one_bad_event_is_tried_again_in_halves_not_one_event_at_a_time(
    seeded: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a storm, one event that cannot fire must not cost every other event of its batch
    a transaction of its own: each batch it fails in is split in two, down to a few events
    tried one by one."""
    visits = [open_card(session, phone=f"+551188888{n:04d}").new_visit for n in range(32)]
    ids = [v.id for v in visits if v is not None]
    broken = ids[5]
    real_fire_locked, real_fire_many = escalation._fire_locked, escalation.fire_many
    transactions: list[int] = []

    def fire_locked(s: Session, visit: StageVisit, *rest: Any) -> escalation.Fired | None:
        if visit.id == broken:
            raise RuntimeError("a bad row")
        return real_fire_locked(s, visit, *rest)

    def fire_many(s: Session, owed: Any, now: Any) -> list[escalation.Fired]:
        transactions.append(len(owed))
        return real_fire_many(s, owed, now)

    monkeypatch.setattr(escalation, "_fire_locked", fire_locked)
    monkeypatch.setattr(escalation, "fire_many", fire_many)

    firing = jobs.fire_events(seeded, [(i, "warning") for i in ids], lambda: WARNING_AT)

    assert (firing.fired, firing.failed) == (31, 1)
    assert sorted(e.visit_id for e in sla_events(seeded)) == sorted(set(ids) - {broken})
    assert transactions == [32, 16, 8, *[1] * 8, 8, 16]  # not 1 + 32


def test_the_sweep_points_a_visit_at_its_next_instant_as_a_re_timing_left_it(
    env: Config, seeded: Config, session: Session
) -> None:
    """The sweep finds a visit still pointing at its recorded warning while the settings
    re-time it (breach 30 s sooner, not yet committed): it waits for the re-timing and points
    the visit at the new breach, not at the old one it read first."""
    if make_url(seeded.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has no row locks: it runs one writer at a time")
    visit_id = open_card(session).new_visit.id  # type: ignore[union-attr]
    jobs.fire_and_send(seeded, visit_id, "warning", WARNING_AT)
    session.get_one(StageVisit, visit_id).next_due_at = WARNING_AT  # recorded some other way
    session.commit()
    sooner = BREACH_AT - timedelta(seconds=30)
    retimer = session_factory(seeded.database_url)()
    try:
        visit = retimer.scalars(
            select(StageVisit).where(StageVisit.id == visit_id).with_for_update()
        ).one()
        desk.set_timers(visit, replace(visit.timers, deadline_at=sooner), {"warning"})
        retimer.flush()
        later = WARNING_AT + timedelta(seconds=10)
        commit_once_it_waits(retimer, seeded.database_url, lambda: jobs.reconcile(env, later))
    finally:
        retimer.close()

    assert next_due(seeded, visit_id) == sooner


def test_on_sqlite_a_card_locked_for_a_change_keeps_other_writers_waiting(
    seeded: Config, session: Session
) -> None:
    """SQLite has no row locks, and pysqlite starts a transaction at the first write: locking
    a card takes the database's write lock, so a worker's change (a timeout moving the card)
    cannot land between an agent's read of the card and its own write."""
    if make_url(seeded.database_url).get_backend_name() != "sqlite":
        pytest.skip("PostgreSQL locks the card's row (the tests above)")
    card = open_card(session).card
    assert card is not None
    agent = session_factory(seeded.database_url)()
    worker = sqlite3.connect(str(make_url(seeded.database_url).database), timeout=0.2)
    try:
        assert desk.lock_card(agent, card.id) is not None
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            worker.execute("UPDATE cards SET status = status")
        agent.commit()
        worker.execute("UPDATE cards SET status = status")  # now it may
        worker.commit()
    finally:
        agent.close()
        worker.close()


def test_a_sweep_with_nothing_to_do_reads_in_five_statements(seeded: Config) -> None:
    """What is due, team menus and timers ahead, sends waiting or sending, and whether any
    kept status callback or refused alert needs settling: whatever is open."""
    jobs.reconcile(seeded, T0)
    with statements(seeded) as seen:
        counts = jobs.reconcile(seeded, T0 + timedelta(seconds=1))

    assert not any(counts.values()), counts
    assert len(seen) == 5, seen


def test_the_sweeps_read_of_waiting_sends_is_a_range_on_their_age(
    seeded: Config, session: Session
) -> None:
    """Failed and delivered messages pile up for ever: the read of those waiting or sending
    takes a range on (direction, status, updated_at), never every message of a status."""
    plan = query_plan(session, jobs.waiting_outbound(T0))
    assert "ix_messages_waiting" in plan, plan
    if session.get_bind().dialect.name == "postgresql":
        condition = plan.partition("Index Cond:")[2].partition("Filter:")[0]
        assert "updated_at <=" in condition, plan  # a range in the index, not a filter
    else:
        assert "updated_at<" in plan, plan


def test_a_failure_settling_kept_callbacks_never_holds_back_the_firing(
    seeded: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_card(session)
    session.add(EarlyStatus(sid="SM-unknown", status="delivered", error_code=None, received_at=T0))
    session.commit()
    lose_redis_data(redis)

    def broken(*args: object) -> int:
        raise RuntimeError("a kept callback that cannot be applied")

    monkeypatch.setattr(desk, "settle_early_statuses", broken)
    with pytest.raises(RuntimeError):
        jobs.reconcile(seeded, BREACH_AT + timedelta(seconds=10))

    assert [event.kind for event in sla_events(seeded)] == ["breach"]


def test_the_sweeps_due_query_uses_the_next_due_index(seeded: Config, session: Session) -> None:
    """A range on the next instant's index, each visit's card looked up by id: joined to
    the cards, the plan could hash every open card when the statistics counted many visits
    due."""
    plan = query_plan(session, jobs.due_visits(T0))
    assert "ix_stage_visits_next_due_at" in plan, plan
    if session.get_bind().dialect.name == "postgresql":
        assert "SubPlan" in plan and "pk_cards" in plan, plan
        assert "Join" not in plan and "Nested Loop" not in plan, plan
    else:
        assert "CORRELATED SCALAR SUBQUERY" in plan, plan
