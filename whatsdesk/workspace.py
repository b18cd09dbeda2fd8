"""An agent working a conversation: claim, assign, answer (free text or an approved
template), notes, and everything the conversation page shows."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from . import desk, escalation, settings, sla
from .desk import DeskError, Replied
from .models import Card, CardActivity, Message, SlaEvent, StageVisit, User
from .pipelines import REPLY_PLACEHOLDERS, CustomerTemplateSpec, placeholder_problem

MAX_NOTE = 4000


@dataclass
class Done:
    """What a use-case started that Redis must carry out once it is committed."""

    timers: list[tuple[int, sla.Timers]] = field(default_factory=list)
    sends: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, replied: Replied | None = None, visit: StageVisit | None = None) -> Done:
        done = cls()
        if replied is not None and not replied.repeated:
            done.sends.append(replied.message.id)
            visit = visit or replied.new_visit
        if visit is not None:
            done.timers.append((visit.id, visit.timers))
        return done


log = desk.log  # a line of the card's history


def _locked_open_card(session: Session, card_id: int) -> Card:
    """The card, locked until commit (see desk.lock_card); DeskError unless it is open."""
    card = desk.lock_card(session, card_id)
    if card is None or card.status != "open":
        raise DeskError(f"conversation #{card_id} is not open")
    return card


def claim(session: Session, card_id: int, user: User, now: datetime) -> Done:
    """Take an unowned conversation. Two agents at once: the card's row lock (PostgreSQL)
    or the conditional update (SQLite) makes one win; the other is told who has it."""
    card = _locked_open_card(session, card_id)
    if card.owner_id == user.id:
        return Done()
    if card.owner is not None:
        raise DeskError(f"{card.owner.name} already has this conversation")
    # Only if it is still nobody's: SQLite has no row lock, and both agents may have read
    # it unowned. The loser's update waits for the winner's commit, then changes nothing.
    taken = session.execute(
        update(Card)
        .where(Card.id == card.id, Card.owner_id.is_(None))
        .values(owner_id=user.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.expire(card, ["owner_id", "owner"])
    if not taken:
        raise DeskError(f"{card.owner.name} already has this conversation")
    log(session, card, user, "claimed", f"{user.name} took the conversation", now)
    session.flush()
    return Done()


def assign(session: Session, card_id: int, actor: User, assignee_id: int, now: datetime) -> Done:
    """A supervisor gives the conversation to anyone on the staff."""
    if not actor.is_supervisor:
        raise PermissionError("only supervisors can assign conversations to others")
    card = _locked_open_card(session, card_id)
    assignee = session.get(User, assignee_id)
    if assignee is None or not assignee.active:
        raise DeskError("choose an active member of staff")
    if card.owner_id != assignee.id:
        card.owner = assignee
        log(session, card, actor, "assigned", f"{actor.name} gave it to {assignee.name}", now)
        session.flush()
    return Done()


def add_note(session: Session, card_id: int, user: User, body: str, now: datetime) -> Done:
    """An internal note: staff see it in the history, the customer never does."""
    card = session.get(Card, card_id)
    if card is None:
        raise DeskError(f"no conversation #{card_id}")
    text = body.strip()
    if not text:
        raise DeskError("the note is empty")
    if len(text) > MAX_NOTE:
        raise DeskError(f"the note is {len(text)} characters; keep it under {MAX_NOTE}")
    log(session, card, user, "note", text, now)
    session.flush()
    return Done()


def reply(
    session: Session, card_id: int, agent: User, body: str, now: datetime, once: str | None = None
) -> Done:
    """Free text to the customer (inside their 24-hour window); `once`: as desk.agent_reply."""
    return Done.of(desk.agent_reply(session, card_id, agent, body, now, once))


def move(session: Session, card_id: int, user: User, stage_key: str, now: datetime) -> Done:
    visit = desk.move_card(session, card_id, stage_key, now)
    log(session, visit.card, user, "moved", f"{user.name} moved it to {visit.stage.name}", now)
    return Done.of(visit=visit)


def resolve(
    session: Session, card_id: int, user: User, now: datetime, seen: int | None = None
) -> Done:
    """Close the conversation; `seen`: as desk.resolve (the page's latest customer message)."""
    card = desk.resolve(session, card_id, now, seen)
    log(session, card, user, "resolved", f"{user.name} resolved the conversation", now)
    return Done()


def reopen(session: Session, card_id: int, user: User, now: datetime) -> Done:
    visit = desk.reopen(session, card_id, now)
    log(
        session, visit.card, user, "reopened", f"{user.name} reopened it in {visit.stage.name}", now
    )
    return Done.of(visit=visit)


def acknowledge(session: Session, card_id: int, user: User, visit_id: int, now: datetime) -> Done:
    """A supervisor, from the conversation page, acknowledges the escalation of the stage
    visit the page showed (`visit_id`): its escalation levels not fired yet will not fire
    (as ACK by WhatsApp). Refused if the card has left that visit since: the supervisor
    never saw the stage it is in now."""
    if not user.is_supervisor:
        raise PermissionError("only supervisors can acknowledge an escalation")
    card = _locked_open_card(session, card_id)
    visit = desk.current_visit(session, card)
    if visit is None or visit.id != visit_id:
        now_in = f" and is now in {visit.stage.name}" if visit is not None else ""
        raise DeskError(
            f"the conversation has moved since the page was opened{now_in}: nothing was "
            "acknowledged; look at it again"
        )
    if not visit.timers.levels:
        raise DeskError("this stage has no escalation levels to acknowledge")
    if visit.acknowledged_at is not None:
        by = visit.acknowledged_by.name if visit.acknowledged_by else "someone"
        raise DeskError(f"the escalation in {visit.stage.name} was already acknowledged by {by}")
    acknowledge_visit(session, card, visit, user, now, "on the desk")
    return Done()


def acknowledge_visit(
    session: Session, card: Card, visit: StageVisit, user: User, now: datetime, where: str
) -> list[int]:
    """Record `user`'s acknowledgement of the visit's escalation and log it on the card
    ("… acknowledged the escalation `where`"). Returns the levels that will now not fire."""
    recorded = desk.recorded_kinds(session, visit)
    skipped = pending_levels(visit, recorded)
    visit.acknowledged_at, visit.acknowledged_by = now, user
    visit.next_due_at = sla.next_instant(escalation.owed_timers(visit), recorded)
    stopped = f"; {level_names(skipped)} will not fire" if skipped else ""
    text = f"{user.name} acknowledged the escalation {where}{stopped}"
    log(session, card, user, "acknowledged", text, now)
    session.flush()
    return skipped


def pending_levels(visit: StageVisit, recorded: set[str]) -> list[int]:
    """The escalation levels (1, 2, …) of the visit not fired yet."""
    count = len(visit.timers.levels)
    return [n for n in range(1, count + 1) if sla.level_kind(n) not in recorded]


def level_names(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"level {numbers[0]}"
    return f"levels {', '.join(str(n) for n in numbers[:-1])} and {numbers[-1]}"


def templates(session: Session) -> list[CustomerTemplateSpec]:
    return settings.replies(session).templates


def canned_replies(session: Session, card: Card, agent: User) -> list[tuple[str, str]]:
    """(title, text) of each canned reply, filled in for this customer and agent; one that
    cannot be (stored before its placeholders were checked: `fill` refuses it) is left out
    of the page."""
    filled = []
    for reply in settings.replies(session).canned:
        with suppress(DeskError):
            filled.append((reply.title, fill(reply.text, card, agent)))
    return filled


def fill(text: str, card: Card, agent: User) -> str:
    """A reply's or template's text for this customer. One stored before the rule for its
    placeholders (a format such as `{customer:>9999999}` builds a huge text) is refused."""
    problem = placeholder_problem(text, REPLY_PLACEHOLDERS)
    if problem:
        raise DeskError(f"this text cannot be sent as stored ({problem}): fix it in the settings")
    values = {"customer": card.contact.display_name, "agent": agent.name, "card": f"#{card.id}"}
    return text.format(**values)


def send_template(
    session: Session, card_id: int, agent: User, key: str, now: datetime, once: str | None = None
) -> Done:
    """Outside the 24-hour window only an approved template reaches the customer: this one,
    its variables filled in for the customer. Inside the window it may be sent too. `once`:
    the form's one-time token (desk.sent_before): the same form sent again sends nothing more."""
    template = next((t for t in templates(session) if t.key == key), None)
    if template is None:
        raise DeskError("choose one of the approved templates")
    card = desk.lock_card(session, card_id)
    if card is None or card.status != "open":
        raise DeskError(f"conversation #{card_id} is not open")
    if card.contact.opted_out_at is not None:
        raise DeskError(
            f"{card.contact.display_name} sent STOP: no messages the customer did not ask for "
            "until they send START"
        )
    body = fill(template.text, card, agent)
    dedupe_key, repeated = desk.sent_before(session, "template", once, body)
    if repeated is not None:
        return Done()
    message = desk.queue_outbound(
        session,
        to=card.contact.address,
        body=body,
        card=card,
        contact=card.contact,
        user=agent,
        dedupe_key=dedupe_key,
        now=now,
    )
    message.content_sid = template.content_sid
    message.content_variables = {k: fill(v, card, agent) for k, v in template.variables.items()}
    return Done.of(desk.answered(session, card, agent, message, now))


@dataclass
class Entry:
    """One line of the conversation's history, in time order."""

    at: datetime
    kind: str  # "in", "out", or a CardActivity kind (note, claimed, assigned, moved, …)
    message: Message | None = None
    activity: CardActivity | None = None


@dataclass
class VisitLine:
    visit: StageVisit
    events: list[SlaEvent]
    seconds: float  # time in the stage so far (wall)


@dataclass
class Conversation:
    card: Card
    entries: list[Entry]
    visits: list[VisitLine]
    window_open: bool
    window_closes_at: datetime | None
    templates: list[CustomerTemplateSpec] = field(default_factory=list)
    canned: list[tuple[str, str]] = field(default_factory=list)
    staff: list[User] = field(default_factory=list)
    state: str = sla.NO_SLA
    seconds_left: float | None = None
    # The current stage visit, when the viewer may acknowledge its escalation.
    acknowledgeable: StageVisit | None = None
    # The customer's latest message shown (0: none): Resolve says which it has seen.
    latest_inbound: int = 0


def conversation(session: Session, card_id: int, viewer: User, now: datetime) -> Conversation:
    """Everything the conversation page shows, in a handful of queries."""
    card = session.get(Card, card_id)
    if card is None:
        raise LookupError(card_id)
    # The customer's messages and the desk's to them; not the staff alerts about the card.
    messages = session.scalars(
        select(Message)
        .where(
            Message.card_id == card.id,
            or_(Message.contact_id.is_not(None), Message.user_id.is_(None)),
        )
        .order_by(Message.created_at, Message.id)
    ).all()
    activities = session.scalars(
        select(CardActivity)
        .where(CardActivity.card_id == card.id)
        .order_by(CardActivity.created_at, CardActivity.id)
    ).all()
    entries = [Entry(m.created_at, m.direction, message=m) for m in messages]
    entries += [Entry(a.created_at, a.kind, activity=a) for a in activities]
    entries.sort(key=lambda e: e.at)
    visits = session.scalars(
        select(StageVisit).where(StageVisit.card_id == card.id).order_by(StageVisit.entered_at)
    ).all()
    events: dict[int, list[SlaEvent]] = {v.id: [] for v in visits}
    for event in session.scalars(
        select(SlaEvent).where(SlaEvent.card_id == card.id).order_by(SlaEvent.fired_at)
    ):
        events.setdefault(event.visit_id, []).append(event)
    lines = [
        VisitLine(v, events[v.id], ((v.left_at or now) - v.entered_at).total_seconds())
        for v in visits
    ]
    last_in = card.contact.last_inbound_at
    current = next((v for v in visits if v.left_at is None), None)
    timers = current.timers if current else sla.Timers(None, None)
    staff = list(session.scalars(select(User).where(User.active.is_(True)).order_by(User.name)))
    state = desk.visit_state(current, now)  # as the queue shows it
    return Conversation(
        card=card,
        entries=entries,
        visits=lines,
        window_open=desk.window_open(last_in, now),
        window_closes_at=last_in + desk.WINDOW if last_in else None,
        templates=templates(session),
        canned=canned_replies(session, card, viewer),
        staff=staff if viewer.is_supervisor else [],
        state=state,
        seconds_left=sla.seconds_left(now, timers),
        latest_inbound=max((m.id for m in messages if m.direction == "in"), default=0),
        acknowledgeable=(
            current
            if viewer.is_supervisor
            and card.status == "open"
            and current is not None
            and timers.levels
            and current.acknowledged_at is None
            else None
        ),
    )
