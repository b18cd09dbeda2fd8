"""Who is told what when a stage visit's warning or breach comes."""

from __future__ import annotations

import logging
import math
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import sla
from .desk import queue_outbound
from .durations import humanize
from .models import SUPERVISOR_ROLES, Message, SlaEvent, StageVisit, User

log = logging.getLogger(__name__)


def visit_is_live(visit: StageVisit | None) -> bool:
    """Still the card's current stage, on a card still open."""
    return visit is not None and visit.left_at is None and visit.card.status == "open"


def recorded_kinds(session: Session, visit_id: int) -> set[str]:
    return set(session.scalars(select(SlaEvent.kind).where(SlaEvent.visit_id == visit_id)))


def fire(session: Session, visit_id: int, kind: str, now: datetime) -> list[Message] | None:
    """Record the event and queue its alerts; None when not due, moved on or recorded.

    A concurrent firing of the same event fails the unique (visit, kind) constraint on flush
    or commit, which rolls back its alerts too: the event and its messages happen once.
    """
    visit = session.get(StageVisit, visit_id)
    if visit is None or not visit_is_live(visit):
        return None
    recorded = recorded_kinds(session, visit_id)
    if kind not in sla.due_kinds(now, visit.timers, recorded):
        return None
    event = SlaEvent(visit_id=visit.id, kind=kind, due_at=visit.timers.instant(kind), fired_at=now)
    session.add(event)
    visit.next_due_at = sla.next_instant(visit.timers, recorded | {kind})
    session.flush()
    text = alert_text(visit, kind, now)
    messages = [
        queue_outbound(
            session,
            to=str(user.whatsapp),
            body=text,
            user=user,
            card=visit.card,
            sla_event_id=event.id,
            dedupe_key=f"sla-{event.id}-user-{user.id}",
            now=now,
        )
        for user in recipients(session, visit, kind)
    ]
    session.flush()
    return messages


def recipients(session: Session, visit: StageVisit, kind: str) -> list[User]:
    """Warning → the owner, else the stage's alert list; escalation level N → its named
    people; breach, or nobody reachable → every supervisor. Only active people with a
    WhatsApp number count."""
    candidates: list[list[User]] = []
    level = sla.level_of(kind)
    if kind == sla.WARNING:
        owner = visit.card.owner
        candidates = [[owner] if owner else [], list(visit.stage.alert_users)]
    elif level is not None:
        named = [e.users for e in visit.stage.escalations if e.level == level]
        candidates = [list(named[0]) if named else []]
    candidates.append(supervisors(session))
    for people in candidates:
        reachable = [p for p in people if reachable_by_whatsapp(p)]
        if reachable:
            return reachable
    log.warning("%s of visit %s reaches nobody: no supervisor has WhatsApp", kind, visit.id)
    return []


def reachable_by_whatsapp(user: User) -> bool:
    return user.active and bool(user.whatsapp)


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
        return (
            f"⚠️ SLA warning — {who} in {where} has waited {waited}. "
            f"The deadline is in {left} ({visit.deadline_at:%H:%M:%S} UTC). Card #{card.id}."
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
