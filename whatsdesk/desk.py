"""Use-cases of the desk on a database session: receive, open, move, queue, status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from . import bot, calendars, clock, sla
from .models import Card, Contact, EarlyStatus, Message, Pipeline, Stage, StageVisit, User
from .whatsapp import Inbound


class DeskError(Exception):
    """A use-case cannot go ahead; the text says why, for a person."""


@dataclass
class Received:
    message: Message
    card: Card | None
    duplicate: bool = False
    new_visit: StageVisit | None = None
    outbound: list[Message] = field(default_factory=list)


def default_pipeline(session: Session) -> Pipeline:
    pipeline = session.scalars(
        select(Pipeline).order_by(Pipeline.is_default.desc(), Pipeline.id).limit(1)
    ).first()
    if pipeline is None or not pipeline.stages:
        raise DeskError("no pipeline is configured: load one with `flask pipeline load`")
    return pipeline


def upsert_contact(session: Session, inbound: Inbound, now: datetime) -> Contact:
    contact = session.scalars(
        select(Contact).where(Contact.address == inbound.from_address)
    ).one_or_none()
    if contact is None:
        contact = Contact(address=inbound.from_address, created_at=now)
        session.add(contact)
    if inbound.profile_name:
        contact.profile_name = inbound.profile_name
    if inbound.wa_id:
        contact.wa_id = inbound.wa_id
    contact.last_inbound_at = now
    return contact


def open_card_of(session: Session, contact: Contact) -> Card | None:
    return session.scalars(
        select(Card).where(Card.contact_id == contact.id, Card.status == "open").limit(1)
    ).first()


def receive_message(session: Session, inbound: Inbound, now: datetime) -> Received:
    """Store a customer's message once per MessageSid, on their open card or a new one."""
    existing = session.scalars(select(Message).where(Message.sid == inbound.sid)).one_or_none()
    if existing is not None:
        return Received(message=existing, card=existing.card, duplicate=True)
    contact = upsert_contact(session, inbound, now)
    session.flush()
    card = open_card_of(session, contact)
    new_visit = None
    outbound = []
    if card is None:
        card, new_visit = open_card(session, contact, default_pipeline(session), now)
    if card.waiting_since is None:
        card.waiting_since = now
    message = Message(
        sid=inbound.sid,
        direction="in",
        card=card,
        contact=contact,
        from_address=inbound.from_address,
        to_address=inbound.to_address,
        body=inbound.body,
        media=inbound.media,
        status="received",
        created_at=now,
        updated_at=now,
    )
    session.add(message)
    session.flush()  # before the reply, so the thread reads in order (same created_at)
    if new_visit is not None:
        ack = bot.acknowledgement(contact.profile_name, card.pipeline.name, card.stage.sla_seconds)
        outbound.append(
            queue_outbound(
                session,
                to=contact.address,
                body=ack,
                card=card,
                contact=contact,
                dedupe_key=f"ack-{inbound.sid}",
                now=now,
            )
        )
        session.flush()
    return Received(message, card, new_visit=new_visit, outbound=outbound)


def open_card(
    session: Session, contact: Contact, pipeline: Pipeline, now: datetime
) -> tuple[Card, StageVisit]:
    first = pipeline.stages[0]
    card = Card(contact=contact, pipeline=pipeline, stage=first, status="open", opened_at=now)
    session.add(card)
    session.flush()
    return card, enter_stage(session, card, first, now)


def current_visit(session: Session, card: Card) -> StageVisit | None:
    return session.scalars(
        select(StageVisit).where(StageVisit.card_id == card.id, StageVisit.left_at.is_(None))
    ).first()


def enter_stage(session: Session, card: Card, stage: Stage, now: datetime) -> StageVisit:
    """Close the card's current stage visit and open one in `stage` with its timers."""
    visit = current_visit(session, card)
    if visit is not None:
        leave(visit, now)
    calendar = calendars.for_stage(stage, now)
    levels_after = [e.after_seconds for e in stage.escalations]
    timers = sla.timers_for(now, stage.sla_seconds, stage.warning_seconds, calendar, levels_after)
    card.stage = stage
    new = StageVisit(
        card=card,
        stage=stage,
        entered_at=now,
        warning_at=timers.warning_at,
        deadline_at=timers.deadline_at,
        escalations_at=[at.isoformat() for at in timers.levels],
        next_due_at=sla.next_instant(timers, ()),
    )
    session.add(new)
    session.flush()
    return new


def leave(visit: StageVisit, now: datetime) -> None:
    """End a stage visit, recording the time spent in wall and business seconds."""
    visit.left_at = now
    visit.next_due_at = None
    visit.wall_seconds = int((now - visit.entered_at).total_seconds())
    calendar = calendars.for_stage(visit.stage, visit.entered_at)
    visit.business_seconds = int(clock.business_seconds_between(calendar, visit.entered_at, now))


def move_card(session: Session, card_id: int, stage_key: str, now: datetime) -> StageVisit:
    """Move an open card to another stage of its pipeline."""
    card = session.get(Card, card_id)
    if card is None or card.status != "open":
        raise DeskError(f"card {card_id} is not open")
    stage = next((s for s in card.pipeline.stages if s.key == stage_key), None)
    if stage is None:
        raise DeskError(f"pipeline {card.pipeline.key!r} has no stage {stage_key!r}")
    return enter_stage(session, card, stage, now)


def queue_outbound(
    session: Session,
    *,
    to: str,
    body: str,
    now: datetime,
    dedupe_key: str,
    card: Card | None = None,
    contact: Contact | None = None,
    user: User | None = None,
    sla_event_id: int | None = None,
    from_address: str = "",
) -> Message:
    """Record a message to send; the send job carries it out and stores Twilio's answer."""
    message = Message(
        direction="out",
        to_address=to,
        from_address=from_address,
        body=body,
        card=card,
        contact=contact,
        user=user,
        sla_event_id=sla_event_id,
        dedupe_key=dedupe_key,
        status="pending",
        media=[],
        created_at=now,
        updated_at=now,
    )
    session.add(message)
    return message


# Status callbacks arrive out of order; a status never moves back down this ladder.
STATUS_RANK = {
    "pending": 0,
    "retrying": 0,
    "sending": 1,
    "accepted": 2,
    "scheduled": 2,
    "queued": 3,
    "sent": 4,
    "failed": 5,
    "undelivered": 5,
    "canceled": 5,
    "delivered": 6,
    "read": 7,
}


def apply_status(
    session: Session, sid: str, status: str, error_code: str | None, now: datetime
) -> bool:
    """Take a delivery status for an outbound message; False when it changes nothing.

    A callback for a sid not stored yet (Twilio answered the send job, which has not saved
    the sid) is kept, and the send job applies it when it does.
    """
    if status not in STATUS_RANK:
        return False
    message = session.scalars(select(Message).where(Message.sid == sid)).one_or_none()
    if message is None:
        session.add(EarlyStatus(sid=sid, status=status, error_code=error_code, received_at=now))
        return False
    return _raise_status(message, status, error_code, now)


def record_sent(session: Session, message: Message, sid: str, status: str, now: datetime) -> None:
    """Store Twilio's answer to a send, then any status callback that arrived before it."""
    message.sid, message.status, message.updated_at = sid, status, now
    message.error_message = None
    session.flush()
    early = session.scalars(
        select(EarlyStatus).where(EarlyStatus.sid == sid).order_by(EarlyStatus.id)
    ).all()
    for callback in early:
        _raise_status(message, callback.status, callback.error_code, now)
        session.delete(callback)


def settle_early_statuses(session: Session, now: datetime, keep_hours: int = 24) -> int:
    """Apply kept callbacks whose message now has its sid (the race record_sent can miss);
    forget those older than `keep_hours` that never found their message."""
    settled = 0
    for callback, message in session.execute(
        select(EarlyStatus, Message).join(Message, Message.sid == EarlyStatus.sid)
    ).all():
        _raise_status(message, callback.status, callback.error_code, now)
        session.delete(callback)
        settled += 1
    for stale in session.scalars(
        select(EarlyStatus).where(EarlyStatus.received_at < now - timedelta(hours=keep_hours))
    ):
        session.delete(stale)
    return settled


def _raise_status(message: Message, status: str, error_code: str | None, now: datetime) -> bool:
    if STATUS_RANK[status] <= STATUS_RANK.get(message.status, 0):
        return False
    message.status = status
    message.error_code = error_code or message.error_code
    message.updated_at = now
    return True


@dataclass(frozen=True)
class QueueRow:
    card: Card
    waiting_seconds: float | None
    state: str
    seconds_left: float | None
    last_message: Message | None


def waiting_queue(session: Session, now: datetime, limit: int = 200) -> list[QueueRow]:
    """Open cards, the customer waiting longest first (ix_cards_queue), then the answered."""
    options = (
        joinedload(Card.contact),
        joinedload(Card.pipeline),
        joinedload(Card.stage),
        joinedload(Card.owner),
    )
    open_cards = select(Card).where(Card.status == "open").options(*options)
    waiting = session.scalars(
        open_cards.where(Card.waiting_since.is_not(None))
        .order_by(Card.waiting_since, Card.id)
        .limit(limit)
    ).all()
    answered = session.scalars(
        open_cards.where(Card.waiting_since.is_(None))
        .order_by(Card.opened_at, Card.id)
        .limit(max(0, limit - len(waiting)))
    ).all()
    cards = [*waiting, *answered]
    ids = [card.id for card in cards]
    visits = {
        v.card_id: v
        for v in session.scalars(
            select(StageVisit).where(StageVisit.card_id.in_(ids), StageVisit.left_at.is_(None))
        )
    }
    latest_inbound = (
        select(func.max(Message.id))
        .where(Message.card_id.in_(ids), Message.direction == "in")
        .group_by(Message.card_id)
    )
    last = {
        m.card_id: m for m in session.scalars(select(Message).where(Message.id.in_(latest_inbound)))
    }
    return [_queue_row(card, visits.get(card.id), last.get(card.id), now) for card in cards]


def _queue_row(
    card: Card, visit: StageVisit | None, last: Message | None, now: datetime
) -> QueueRow:
    timers = visit.timers if visit else sla.Timers(None, None)
    waited = (now - card.waiting_since).total_seconds() if card.waiting_since else None
    return QueueRow(card, waited, sla.state_at(now, timers), sla.seconds_left(now, timers), last)
