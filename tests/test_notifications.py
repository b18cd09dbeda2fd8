"""Staff alerts on their way out: digests, the 24-hour window, pacing and reassignment on
breach. Jobs run in-process against a real Redis and a real database; Twilio is the local
fake server."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker
from rq.registry import ScheduledJobRegistry
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from whatsdesk import (
    accounts,
    desk,
    escalation,
    jobs,
    notifications,
    pipeline_store,
    pipelines,
    settings,
    whatsapp,
)
from whatsdesk.alarms import Alarms, never_before
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Card, Contact, Message, SlaEvent, User

from conftest import (
    PASSWORD,
    STAFF,
    fresh,
    inbound_form,
    open_staff_windows,
    seed,
    signed_post,
    statements,
)
from twilio_server import TwilioServer

# The seeded first stage "New": SLA 2 min, warning 1 min before. 4 March 2025 is a Tuesday.
T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
BREACH_AT = T0 + timedelta(minutes=2)
ADDRESS = {email.split("@")[0]: f"whatsapp:{phone}" for _, email, _, phone in STAFF}
CARLA = ("Carla Agent", "carla@example.com", "agent", "+15550000005")
TEMPLATE_SID = "HX" + "0123456789abcdef" * 2
FROM = "whatsapp:+14155238886"


def desk_file(
    window: str = "off",
    reassign: str | None = None,
    template: bool = False,
    escalate_to: str | None = None,
) -> str:
    """The seeded pipeline again (same stages), with these notification and breach settings."""
    reassign_line = f"        reassign: {reassign}\n" if reassign else ""
    if escalate_to:  # escalation level 1, five minutes after the breach
        reassign_line += f"        escalate:\n          - {{after: 5m, to: [{escalate_to}]}}\n"
    template_lines = (
        "  alert_template:\n"
        f"    content_sid: {TEMPLATE_SID}\n"
        '    variables: {"1": "{name}", "2": "{text}"}\n'
        if template
        else ""
    )
    return (
        "calendars:\n"
        "  - key: weekdays\n"
        "    timezone: UTC\n"
        '    hours: {mon-fri: ["08:00-17:00"]}\n'
        "  - key: weekends\n"
        "    timezone: UTC\n"
        '    hours: {sat-sun: ["08:00-17:00"]}\n'
        "pipelines:\n"
        "  - key: support\n"
        "    name: Support\n"
        "    default: true\n"
        "    stages:\n"
        "      - key: new\n"
        "        name: New\n"
        "        sla: 2m\n"
        "        warning: 1m\n"
        "        alert: [ana@example.com, bruno@example.com]\n"
        f"{reassign_line}"
        "      - key: open\n"
        "        name: In progress\n"
        "        sla: 1h\n"
        "      - key: waiting\n"
        "        name: Waiting on customer\n"
        "notifications:\n"
        f"  digest_window: {window}\n"
        f"{template_lines}"
    )


def configure(
    session: Session,
    window: str = "off",
    reassign: str | None = None,
    template: bool = False,
    escalate_to: str | None = None,
) -> None:
    """Load the desk's configuration file with these settings; committed."""
    text = desk_file(window, reassign, template, escalate_to)
    pipeline_store.load(session, pipelines.parse(text), T0)
    session.commit()


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def seeded(config: Config) -> Config:
    """The seeded desk, every staff member having just written to it (their windows open)."""
    seed(config.database_url, staff_windows=True)
    return config


def user(session: Session, email: str) -> User:
    return session.scalars(select(User).where(User.email == email)).one()


def open_card(
    session: Session, phone: str = "+5511999990000", name: str = "Maria", at: datetime = T0
) -> Card:
    """A customer's first message opens a card in the first stage; committed."""
    received = desk.receive_message(
        session, whatsapp.parse_inbound(inbound_form(phone=phone, name=name)), at
    )
    session.commit()
    assert received.card is not None
    return received.card


def customer(n: int) -> tuple[str, str]:
    """The phone number and name of the n-th test customer."""
    return f"+55119999{n:05d}", f"Customer {n}"


def visit_id_of(session: Session, card: Card) -> int:
    visit = desk.current_visit(session, card)
    assert visit is not None
    return visit.id


def breach(session: Session, card: Card, at: datetime = BREACH_AT) -> None:
    """The card's stage SLA runs out (alerts queued, nothing sent); committed."""
    assert escalation.fire(session, visit_id_of(session, card), "breach", at) is not None
    session.commit()


def alerts_to(config: Config, who: str) -> list[Message]:
    """The SLA alerts (not digests) addressed to a seeded person, oldest first."""
    with session_factory(config.database_url)() as s:
        return list(
            s.scalars(
                select(Message)
                .where(Message.to_address == ADDRESS[who], Message.sla_event_id.is_not(None))
                .order_by(Message.id)
            )
        )


def message(config: Config, message_id: int) -> Message:
    with session_factory(config.database_url)() as s:
        found = s.get(Message, message_id)
        assert found is not None
        found.digest  # noqa: B018 (loaded while the session is open)
        return found


def queued_ids(config: Config, redis: Redis) -> list[str]:
    return Queue(config.queue_name, connection=redis).job_ids


def scheduled(redis: Redis) -> dict[str, datetime]:
    """Job id → the instant RQ's scheduler will enqueue it, whichever queue it is for."""
    found = {}
    for key in redis.scan_iter(match=ScheduledJobRegistry.key_template.format("*")):
        name = key.decode().split(":", 2)[2]
        registry = ScheduledJobRegistry(queue=Queue(name, connection=redis))
        found |= {job_id: registry.get_scheduled_time(job_id) for job_id in registry.get_job_ids()}
    return found


def run_worker(config: Config, redis: Redis) -> None:
    """A worker runs every queued job, and those they queue, then stops."""
    SimpleWorker([Queue(config.queue_name, connection=redis)], connection=redis).work(burst=True)


def one_line(text: str) -> str:
    """A text as a template variable carries it: WhatsApp refuses line breaks there."""
    return " · ".join(line.strip() for line in text.splitlines() if line.strip())


def close_window(session: Session, who: str) -> None:
    """The person last wrote to the desk 25 hours ago; committed."""
    contact = session.scalars(select(Contact).where(Contact.address == ADDRESS[who])).one()
    contact.last_inbound_at = utcnow() - timedelta(hours=25)
    session.commit()


def sent_earlier(session: Session, config: Config, who: str, ago: timedelta) -> Message:
    """An alert handed to `who` `ago` before now (real time), starting the digest window."""
    breach(session, open_card(session, *customer(99)))
    [alert] = [a for a in alerts_to(config, who) if a.status == "pending"]
    batch = notifications.gather(session, alert.user_id or 0, utcnow() - ago)
    session.commit()
    assert [m.id for m in batch.sends] == [alert.id]
    return alert


@pytest.fixture
def twilio(env: Config, seeded: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[TwilioServer]:
    """A local Twilio the send job talks to (the environment names it)."""
    with TwilioServer() as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        yield server


# --- digests ------------------------------------------------------------------------------------


def test_an_alert_with_nothing_sent_within_the_window_goes_out_alone(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    configure(session, window="30s")
    card = open_card(session)
    breach(session, card)
    [alert] = alerts_to(env, "sofia")

    batch = notifications.gather(session, user(session, "sofia@example.com").id, BREACH_AT)
    session.commit()
    assert [m.id for m in batch.sends] == [alert.id] and batch.wait_until is None
    assert jobs.send_message(alert.id) == "sent"

    [form] = twilio.messages
    assert form["To"] == ADDRESS["sofia"]
    assert form["Body"] == alert.body
    assert form["Body"].startswith("🚨 SLA breached — Maria (+5511999990000)")
    assert message(env, alert.id).status == "queued"


def test_alerts_coming_within_the_window_wait_for_its_end(seeded: Config, session: Session) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    breach(session, open_card(session, *customer(1)))
    assert len(notifications.gather(session, sofia, BREACH_AT).sends) == 1
    session.commit()

    breach(session, open_card(session, *customer(2)), at=BREACH_AT + timedelta(seconds=5))
    breach(session, open_card(session, *customer(3)), at=BREACH_AT + timedelta(seconds=10))
    early = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=10))
    just_before = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=29.999))
    session.commit()

    for batch in (early, just_before):
        assert batch.sends == []
        assert batch.wait_until == BREACH_AT + timedelta(seconds=30)
    assert [a.status for a in alerts_to(seeded, "sofia")] == ["pending", "pending", "pending"]


def test_alerts_held_back_go_out_as_one_digest_at_the_window_end(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    breach(session, open_card(session, *customer(1)))
    [first] = notifications.gather(session, sofia, BREACH_AT).sends
    session.commit()
    assert jobs.send_message(first.id) == "sent"
    cards = [open_card(session, *customer(n)) for n in (2, 3)]
    for card in cards:
        breach(session, card, at=BREACH_AT + timedelta(seconds=5))

    batch = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=30))
    session.commit()
    [digest] = batch.sends
    assert jobs.send_message(digest.id) == "sent"

    assert [f["To"] for f in twilio.messages] == [ADDRESS["sofia"]] * 2
    assert twilio.messages[1]["Body"] == (
        "📋 2 SLA alerts — 2 🚨 breached:\n"
        f"• 🚨 breached: Customer 2 ({customer(2)[0]}), Support › New, card #{cards[0].id}\n"
        f"• 🚨 breached: Customer 3 ({customer(3)[0]}), Support › New, card #{cards[1].id}"
    )
    bundled = alerts_to(env, "sofia")[1:]
    assert [(a.status, a.digest_id) for a in bundled] == [("bundled", digest.id)] * 2
    assert message(env, digest.id).status == "queued"


def held_back(session: Session) -> int:
    """Sofia got an alert alone just now; two more breaches wait for her window's end."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    breach(session, open_card(session, *customer(1)))
    notifications.gather(session, sofia, BREACH_AT)
    for n in (2, 3):
        breach(session, open_card(session, *customer(n)), at=BREACH_AT + timedelta(seconds=5))
    session.commit()
    return sofia


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("deactivated", "not sent: Sofia Supervisor is no longer active"),
        ("number removed", "not sent: Sofia Supervisor has no WhatsApp"),
    ],
)
def test_alerts_held_for_someone_who_can_no_longer_be_told_are_failed_not_sent(
    seeded: Config, session: Session, change: str, why: str
) -> None:
    sofia = held_back(session)
    person = session.get(User, sofia)
    assert person is not None
    if change == "deactivated":
        accounts.deactivate(session, person, None, T0)
    else:
        person.whatsapp = None  # the phone was handed back: its number may be another's
    session.commit()

    batch = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=30))
    session.commit()

    assert batch.sends == []
    held = alerts_to(seeded, "sofia")[1:]
    assert [(a.status, a.error_message) for a in held] == [("failed", why)] * 2


@pytest.mark.parametrize("held", [False, True])
def test_alerts_waiting_for_someone_whose_number_changed_go_to_the_new_number(
    seeded: Config, session: Session, held: bool
) -> None:
    if held:  # two alerts wait for the window's end: a digest
        sofia = held_back(session)
        at = BREACH_AT + timedelta(seconds=30)
    else:  # nothing went to her within the window: the alert goes alone
        configure(session, window="30s")
        sofia = user(session, "sofia@example.com").id
        breach(session, open_card(session, *customer(1)))
        at = BREACH_AT
    person = session.get(User, sofia)
    assert person is not None
    person.whatsapp = "whatsapp:+15550000077"
    session.commit()

    [sent] = notifications.gather(session, sofia, at).sends

    assert sent.to_address == "whatsapp:+15550000077"


def test_an_alert_after_a_digest_waits_for_the_window_to_end_again(
    seeded: Config, session: Session
) -> None:
    sofia = held_back(session)
    [digest] = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=30)).sends
    session.commit()
    assert digest.sla_event_id is None  # a digest is no alert of its own

    breach(session, open_card(session, *customer(4)), at=BREACH_AT + timedelta(seconds=40))
    batch = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=40))

    assert batch.sends == [] and batch.wait_until == BREACH_AT + timedelta(seconds=60)


def test_an_answer_to_a_staff_command_does_not_hold_back_the_next_alert(
    seeded: Config, session: Session
) -> None:
    """Sofia wrote to the desk (the commands' help answered her) five seconds before a breach."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    form = inbound_form(phone=ADDRESS["sofia"].removeprefix("whatsapp:"), body="on it")
    wrote_at = BREACH_AT - timedelta(seconds=5)
    received = desk.receive_message(session, whatsapp.parse_inbound(form), wrote_at)
    session.commit()
    [answer] = received.outbound
    assert answer.sent_at == wrote_at  # handed to the sender at once, as alerts are
    breach(session, open_card(session))
    [alert] = alerts_to(seeded, "sofia")

    batch = notifications.gather(session, sofia, BREACH_AT)

    assert [m.id for m in batch.sends] == [alert.id] and batch.wait_until is None


def test_an_alert_handed_to_the_sender_alone_is_not_bundled_again(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    """Its send job is late (a busy queue): the window ends before it runs."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    breach(session, open_card(session, *customer(1)))
    [first] = notifications.gather(session, sofia, BREACH_AT).sends
    session.commit()
    for n in (2, 3):
        breach(session, open_card(session, *customer(n)), at=BREACH_AT + timedelta(seconds=5))

    [digest] = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=30)).sends
    session.commit()
    assert jobs.send_message(first.id) == "sent"
    assert jobs.send_message(digest.id) == "sent"

    alone, bundle = twilio.messages
    assert alone["Body"] == first.body and "Customer 1" in alone["Body"]
    assert bundle["Body"].startswith("📋 2 SLA alerts")
    assert "Customer 1" not in bundle["Body"]
    assert [a.status for a in alerts_to(env, "sofia")] == ["queued", "bundled", "bundled"]


def test_a_bundled_alert_shows_the_delivery_status_of_its_digest(
    twilio: TwilioServer, env: Config, session: Session, client: FlaskClient
) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    for n in (1, 2):
        breach(session, open_card(session, *customer(n)))
    [digest] = notifications.gather(session, sofia, BREACH_AT).sends  # nothing sent before
    session.commit()
    assert jobs.send_message(digest.id) == "sent"
    bundled = alerts_to(env, "sofia")
    assert [message(env, a.id).delivery_status for a in bundled] == ["queued", "queued"]

    form = {"MessageSid": twilio.sids[0], "MessageStatus": "delivered"}
    assert signed_post(client, env, "/twilio/status", form).status_code == 200  # type: ignore[attr-defined]

    for alert in bundled:
        seen = message(env, alert.id)
        assert (seen.status, seen.delivery_status) == ("bundled", "delivered")


def test_a_digest_counts_each_kind_of_alert_and_names_it_on_each_line(
    seeded: Config, session: Session
) -> None:
    configure(session, window="30s", reassign="otto@example.com", escalate_to="otto@example.com")
    card = open_card(session)
    breach(session, card)  # Otto, a supervisor, is told; the card becomes his
    level_at = BREACH_AT + timedelta(minutes=5)
    assert escalation.fire(session, visit_id_of(session, card), "level-1", level_at)
    session.commit()

    otto = user(session, "otto@example.com").id
    [digest] = notifications.gather(session, otto, level_at).sends
    session.commit()

    where = f"Maria (+5511999990000), Support › New, card #{card.id}"
    assert message(seeded, digest.id).body == (
        "📋 3 SLA alerts — 1 🚨 breached, 1 👤 reassigned to you, 1 🔺 level 1:\n"
        f"• 🚨 breached: {where}\n"
        f"• 👤 reassigned to you: {where}\n"
        f"• 🔺 level 1: {where}"
    )


def test_a_digest_too_long_for_one_message_ends_with_how_many_more(
    seeded: Config, session: Session
) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    for n in range(30):
        breach(session, open_card(session, *customer(n)))

    [digest] = notifications.gather(session, sofia, BREACH_AT).sends
    session.commit()

    body = message(seeded, digest.id).body
    assert len(body) <= notifications.DIGEST_LIMIT
    assert body.startswith("📋 30 SLA alerts — 30 🚨 breached:\n")
    shown = [line for line in body.splitlines() if line.startswith("• ")]
    more = body.splitlines()[-1]
    assert 0 < len(shown) < 30
    assert more == f"… and {30 - len(shown)} more: open the queue."
    assert len(alerts_to(seeded, "sofia")) == 30
    assert {a.digest_id for a in alerts_to(seeded, "sofia")} == {digest.id}


def test_an_alerts_job_whose_twin_sent_the_digest_meanwhile_sends_nothing_more(
    seeded: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs for one person (the lock expired under a slow one): the one that finds its
    alerts gone between its reads sends nothing, and says so without an error."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    breach(session, open_card(session, *customer(1)))
    notifications.gather(session, sofia, BREACH_AT)  # the first alert goes alone
    session.commit()
    for n in (2, 3):
        breach(session, open_card(session, *customer(n)), at=BREACH_AT + timedelta(seconds=5))
    window_ends = BREACH_AT + timedelta(seconds=30)
    pending = notifications._pending
    asked: list[int] = []
    twin: list[Message] = []

    def the_twin_sends_them_before_our_second_look(user_id: int) -> Any:
        asked.append(user_id)
        if len(asked) == 2:  # we saw alerts pending and the window ended: now we read them
            monkeypatch.setattr(notifications, "_pending", pending)
            with session_factory(seeded.database_url)() as other:
                twin.extend(notifications.gather(other, sofia, window_ends).sends)
                other.commit()
        return pending(user_id)

    monkeypatch.setattr(notifications, "_pending", the_twin_sends_them_before_our_second_look)
    batch = notifications.gather(session, sofia, window_ends)

    assert (batch.sends, batch.wait_until) == ([], None)
    [digest] = twin
    assert {a.digest_id for a in alerts_to(seeded, "sofia")[1:]} == {digest.id}


def test_what_gathering_a_storm_reads_does_not_grow_with_the_alerts_pending(
    seeded: Config, session: Session
) -> None:
    """In a storm the alerts job runs after every batch of events: while the window is
    closed it asks the same few questions and loads no alert, whatever is pending, and a
    digest reads the cards of the lines it shows, not of every alert it bundles."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    breach(session, open_card(session, *customer(0)))
    notifications.gather(session, sofia, BREACH_AT)  # the first alert goes alone
    session.commit()

    loaded: list[object] = []  # each object the session reads from a row
    event.listen(session, "loaded_as_persistent", lambda _s, instance: loaded.append(instance))

    def costs(pending: int) -> tuple[int, int, int]:
        while len(alerts_to(seeded, "sofia")) < pending + 1:
            n = len(alerts_to(seeded, "sofia"))
            breach(session, open_card(session, *customer(n)), at=BREACH_AT + timedelta(seconds=5))
        session.expunge_all()
        loaded.clear()
        with statements(seeded) as closed:
            batch = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=10))
        assert batch.sends == []
        read_while_closed = len(loaded)
        session.rollback()
        with statements(seeded) as digest:
            [sent] = notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=30)).sends
        assert sent.body.startswith(f"📋 {pending} SLA alerts — {pending} 🚨 breached:")
        session.rollback()
        return len(closed), read_while_closed, len(digest)

    assert costs(3) == costs(60)


def test_with_the_digest_window_off_every_alert_goes_out_alone(
    seeded: Config, session: Session
) -> None:
    settings.save_notifications(session, pipelines.NotificationsSpec(digest_seconds=0), T0)
    session.commit()
    sofia = user(session, "sofia@example.com").id
    sends = []
    for n in (1, 2, 3):
        breach(session, open_card(session, *customer(n)), at=BREACH_AT + timedelta(seconds=n))
        sends += notifications.gather(session, sofia, BREACH_AT + timedelta(seconds=n)).sends
        session.commit()

    assert [m.id for m in sends] == [a.id for a in alerts_to(seeded, "sofia")]
    assert all(m.sla_event_id is not None and m.digest_id is None for m in sends)


def test_the_alert_job_comes_back_when_the_digest_window_ends(
    env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    earlier = sent_earlier(session, env, "sofia", ago=timedelta(seconds=10))
    breach(session, open_card(session))

    assert jobs.deliver_alerts(sofia) == "waiting for the digest window"

    end = message(env, earlier.id).sent_at + timedelta(seconds=30)  # type: ignore[operator]
    wakes = never_before(end)
    assert scheduled(redis) == {f"alerts-{sofia}-at-{int(wakes.timestamp())}": wakes}
    assert queued_ids(env, redis) == []
    assert [a.status for a in alerts_to(env, "sofia")][1:] == ["pending"]


def test_while_a_persons_window_is_closed_new_alerts_add_no_job_for_them(
    env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    """In a storm, every batch of events alerts the same people: each batch queued a job per
    person that found the window closed and did nothing. The job already scheduled for the
    window's end sends them all."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    sent_earlier(session, env, "sofia", ago=timedelta(seconds=10))
    breach(session, open_card(session))
    assert jobs.deliver_alerts(sofia) == "waiting for the digest window"
    waiting = scheduled(redis)

    card = open_card(session, *customer(2))
    assert jobs.fire_and_send(env, visit_id_of(session, card), "breach", BREACH_AT)

    # Otto's window is open (nothing went to him yet): his job is queued; Sofia's is not.
    otto = user(session, "otto@example.com").id
    assert queued_ids(env, redis) == [f"alerts-{otto}"]
    assert scheduled(redis) == waiting
    assert [a.status for a in alerts_to(env, "sofia")][1:] == ["pending", "pending"]


def test_alerts_waiting_past_a_window_shortened_meanwhile_are_queued_by_the_sweep(
    env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    """A job waits for the end of Sofia's 30-second window; the window is then turned off.
    Her waiting alert does not wait for the old window's end: the sweep queues its job."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    sent_earlier(session, env, "sofia", ago=timedelta(seconds=10))
    breach(session, open_card(session))
    assert jobs.deliver_alerts(sofia) == "waiting for the digest window"
    configure(session, window="off")

    jobs.reconcile(env, utcnow())

    assert f"alerts-{sofia}" in queued_ids(env, redis)


def test_the_job_for_a_windows_end_lets_later_alerts_queue_their_own_at_once(
    env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    """RQ's scheduler wakes the job by its own clock; the mark that it is coming expires by
    Redis's. Once the job starts, an alert after it queues a job of its own, whatever the
    mark's expiry says."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    sent_earlier(session, env, "sofia", ago=timedelta(seconds=40))  # the window has ended
    alarms = Alarms(env.redis_url, env.queue_name)
    coming = never_before(utcnow() + timedelta(seconds=30))  # by a clock behind the scheduler's
    alarms.schedule_alerts(sofia, coming)
    job_id = f"alerts-{sofia}-at-{int(coming.timestamp())}"
    queue = Queue(env.queue_name, connection=redis)
    queue.enqueue("whatsdesk.jobs.deliver_alerts", sofia, job_id=job_id)  # woken: it is due
    run_worker(env, redis)
    assert queue.fetch_job(job_id).return_value() == "sent 0"  # type: ignore[union-attr]

    card = open_card(session, *customer(2))
    assert jobs.fire_and_send(env, visit_id_of(session, card), "breach", BREACH_AT)

    assert f"alerts-{sofia}" in queued_ids(env, redis)


def test_an_alert_job_whose_window_ends_in_a_moment_frees_its_worker_and_comes_back(
    env: Config, seeded: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers are what the clock's jobs need: a job never sleeps in one waiting for a
    window to end, however soon it ends; RQ wakes the next one at the whole second after."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    earlier = sent_earlier(session, env, "sofia", ago=timedelta(seconds=29))
    breach(session, open_card(session))

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"the alert job slept {seconds:.2f} s in its worker")

    monkeypatch.setattr(time, "sleep", no_sleep)
    assert jobs.deliver_alerts(sofia) == "waiting for the digest window"

    wakes = never_before(message(env, earlier.id).sent_at + timedelta(seconds=30))  # type: ignore[operator]
    assert scheduled(redis) == {f"alerts-{sofia}-at-{int(wakes.timestamp())}": wakes}


def test_an_alert_job_woken_before_its_second_by_a_clock_ahead_comes_back_under_its_own_id(
    env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    """A scheduler on a host whose clock runs ahead can wake the job for the second a window
    ends in before the window ends: it puts itself back under an id of its own, as the id
    it runs under is marked finished when it returns."""
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    earlier = sent_earlier(session, env, "sofia", ago=timedelta(seconds=28))
    breach(session, open_card(session))
    wakes = never_before(message(env, earlier.id).sent_at + timedelta(seconds=30))  # type: ignore[operator]
    job_id = f"alerts-{sofia}-at-{int(wakes.timestamp())}"
    queue = Queue(env.queue_name, connection=redis)
    queue.enqueue("whatsdesk.jobs.deliver_alerts", sofia, job_id=job_id)  # woken early

    run_worker(env, redis)

    assert queue.fetch_job(job_id).return_value() == "waiting for the digest window"  # type: ignore[union-attr]
    assert scheduled(redis) == {f"{job_id}-again": wakes}


def test_the_alert_job_after_the_window_sends_the_digest_through_twilio(
    twilio: TwilioServer, env: Config, session: Session, redis: Redis
) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    sent_earlier(session, env, "sofia", ago=timedelta(seconds=31))
    for n in (1, 2):
        breach(session, open_card(session, *customer(n)))
    Alarms(env.redis_url, env.queue_name).enqueue_alerts(sofia)

    run_worker(env, redis)

    [form] = twilio.wait_for(lambda messages: len(messages) >= 1)
    assert form["To"] == ADDRESS["sofia"]
    assert form["Body"].startswith("📋 2 SLA alerts — 2 🚨 breached:\n• 🚨 breached: Customer 1")
    assert [a.status for a in alerts_to(env, "sofia")][1:] == ["bundled", "bundled"]


def test_an_alert_job_a_killed_worker_took_from_the_queue_is_replaced(
    env: Config, seeded: Config, session: Session, redis: Redis
) -> None:
    """A worker SIGKILLed between taking a job and starting it leaves it "queued" in no
    queue: asking for the person's alerts again must not trust it."""
    sofia = user(session, "sofia@example.com").id
    alarms = Alarms(env.redis_url, env.queue_name)
    alarms.enqueue_alerts(sofia, sofia)  # named twice: one job
    alarms.enqueue_alerts(sofia)  # still waiting in the queue: not added twice
    assert queued_ids(env, redis) == [f"alerts-{sofia}"]
    redis.lrem(f"rq:queue:{env.queue_name}", 0, f"alerts-{sofia}")  # taken, never started

    alarms.enqueue_alerts(sofia)

    assert queued_ids(env, redis) == [f"alerts-{sofia}"]


def test_a_second_alert_job_while_one_gathers_looks_again_later_and_one_digest_goes(
    env: Config, seeded: Config, session: Session, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(session, window="30s")
    sofia = user(session, "sofia@example.com").id
    sent_earlier(session, env, "sofia", ago=timedelta(minutes=1))
    for n in (1, 2):
        breach(session, open_card(session, *customer(n)))
    inside, release = threading.Event(), threading.Event()
    real_digest_text = notifications.digest_text

    def digest_text_then_wait(s: Session, event_ids: Sequence[int | None]) -> str:
        text = real_digest_text(s, event_ids)
        inside.set()  # the first job is composing the digest…
        release.wait(timeout=10)
        return text

    monkeypatch.setattr(notifications, "digest_text", digest_text_then_wait)

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(jobs.deliver_alerts, sofia)
        assert inside.wait(timeout=10)
        second = jobs.deliver_alerts(sofia)  # …when a second job for her starts
        release.set()
        assert first.result(timeout=30) == "sent 1"

    assert second == "busy: looking again in a second"
    assert any(job_id.startswith(f"alerts-{sofia}-retry-") for job_id in scheduled(redis))
    with session_factory(env.database_url)() as s:
        [digest] = s.scalars(select(Message).where(Message.body.like("📋%"))).all()
    assert queued_ids(env, redis) == [f"send-{digest.id}"]
    assert {a.digest_id for a in alerts_to(env, "sofia")[1:]} == {digest.id}
    # The look again holds nothing back: a new alert meanwhile queues its own job.
    Alarms(env.redis_url, env.queue_name).enqueue_alerts(sofia)
    assert f"alerts-{sofia}" in queued_ids(env, redis)


# --- the 24-hour window -------------------------------------------------------------------------


def test_an_alert_to_staff_who_wrote_within_24_hours_goes_as_free_text(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    configure(session, template=True)
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")

    assert jobs.send_message(alert.id) == "sent"

    [form] = twilio.messages
    assert form["Body"] == alert.body
    assert "ContentSid" not in form and "ContentVariables" not in form


def test_an_alert_outside_the_window_goes_as_the_approved_template(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    configure(session, template=True)
    close_window(session, "sofia")
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")

    assert jobs.send_message(alert.id) == "sent"

    [form] = twilio.messages
    assert (form["To"], form["From"]) == (ADDRESS["sofia"], FROM)
    assert form["ContentSid"] == TEMPLATE_SID
    assert json.loads(form["ContentVariables"]) == {
        "1": "Sofia Supervisor",
        "2": one_line(alert.body),
    }
    assert "Body" not in form
    sent = message(env, alert.id)
    assert (sent.status, sent.sid, sent.content_sid) == ("queued", twilio.sids[0], TEMPLATE_SID)


def test_a_digest_outside_the_window_goes_as_the_template_on_one_line(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    configure(session, window="30s", template=True)
    close_window(session, "sofia")
    for n in (1, 2):
        breach(session, open_card(session, *customer(n)))
    sofia = user(session, "sofia@example.com").id
    [digest] = notifications.gather(session, sofia, BREACH_AT).sends
    session.commit()

    assert jobs.send_message(digest.id) == "sent"

    [form] = twilio.messages
    assert form["ContentSid"] == TEMPLATE_SID and "Body" not in form
    text = json.loads(form["ContentVariables"])["2"]
    assert "\n" not in text
    assert text.startswith("📋 2 SLA alerts — 2 🚨 breached: · • 🚨 breached: Customer 1")


def test_an_alert_outside_the_window_without_a_template_fails_and_says_why(
    twilio: TwilioServer, env: Config, session: Session
) -> None:
    close_window(session, "sofia")
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")

    assert jobs.send_message(alert.id) == "failed"

    failed = message(env, alert.id)
    assert (failed.status, failed.error_code, failed.sid) == ("failed", "window", None)
    assert "24-hour WhatsApp window" in (failed.error_message or "")
    assert "notifications.alert_template" in (failed.error_message or "")
    assert twilio.requests == []
    assert jobs.send_message(alert.id) == "already handled"


def test_twilio_refusing_free_text_outside_the_window_gets_the_template_instead(
    twilio: TwilioServer, env: Config, session: Session, redis: Redis
) -> None:
    configure(session, template=True)
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")
    twilio.fail_next(400, 63016, message="Outside the allowed window")

    assert jobs.send_message(alert.id) == "outside the 24-hour window: sending the template"
    assert queued_ids(env, redis) == [f"send-{alert.id}-again"]
    run_worker(env, redis)

    first, second = twilio.requests
    assert first["Body"] == alert.body and "ContentSid" not in first
    assert second["ContentSid"] == TEMPLATE_SID and "Body" not in second
    assert json.loads(second["ContentVariables"]) == {
        "1": "Sofia Supervisor",
        "2": one_line(alert.body),
    }
    sent = message(env, alert.id)
    assert (sent.status, sent.sid, sent.attempts) == ("queued", twilio.sids[0], 2)


def test_twilio_refusing_free_text_outside_the_window_without_a_template_fails_the_alert(
    twilio: TwilioServer, env: Config, session: Session, redis: Redis
) -> None:
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")
    twilio.fail_next(400, 63016, message="Outside the allowed window")

    assert jobs.send_message(alert.id) == "failed"

    failed = message(env, alert.id)
    assert (failed.status, failed.error_code) == ("failed", "63016")
    assert "Outside the allowed window" in (failed.error_message or "")
    assert queued_ids(env, redis) == [] and len(twilio.requests) == 1


def test_a_later_63016_status_for_a_free_text_alert_sends_the_template_instead(
    twilio: TwilioServer, env: Config, session: Session, client: FlaskClient, redis: Redis
) -> None:
    configure(session, template=True)
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")
    assert jobs.send_message(alert.id) == "sent"  # Twilio took the free text…
    sid = twilio.sids[0]

    callback = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "63016"}
    answer = signed_post(client, env, "/twilio/status", callback)  # …then refused it

    assert answer.status_code == 200
    assert queued_ids(env, redis) == [f"send-{alert.id}-again"]
    run_worker(env, redis)
    first, second = twilio.requests
    assert "Body" in first and second["ContentSid"] == TEMPLATE_SID and "Body" not in second
    resent = message(env, alert.id)
    assert (resent.status, resent.sid, resent.content_sid) == (
        "queued",
        twilio.sids[1],
        TEMPLATE_SID,
    )


def test_the_sweep_sends_a_refused_alert_as_the_template_when_its_retry_was_lost(
    twilio: TwilioServer, env: Config, session: Session, redis: Redis
) -> None:
    """Twilio refused the free text (63016) while Redis was down, so the retry as the
    template never reached a queue: the sweep finds the alert and sends it again."""
    configure(session, template=True)
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")
    assert jobs.send_message(alert.id) == "sent"
    refused = session.get(Message, alert.id)
    assert refused is not None
    refused.status, refused.error_code = "undelivered", "63016"
    session.commit()
    redis.flushdb()

    jobs.reconcile(env, utcnow())

    assert f"send-{alert.id}-again" in queued_ids(env, redis)
    run_worker(env, redis)
    resent = message(env, alert.id)
    assert (resent.status, resent.content_sid) == ("queued", TEMPLATE_SID)
    to_sofia = [r.get("ContentSid") for r in twilio.requests if r["To"] == resent.to_address]
    assert to_sofia == [None, TEMPLATE_SID]  # the free text, then the template


def test_a_later_63016_status_without_a_template_leaves_the_alert_failed(
    twilio: TwilioServer, env: Config, session: Session, client: FlaskClient, redis: Redis
) -> None:
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")
    assert jobs.send_message(alert.id) == "sent"

    callback = {"MessageSid": twilio.sids[0], "MessageStatus": "failed", "ErrorCode": "63016"}
    assert signed_post(client, env, "/twilio/status", callback).status_code == 200

    failed = message(env, alert.id)
    assert (failed.status, failed.error_code) == ("failed", "63016")
    assert queued_ids(env, redis) == [] and len(twilio.requests) == 1


# --- staff writing to the desk ------------------------------------------------------------------


def test_staff_writing_in_opens_their_window_without_a_card_and_get_the_commands_help(
    twilio: TwilioServer, env: Config, session: Session, client: FlaskClient, redis: Redis
) -> None:
    close_window(session, "sofia")
    form = inbound_form(
        phone=ADDRESS["sofia"].removeprefix("whatsapp:"), body="on it", name="Sofia"
    )

    answer = signed_post(client, env, "/twilio/whatsapp", form)
    assert answer.status_code == 200  # type: ignore[attr-defined]

    fresh(session)
    assert session.scalars(select(Card)).all() == []
    [note, help_text] = session.scalars(select(Message).order_by(Message.id)).all()
    assert (note.direction, note.body, note.card_id) == ("in", "on it", None)
    # Not a command (whatsdesk/commands.py): the commands' help, and nothing else.
    assert help_text.body.startswith("whatsdesk commands")
    assert queued_ids(env, redis) == [f"send-{help_text.id}"] and scheduled(redis) == {}
    # Her window is open again: her next alert goes as free text.
    breach(session, open_card(session))
    [alert] = alerts_to(env, "sofia")
    assert jobs.send_message(alert.id) == "sent"
    [sent] = twilio.messages
    assert sent["Body"] == alert.body


# --- pacing -------------------------------------------------------------------------------------


def test_sends_from_one_number_are_spaced_evenly_across_workers(
    config: Config, redis: Redis
) -> None:
    workers = [Alarms(config.redis_url, config.queue_name) for _ in range(2)]
    # Four send slots taken in turn by two workers, at 5 messages a second (0.2 s apart).
    calls = []
    for n in range(4):
        before = time.time()
        wait = workers[n % 2].pace(FROM, 5)
        calls.append((before, wait, time.time()))
    other = workers[0].pace("whatsapp:+15550009999", 5)

    assert calls[0][1] == 0
    for (before, wait, after), (next_before, next_wait, next_after) in pairwise(calls):
        # Each slot is 0.2 s after the previous one, wherever the calls fell in between.
        assert 0.2 - (next_after - before) - 1e-3 <= next_wait - wait
        assert next_wait - wait <= 0.2 - (next_before - after) + 1e-3
        assert 0 < next_wait <= 0.6 + 1e-3
    assert other == 0  # another number keeps its own pace


def test_the_send_job_waits_for_its_slot(
    twilio: TwilioServer, env: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEND_RATE_LIMIT", "2")
    breach(session, open_card(session))
    sofia, otto = alerts_to(env, "sofia") + alerts_to(env, "otto")

    started = time.monotonic()
    assert jobs.send_message(sofia.id) == "sent"
    assert jobs.send_message(otto.id) == "sent"

    assert time.monotonic() - started >= 0.5  # the second slot comes half a second later
    assert len(twilio.messages) == 2


@pytest.mark.parametrize("raw", ["0", "fast", "0.001", "-1", "10001", "nan"])
def test_a_bad_send_rate_limit_is_refused_clearly(raw: str) -> None:
    with pytest.raises(RuntimeError) as refused:
        Config.from_env({"SEND_RATE_LIMIT": raw})

    assert str(refused.value).startswith("SEND_RATE_LIMIT must be messages per second")
    assert "from 0.01 to 10000" in str(refused.value) and repr(raw) in str(refused.value)


def test_the_send_rate_limit_takes_whole_and_decimal_rates() -> None:
    assert Config.from_env({}).send_rate == 80
    assert Config.from_env({"SEND_RATE_LIMIT": "0.33"}).send_rate == 0.33  # Twilio's sandbox


# --- reassignment on breach ---------------------------------------------------------------------


@pytest.fixture
def carla(seeded: Config, session: Session) -> User:
    """A third agent, her window open like everyone's."""
    name, email, role, phone = CARLA
    third = accounts.create_user(
        session, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD, now=T0
    )
    open_staff_windows(session, utcnow())
    session.commit()
    return third


def own(session: Session, who: str, count: int, status: str = "open") -> None:
    """Give `who` this many other customers' cards; committed."""
    owner = user(session, who)
    for _ in range(count):
        phone = "+5521" + str(uuid.uuid4().int)[:9]
        card = open_card(session, phone=phone, name="Other")
        card.owner = owner
        if status != "open":
            desk.resolve(session, card.id, T0)
    session.commit()


def reassignments(config: Config) -> list[SlaEvent]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(SlaEvent).where(SlaEvent.kind == "reassignment")))


def owner_of(config: Config, card_id: int) -> str | None:
    with session_factory(config.database_url)() as s:
        card = s.get(Card, card_id)
        assert card is not None
        return card.owner.email if card.owner else None


def test_breach_gives_the_card_to_the_agent_with_fewest_open_cards(
    twilio: TwilioServer, env: Config, carla: User, session: Session, redis: Redis
) -> None:
    configure(session, reassign="least-loaded")
    own(session, "ana@example.com", 1)
    own(session, "bruno@example.com", 2)
    own(session, "carla@example.com", 3, status="resolved")  # resolved cards are no load
    card = open_card(session)  # nobody's

    assert jobs.fire_and_send(env, visit_id_of(session, card), "breach", BREACH_AT)
    run_worker(env, redis)

    assert owner_of(env, card.id) == "carla@example.com"
    [event] = reassignments(env)
    assert (event.card_id, event.detail) == (card.id, {"from": None, "to": carla.id})
    told = [f for f in twilio.messages if f["To"] == "whatsapp:" + CARLA[3]]
    assert [f["Body"] for f in told] == [
        f"👤 Card #{card.id} is now yours: Maria (+5511999990000) breached the SLA in "
        "Support › New."
    ]


def test_a_storm_of_breaches_spreads_its_cards_over_the_agents_counting_their_cards_once(
    seeded: Config, carla: User, session: Session
) -> None:
    configure(session, reassign="least-loaded")
    own(session, "ana@example.com", 2)
    cards = [open_card(session, *customer(n)) for n in range(6)]  # nobody's
    owed = [(visit_id_of(session, card), "breach") for card in cards]

    with statements(seeded) as run:
        assert jobs.fire_events(seeded, owed, lambda: BREACH_AT).fired == 6

    with session_factory(seeded.database_url)() as s:
        load = s.execute(
            select(User.email, func.count(Card.id))
            .join(Card, Card.owner_id == User.id)
            .where(Card.status == "open")
            .group_by(User.email)
        ).all()
    assert sorted(load) == [
        ("ana@example.com", 3),
        ("bruno@example.com", 3),
        ("carla@example.com", 2),
    ]
    assert len([sql for sql in run if "count(cards.id)" in sql]) == 1


def test_breach_never_gives_the_card_back_to_its_owner(
    seeded: Config, session: Session, redis: Redis
) -> None:
    configure(session, reassign="least-loaded")
    own(session, "bruno@example.com", 2)
    card = open_card(session)
    card.owner = user(session, "ana@example.com")  # her only card: the least loaded
    session.commit()

    assert jobs.fire_and_send(seeded, visit_id_of(session, card), "breach", BREACH_AT)

    assert owner_of(seeded, card.id) == "bruno@example.com"
    [event] = reassignments(seeded)
    ana, bruno = user(session, "ana@example.com"), user(session, "bruno@example.com")
    assert event.detail == {"from": ana.id, "to": bruno.id}
    [alert] = [a for a in alerts_to(seeded, "bruno") if a.sla_event_id == event.id]
    assert alert.body.startswith(f"👤 Card #{card.id} is now yours from Ana Agent: Maria")


def test_least_loaded_ties_go_to_the_agent_created_first(
    seeded: Config, carla: User, session: Session
) -> None:
    configure(session, reassign="least-loaded")
    own(session, "ana@example.com", 1)
    card = open_card(session)

    assert jobs.fire_and_send(seeded, visit_id_of(session, card), "breach", BREACH_AT)

    assert owner_of(seeded, card.id) == "bruno@example.com"  # Bruno and Carla: none each


def test_least_loaded_picks_only_active_agents(
    seeded: Config, carla: User, session: Session
) -> None:
    configure(session, reassign="least-loaded")
    user(session, "bruno@example.com").active = False
    own(session, "carla@example.com", 1)  # supervisors have none, but are not agents
    card = open_card(session)
    card.owner = user(session, "ana@example.com")
    session.commit()

    assert jobs.fire_and_send(seeded, visit_id_of(session, card), "breach", BREACH_AT)

    assert owner_of(seeded, card.id) == "carla@example.com"


def test_least_loaded_picks_only_agents_on_shift(
    seeded: Config, carla: User, session: Session
) -> None:
    configure(session, reassign="least-loaded")
    accounts.set_shift(session, "bruno@example.com", "weekends")  # off on a Tuesday
    accounts.set_shift(session, "carla@example.com", "weekdays")  # 08:00-17:00 UTC
    own(session, "carla@example.com", 2)
    card = open_card(session)
    card.owner = user(session, "ana@example.com")
    session.commit()

    assert jobs.fire_and_send(seeded, visit_id_of(session, card), "breach", BREACH_AT)

    assert owner_of(seeded, card.id) == "carla@example.com"


def test_nobody_on_shift_leaves_the_card_with_its_owner_and_logs_a_warning(
    seeded: Config, carla: User, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    configure(session, reassign="least-loaded")
    for who in ("bruno@example.com", "carla@example.com"):
        accounts.set_shift(session, who, "weekends")
    card = open_card(session)
    card.owner = user(session, "ana@example.com")
    session.commit()

    with caplog.at_level(logging.WARNING, logger="whatsdesk.escalation"):
        assert jobs.fire_and_send(seeded, visit_id_of(session, card), "breach", BREACH_AT)

    assert owner_of(seeded, card.id) == "ana@example.com"
    assert reassignments(seeded) == []
    assert f"card {card.id} not reassigned: nobody on shift to give it to" in caplog.text
    assert len(alerts_to(seeded, "sofia")) == 1  # the breach itself is still told


def test_breach_gives_the_card_to_the_person_the_stage_names(
    seeded: Config, session: Session
) -> None:
    configure(session, reassign="otto@example.com")
    card = open_card(session)
    card.owner = user(session, "ana@example.com")
    session.commit()

    assert jobs.fire_and_send(seeded, visit_id_of(session, card), "breach", BREACH_AT)

    assert owner_of(seeded, card.id) == "otto@example.com"
    [event] = reassignments(seeded)
    otto = user(session, "otto@example.com")
    assert event.detail["to"] == otto.id
    bodies = [a.body for a in alerts_to(seeded, "otto")]
    assert len(bodies) == 2 and bodies[0].startswith("🚨 SLA breached")
    assert bodies[1].startswith(f"👤 Card #{card.id} is now yours from Ana Agent")


def test_a_breach_fired_twice_reassigns_and_tells_once(
    seeded: Config, carla: User, session: Session
) -> None:
    configure(session, reassign="least-loaded")
    card = open_card(session)
    visit_id = visit_id_of(session, card)

    assert jobs.fire_and_send(seeded, visit_id, "breach", BREACH_AT) is True
    assert jobs.fire_and_send(seeded, visit_id, "breach", BREACH_AT + timedelta(seconds=1)) is False
    jobs.reconcile(seeded, BREACH_AT + timedelta(minutes=1))

    [event] = reassignments(seeded)
    assert owner_of(seeded, card.id) == "ana@example.com"
    told = [a for a in alerts_to(seeded, "ana") if a.sla_event_id == event.id]
    assert len(told) == 1 and "is now yours" in told[0].body
