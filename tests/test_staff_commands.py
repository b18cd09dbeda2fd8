"""Staff acting on escalations by WhatsApp (TAKE, ASSIGN, ACK, SNOOZE, STOP/START, HELP),
through the real signed webhook, against real stored alerts, digests and stage visits."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from sqlalchemy import make_url, select
from sqlalchemy.orm import Session

from whatsdesk import (
    accounts,
    audit,
    commands,
    configuration,
    desk,
    escalation,
    jobs,
    notifications,
    pipeline_store,
    pipelines,
)
from whatsdesk.alarms import TICK_AHEAD_SECONDS, Alarms
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Card, CardActivity, Contact, Message, SlaEvent, StageVisit

from conftest import (
    PASSWORD,
    STAFF,
    commit_once_it_waits,
    fresh,
    inbound_form,
    login,
    page_token,
    signed_post,
)

INBOUND = "/twilio/whatsapp"
PHONE = {email.split("@")[0]: phone for _, email, _, phone in STAFF}
# Escalation level 1 five minutes after the breach (to Bruno), level 2 twenty minutes after.
CONFIG = """
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 10m
        escalate:
          - after: 5m
            to: [bruno@example.com]
          - after: 20m
            to: [otto@example.com]
      - key: waiting
        name: Waiting
        sla: 10m
        escalate:
          - after: 5m
            to: [bruno@example.com]
notifications:
  digest_window: 30s
"""


@pytest.fixture
def desk_config(env: Config, session: Session) -> Config:
    """Ana and Bruno (agents), Sofia and Otto (supervisors), and the pipeline; jobs run
    in-process in simulator mode, where the send job stores a message SID as with Twilio."""
    for name, email, role, phone in STAFF:
        accounts.create_user(
            session,
            name=name,
            email=email,
            role=role,
            whatsapp=phone,
            password=PASSWORD,
            now=utcnow(),
        )
    pipeline_store.load(session, pipelines.parse(CONFIG), utcnow())
    session.commit()
    return env


def post(client: FlaskClient, config: Config, form: dict[str, str]) -> None:
    answer = signed_post(client, config, INBOUND, form)
    assert answer.status_code == 200, answer.get_data(as_text=True)  # type: ignore[attr-defined]


def customer_writes(
    client: FlaskClient, config: Config, session: Session, phone: str = "+5511999990000"
) -> Card:
    """A customer's first message opens a card (now, in real time)."""
    post(client, config, inbound_form(phone=phone, name=f"Customer {phone[-2:]}"))
    fresh(session)
    return session.scalars(
        select(Card).join(Contact).where(Contact.address == f"whatsapp:{phone}")
    ).one()


def visit_of(session: Session, card: Card) -> StageVisit:
    fresh(session)
    return session.scalars(
        select(StageVisit).where(StageVisit.card_id == card.id, StageVisit.left_at.is_(None))
    ).one()


def breach(session: Session, card: Card) -> StageVisit:
    """The card's SLA runs out: the supervisors' alerts are queued."""
    visit = visit_of(session, card)
    assert visit.deadline_at is not None
    assert escalation.fire(session, visit.id, "breach", visit.deadline_at) is not None
    session.commit()
    return visit


def deliver(session: Session, who: str, config: Config, hours: int = 1) -> list[Message]:
    """The person's pending alerts go out (alone, or as one digest) through the send job,
    which stores Twilio's SID, `hours` from now; the messages sent."""
    user = accounts.find_by_email(session, f"{who}@example.com")
    assert user is not None
    batch = notifications.gather(session, user.id, utcnow() + timedelta(hours=hours))
    session.commit()
    ids = [m.id for m in batch.sends]
    for message_id in ids:
        assert jobs.send_message(message_id) == "sent"
    fresh(session)
    return [m for m in (session.get(Message, n) for n in ids) if m is not None]


def staff_says(
    client: FlaskClient,
    config: Config,
    who: str,
    body: str,
    replying_to: Message | None = None,
    sid: str | None = None,
) -> dict[str, str]:
    """A staff member writes to the desk number, with WhatsApp's "reply" on `replying_to`."""
    form = inbound_form(phone=PHONE[who], name=who.title(), body=body, sid=sid)
    if replying_to is not None:
        assert replying_to.sid
        form["OriginalRepliedMessageSid"] = replying_to.sid
    post(client, config, form)
    return form


def answers_to(session: Session, who: str) -> list[Message]:
    """What the desk answered a staff member's commands, oldest first."""
    fresh(session)
    return list(
        session.scalars(
            select(Message)
            .where(
                Message.to_address == f"whatsapp:{PHONE[who]}",
                Message.dedupe_key.like("command-%"),
            )
            .order_by(Message.id)
        )
    )


def history(session: Session, card: Card) -> list[tuple[str, str]]:
    fresh(session)
    return [
        (a.kind, a.body)
        for a in session.scalars(
            select(CardActivity).where(CardActivity.card_id == card.id).order_by(CardActivity.id)
        )
    ]


def owner_of(session: Session, card: Card) -> str | None:
    fresh(session)
    found = session.get(Card, card.id)
    assert found is not None
    return found.owner.name if found.owner else None


def queued(config: Config, redis: Redis) -> list[str]:
    return Queue(config.queue_name, connection=redis).job_ids


# --- the alert says how to act ------------------------------------------------------------------


def test_a_breach_alert_ends_with_how_to_act(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)

    [alert] = deliver(session, "sofia", desk_config)

    assert alert.body.startswith("🚨 SLA breached — Customer 00")
    assert alert.body.endswith(
        f"Card #{card.id}.\nReply TAKE, ACK, SNOOZE 30 or ASSIGN <name> (card #{card.id})."
    )


# --- TAKE ---------------------------------------------------------------------------------------


def test_take_by_replying_to_the_alert_makes_the_card_yours_and_confirms(
    client: FlaskClient, desk_config: Config, session: Session, redis: Redis
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    [alert] = deliver(session, "sofia", desk_config)

    staff_says(client, desk_config, "sofia", "take", replying_to=alert)

    assert owner_of(session, card) == "Sofia Supervisor"
    assert history(session, card) == [("claimed", "Sofia Supervisor took the conversation")]
    [answer] = answers_to(session, "sofia")
    assert answer.body.startswith(f"✅ Card #{card.id} is yours: Customer 00 (+5511999990000)")
    assert (answer.card_id, answer.status) == (card.id, "pending")
    assert f"send-{answer.id}" in queued(desk_config, redis)


def test_take_by_code_works_for_an_agent_without_an_alert(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)

    staff_says(client, desk_config, "ana", f"TAKE #{card.id}")

    assert owner_of(session, card) == "Ana Agent"
    assert answers_to(session, "ana")[0].body.startswith(f"✅ Card #{card.id} is yours")


def test_take_of_a_card_someone_else_has_is_refused(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    staff_says(client, desk_config, "ana", f"take {card.id}")

    staff_says(client, desk_config, "bruno", f"take {card.id}")

    assert owner_of(session, card) == "Ana Agent"
    [answer] = answers_to(session, "bruno")
    assert answer.body == f"⚠️ Ana Agent already has this conversation (card #{card.id})."


# --- ASSIGN -------------------------------------------------------------------------------------


def test_assign_by_code_to_a_named_agent(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)

    staff_says(client, desk_config, "sofia", f"ASSIGN Bruno #{card.id}")

    assert owner_of(session, card) == "Bruno Agent"
    assert history(session, card) == [("assigned", "Sofia Supervisor gave it to Bruno Agent")]
    assert answers_to(session, "sofia")[0].body.startswith(
        f"✅ Card #{card.id} is now Bruno Agent's: Customer 00"
    )


def test_assign_by_reply_to_an_email(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    [alert] = deliver(session, "otto", desk_config)

    staff_says(client, desk_config, "otto", "assign ana@example.com", replying_to=alert)

    assert owner_of(session, card) == "Ana Agent"


# --- ACK ----------------------------------------------------------------------------------------


def test_ack_by_reply_stops_further_levels_and_shows_on_the_conversation_page(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    visit = breach(session, card)
    level_1 = visit.timers.levels[0]
    [alert] = deliver(session, "sofia", desk_config)

    staff_says(client, desk_config, "sofia", "ACK", replying_to=alert)

    visit = visit_of(session, card)
    assert visit.acknowledged_at is not None and visit.acknowledged_by is not None
    assert visit.acknowledged_by.name == "Sofia Supervisor"
    assert visit.next_due_at is None  # it owes nothing more: the sweep leaves it alone
    assert escalation.fire(session, visit.id, "level-1", level_1) is None
    assert escalation.fire(session, visit.id, "level-2", level_1 + timedelta(hours=1)) is None
    session.commit()
    assert session.scalars(select(SlaEvent.kind)).all() == ["breach"]
    [answer] = answers_to(session, "sofia")
    assert answer.body.startswith(
        f"✅ Card #{card.id} acknowledged: no further escalation levels in New"
    )
    login(client, "otto@example.com")
    page = client.get(f"/cards/{card.id}").get_data(as_text=True)
    assert (
        "Sofia Supervisor acknowledged the escalation by WhatsApp; "
        "levels 1 and 2 will not fire" in page
    )
    assert "acknowledged by Sofia Supervisor" in page


def acknowledge_form(client: FlaskClient, card: Card) -> dict[str, str]:
    """The conversation page's "Acknowledge escalation" form, as the browser would post it
    (the page must offer it)."""
    page = client.get(f"/cards/{card.id}").get_data(as_text=True)
    form = re.search(r'<form [^>]*action="/cards/\d+/acknowledge".*?</form>', page, re.S)
    assert form, "the page offers no Acknowledge escalation"
    return dict(re.findall(r'name="([a-z_]+)" value="([^"]*)"', form[0]))


def press_acknowledge(
    client: FlaskClient, card: Card, form: dict[str, str] | None = None
) -> tuple[int, str]:
    """Press "Acknowledge escalation" (on the page as it is now, or as it was when `form`
    was read from it): the post's status, and the page it leads back to."""
    form = form or acknowledge_form(client, card)
    answer = client.post(f"/cards/{card.id}/acknowledge", data=form)
    return answer.status_code, client.get(f"/cards/{card.id}").get_data(as_text=True)


def test_a_supervisor_acknowledges_on_the_conversation_page_and_no_level_fires(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    visit = breach(session, card)
    level_1 = visit.timers.levels[0]
    login(client, "otto@example.com")
    assert "Acknowledge escalation" in client.get(f"/cards/{card.id}").get_data(as_text=True)

    status, page = press_acknowledge(client, card)

    assert status == 302
    assert "Escalation acknowledged: its remaining levels will not fire in this stage." in page
    assert (
        "Otto Supervisor acknowledged the escalation on the desk; levels 1 and 2 will not fire"
        in page
    )
    assert "acknowledged by Otto Supervisor" in page
    assert "Acknowledge escalation" not in page
    visit = visit_of(session, card)
    assert visit.next_due_at is None
    assert escalation.fire(session, visit.id, "level-1", level_1) is None
    session.commit()
    assert session.scalars(select(SlaEvent.kind)).all() == ["breach"]


def test_an_escalation_acknowledged_meanwhile_is_not_acknowledged_twice(
    app: Flask, client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    sofia, otto = app.test_client(), app.test_client()
    login(sofia, "sofia@example.com")
    login(otto, "otto@example.com")
    opened_earlier = acknowledge_form(otto, card)
    press_acknowledge(sofia, card)

    status, page = press_acknowledge(otto, card, opened_earlier)

    assert status == 302
    assert "the escalation in New was already acknowledged by Sofia Supervisor" in page
    fresh(session)
    kinds = session.scalars(select(CardActivity.kind).where(CardActivity.card_id == card.id))
    assert list(kinds).count("acknowledged") == 1


def test_acknowledging_a_page_opened_before_the_card_moved_acknowledges_nothing(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    """The supervisor saw the escalation in New; meanwhile the card moved on: its new stage,
    which they never saw, is not acknowledged."""
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    login(client, "otto@example.com")
    opened_earlier = acknowledge_form(client, card)
    moved = client.post(
        f"/cards/{card.id}/move",
        data={"csrf_token": opened_earlier["csrf_token"], "stage": "waiting"},
    )
    assert moved.status_code == 302

    status, page = press_acknowledge(client, card, opened_earlier)

    assert status == 302
    assert "the conversation has moved since the page was opened" in page
    fresh(session)
    assert session.scalars(select(StageVisit.acknowledged_at)).all() == [None, None]


def test_agents_neither_see_nor_use_the_acknowledge_action(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    login(client, "ana@example.com")
    assert "Acknowledge escalation" not in client.get(f"/cards/{card.id}").get_data(as_text=True)
    form = {"csrf_token": page_token(client, f"/cards/{card.id}")}
    form["visit_id"] = str(visit_of(session, card).id)

    status, _page = press_acknowledge(client, card, form)

    assert status == 403
    assert visit_of(session, card).acknowledged_at is None


def test_ack_in_portuguese_by_code(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)

    staff_says(client, desk_config, "otto", f"Ciente, cartão #{card.id}")

    assert visit_of(session, card).acknowledged_at is not None


def test_ack_before_the_breach_lets_the_breach_fire_but_no_level(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    staff_says(client, desk_config, "sofia", f"ack #{card.id}")
    visit = visit_of(session, card)
    assert visit.next_due_at == visit.deadline_at

    jobs.reconcile(desk_config, visit.timers.levels[1] + timedelta(minutes=1))

    fresh(session)
    assert session.scalars(select(SlaEvent.kind)).all() == ["breach"]
    assert visit_of(session, card).next_due_at is None


def test_an_agent_cannot_ack(client: FlaskClient, desk_config: Config, session: Session) -> None:
    card = customer_writes(client, desk_config, session)

    staff_says(client, desk_config, "ana", f"ACK #{card.id}")

    assert visit_of(session, card).acknowledged_at is None
    assert history(session, card) == []
    [answer] = answers_to(session, "ana")
    assert answer.body == "⚠️ Only supervisors and admins can ACK; you can TAKE a card."


# --- an alert about an earlier stage visit ------------------------------------------------------


def moves_on(session: Session, card: Card) -> StageVisit:
    """The card goes to Waiting: a new stage visit."""
    desk.move_card(session, card.id, "waiting", utcnow())
    session.commit()
    return visit_of(session, card)


def test_ack_replying_to_an_alert_about_a_stage_the_card_has_left_changes_nothing(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    old = breach(session, card)
    [alert] = deliver(session, "sofia", desk_config)
    moves_on(session, card)

    staff_says(client, desk_config, "sofia", "ACK", replying_to=alert)

    [answer] = answers_to(session, "sofia")
    assert answer.body == (
        f"⚠️ Card #{card.id} has moved on from New to Waiting since that alert: nothing to "
        f"acknowledge there. Reply ACK #{card.id} to acknowledge its current stage."
    )
    assert visit_of(session, card).acknowledged_at is None
    assert session.get(StageVisit, old.id).acknowledged_at is None  # type: ignore[union-attr]
    assert history(session, card) == []


def test_ack_replying_to_an_alert_from_before_the_card_was_reopened_changes_nothing(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    [alert] = deliver(session, "sofia", desk_config)
    desk.resolve(session, card.id, utcnow())
    desk.reopen(session, card.id, utcnow())  # back in New, a new visit
    session.commit()

    staff_says(client, desk_config, "sofia", "ciente", replying_to=alert)

    assert answers_to(session, "sofia")[0].body.startswith(
        f"⚠️ Card #{card.id} has left New and come back since that alert: nothing to acknowledge"
    )
    assert visit_of(session, card).acknowledged_at is None


def test_snooze_replying_to_an_alert_about_a_stage_the_card_has_left_changes_nothing(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    [alert] = deliver(session, "sofia", desk_config)
    levels = moves_on(session, card).timers.levels

    staff_says(client, desk_config, "sofia", "snooze 30", replying_to=alert)

    assert answers_to(session, "sofia")[0].body == (
        f"⚠️ Card #{card.id} has moved on from New to Waiting since that alert: nothing to "
        f"snooze there. Reply SNOOZE 30 #{card.id} to snooze its current stage."
    )
    assert visit_of(session, card).timers.levels == levels
    assert history(session, card) == []


def test_ack_replying_to_the_alert_about_the_current_stage_acknowledges_it(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    deliver(session, "sofia", desk_config)
    moves_on(session, card)
    current = breach(session, card)
    [alert] = deliver(session, "sofia", desk_config, hours=2)  # after the digest window
    assert "Support › Waiting" in alert.body

    staff_says(client, desk_config, "sofia", "ACK", replying_to=alert)

    visit = visit_of(session, card)
    assert visit.id == current.id and visit.acknowledged_at is not None
    assert answers_to(session, "sofia")[0].body.startswith(
        f"✅ Card #{card.id} acknowledged: no further escalation levels in Waiting"
    )


def test_ack_by_number_after_the_card_moved_acknowledges_its_current_stage(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    old = breach(session, card)
    [alert] = deliver(session, "sofia", desk_config)
    moves_on(session, card)

    staff_says(client, desk_config, "sofia", f"ACK #{card.id}", replying_to=alert)

    assert visit_of(session, card).acknowledged_at is not None
    assert session.get(StageVisit, old.id).acknowledged_at is None  # type: ignore[union-attr]
    assert answers_to(session, "sofia")[0].body.startswith(
        f"✅ Card #{card.id} acknowledged: no further escalation levels in Waiting"
    )


# --- SNOOZE -------------------------------------------------------------------------------------


def test_snooze_moves_the_next_level_and_those_after_it_and_rearms_them(
    client: FlaskClient, desk_config: Config, session: Session, redis: Redis
) -> None:
    card = customer_writes(client, desk_config, session)
    visit = breach(session, card)
    level_1, level_2 = visit.timers.levels

    staff_says(client, desk_config, "sofia", f"SNOOZE 30 #{card.id}")

    visit = visit_of(session, card)
    later = timedelta(minutes=30)
    assert visit.timers.levels == (level_1 + later, level_2 + later)
    assert visit.next_due_at == level_1 + later
    rings = Alarms(desk_config.redis_url, desk_config.queue_name).wakes_for(level_1 + later)
    assert rings == (level_1 + later).replace(microsecond=0) - timedelta(seconds=TICK_AHEAD_SECONDS)
    assert escalation.fire(session, visit.id, "level-1", level_1) is None  # not yet
    assert escalation.fire(session, visit.id, "level-1", level_1 + later) is not None
    session.commit()
    [(kind, body)] = history(session, card)
    assert kind == "snoozed"
    assert body.startswith("Sofia Supervisor snoozed the escalation 30 min by WhatsApp")
    assert answers_to(session, "sofia")[0].body.startswith(f"⏰ Card #{card.id} snoozed 30 min")


def test_the_sweep_puts_a_snoozed_level_back_in_redis_at_its_new_instant(
    client: FlaskClient, desk_config: Config, session: Session, redis: Redis
) -> None:
    card = customer_writes(client, desk_config, session)
    visit = breach(session, card)
    moved = visit.timers.levels[0] + timedelta(minutes=45)
    staff_says(client, desk_config, "sofia", f"snooze 45 #{card.id}")
    redis.flushdb()  # Redis lost every job

    jobs.reconcile(desk_config, moved - timedelta(minutes=1))

    rings = Alarms(desk_config.redis_url, desk_config.queue_name).wakes_for(moved)
    assert rings == moved.replace(microsecond=0) - timedelta(seconds=TICK_AHEAD_SECONDS)


def test_snooze_after_the_first_level_moves_only_the_second(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    visit = breach(session, card)
    level_1, level_2 = visit.timers.levels
    assert escalation.fire(session, visit.id, "level-1", level_1) is not None
    session.commit()
    [alert] = deliver(session, "bruno", desk_config)  # level 1 goes to Bruno, an agent
    staff_says(client, desk_config, "bruno", "snooze 15", replying_to=alert)
    assert answers_to(session, "bruno")[0].body.startswith("⚠️ Only supervisors and admins")

    staff_says(client, desk_config, "otto", f"snooze 15m #{card.id}")

    assert visit_of(session, card).timers.levels == (level_1, level_2 + timedelta(minutes=15))


def level_1_later() -> pipelines.DeskSpec:
    """The configuration with New's escalation level 1 10 min after the breach (was 5)."""
    changed = CONFIG.replace("after: 5m", "after: 10m", 1)
    assert changed != CONFIG
    return pipelines.parse(changed)


def new_schedule(deadline: datetime, snoozed: int) -> tuple[datetime, datetime]:
    """New's two levels under level_1_later, `snoozed` minutes later."""
    later = timedelta(minutes=snoozed)
    return (deadline + timedelta(minutes=10) + later, deadline + timedelta(minutes=20) + later)


def test_a_snooze_is_kept_when_the_settings_re_time_open_cards(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    """A supervisor snoozed 30 min; then level 1 of the stage changes from 5 to 10 min after
    the breach, open cards re-timed: the levels come 30 min after the new schedule, not at
    it (the snooze is not undone)."""
    card = customer_writes(client, desk_config, session)
    visit = breach(session, card)
    deadline = visit.timers.deadline_at
    assert deadline is not None
    staff_says(client, desk_config, "sofia", f"SNOOZE 30 #{card.id}")
    fresh(session)

    configuration.apply(session, level_1_later(), None, "import", "test", utcnow(), retime=True)
    session.commit()

    assert visit_of(session, card).timers.levels == new_schedule(deadline, snoozed=30)


def test_a_snooze_committed_while_the_settings_re_time_open_cards_is_kept(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    """Sofia's SNOOZE 60 holds the card when an admin's save re-times the open cards: the
    re-timing waits for it, and the levels come 60 min after the new schedule, as she was
    told, not at the new schedule itself."""
    if make_url(desk_config.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has no row locks: it runs one writer at a time")
    card = customer_writes(client, desk_config, session)
    deadline = breach(session, card).timers.deadline_at
    assert deadline is not None
    sofia = accounts.find_by_email(session, "sofia@example.com")
    assert sofia is not None
    sessions = session_factory(desk_config.database_url)
    snoozer, saver = sessions(), sessions()

    def save_and_retime() -> None:
        configuration.apply(saver, level_1_later(), None, "import", "test", utcnow(), retime=True)
        saver.commit()

    try:
        command = commands.parse(f"SNOOZE 60 #{card.id}")
        commands.execute(snoozer, snoozer.merge(sofia), command, None, utcnow())
        commit_once_it_waits(snoozer, desk_config.database_url, save_and_retime)
    finally:
        snoozer.close()
        saver.close()

    assert visit_of(session, card).timers.levels == new_schedule(deadline, snoozed=60)


# --- finding the card ---------------------------------------------------------------------------


def test_a_reply_to_a_digest_of_several_cards_needs_the_code(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    first = customer_writes(client, desk_config, session, phone="+5511999990001")
    second = customer_writes(client, desk_config, session, phone="+5511999990002")
    breach(session, first)
    breach(session, second)
    [digest] = deliver(session, "sofia", desk_config)
    assert digest.body.startswith("📋 2 SLA alerts")

    staff_says(client, desk_config, "sofia", "ack", replying_to=digest)

    assert answers_to(session, "sofia")[0].body == (
        f"⚠️ That digest covers cards #{first.id}, #{second.id}: add the card's number, "
        f"e.g. ACK #{first.id}."
    )
    assert visit_of(session, first).acknowledged_at is None
    assert visit_of(session, second).acknowledged_at is None

    staff_says(client, desk_config, "sofia", f"ack #{second.id}", replying_to=digest)

    assert visit_of(session, first).acknowledged_at is None
    assert visit_of(session, second).acknowledged_at is not None


def test_an_answer_to_a_digest_of_many_cards_names_ten_and_an_example_to_send(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    cards = [
        customer_writes(client, desk_config, session, phone=f"+55119999900{n:02d}")
        for n in range(12)
    ]
    for card in cards:
        breach(session, card)
    [digest] = deliver(session, "sofia", desk_config)

    staff_says(client, desk_config, "sofia", "assign ana", replying_to=digest)

    first, *_ = ids = sorted(card.id for card in cards)
    listed = ", ".join(f"#{n}" for n in ids[:10])
    [told] = answers_to(session, "sofia")
    assert told.body == (
        f"⚠️ That digest covers cards {listed} and 2 more: add the card's number, "
        f"e.g. ASSIGN #{first} ana."
    )
    staff_says(client, desk_config, "sofia", f"ASSIGN #{first} ana")  # the example, as given
    assert owner_of(session, cards[0]) == "Ana Agent"


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ("good morning", "whatsdesk commands — reply to an alert"),
        ("ACK", "⚠️ Which card? Reply to its alert, or add its number, e.g. ACK #12."),
        ("TAKE #999999", "⚠️ There is no card #999999."),
        ("ASSIGN Zed #{card}", "⚠️ Nobody active on the staff is called 'zed'; try their email."),
        ("ASSIGN supervisor #{card}", "⚠️ 'supervisor' could be Otto Supervisor, Sofia Super"),
        ("SNOOZE soon #{card}", "⚠️ Say how many minutes, e.g. SNOOZE 30."),
        ("ack #{card} please", "⚠️ I did not understand 'please'."),
        (  # a long message starting with a command word: its start is quoted, not all of it
            "Take a look #{card} " + "at this customer, they are upset; " * 45,
            "⚠️ I did not understand 'a look at this customer they are upset at this "
            "customer the…'.",
        ),
    ],
)
def test_what_is_not_a_command_changes_nothing_and_is_answered(
    client: FlaskClient, desk_config: Config, session: Session, body: str, answer: str
) -> None:
    card = customer_writes(client, desk_config, session)

    staff_says(client, desk_config, "sofia", body.format(card=card.id))

    [told] = answers_to(session, "sofia")
    assert told.body.startswith(answer), told.body
    assert owner_of(session, card) is None
    assert visit_of(session, card).acknowledged_at is None
    assert history(session, card) == []


def test_help_lists_the_commands_each_role_may_use(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    staff_says(client, desk_config, "sofia", "help")
    staff_says(client, desk_config, "ana", "Ajuda")

    [for_supervisor] = answers_to(session, "sofia")
    [for_agent] = answers_to(session, "ana")
    assert "• SNOOZE 30 — the next escalation level comes 30 minutes later" in for_supervisor.body
    assert "A digest covers several cards: add the number" in for_supervisor.body
    assert "SNOOZE 30 —" not in for_agent.body
    assert "(ASSIGN, ACK and SNOOZE are for supervisors.)" in for_agent.body


def test_stop_from_a_staff_number_ends_its_alerts_until_start(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    """Each alert goes to the others it names (here the other supervisor), not to a number
    that opted out; START brings them back."""
    staff_says(client, desk_config, "sofia", "STOP")
    first = customer_writes(client, desk_config, session)
    breach(session, first)

    assert deliver(session, "sofia", desk_config) == []
    [to_otto] = deliver(session, "otto", desk_config)
    assert to_otto.body.startswith("🚨 SLA breached") and f"Card #{first.id}." in to_otto.body

    staff_says(client, desk_config, "sofia", "Voltar")  # START in Portuguese
    second = customer_writes(client, desk_config, session, phone="+5511999990001")
    breach(session, second)

    [alert] = deliver(session, "sofia", desk_config)
    assert f"Card #{second.id}." in alert.body
    stopped, started = answers_to(session, "sofia")
    assert stopped.body.startswith("🔕 No more alerts to this number")
    assert started.body.startswith("✅ Alerts reach this number again.")


def test_alerts_held_for_someone_who_sent_stop_are_failed_with_why_and_staff_page_says_so(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    breach(session, card)  # Sofia's alert waits to be sent…
    staff_says(client, desk_config, "sofia", "stop")  # …when she opts out

    assert deliver(session, "sofia", desk_config) == []
    fresh(session)
    held = session.scalars(
        select(Message).where(
            Message.to_address == f"whatsapp:{PHONE['sofia']}", Message.sla_event_id.is_not(None)
        )
    ).one()
    assert (held.status, held.error_message) == (
        "failed",
        "not sent: Sofia Supervisor sent STOP (alerts resume with START)",
    )
    login(client, "otto@example.com")
    page = client.get("/settings/staff").get_data(as_text=True)
    assert re.search(r"🔕 sent STOP \d{4}-\d\d-\d\d \d\d:\d\d UTC", page)


def test_an_alert_already_on_its_way_is_not_sent_after_stop(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    """Handed to the sender, then STOP before its send job ran (a retry after a Twilio
    error, a send the sweep queued again): failed with why, not sent."""
    card = customer_writes(client, desk_config, session)
    breach(session, card)
    sofia = accounts.find_by_email(session, "sofia@example.com")
    assert sofia is not None
    [alert] = notifications.gather(session, sofia.id, utcnow() + timedelta(hours=1)).sends
    session.commit()
    staff_says(client, desk_config, "sofia", "STOP")

    assert jobs.send_message(alert.id) == "failed"

    fresh(session)
    held = session.get_one(Message, alert.id)
    assert (held.status, held.sid, held.error_message) == (
        "failed",
        None,
        "not sent: Sofia Supervisor sent STOP (alerts resume with START)",
    )
    [stopped] = answers_to(session, "sofia")  # the answer to STOP itself went out
    assert stopped.body.startswith("🔕") and jobs.send_message(stopped.id) == "sent"


def test_stop_with_more_words_is_not_an_opt_out(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    staff_says(client, desk_config, "sofia", "stop #12")

    [told] = answers_to(session, "sofia")
    assert told.body.startswith("whatsdesk commands")
    user = accounts.find_by_email(session, "sofia@example.com")
    assert user is not None and user.alerts_stopped_at is None


def test_a_new_number_for_someone_who_sent_stop_gets_alerts(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    staff_says(client, desk_config, "sofia", "STOP")
    fresh(session)
    sofia = accounts.find_by_email(session, "sofia@example.com")
    assert sofia is not None and not sofia.reachable_by_whatsapp

    accounts.update_user(
        session,
        sofia,
        sofia,
        utcnow(),
        name=sofia.name,
        email=sofia.email,
        role=sofia.role,
        whatsapp="+15550000099",
        shift_calendar=None,
        can_edit_settings=False,
    )
    session.commit()

    assert sofia.reachable_by_whatsapp
    change = audit.entries(session, limit=1)[0]  # the audit log says the STOP was lifted
    assert (change.before["alerts"], change.after["alerts"]) == ("stopped by STOP", "on")
    assert change.after["whatsapp"] == "whatsapp:+15550000099"


def test_a_command_on_a_resolved_card_changes_nothing(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    desk.resolve(session, card.id, utcnow())
    session.commit()

    staff_says(client, desk_config, "sofia", f"TAKE #{card.id}")

    assert owner_of(session, card) is None
    assert answers_to(session, "sofia")[0].body == f"⚠️ Card #{card.id} is resolved: nothing to do."


# --- delivery -----------------------------------------------------------------------------------


def test_a_webhook_delivered_twice_confirms_once(
    client: FlaskClient, desk_config: Config, session: Session, redis: Redis
) -> None:
    card = customer_writes(client, desk_config, session)
    form = staff_says(client, desk_config, "otto", f"snooze 10 #{card.id}")
    levels = visit_of(session, card).timers.levels

    post(client, desk_config, form)  # Twilio's retry of the same MessageSid

    assert len(answers_to(session, "otto")) == 1
    assert len(history(session, card)) == 1
    assert visit_of(session, card).timers.levels == levels  # not snoozed twice


def test_a_customer_writing_a_command_is_an_ordinary_customer(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)

    post(client, desk_config, inbound_form(phone="+5511988887777", body=f"ACK {card.id}"))

    fresh(session)
    assert visit_of(session, card).acknowledged_at is None
    other = session.scalars(select(Card).where(Card.id != card.id)).one()
    assert other.contact.address == "whatsapp:+5511988887777"
    assert session.scalars(select(Message).where(Message.dedupe_key.like("command-%"))).all() == []


def test_a_staff_command_without_a_valid_signature_is_refused_and_changes_nothing(
    client: FlaskClient, desk_config: Config, session: Session
) -> None:
    card = customer_writes(client, desk_config, session)
    form = inbound_form(phone=PHONE["sofia"], name="Sofia", body=f"ACK #{card.id}")

    unsigned = client.post(INBOUND, data=form)
    forged = client.post(INBOUND, data=form, headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})

    assert (unsigned.status_code, forged.status_code) == (403, 403)
    assert visit_of(session, card).acknowledged_at is None
    assert answers_to(session, "sofia") == []
    assert history(session, card) == []
