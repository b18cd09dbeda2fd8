"""Staff alerts on their way out: one digest instead of a storm, and an approved template
when the person's 24-hour WhatsApp window is closed."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, aliased, joinedload

from . import desk, settings, sla
from .models import Card, Contact, Message, SlaEvent, StageVisit, User

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


DIGEST_KEY = "digest-"  # the start of a digest's dedupe key


def is_alert(message: Message) -> bool:
    """An SLA alert, or a digest of them (not a command's answer): what a person who sent
    STOP, or was deactivated meanwhile, is not sent."""
    key = message.dedupe_key or ""
    return is_staff_alert(message) and (
        message.sla_event_id is not None or key.startswith(DIGEST_KEY)
    )


def unreachable_reason(user: User | None, user_id: int) -> str:
    """Why an alert for this person is not sent (they cannot be reached_by_whatsapp)."""
    who = user.name if user is not None else f"user {user_id}"
    if user is not None and not user.active:
        return f"not sent: {who} is no longer active"
    if user is not None and user.whatsapp and user.alerts_stopped_at is not None:
        return f"not sent: {who} sent STOP (alerts resume with START)"
    return f"not sent: {who} has no WhatsApp"


def is_staff_alert(message: Message) -> bool:
    """An alert or digest to a staff member (not a message in a customer's conversation)."""
    return message.user_id is not None and message.contact_id is None


@dataclass
class Batch:
    """What to send to one person now, or when to look again."""

    sends: list[Message] = field(default_factory=list)
    wait_until: datetime | None = None


_BUNDLED = aliased(Message, name="bundled")
# When the person was last sent an alert or a digest: what the digest window counts from.
# Answers to their own commands do not count, or a TAKE just before a breach would hold its
# alert. Built once: the alerts job asks it after every batch of events in a storm.
LAST_ALERTED = select(func.max(Message.sent_at)).where(
    Message.user_id == bindparam("user_id"),
    Message.contact_id.is_(None),
    or_(
        Message.sla_event_id.is_not(None),
        select(_BUNDLED.id).where(_BUNDLED.digest_id == Message.id).exists(),
    ),
)


def gather(session: Session, user_id: int, now: datetime) -> Batch:
    """The person's pending alerts: sent on their own when nothing went to them within the
    digest window, else held until the window ends and then sent as one digest.

    Called after every batch of events in a storm, so what it costs follows what it sends:
    while the window is closed it reads one pending alert and when the window ends; a digest
    reads its alerts' ids and kinds, and the cards of the lines that fit in it."""
    any_pending = select(Message.id).where(_pending(user_id)).limit(1)
    if session.scalar(any_pending) is None:
        return Batch()
    user = session.get(User, user_id)
    if user is None or not user.reachable_by_whatsapp:
        _fail_unreachable(session, user_id, user, now)
        return Batch()
    assert user.whatsapp
    window = timedelta(seconds=settings.notifications(session).digest_seconds)
    if window:
        last = session.scalar(LAST_ALERTED, {"user_id": user_id})
        if last is not None and now < last + window:
            return Batch(wait_until=last + window)
    pending = session.execute(
        select(Message.id, Message.sla_event_id).where(_pending(user_id)).order_by(Message.id)
    ).all()
    ids = [message_id for message_id, _event in pending]
    if not ids:  # a twin job (its lock expired under it) sent them meanwhile
        return Batch()
    if not window or len(ids) == 1:
        alone = [
            message
            for chunk in _chunks(ids)
            for message in session.scalars(
                select(Message).where(Message.id.in_(chunk)).order_by(Message.id)
            )
        ]
        for message in alone:
            message.sent_at = now
            message.to_address = user.whatsapp  # their number now, if it changed
        return Batch(sends=alone)
    digest = desk.queue_outbound(
        session,
        to=user.whatsapp,
        body=digest_text(session, [event_id for _id, event_id in pending]),
        user=user,
        dedupe_key=f"{DIGEST_KEY}{user_id}-{ids[0]}",
        now=now,
    )
    digest.sent_at = now
    session.flush()  # a twin job making the same digest fails here, on the dedupe key
    for chunk in _chunks(ids):
        session.execute(
            update(Message)
            .where(Message.id.in_(chunk))
            .values(status="bundled", digest_id=digest.id, updated_at=now),
            execution_options={"synchronize_session": False},
        )
    return Batch(sends=[digest])


def _pending(user_id: int) -> ColumnElement[bool]:
    """The person's alerts not yet handed to the sender, alone or in a digest."""
    return and_(
        Message.user_id == user_id,
        Message.contact_id.is_(None),
        Message.status == "pending",
        Message.sla_event_id.is_not(None),
        Message.sent_at.is_(None),  # not yet handed to the sender on its own
    )


def _fail_unreachable(session: Session, user_id: int, user: User | None, now: datetime) -> None:
    """Alerts held for someone deactivated, whose WhatsApp number was removed, or who sent
    STOP, while they waited: not sent (the old number may be someone else's now), failed
    with why, so that /alerts shows them."""
    session.execute(
        update(Message)
        .where(_pending(user_id))
        .values(status="failed", error_message=unreachable_reason(user, user_id), updated_at=now),
        execution_options={"synchronize_session": False},
    )


def _chunks(ids: list[int], size: int = 1000) -> Iterator[list[int]]:
    """`ids` a thousand at a time: a storm's thousands of alerts stay within any
    database's limit of parameters per statement."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


DIGEST_LIMIT = 1500  # characters: WhatsApp takes 1600 per message
# Lines a digest reads at a time: a line takes about 60 characters or more, so one read
# mostly covers all that fit in DIGEST_LIMIT.
DIGEST_LINES_READ = 32


def digest_text(session: Session, event_ids: Sequence[int | None]) -> str:
    """One message for many alerts (their events' ids, oldest first): how many of each
    kind, then one line per card, as many as fit. The kinds are read for all of them, the
    cards only for the lines shown, a few at a time."""
    kinds_of: dict[int, str] = {}
    for chunk in _chunks([event_id for event_id in event_ids if event_id is not None]):
        rows = session.execute(select(SlaEvent.id, SlaEvent.kind).where(SlaEvent.id.in_(chunk)))
        kinds_of.update((event_id, kind) for event_id, kind in rows)
    present = [event_id for event_id in event_ids if event_id in kinds_of]
    kinds = Counter(kinds_of[event_id] for event_id in present)
    summary = ", ".join(f"{count} {kind_label(k)}" for k, count in kinds.items())
    text = f"📋 {len(event_ids)} SLA alerts — {summary}:"
    # Read lazily: the next few cards only once the lines before them fit.
    lines = (line for few in _chunks(present, DIGEST_LINES_READ) for line in _lines(session, few))
    for shown, line in enumerate(lines):
        more = f"\n… and {len(present) - shown} more: open the queue."
        if len(text) + 1 + len(line) + len(more) > DIGEST_LIMIT:
            return text + more
        text += "\n" + line
    return text


def _lines(session: Session, event_ids: list[int]) -> list[str]:
    """A digest's line for each event, in the order given."""
    events = {
        event.id: event
        for event in session.scalars(
            select(SlaEvent)
            .where(SlaEvent.id.in_(event_ids))
            .options(
                joinedload(SlaEvent.visit).options(
                    joinedload(StageVisit.stage),
                    joinedload(StageVisit.card).options(
                        joinedload(Card.contact), joinedload(Card.pipeline)
                    ),
                )
            )
        )
    }
    lines = []
    for event_id in event_ids:
        event = events[event_id]
        card = event.visit.card
        lines.append(
            f"• {kind_label(event.kind)}: {card.contact.display_name} ({card.contact.phone}), "
            f"{card.pipeline.name} › {event.visit.stage.name}, card #{card.id}"
        )
    return lines


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
    if message.user is None or not message.user.reachable_by_whatsapp:
        return None
    if message.status not in desk.NOT_DELIVERED or message.error_code != WINDOW_CLOSED:
        return None
    if not use_template(session, message):
        return None
    message.sid, message.status, message.error_code = None, "retrying", None
    return message


TEMPLATE_RETRY_HOURS = 24


def refused_alerts(now: datetime) -> ColumnElement[bool]:
    """Staff alerts of the last TEMPLATE_RETRY_HOURS that Twilio refused as outside the
    person's window and that never went again as the template."""
    return and_(
        Message.direction == "out",
        Message.contact_id.is_(None),
        Message.user_id.is_not(None),
        Message.status.in_(desk.NOT_DELIVERED),
        Message.error_code == WINDOW_CLOSED,
        Message.content_sid.is_(None),
        Message.updated_at >= now - timedelta(hours=TEMPLATE_RETRY_HOURS),
    )


def template_retries(session: Session, now: datetime) -> list[Message]:
    """The refused alerts (`refused_alerts`: the callback came early, or Redis was down) go
    now, as the template, if one is configured."""
    refused = session.scalars(select(Message).where(refused_alerts(now))).all()
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
