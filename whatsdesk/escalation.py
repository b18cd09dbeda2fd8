"""What happens when a visit's timer rings: the event is recorded once, the right people
are told, and the stage's actions (reassignment, its own timeout) are carried out."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session, joinedload

from . import calendars, clock, desk, sla
from .durations import humanize
from .models import SUPERVISOR_ROLES, BusinessCalendar, Card, Message, SlaEvent, StageVisit, User

log = logging.getLogger(__name__)


def may_fire(visit: StageVisit) -> bool:
    """The card's current visit on an open card, or one it has left, which owes what fell
    due before it ended (`sla.left_behind`)."""
    return visit.left_at is not None or visit.card.status == "open"


@dataclass
class Fired:
    """What firing an event did: the staff it alerts, a message to the customer (a stage
    timeout's goodbye), and a new stage visit to arm if the card moved."""

    event: SlaEvent
    messages: list[Message] = field(default_factory=list)
    visits: list[StageVisit] = field(default_factory=list)
    # Each alert's event and row: written together once the batch's events have their ids
    # (write_alerts), as plain rows rather than objects, the bulk of what a batch writes.
    alerts: list[tuple[SlaEvent, dict[str, Any]]] = field(default_factory=list)

    @property
    def told(self) -> list[int]:
        """The staff alerted, by id."""
        return [row["user_id"] for _event, row in self.alerts]


@dataclass
class Known:
    """What a batch of events reads once, not once per event: the supervisors, and the
    open cards of each active agent, kept current as the batch hands cards over (a storm
    of breaches spreads over the agents as event-by-event firing would)."""

    supervisors: list[User] | None = None
    agents: list[User] | None = None
    load: dict[int, int] = field(default_factory=dict)  # agent id → open cards

    def handed_over(self, previous: User | None, target: User) -> None:
        if self.agents is None:
            return
        self.load[target.id] = self.load.get(target.id, 0) + 1
        if previous is not None and previous.id in self.load:
            self.load[previous.id] -= 1


def fire(session: Session, visit_id: int, kind: str, now: datetime) -> Fired | None:
    """Record the event and queue its alerts; None when not due, moved on or recorded.

    A concurrent firing of the same event fails a unique constraint ((visit, kind), or
    (card, kind) for the resolution SLA) on flush or commit, which rolls back its alerts
    and actions too: the event and its effects happen once.
    """
    fired = fire_many(session, [(visit_id, kind)], lambda: now)
    return fired[0] if fired else None


def fire_many(
    session: Session, owed: Sequence[tuple[int, str]], now: Callable[[], datetime]
) -> list[Fired]:
    """`fire` for many events in one transaction, in the order given, each at `now()` as
    it comes: their cards locked together (in id order, so that two batches never wait on
    each other), their visits and recorded events read in one query each, and people read
    once. What `fire` would do, event by event — only fewer round trips."""
    visit_ids = sorted({visit_id for visit_id, _kind in owed})
    card_ids = select(StageVisit.card_id).where(StageVisit.id.in_(visit_ids))
    session.execute(  # lock first, then read what the lock now protects
        select(Card.id).where(Card.id.in_(card_ids)).order_by(Card.id).with_for_update()
    ).all()
    visits = {
        visit.id: visit
        for visit in session.scalars(
            select(StageVisit)
            .where(StageVisit.id.in_(visit_ids))
            .options(
                joinedload(StageVisit.stage),
                joinedload(StageVisit.card).options(
                    joinedload(Card.contact), joinedload(Card.pipeline), joinedload(Card.owner)
                ),
            )
            .order_by(StageVisit.id)  # locked in id order, as every writer of visits does
            .with_for_update(of=StageVisit)
            .execution_options(populate_existing=True)
        ).unique()
    }
    recorded = recorded_of(session, list(visits.values()))
    known = Known()
    fired = []
    for visit_id, kind in owed:
        visit = visits.get(visit_id)
        if visit is None:
            continue
        done = _fire_locked(session, visit, recorded[visit_id], kind, now(), known)
        if done is not None:
            # A resolution event is the card's: its other visits here have it too.
            card_wide = kind in sla.CARD_KINDS
            for other in visits.values() if card_wide else [visit]:
                if other.card_id == visit.card_id:
                    recorded[other.id].add(kind)
            fired.append(done)
    session.flush()  # the events and the visits' next instants, in bulk
    write_alerts(session, fired)
    return fired


def write_alerts(session: Session, fired: Sequence[Fired]) -> None:
    """The batch's alerts in one statement once its events have their ids (flushed): run
    many times over, it is prepared once, where the ORM's flush would write them as one
    statement whose text and parameters grow with the batch."""
    rows = [
        {**row, "sla_event_id": event.id, "dedupe_key": f"sla-{event.id}-user-{row['user_id']}"}
        for f in fired
        for event, row in f.alerts
    ]
    if rows:
        session.execute(insert(Message), rows)


def recorded_of(session: Session, visits: Sequence[StageVisit]) -> dict[int, set[str]]:
    """The event kinds each visit has recorded, with its card's resolution events from any
    visit (`desk.recorded_kinds` for many visits, in one query)."""
    recorded: dict[int, set[str]] = {visit.id: set() for visit in visits}
    by_card: dict[int, set[str]] = {visit.card_id: set() for visit in visits}
    if recorded:
        for visit_id, card_id, kind in session.execute(
            select(SlaEvent.visit_id, SlaEvent.card_id, SlaEvent.kind).where(
                or_(
                    SlaEvent.visit_id.in_(recorded),
                    SlaEvent.card_id.in_(by_card) & SlaEvent.kind.in_(sla.CARD_KINDS),
                )
            )
        ):
            if visit_id in recorded:
                recorded[visit_id].add(kind)
            if kind in sla.CARD_KINDS:
                by_card[card_id].add(kind)
    return {visit.id: recorded[visit.id] | by_card[visit.card_id] for visit in visits}


def _fire_locked(
    session: Session,
    visit: StageVisit,
    recorded: set[str],
    kind: str,
    now: datetime,
    known: Known,
) -> Fired | None:
    """`fire` once the card is locked and the visit and its recorded kinds read after."""
    if not may_fire(visit):
        return None
    timers = owed_timers(visit)
    if kind not in sla.due_kinds(now, timers, recorded):
        return None
    due_at = timers.instant(kind)
    assert due_at is not None
    event = SlaEvent(
        visit=visit,
        card_id=visit.card_id,
        kind=kind,
        due_at=due_at,
        fired_at=now,
        owner_id=visit.card.owner_id,
    )
    session.add(event)
    visit.next_due_at = sla.next_instant(timers, recorded | {kind})
    if kind == sla.BREACH:
        visit.outcome = desk.BREACHED
    fired = Fired(event)
    if kind == sla.TIMEOUT:
        session.flush()
        _time_out(session, visit, event, now, fired)
        known.agents = None  # a card resolved or moved on: its owner's load is read again
        return fired
    with session.no_autoflush:  # these reads do not depend on what the batch writes
        text = alert_text(visit, kind, now)
        told = recipients(session, visit, kind, known)
        fired.alerts += notify(event, told, text, now)  # reads the card's owner
    if kind == sla.BREACH and visit.left_at is None:  # a card that moved on keeps its owner
        _reassign(session, visit, now, fired, known)
    return fired


def owed_timers(visit: StageVisit) -> sla.Timers:
    """The visit's timers that can still fire."""
    return owed(visit.timers, visit.acknowledged_at, visit.left_at)


def owed(
    timers: sla.Timers, acknowledged_at: datetime | None, left_at: datetime | None
) -> sla.Timers:
    """Of a visit's timers, those that can still fire: once a supervisor acknowledged the
    escalation, no further level comes (the warning, breach, resolution and timeout do);
    once the visit ended, only what fell due before (`sla.left_behind`)."""
    if acknowledged_at is not None:
        timers = sla.without_levels(timers)
    return sla.left_behind(timers, left_at) if left_at is not None else timers


def notify(
    event: SlaEvent, people: list[User], text: str, now: datetime
) -> list[tuple[SlaEvent, dict[str, Any]]]:
    """One alert per person for this event, as rows for `write_alerts` (which keys each
    by the event's id and the person: once, even when a removed level's number is given to
    another level of the same visit)."""
    visit = event.visit
    actionable = event.kind == sla.BREACH or sla.level_of(event.kind) is not None
    return [
        (
            event,
            desk.outbound_row(
                to=str(user.whatsapp),
                body=f"{text}\n{how_to_act(visit.card, user)}" if actionable else text,
                dedupe_key=None,  # keyed in write_alerts, once the event has its id
                now=now,
            )
            | {"user_id": user.id, "card_id": visit.card_id},
        )
        for user in people
    ]


def _time_out(
    session: Session, visit: StageVisit, event: SlaEvent, now: datetime, fired: Fired
) -> None:
    """The stage's own timer: tell the customer, then resolve the card or move it on — at
    the timeout's instant, also when it fires late (a sweep catching up after an outage):
    the card left the stage then, and the next stage's clock starts then. The goodbye goes
    now, so the customer's 24-hour window is read now."""
    stage, card = visit.stage, visit.card
    at = event.due_at
    action = stage.timeout_action or RESOLVE
    if action == RESOLVE and card.waiting_since is not None:
        # The customer is waiting for an answer (they wrote and no automation took the card
        # elsewhere): a question is never closed unanswered.
        event.detail = {"action": "none", "why": "the customer is waiting for an answer"}
        return
    if stage.timeout_message and card.contact.opted_out_at is not None:
        event.detail = {"message": "not sent: the customer sent STOP"}
    elif stage.timeout_message and not desk.window_open(card.contact.last_inbound_at, now):
        # WhatsApp would refuse free text now: the card is closed without the goodbye.
        event.detail = {"message": "not sent: outside the customer's 24-hour window"}
    elif stage.timeout_message:
        fired.messages.append(
            desk.queue_outbound(
                session,
                to=card.contact.address,
                body=stage.timeout_message,
                card=card,
                contact=card.contact,
                dedupe_key=f"sla-{event.id}-customer",
                now=now,
            )
        )
    if action == RESOLVE:
        desk.resolve(session, card.id, at)
        event.detail = {**event.detail, "action": RESOLVE}
    else:
        fired.visits.append(desk.move_card(session, card.id, action, at))
        event.detail = {**event.detail, "action": "move", "to": action}
    session.flush()


RESOLVE = "resolve"


def _reassign(
    session: Session, visit: StageVisit, now: datetime, fired: Fired, known: Known
) -> None:
    """The stage hands a breached card to a named person or the least-loaded agent on
    shift; recorded as its own event, once per visit, and the new owner is told."""
    stage, card = visit.stage, visit.card
    if stage.reassign_to is not None:
        target: User | None = stage.reassign_to if stage.reassign_to.active else None
    elif stage.reassign_least_loaded:
        target = least_loaded_on_shift(session, now, exclude=card.owner_id, known=known)
    else:
        return
    if target is None:
        log.warning(
            "breach of visit %s: card %s not reassigned: nobody on shift to give it to "
            "(no active agent on shift, or the named person is inactive)",
            visit.id,
            card.id,
        )
        return
    if target.id == card.owner_id:
        return  # it is already theirs
    previous = card.owner
    card.owner = target
    known.handed_over(previous, target)
    event = SlaEvent(
        visit=visit,
        card_id=card.id,
        kind=sla.REASSIGNMENT,
        due_at=fired.event.due_at,
        fired_at=now,
        detail={"from": previous.id if previous else None, "to": target.id},
        owner_id=previous.id if previous else None,
    )
    session.add(event)
    before = f" from {previous.name}" if previous else ""
    text = (
        f"👤 Card #{card.id} is now yours{before}: {card.contact.display_name} "
        f"({card.contact.phone}) breached the SLA in {card.pipeline.name} › {stage.name}."
    )
    people = [target] if target.reachable_by_whatsapp else []
    fired.alerts += notify(event, people, text, now)


def least_loaded_on_shift(
    session: Session, now: datetime, exclude: int | None, known: Known | None = None
) -> User | None:
    """The active agent on shift now with the fewest open cards (then the lowest id). The
    load is counted once per batch (`known`): counting every open card per breach would
    cost a storm of breaches seconds at 100,000 open cards."""
    known = Known() if known is None else known
    if known.agents is None:
        known.agents, known.load = agent_loads(session)
    by_load = sorted(known.agents, key=lambda user: (known.load[user.id], user.id))
    for user in by_load:
        if user.id != exclude and on_shift(user, now):
            return user
    return None


def agent_loads(session: Session) -> tuple[list[User], dict[int, int]]:
    """The active agents, and the open cards of each."""
    load = (
        select(Card.owner_id, func.count(Card.id).label("open_cards"))
        .where(Card.status == "open", Card.owner_id.is_not(None))
        .group_by(Card.owner_id)
        .subquery()
    )
    rows = session.execute(
        select(User, func.coalesce(load.c.open_cards, 0))
        .outerjoin(load, load.c.owner_id == User.id)
        .where(User.role == "agent", User.active.is_(True))
    ).all()
    return [user for user, _count in rows], {user.id: count for user, count in rows}


def on_shift(user: User, now: datetime) -> bool:
    """Within the person's shift calendar; anyone without one is taken to be always on."""
    if user.shift_calendar is None:
        return True
    return clock.is_open(calendars.to_clock(user.shift_calendar, now.year), now)


def recipients(
    session: Session, visit: StageVisit, kind: str, known: Known | None = None
) -> list[User]:
    """Warnings → the owner, else the stage's alert list; escalation level N → its named
    people; breaches, or nobody reachable → every supervisor. Only active people with a
    WhatsApp number count."""
    candidates: list[list[User]] = []
    level = sla.level_of(kind)
    if kind in (sla.WARNING, sla.RESOLUTION_WARNING):
        owner = visit.card.owner
        candidates = [[owner] if owner else [], list(visit.stage.alert_users)]
    elif level is not None:
        named = [e.users for e in visit.stage.escalations if e.level == level]
        candidates = [list(named[0]) if named else []]
    known = Known() if known is None else known  # a batch reads the supervisors once
    if known.supervisors is None:
        known.supervisors = supervisors(session)
    candidates.append(known.supervisors)
    for people in candidates:
        reachable = [p for p in people if p.reachable_by_whatsapp]
        if reachable:
            return reachable
    log.warning(
        "%s of visit %s reaches nobody: no active supervisor has a WhatsApp number that "
        "has not sent STOP",
        kind,
        visit.id,
    )
    return []


def supervisors(session: Session) -> list[User]:
    return list(
        session.scalars(select(User).where(User.role.in_(SUPERVISOR_ROLES)).order_by(User.id))
    )


def alert_text(visit: StageVisit, kind: str, now: datetime) -> str:
    """The WhatsApp text of an alert: who, where, how long, what is at stake."""
    card = visit.card
    who = f"{card.contact.display_name} ({card.contact.phone})"
    where = f"{card.pipeline.name} › {visit.stage.name}"
    since = card.waiting_since or visit.entered_at
    waited = humanize((now - since).total_seconds())
    if kind == sla.WARNING:
        assert visit.deadline_at is not None
        left = humanize(math.ceil((visit.deadline_at - now).total_seconds()))
        deadline = local_time(calendars.told_in(visit.stage), visit.deadline_at)
        return (
            f"⚠️ SLA warning — {who} in {where} has waited {waited}. "
            f"The deadline is in {left} ({deadline}). Card #{card.id}."
        )
    if kind in sla.CARD_KINDS:
        resolution = humanize(card.pipeline.resolution_seconds or 0)
        open_for = humanize((now - card.opened_at).total_seconds())
        if kind == sla.RESOLUTION_WARNING:
            assert visit.resolution_at is not None
            left = humanize(math.ceil((visit.resolution_at - now).total_seconds()))
            return (
                f"⏳ Resolution SLA warning — {who}'s conversation ({where}) has been open "
                f"{open_for}; the resolution SLA ({resolution}) runs out in {left} "
                f"({local_time(card.pipeline.calendar, visit.resolution_at)}). Card #{card.id}."
            )
        return (
            f"🚨 Resolution SLA breached — {who}'s conversation ({where}) has been open "
            f"{open_for}, past its resolution SLA of {resolution} (time waiting on the "
            f"customer not counted). Card #{card.id}."
        )
    sla_len = humanize(visit.stage.sla_seconds or 0)
    level = sla.level_of(kind)
    if level is not None and visit.deadline_at is not None:
        over = humanize((now - visit.deadline_at).total_seconds())
        return (
            f"🔺 Escalation level {level} — {who} has waited {waited} in {where}; "
            f"the SLA ({sla_len}) was breached {over} ago. Card #{card.id}."
        )
    return (
        f"🚨 SLA breached — {who} has waited {waited} in {where} (SLA {sla_len}). Card #{card.id}."
    )


def how_to_act(card: Card, person: User) -> str:
    """The line under a breach or an escalation that says how the person may answer it by
    WhatsApp (commands.py): ACK, SNOOZE and ASSIGN are for supervisors; an agent may TAKE
    only a card nobody has."""
    if person.is_supervisor:
        return f"Reply TAKE, ACK, SNOOZE 30 or ASSIGN <name> (card #{card.id})."
    if card.owner_id is None:
        return f"Reply TAKE to make it yours (card #{card.id})."
    if card.owner_id == person.id:
        return f"It is yours: answer the customer on the desk (card #{card.id})."
    assert card.owner is not None
    return f"{card.owner.name} has it (card #{card.id})."


def local_time(row: BusinessCalendar | None, moment: datetime) -> str:
    """A time of day in the calendar's timezone (UTC without one), as the business reads
    its clock."""
    name = row.timezone if row is not None else "UTC"
    local = moment.astimezone(ZoneInfo(name) if row is not None else UTC)
    return f"{local:%H:%M:%S} {name}"
