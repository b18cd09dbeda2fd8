"""Stage pauses and timeouts, the card's resolution SLA, pipeline automation, the agent's
reply, resolve and reopen, stage-visit history, re-timing, and their configuration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from whatsdesk import (
    accounts,
    desk,
    escalation,
    jobs,
    notifications,
    pipeline_store,
    pipelines,
    whatsapp,
)
from whatsdesk.config import Config
from whatsdesk.models import Card, Message, SlaEvent, StageVisit, User

from conftest import PASSWORD, STAFF, fresh, inbound_form

# Monday 2 March 2026, 09:00 UTC: the office opens.
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MARIA, JOAO = "+5511999990000", "+5511888880000"
SOFIA, OTTO = "whatsapp:+15550000003", "whatsapp:+15550000004"
CLOSING = "We are closing this conversation for now; write again any time."
LOOKING = "We are looking into your question again."
CONFIG = f"""
calendars:
  - key: office
    name: Office
    timezone: UTC
    hours:
      mon-fri: ["09:00-17:00"]
pipelines:
  - key: support
    name: Support
    default: true
    calendar: office
    resolution: 8h
    resolution_warning: 1h
    automation:
      customer_message: reply
      agent_reply: {{to: waiting, from: [new, reply]}}
      reopen: reply
    stages:
      - key: new
        name: New
        sla: 1h
        alert: [bruno@example.com]
      - key: reply
        name: Needs a reply
        sla: 2h
        warning: 30m
      - key: waiting
        name: Waiting on customer
        pause: true
        calendar: 24/7
        timeout:
          after: 23h
          then: resolve
          message: "{CLOSING}"
      - key: snoozed
        name: Snoozed
        pause: true
        timeout: {{after: 4h, then: reply, message: "{LOOKING}"}}
notifications:
  digest_window: 30s
"""


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant of March 2026, in UTC (the office's timezone)."""
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def desk_config(config: Config, session: Session) -> Config:
    for name, email, role, phone in STAFF:
        accounts.create_user(
            session, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD, now=T0
        )
    pipeline_store.load(session, pipelines.parse(CONFIG), T0)
    session.commit()
    return config


def write(
    session: Session, now: datetime, phone: str = MARIA, name: str = "Maria", body: str = "Hi"
) -> desk.Received:
    inbound = whatsapp.parse_inbound(inbound_form(phone=phone, body=body, name=name))
    received = desk.receive_message(session, inbound, now)
    session.commit()
    return received


def staff(session: Session, email: str) -> User:
    user = accounts.find_by_email(session, email)
    assert user is not None
    return user


def reply(session: Session, card: Card, now: datetime, body: str = "Hello!") -> desk.Replied:
    replied = desk.agent_reply(session, card.id, staff(session, "ana@example.com"), body, now)
    session.commit()
    return replied


def fire(session: Session, visit: StageVisit, kind: str, now: datetime) -> escalation.Fired:
    fired = escalation.fire(session, visit.id, kind, now)
    session.commit()
    assert fired is not None, f"{kind} of visit {visit.id} did not fire at {now}"
    return fired


def opened(session: Session, now: datetime = T0) -> tuple[Card, StageVisit]:
    received = write(session, now)
    assert received.card is not None and received.new_visit is not None
    return received.card, received.new_visit


def visits_of(session: Session, card: Card) -> list[StageVisit]:
    fresh(session)
    return list(
        session.scalars(
            select(StageVisit).where(StageVisit.card_id == card.id).order_by(StageVisit.id)
        )
    )


def events_of(session: Session, card: Card) -> list[tuple[str, str]]:
    """(kind, stage key of the visit that recorded it), in order."""
    fresh(session)
    return [
        (event.kind, event.visit.stage.key)
        for event in session.scalars(
            select(SlaEvent).where(SlaEvent.card_id == card.id).order_by(SlaEvent.id)
        )
    ]


def alerts_of(session: Session, fired: escalation.Fired) -> list[Message]:
    """The alerts an event queued, as stored."""
    return list(session.scalars(select(Message).where(Message.sla_event_id == fired.event.id)))


def recipients(messages: list[Message]) -> list[str]:
    return sorted(m.to_address for m in messages)


# --- the resolution clock -------------------------------------------------------------------


def test_friday_evening_the_resolution_clock_stops_after_hours_and_while_paused(
    desk_config: Config, session: Session
) -> None:
    card, first = opened(session, at(6, 16))  # Friday 16:00, one office hour left

    assert first.resolution_at == at(9, 16)  # 1h on Friday + 7h on Monday
    assert first.resolution_warning_at == at(9, 15)

    waiting = reply(session, card, at(6, 16, 30)).new_visit  # waiting on Maria: paused
    assert waiting is not None and waiting.paused
    assert (waiting.resolution_at, waiting.resolution_warning_at) == (None, None)

    back = write(session, at(6, 20)).new_visit  # Friday 20:00: she writes after hours
    assert back is not None and back.stage.key == "reply"
    session.refresh(card)
    assert card.resolution_used_seconds == 30 * 60  # Friday 16:00-16:30 only
    assert card.paused_seconds == 3 * 3600 + 30 * 60  # 16:30-20:00, office hours or not
    # 7h30m are left, counted from Monday's opening: the paused 16:30-17:00 is not spent.
    assert back.resolution_at == at(9, 16, 30)
    assert back.resolution_warning_at == at(9, 15, 30)
    assert jobs.reconcile(desk_config, at(8, 12))["fired"] == 0  # nothing rings on Sunday


def test_the_resolution_warning_goes_to_the_cards_owner(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)
    card.owner = staff(session, "ana@example.com")
    session.commit()

    fired = fire(session, visit, "resolution-warning", at(2, 16))

    assert recipients(alerts_of(session, fired)) == ["whatsapp:+15550000001"]
    assert alerts_of(session, fired)[0].body == (
        "⏳ Resolution SLA warning — Maria (+5511999990000)'s conversation (Support › New) "
        "has been open 7h 00m; the resolution SLA (8h 00m) runs out in 1h 00m "
        f"(17:00:00 UTC). Card #{card.id}."
    )


def test_an_unowned_cards_resolution_warning_goes_to_the_stage_alert_list(
    desk_config: Config, session: Session
) -> None:
    _, visit = opened(session)

    fired = fire(session, visit, "resolution-warning", at(2, 16))

    assert recipients(alerts_of(session, fired)) == [
        "whatsapp:+15550000002"
    ]  # Bruno, on New's list


def test_a_resolution_warning_with_nobody_else_to_tell_goes_to_the_supervisors(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    visit = desk.move_card(session, card.id, "reply", T0)  # no owner, no alert list
    session.commit()

    fired = fire(session, visit, "resolution-warning", at(2, 16))

    assert recipients(alerts_of(session, fired)) == [SOFIA, OTTO]


def test_the_resolution_breach_tells_every_supervisor(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)
    card.owner = staff(session, "ana@example.com")
    session.commit()

    fired = fire(session, visit, "resolution-breach", at(2, 17))

    assert recipients(alerts_of(session, fired)) == [SOFIA, OTTO]
    assert alerts_of(session, fired)[0].body == (
        "🚨 Resolution SLA breached — Maria (+5511999990000)'s conversation (Support › New) "
        "has been open 8h 00m, past its resolution SLA of 8h 00m (time waiting on the "
        f"customer not counted). Card #{card.id}."
    )


def test_the_resolution_warning_is_told_once_per_card_and_the_deadline_carries_over(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)
    fire(session, visit, "resolution-warning", at(2, 16))

    moved = desk.move_card(session, card.id, "reply", at(2, 16, 10))
    session.commit()

    assert moved.resolution_warning_at is None
    assert moved.resolution_at == at(2, 17)  # 7h10m spent in New: 50m left
    assert escalation.fire(session, moved.id, "resolution-warning", at(2, 16, 20)) is None


def test_the_resolution_breach_fires_once_even_when_the_card_moves_after_it(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    jobs.reconcile(desk_config, at(2, 17))  # New's own breach, and the card's

    moved = desk.move_card(session, card.id, "reply", at(2, 17, 30))
    session.commit()
    jobs.reconcile(desk_config, at(3, 18))  # a day later: Needs a reply breaches too

    assert (moved.resolution_warning_at, moved.resolution_at) == (None, None)
    assert events_of(session, card) == [
        ("breach", "new"),
        ("resolution-breach", "new"),
        ("breach", "reply"),
    ]
    assert escalation.fire(session, moved.id, "resolution-breach", at(3, 18)) is None


def test_the_database_records_one_resolution_breach_per_card(
    desk_config: Config, session: Session
) -> None:
    card, first = opened(session)
    fire(session, first, "breach", at(2, 10))
    fire(session, first, "resolution-breach", at(2, 17))
    second = desk.move_card(session, card.id, "reply", at(2, 17, 30))
    session.commit()

    session.add(  # another visit's breach of the stage SLA is its own
        SlaEvent(visit=second, card_id=card.id, kind="breach", due_at=T0, fired_at=T0)
    )
    session.commit()
    session.add(
        SlaEvent(visit=second, card_id=card.id, kind="resolution-breach", due_at=T0, fired_at=T0)
    )
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    assert events_of(session, card).count(("resolution-breach", "new")) == 1


def test_a_card_that_moves_after_its_resolution_sla_ran_out_is_breached_at_once(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)  # 8 office hours: until 17:00, and nobody swept at 17:00

    moved = desk.move_card(session, card.id, "reply", at(2, 17, 30))
    session.commit()

    assert moved.resolution_at == at(2, 17, 30)  # not Tuesday's opening
    fired = fire(session, moved, "resolution-breach", at(2, 17, 30))
    assert recipients(alerts_of(session, fired)) == [SOFIA, OTTO]


def test_a_breach_due_a_moment_before_the_card_moved_on_is_still_recorded_and_alerted(
    env: Config, desk_config: Config, session: Session
) -> None:
    """New's SLA ran out at 10:00; the agent's reply at 10:00:10 moved the card to
    "Waiting on customer" before the clock recorded the breach."""
    card, new = opened(session)
    reply(session, card, at(2, 10) + timedelta(seconds=10))

    jobs.reconcile(desk_config, at(2, 10, 1))

    assert events_of(session, card) == [("breach", "new")]
    alerts = session.scalars(select(Message).where(Message.sla_event_id.is_not(None))).all()
    assert recipients(list(alerts)) == [SOFIA, OTTO]  # the breach's supervisors
    assert [v.stage.key for v in visits_of(session, card)] == ["new", "waiting"]
    assert jobs.reconcile(desk_config, at(2, 10, 2))["fired"] == 0  # once


def test_a_resolution_sla_that_ran_out_before_a_pause_is_still_breached(
    env: Config, desk_config: Config, session: Session
) -> None:
    """The 8 office hours ran out at 17:00 and nobody swept then; at 17:30 the agent's
    reply moved the card to a stage that pauses the clock."""
    card, _ = opened(session)
    reply(session, card, at(2, 17, 30))

    jobs.reconcile(desk_config, at(2, 17, 31))

    assert ("resolution-breach", "new") in events_of(session, card)
    jobs.reconcile(desk_config, at(3, 16, 31))  # the waiting stage's 23 h timeout resolves it
    kinds = [kind for kind, _stage in events_of(session, card)]
    assert kinds.count("resolution-breach") == 1 and kinds[-1] == "timeout"


def test_the_clock_fires_a_warning_due_with_the_stage_timeout_before_the_timeout(
    env: Config, desk_config: Config, session: Session
) -> None:
    """ "Needs a reply" warns 30 min before its 2 h SLA, and here also times out after 90
    min, back to New: both at 10:30. The warning goes first (the timeout would move the card
    on and take the warning with it), as the sweep fires them."""
    timing_out = "warning: 30m\n" + " " * 8 + "timeout: {after: 90m, then: new}\n"
    pipeline_store.load(session, pipelines.parse(CONFIG.replace("warning: 30m\n", timing_out)), T0)
    card, _ = opened(session)
    visit = desk.move_card(session, card.id, "reply", T0)
    session.commit()

    owed = jobs.owed_before(desk_config, at(2, 10, 30), orphaned=T0)

    assert [(instant, kind) for instant, _visit, _order, kind in owed] == [
        (at(2, 10, 30), "warning"),
        (at(2, 10, 30), "timeout"),
    ]
    assert {visit_id for _instant, visit_id, _order, _kind in owed} == {visit.id}


# --- events, alerts and delivery ------------------------------------------------------------


def test_an_event_keeps_its_lateness_and_alerts_whose_status_follows_their_digest(
    desk_config: Config, session: Session
) -> None:
    _, visit = opened(session)
    breach = fire(session, visit, "breach", at(2, 10, 5)).event
    resolution = fire(session, visit, "resolution-breach", at(2, 17)).event

    assert (breach.lateness_seconds, resolution.lateness_seconds) == (300, 0)
    assert recipients(resolution.notifications) == [SOFIA, OTTO]
    sofia = staff(session, "sofia@example.com")
    digest = notifications.gather(session, sofia.id, at(2, 17)).sends[0]
    desk.record_sent(session, digest, "SM" + "d" * 32, "sent", at(2, 17))
    desk.apply_status(session, "SM" + "d" * 32, "delivered", None, at(2, 17, 1))
    session.commit()

    session.expire_all()
    to_sofia = [m for e in (breach, resolution) for m in e.notifications if m.user_id == sofia.id]
    assert [(m.status, m.delivery_status) for m in to_sofia] == [("bundled", "delivered")] * 2
    otto = [m for m in resolution.notifications if m.to_address == OTTO]
    assert [m.delivery_status for m in otto] == ["pending"]


# --- stage timeouts -------------------------------------------------------------------------


def test_a_timeout_tells_the_customer_and_resolves_the_card(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    waiting = reply(session, card, at(2, 9, 10)).new_visit
    assert waiting is not None
    assert waiting.timeout_at == at(3, 8, 10)  # 23h of its own 24/7 clock, not office hours
    assert escalation.fire(session, waiting.id, "timeout", at(3, 8, 9)) is None

    fired = fire(session, waiting, "timeout", at(3, 8, 10))

    assert (fired.event.kind, fired.event.detail) == ("timeout", {"action": "resolve"})
    assert [(m.to_address, m.body) for m in fired.messages] == [(f"whatsapp:{MARIA}", CLOSING)]
    assert fired.visits == []
    session.refresh(card)
    assert (card.status, card.resolved_at) == ("resolved", at(3, 8, 10))
    assert escalation.fire(session, waiting.id, "timeout", at(3, 9)) is None
    assert events_of(session, card) == [("timeout", "waiting")]


def test_a_timeout_moves_the_card_on_after_its_time_in_the_stage_calendar(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    write(session, at(2, 14), body="Still there?")  # their 24-hour window: to Tuesday 14:00
    snoozed = desk.move_card(session, card.id, "snoozed", at(2, 15))
    session.commit()
    assert snoozed.timeout_at == at(3, 11)  # 2 office hours on Monday, 2 on Tuesday

    fired = fire(session, snoozed, "timeout", at(3, 11))

    assert fired.event.detail == {"action": "move", "to": "reply"}
    assert [(m.to_address, m.body) for m in fired.messages] == [(f"whatsapp:{MARIA}", LOOKING)]
    [moved] = fired.visits
    session.refresh(card)
    assert (card.status, card.stage.key, moved.stage.key) == ("open", "reply", "reply")
    assert moved.deadline_at == at(3, 13)
    assert moved.resolution_at == at(3, 13)  # 6h spent in New, none while snoozed


def test_a_timeout_outside_the_customers_window_closes_the_card_without_the_message(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    snoozed = desk.move_card(session, card.id, "snoozed", at(2, 15))
    session.commit()

    fired = fire(session, snoozed, "timeout", at(3, 11))  # more than a day after they wrote

    assert fired.messages == []
    assert fired.event.detail == {
        "message": "not sent: outside the customer's 24-hour window",
        "action": "move",
        "to": "reply",
    }
    session.refresh(card)
    assert card.stage.key == "reply"


def test_a_timeout_never_resolves_a_card_whose_customer_is_waiting(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)  # nobody has answered yet
    waiting = desk.move_card(session, card.id, "waiting", at(2, 10))
    session.commit()

    fired = fire(session, waiting, "timeout", at(3, 9))

    assert fired.event.detail == {"action": "none", "why": "the customer is waiting for an answer"}
    assert fired.messages == []
    session.refresh(card)
    assert (card.status, card.stage.key) == ("open", "waiting")


def test_a_customer_writing_back_stops_the_waiting_stages_timeout(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    waiting = reply(session, card, at(2, 9, 10)).new_visit
    assert waiting is not None
    write(session, at(2, 12), body="Here is the photo")

    jobs.reconcile(desk_config, at(3, 8, 10))

    assert events_of(session, card) == [("breach", "reply")]  # Monday 14:00; no timeout
    assert escalation.fire(session, waiting.id, "timeout", at(3, 8, 10)) is None
    session.refresh(card)
    assert (card.status, card.stage.key) == ("open", "reply")
    assert session.scalars(select(Message.body).where(Message.body == CLOSING)).all() == []


# --- automation and the agent's reply -------------------------------------------------------


def test_a_new_conversation_opens_in_the_stage_automation_names(
    desk_config: Config, session: Session
) -> None:
    custom = CONFIG.replace("    automation:\n", "    automation:\n      new_conversation: reply\n")
    pipeline_store.load(session, pipelines.parse(custom), T0)
    session.commit()

    received = write(session, T0)

    assert received.card is not None and received.card.stage.key == "reply"
    assert received.new_visit is not None and received.new_visit.deadline_at == at(2, 11)
    assert "within 2 hours" in received.outbound[0].body


def test_an_agent_reply_is_queued_takes_the_card_and_waits_on_the_customer(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)

    replied = reply(session, card, at(2, 9, 10), "  Hi Maria, which order is it?  ")

    message = replied.message
    assert (message.direction, message.status) == ("out", "pending")
    assert (message.to_address, message.body) == (
        f"whatsapp:{MARIA}",
        "Hi Maria, which order is it?",
    )
    assert message.user is not None and message.user.email == "ana@example.com"
    session.refresh(card)
    assert card.owner is not None and card.owner.email == "ana@example.com"
    assert (card.waiting_since, card.stage.key) == (None, "waiting")
    assert replied.new_visit is not None and replied.new_visit.paused


def test_a_customer_writing_after_an_answer_goes_back_to_needs_a_reply(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    reply(session, card, at(2, 9, 10))

    back = write(session, at(2, 10), body="It is order 42")

    assert back.new_visit is not None and back.new_visit.stage.key == "reply"
    session.refresh(card)
    assert (card.stage.key, card.waiting_since) == ("reply", at(2, 10))
    stages = [(v.stage.key, v.entered_at, v.left_at) for v in visits_of(session, card)]
    assert stages == [
        ("new", T0, at(2, 9, 10)),
        ("waiting", at(2, 9, 10), at(2, 10)),
        ("reply", at(2, 10), None),
    ]


def test_a_customer_writing_again_before_any_answer_stays_where_they_are(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)

    again = write(session, at(2, 9, 5), body="Anyone there?")

    assert again.new_visit is None and again.outbound == []
    session.refresh(card)
    assert (card.stage.key, card.waiting_since) == ("new", T0)


def test_the_agent_reply_automation_moves_only_from_its_listed_stages(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    desk.move_card(session, card.id, "snoozed", at(2, 9, 5))
    session.commit()

    replied = reply(session, card, at(2, 9, 10))

    assert replied.new_visit is None
    session.refresh(card)
    assert (card.stage.key, card.waiting_since) == ("snoozed", None)
    assert card.owner is not None and card.owner.email == "ana@example.com"


def test_a_reply_whatsapp_cannot_carry_is_refused_and_changes_nothing(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    ana = staff(session, "ana@example.com")

    for body, why in [
        ("", "the reply is empty"),
        ("  \n ", "the reply is empty"),
        ("x" * 1601, "the reply is 1601 characters; WhatsApp takes at most 1600"),
    ]:
        with pytest.raises(desk.DeskError) as refused:
            desk.agent_reply(session, card.id, ana, body, at(2, 9, 10))
        assert str(refused.value) == why
    session.rollback()

    assert session.scalar(select(func.count()).where(Message.user_id == ana.id)) == 0
    session.refresh(card)
    assert (card.stage.key, card.owner, card.waiting_since) == ("new", None, T0)
    assert reply(session, card, at(2, 9, 10), "x" * 1600).message.body == "x" * 1600


def test_a_reply_is_refused_once_the_customers_last_message_is_a_day_old(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    ana = staff(session, "ana@example.com")

    with pytest.raises(desk.DeskError, match="more than 24 hours old"):
        desk.agent_reply(session, card.id, ana, "Sorry for the wait", T0 + timedelta(hours=24))
    session.rollback()

    just_in_time = T0 + timedelta(hours=24) - timedelta(seconds=1)
    assert reply(session, card, just_in_time).message.status == "pending"


# --- resolve and reopen ---------------------------------------------------------------------


def test_resolving_ends_the_visit_and_nothing_rings_after(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)

    desk.resolve(session, card.id, at(2, 9, 30))
    session.commit()

    session.refresh(card)
    assert (card.status, card.resolved_at, card.waiting_since) == ("resolved", at(2, 9, 30), None)
    session.refresh(visit)
    assert (visit.left_at, visit.outcome, visit.next_due_at) == (at(2, 9, 30), "met", None)
    assert card.resolution_used_seconds == 30 * 60
    assert jobs.reconcile(desk_config, at(3, 12))["fired"] == 0
    assert events_of(session, card) == []


def test_reopening_goes_to_the_reopen_stage_and_the_resolution_clock_goes_on(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    desk.resolve(session, card.id, at(2, 11))  # 2h of the 8h spent
    session.commit()

    visit = desk.reopen(session, card.id, at(3, 9))
    session.commit()

    session.refresh(card)
    assert (card.status, card.resolved_at, card.stage.key) == ("open", None, "reply")
    assert (visit.stage.key, visit.entered_at) == ("reply", at(3, 9))
    assert visit.resolution_at == at(3, 15)
    assert visit.resolution_warning_at == at(3, 14)


def test_reopening_is_refused_while_the_customer_has_another_open_card(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session)
    desk.resolve(session, card.id, at(2, 11))
    session.commit()
    newer = write(session, at(2, 12), body="One more thing").card
    assert newer is not None and newer.id != card.id

    with pytest.raises(desk.DeskError) as refused:
        desk.reopen(session, card.id, at(2, 13))
    assert str(refused.value) == f"Maria already has an open conversation (card #{newer.id})"
    with pytest.raises(desk.DeskError, match="already open"):
        desk.reopen(session, newer.id, at(2, 13))


# --- stage visit history --------------------------------------------------------------------


def test_a_visit_is_breached_when_its_breach_fires_and_stays_breached(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)
    assert visit.outcome == "ongoing"

    fire(session, visit, "breach", at(2, 10))
    session.refresh(visit)
    assert (visit.outcome, visit.left_at) == ("breached", None)

    reply(session, card, at(2, 10, 30))
    session.refresh(visit)
    assert (visit.outcome, visit.wall_seconds, visit.business_seconds) == ("breached", 5400, 5400)


def test_leaving_records_time_spent_met_or_no_sla_and_paused_time(
    desk_config: Config, session: Session
) -> None:
    card, _ = opened(session, at(2, 16, 50))
    reply(session, card, at(2, 16, 55))  # New met in 5 minutes
    write(session, at(3, 9, 5))  # after a night waiting on Maria

    new, waiting, _ = visits_of(session, card)
    assert (new.outcome, new.wall_seconds, new.business_seconds, new.paused_seconds) == (
        "met",
        300,
        300,
        0,
    )
    night = 16 * 3600 + 10 * 60
    assert (waiting.outcome, waiting.wall_seconds, waiting.business_seconds) == (
        "no_sla",
        night,
        night,  # its own 24/7 clock
    )
    assert waiting.paused_seconds == night
    session.refresh(card)
    assert (card.paused_seconds, card.resolution_used_seconds) == (night, 300)


# --- re-timing after a new configuration ----------------------------------------------------


def test_retime_moves_open_visits_to_the_stages_new_sla(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)
    assert (visit.deadline_at, visit.resolution_at) == (at(2, 10), at(2, 17))
    longer = CONFIG.replace("sla: 1h", "sla: 3h").replace("resolution: 8h", "resolution: 16h")
    loaded = pipeline_store.load(session, pipelines.parse(longer), at(2, 9, 30))
    session.commit()
    session.refresh(visit)
    assert visit.deadline_at == at(2, 10)  # a load alone changes no running clock

    retimed = pipeline_store.retime(session, loaded)
    session.commit()

    assert [v.id for v in retimed] == [visit.id]
    session.refresh(visit)
    assert (visit.deadline_at, visit.next_due_at) == (at(2, 12), at(2, 12))
    assert (visit.resolution_warning_at, visit.resolution_at) == (at(3, 16), at(3, 17))
    assert escalation.fire(session, visit.id, "breach", at(2, 10)) is None


def test_retime_applies_a_stage_that_now_pauses_to_its_clock_and_its_count(
    desk_config: Config, session: Session
) -> None:
    card, visit = opened(session)
    pausing = CONFIG.replace("sla: 1h\n", "sla: 1h\n        pause: true\n")
    loaded = pipeline_store.load(session, pipelines.parse(pausing), at(2, 9, 30))
    pipeline_store.retime(session, loaded)
    session.commit()

    session.refresh(visit)
    assert (visit.paused, visit.resolution_at, visit.next_due_at) == (True, None, at(2, 10))
    desk.move_card(session, card.id, "reply", at(2, 11))
    session.commit()
    session.refresh(card)
    assert (card.resolution_used_seconds, card.paused_seconds) == (0, 2 * 3600)


# --- configuration --------------------------------------------------------------------------


def test_stage_and_automation_mistakes_are_refused_naming_line_and_field() -> None:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        pipelines.parse(
            """
pipelines:
  - key: support
    name: Support
    resolution: 2h
    resolution_warning: 2h
    automation:
      agent_reply: nowhere
      customer_message: {to: new, from: [limbo]}
      closed: new
    stages:
      - key: new
        name: New
        reassign: least-loaded
        pause: sometimes
      - key: waiting
        name: Waiting
        timeout: {after: 23h, then: archive}
      - key: later
        name: Later
        timeout: {then: resolve}
"""
        )
    assert refused.value.problems == [
        "line 6: pipelines[0].resolution_warning: must be shorter than the resolution SLA",
        "line 15: pipelines[0].stages[0].pause: expected true or false",
        "line 14: pipelines[0].stages[0].reassign: reassigning on breach needs an `sla`",
        "line 21: pipelines[0].stages[2].timeout.after: is required: how long in the stage, "
        "e.g. 23h",
        "line 10: pipelines[0].automation.closed: unknown field (known: agent_reply, "
        "customer_message, new_conversation, reopen)",
        "line 8: pipelines[0].automation.agent_reply: no stage 'nowhere' in this pipeline",
        "line 9: pipelines[0].automation.customer_message.from[0]: no stage 'limbo' here",
        "line 18: pipelines[0].stages[1].timeout.then: no stage 'archive' in this pipeline "
        "(or `resolve`)",
    ]


def test_a_resolution_warning_without_a_resolution_is_refused() -> None:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        pipelines.parse(
            """
pipelines:
  - key: support
    name: Support
    resolution_warning: 1h
    stages:
      - {key: new, name: New}
"""
        )
    assert refused.value.problems == [
        "line 5: pipelines[0].resolution_warning: needs a `resolution`"
    ]


def test_the_new_fields_survive_a_dump_and_a_parse(desk_config: Config, session: Session) -> None:
    dumped = pipelines.parse(pipelines.dump(pipeline_store.dump(session)))

    [support] = dumped.pipelines
    assert (support.resolution_seconds, support.resolution_warning_seconds) == (8 * 3600, 3600)
    assert {event: (r.to, r.only_from) for event, r in support.automation.items()} == {
        "customer_message": ("reply", []),
        "agent_reply": ("waiting", ["new", "reply"]),
        "reopen": ("reply", []),
    }
    stages = {s.key: s for s in support.stages}
    assert [k for k, s in stages.items() if s.pause] == ["waiting", "snoozed"]
    waiting, snoozed = stages["waiting"].timeout, stages["snoozed"].timeout
    assert waiting is not None and snoozed is not None
    assert (waiting.after_seconds, waiting.then, waiting.message) == (23 * 3600, "resolve", CLOSING)
    assert (snoozed.after_seconds, snoozed.then, snoozed.message) == (4 * 3600, "reply", LOOKING)
    assert stages["new"].timeout is None and stages["new"].pause is False
