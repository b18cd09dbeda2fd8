"""Staff alerts on their way out: one digest instead of a storm, and an approved template
when the person's 24-hour WhatsApp window is closed."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from . import desk, settings, sla
from .models import Contact, Message, SlaEvent, User

# WhatsApp refuses template variables with new lines, tabs or long runs of spaces.
_SPACES = re.compile(r"\s*\n\s*|\t| {4,}")
TEMPLATE_VARIABLE_LIMIT = 1000
KIND_LABELS = {
    sla.WARNING: "⚠️ warning",
    sla.BREACH: "🚨 breached",
    sla.RESOLUTION_WARNING: "⏳ resolution warning",
    sla.RESOLUTION_BREACH: "🚨 resolution breached",
    sla.REASSIGNMENT: "👤 reassigned to you",
}


def is_staff_alert(message: Message) -> bool:
    """An alert or digest to a staff member (not a message in a customer's conversation)."""
    return message.user_id is not None and message.contact_id is None


@dataclass
class Batch:
    """What to send to one person now, or when to look again."""

    sends: list[Message] = field(default_factory=list)
    wait_until: datetime | None = None


def gather(session: Session, user_id: int, now: datetime) -> Batch:
    """The person's pending alerts: sent on their own when nothing went to them within the
    digest window, else held until the window ends and then sent as one digest."""
    pending = session.scalars(
        select(Message)
        .where(
            Message.user_id == user_id,
            Message.contact_id.is_(None),
            Message.status == "pending",
            Message.sla_event_id.is_not(None),
            Message.sent_at.is_(None),  # not yet handed to the sender on its own
        )
        .order_by(Message.id)
    ).all()
    if not pending:
        return Batch()
    window = timedelta(seconds=settings.notifications(session).digest_seconds)
    if not window:
        for message in pending:
            message.sent_at = now
        return Batch(sends=list(pending))
    last = session.scalar(select(func.max(Message.sent_at)).where(_alerted(user_id)))
    if last is not None and now < last + window:
        return Batch(wait_until=last + window)
    if len(pending) == 1:
        pending[0].sent_at = now
        return Batch(sends=[pending[0]])
    user = session.get(User, user_id)
    assert user is not None
    digest = desk.queue_outbound(
        session,
        to=user.whatsapp or pending[0].to_address,  # their number now, if it changed
        body=digest_text(session, pending),
        user=user,
        dedupe_key=f"digest-{user_id}-{pending[0].id}",
        now=now,
    )
    digest.sent_at = now
    session.flush()  # a twin job making the same digest fails here, on the dedupe key
    for message in pending:
        message.status, message.digest_id, message.updated_at = "bundled", digest.id, now
    return Batch(sends=[digest])


def _alerted(user_id: int) -> ColumnElement[bool]:
    """The person's alerts and digests: what the digest window counts from. Answers to
    their own commands do not count, or a TAKE just before a breach would hold its alert."""
    bundled = aliased(Message)
    return and_(
        Message.user_id == user_id,
        Message.contact_id.is_(None),
        or_(
            Message.sla_event_id.is_not(None),
            select(bundled.id).where(bundled.digest_id == Message.id).exists(),
        ),
    )


DIGEST_LIMIT = 1500  # characters: WhatsApp takes 1600 per message


def digest_text(session: Session, alerts: list[Message]) -> str:
    """One message for many alerts: how many of each kind, then one line per card."""
    events = {
        e.id: e
        for e in session.scalars(
            select(SlaEvent).where(SlaEvent.id.in_([a.sla_event_id for a in alerts]))
        )
    }
    lines, kinds = [], Counter[str]()
    for alert in alerts:
        event = events.get(alert.sla_event_id or 0)
        if event is None:
            continue
        kinds[event.kind] += 1
        card = event.visit.card
        label = kind_label(event.kind)
        lines.append(
            f"• {label}: {card.contact.display_name} ({card.contact.phone}), "
            f"{card.pipeline.name} › {event.visit.stage.name}, card #{card.id}"
        )
    summary = ", ".join(f"{count} {kind_label(k)}" for k, count in kinds.items())
    text = f"📋 {len(alerts)} SLA alerts — {summary}:"
    for shown, line in enumerate(lines):
        more = f"\n… and {len(lines) - shown} more: open the queue."
        if len(text) + 1 + len(line) + len(more) > DIGEST_LIMIT:
            return text + more
        text += "\n" + line
    return text


def kind_label(kind: str) -> str:
    """How a digest names a kind of alert: "🚨 breached", "🔺 level 2", …"""
    level = sla.level_of(kind)
    return KIND_LABELS.get(kind) or (f"🔺 level {level}" if level is not None else kind)


def window_is_open(session: Session, address: str, now: datetime) -> bool:
    """Has this number written to the desk within the last 24 hours?"""
    last = session.scalar(select(Contact.last_inbound_at).where(Contact.address == address))
    return desk.window_open(last, now)


def retry_as_template(session: Session, sid: str) -> Message | None:
    """Twilio reported 63016 (outside the 24-hour window) for a free-text staff alert after
    accepting it: the alert goes again as the approved template, if one is configured. The
    message to send again, or None."""
    message = session.scalars(select(Message).where(Message.sid == sid)).one_or_none()
    return _as_template_again(session, message) if message is not None else None


def _as_template_again(session: Session, message: Message) -> Message | None:
    if not is_staff_alert(message) or message.content_sid:
        return None
    if message.status not in ("failed", "undelivered") or message.error_code != WINDOW_CLOSED:
        return None
    if not use_template(session, message):
        return None
    message.sid, message.status, message.error_code = None, "retrying", None
    return message


def template_retries(session: Session, now: datetime, hours: int = 24) -> list[Message]:
    """Staff alerts of the last `hours` that Twilio refused as outside the window and that
    never went again as the template (the callback came early, or Redis was down): they go
    now, as the template, if one is configured."""
    refused = session.scalars(
        select(Message).where(
            Message.direction == "out",
            Message.contact_id.is_(None),
            Message.user_id.is_not(None),
            Message.status.in_(("failed", "undelivered")),
            Message.error_code == WINDOW_CLOSED,
            Message.content_sid.is_(None),
            Message.updated_at >= now - timedelta(hours=hours),
        )
    ).all()
    again = [_as_template_again(session, message) for message in refused]
    return [message for message in again if message is not None]


# Twilio's error for free text outside the person's 24-hour window.
WINDOW_CLOSED = "63016"


def use_template(session: Session, message: Message) -> bool:
    """Switch an alert to the configured approved template; False when none is configured."""
    spec = settings.notifications(session)
    if not spec.template_sid:
        return False
    text = _SPACES.sub(" · ", message.body).strip()[:TEMPLATE_VARIABLE_LIMIT]
    name = message.user.name if message.user is not None else ""
    card = f"#{message.card_id}" if message.card_id else ""
    message.content_sid = spec.template_sid
    message.content_variables = {
        key: value.format(name=name, text=text, card=card)
        for key, value in spec.template_variables.items()
    }
    return True
