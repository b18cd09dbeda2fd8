"""Staff acting on escalations by WhatsApp: TAKE, ASSIGN, ACK, SNOOZE and HELP.

A registered staff member's message to the desk number is read as a command about one
card: the card whose alert they replied to (WhatsApp's "reply"), or the one whose number
they wrote ("ACK #12"). Whatever happens they get one answer; what a command changes is
recorded in the card's history."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, bot, calendars, desk, escalation, sla, workspace
from .accounts import AUDIT_ACTION, alerts_state
from .desk import DeskError, Received
from .models import Card, Message, SlaEvent, StageVisit, User
from .whatsapp import Inbound

TAKE, ASSIGN, ACK, SNOOZE, HELP = "take", "assign", "ack", "snooze", "help"
STOP, START = "stop", "start"  # alerts to the sender's number: off, on again
SUPERVISOR_ONLY = (ASSIGN, ACK, SNOOZE)
# Each command's words, English first, then Portuguese and Spanish (case and accents ignored).
WORDS = {
    TAKE: ("take", "mine", "pegar", "pego", "assumir", "assumo", "tomar", "tomo"),
    ASSIGN: ("assign", "atribuir", "designar", "asignar"),
    ACK: ("ack", "acknowledge", "ciente", "visto", "enterado"),
    SNOOZE: ("snooze", "adiar", "posponer", "aplazar"),
    HELP: ("help", "ajuda", "ayuda"),
    # The words customers opt out and back in with, in every language the bot speaks.
    STOP: tuple(sorted({w.lower() for words in bot.KEYWORDS.values() for w in words["stop"]})),
    START: tuple(sorted({w.lower() for words in bot.KEYWORDS.values() for w in words["start"]})),
}
VERB_OF = {word: verb for verb, words in WORDS.items() for word in words}
# ASSIGN me: the sender takes the card over (even from someone else).
MYSELF = ("me", "myself", "eu", "mim", "yo")
MAX_SNOOZE_MINUTES = 24 * 60

# "#12", "card #12", "cartão #12", "tarjeta #12" (matched on folded text).
CODE_RE = re.compile(r"(?:\b(?:card|cartao|tarjeta)\s*)?#\s*(\d{1,9})\b")
BARE_NUMBER_RE = re.compile(r"^\d{1,9}$")
DURATION_RE = re.compile(r"^(\d{1,6})\s*(m|min|mins|minutes?|minutos?|h|hr|hours?|horas?)?$")
PUNCTUATION = "()[]{}.,;:!?\"'"  # around words, not inside them (an email's dots)


class CommandError(Exception):
    """The command cannot be carried out; the text tells the staff member why."""


@dataclass(frozen=True)
class Command:
    verb: str
    card_id: int | None = None
    minutes: int | None = None
    assignee: str = ""
    problem: str = ""  # what is wrong with the command as written
    # The stage visits the replied-to alert (or the card's alerts in the digest) was about;
    # None when the card was named by number, or the message replied to was no SLA alert:
    # ACK and SNOOZE then act on the card's current visit.
    alert_visits: frozenset[int] | None = None


@dataclass
class Outcome:
    """What to tell the staff member, about which card, and any timers that moved."""

    text: str
    card: Card | None = None
    timers: list[tuple[int, sla.Timers]] = field(default_factory=list)


def fold(text: str) -> str:
    """Lower case without accents, spaces collapsed: how commands are matched."""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


def parse(text: str) -> Command | None:
    """The command in a staff member's message; None when it is not one."""
    folded = fold(text)
    codes = {int(code) for code in CODE_RE.findall(folded)}
    words = [w.strip(PUNCTUATION) for w in CODE_RE.sub(" ", folded).split()]
    words = [w for w in words if w]
    if not words or words[0] not in VERB_OF:
        return None
    verb, args = VERB_OF[words[0]], words[1:]
    if len(codes) > 1:
        return Command(verb, problem="One card at a time, please.")
    code = codes.pop() if codes else None
    if verb == HELP:
        return Command(HELP)
    if verb in (STOP, START):  # the word alone, as customers' STOP and START
        return Command(verb) if not args and code is None else None
    if verb == ASSIGN:
        if not args:
            return Command(verb, code, problem="Say who to give it to, e.g. ASSIGN Ana.")
        return Command(verb, code, assignee=" ".join(args))
    if verb == SNOOZE:
        return _snooze(args, code)
    if code is None and len(args) == 1 and BARE_NUMBER_RE.match(args[0]):
        return Command(verb, int(args[0]))  # "ACK 12"
    if args:
        return Command(verb, code, problem=f"I did not understand {_quoted(' '.join(args))}.")
    return Command(verb, code)


QUOTED_CHARS = 60  # of a staff member's own words quoted back in an answer
LISTED = 10  # cards or people named in an answer; the rest are counted


def _quoted(words: str) -> str:
    """Their words as an answer quotes them: the start of a long message only."""
    return repr(words if len(words) <= QUOTED_CHARS else words[: QUOTED_CHARS - 1] + "…")


def _listed(names: list[str]) -> str:
    """Names for an answer, the first LISTED of them and how many more: an answer must fit
    one WhatsApp message (a digest in a storm covers hundreds of cards)."""
    shown = ", ".join(names[:LISTED])
    more = len(names) - LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _example(command: Command, card_id: int) -> str:
    """The command as written, with the card's number: what to send again."""
    words = [command.verb.upper(), f"#{card_id}", command.assignee]
    if command.minutes is not None:
        words.append(str(command.minutes))
    return " ".join(w for w in words if w)


def _snooze(args: list[str], code: int | None) -> Command:
    match = DURATION_RE.match(" ".join(args))
    if match is None:
        return Command(SNOOZE, code, problem="Say how many minutes, e.g. SNOOZE 30.")
    minutes = int(match.group(1)) * (60 if (match.group(2) or "m").startswith("h") else 1)
    if not 1 <= minutes <= MAX_SNOOZE_MINUTES:
        problem = f"Snooze from 1 to {MAX_SNOOZE_MINUTES} minutes."
        return Command(SNOOZE, code, problem=problem)
    return Command(SNOOZE, code, minutes=minutes)


def handle(session: Session, inbound: Inbound, message: Message, now: datetime) -> Received:
    """A registered staff member's message (already stored as `message`): carry out the
    command in it, or explain, and queue the answer to them (once per inbound message)."""
    user = session.scalars(
        select(User).where(User.whatsapp == inbound.from_address, User.active.is_(True))
    ).one()
    try:
        outcome = execute(session, user, parse(inbound.body), inbound.replied_to_sid, now)
    except (CommandError, DeskError) as exc:
        outcome = Outcome(f"⚠️ {exc}")
    answer = desk.queue_outbound(
        session,
        to=inbound.from_address,
        body=outcome.text,
        user=user,
        card=outcome.card,
        dedupe_key=f"command-{inbound.sid}",
        now=now,
    )
    # Handed straight to the sender, not held for a digest: the sweep resends it if its
    # send job is lost.
    answer.sent_at = now
    session.flush()
    return Received(message, None, outbound=[answer], timers=outcome.timers)


def execute(
    session: Session,
    user: User,
    command: Command | None,
    replied_to_sid: str | None,
    now: datetime,
) -> Outcome:
    """Check the command, find its card and carry it out; CommandError (nothing changed)
    when it cannot be."""
    if command is None or command.verb == HELP:
        return Outcome(help_text(user))
    if command.verb in (STOP, START):
        return alerts_on_or_off(session, user, command.verb == START, now)
    if command.problem:
        return Outcome(f"⚠️ {command.problem}\n\n{help_text(user)}")
    if command.verb in SUPERVISOR_ONLY and not user.is_supervisor:
        raise CommandError(
            f"Only supervisors and admins can {command.verb.upper()}; you can TAKE a card."
        )
    found = find_card(session, command, replied_to_sid)
    if command.card_id is None and replied_to_sid:
        command = replace(command, alert_visits=alert_visits(session, replied_to_sid, found.id))
    card = desk.lock_card(session, found.id)
    if card is None or card.status != "open":
        raise CommandError(f"Card #{found.id} is resolved: nothing to do.")
    return ACTIONS[command.verb](session, user, card, command, now)


def find_card(session: Session, command: Command, replied_to_sid: str | None) -> Card:
    """The card a command is about: the number written, else the alert replied to (a
    digest of several cards needs the number)."""
    if command.card_id is not None:
        card = session.get(Card, command.card_id)
        if card is None:
            raise CommandError(f"There is no card #{command.card_id}.")
        return card
    ids = cards_of_message(session, replied_to_sid) if replied_to_sid else []
    example = _example(command, ids[0] if ids else 12)
    if len(ids) > 1:
        listed = _listed([f"#{n}" for n in ids])
        raise CommandError(
            f"That digest covers cards {listed}: add the card's number, e.g. {example}."
        )
    if not ids:
        raise CommandError(f"Which card? Reply to its alert, or add its number, e.g. {example}.")
    card = session.get(Card, ids[0])
    assert card is not None
    return card


def cards_of_message(session: Session, sid: str) -> list[int]:
    """The cards an alert (or the digest it went out in) was about, by its Twilio SID."""
    message = session.scalars(select(Message).where(Message.sid == sid)).one_or_none()
    if message is None:
        return []
    if message.card_id is not None:
        return [message.card_id]
    bundled = select(Message.card_id).where(
        Message.digest_id == message.id, Message.card_id.is_not(None)
    )
    return sorted({card_id for card_id in session.scalars(bundled) if card_id is not None})


def alert_visits(session: Session, sid: str, card_id: int) -> frozenset[int] | None:
    """The stage visits of `card_id` that the alert with this SID was about (for a digest:
    the card's alerts bundled in it); None when it carried no SLA event."""
    message = session.scalars(select(Message).where(Message.sid == sid)).one_or_none()
    if message is None:
        return None
    alerts = select(Message.sla_event_id).where(
        Message.card_id == card_id,
        (Message.id == message.id) | (Message.digest_id == message.id),
    )
    visits = session.scalars(select(SlaEvent.visit_id).where(SlaEvent.id.in_(alerts))).all()
    return frozenset(visits) or None


def take(session: Session, user: User, card: Card, command: Command, now: datetime) -> Outcome:
    if card.owner_id == user.id:
        return Outcome(f"Card #{card.id} is already yours ({about(card)}).", card)
    try:
        workspace.claim(session, card.id, user, now)
    except DeskError as exc:
        hint = f" To take it over: ASSIGN me #{card.id}." if user.is_supervisor else ""
        raise CommandError(f"{exc} (card #{card.id}).{hint}") from exc
    return Outcome(f"✅ Card #{card.id} is yours: {about(card)}.", card)


def assign(session: Session, user: User, card: Card, command: Command, now: datetime) -> Outcome:
    person = user if command.assignee in MYSELF else find_staff(session, command.assignee)
    if card.owner_id == person.id:
        return Outcome(f"Card #{card.id} is already {person.name}'s ({about(card)}).", card)
    workspace.assign(session, card.id, user, person.id, now)
    return Outcome(f"✅ Card #{card.id} is now {person.name}'s: {about(card)}.", card)


def find_staff(session: Session, query: str) -> User:
    """The one active staff member a name or email means: the email, the whole name, or
    the start of the name or one of its words."""
    people = session.scalars(select(User).where(User.active.is_(True)).order_by(User.name)).all()
    exact = [p for p in people if query in (fold(p.email), fold(p.name))]
    if len(exact) == 1:
        return exact[0]
    found = [
        p
        for p in people
        if fold(p.name).startswith(query) or any(w == query for w in fold(p.name).split())
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CommandError(
            f"Nobody active on the staff is called {_quoted(query)}; try their email."
        )
    names = _listed([p.name for p in found])
    raise CommandError(f"{_quoted(query)} could be {names}: write more of the name, or the email.")


def acknowledge(
    session: Session, user: User, card: Card, command: Command, now: datetime
) -> Outcome:
    visit = _visit_to_act_on(session, card, command)
    if visit.acknowledged_at is not None:
        by = visit.acknowledged_by.name if visit.acknowledged_by else "someone"
        when = escalation.local_time(calendars.told_in(visit.stage), visit.acknowledged_at)
        return Outcome(
            f"Card #{card.id} was already acknowledged in {visit.stage.name} by {by} at {when}.",
            card,
        )
    skipped = workspace.acknowledge_visit(session, card, visit, user, now, "by WhatsApp")
    left = "no further escalation levels" if skipped else "no escalation levels were left"
    told = f"{left} in {visit.stage.name}"
    return Outcome(f"✅ Card #{card.id} acknowledged: {told} ({about(card)}).", card)


def snooze(session: Session, user: User, card: Card, command: Command, now: datetime) -> Outcome:
    visit = _visit_to_act_on(session, card, command)
    stage = visit.stage.name
    if visit.acknowledged_at is not None:
        raise CommandError(
            f"Card #{card.id} is acknowledged in {stage}: no escalation levels are left."
        )
    recorded = desk.recorded_kinds(session, visit)
    pending = workspace.pending_levels(visit, recorded)
    if not pending:
        raise CommandError(f"Card #{card.id} has no escalation level left to snooze in {stage}.")
    assert command.minutes is not None
    first = visit.timers.levels[pending[0] - 1]
    shift = max(first, now) + timedelta(minutes=command.minutes) - first
    # The same shift for each level still to come keeps them in order; it is kept on the
    # visit so that re-timing to changed SLAs keeps the snooze (pipeline_store.retime).
    levels = sla.delay_levels(visit.timers, shift, recorded).levels
    visit.escalations_at = [at.isoformat() for at in levels]
    visit.escalation_delay_seconds = (visit.escalation_delay_seconds or 0) + math.ceil(
        shift.total_seconds()
    )
    visit.next_due_at = sla.next_instant(escalation.owed_timers(visit), recorded)
    when = escalation.local_time(calendars.told_in(visit.stage), levels[pending[0] - 1])
    what = f"level {pending[0]} in {stage} now comes at {when}"
    workspace.log(
        session,
        card,
        user,
        "snoozed",
        f"{user.name} snoozed the escalation {command.minutes} min by WhatsApp: {what}",
        now,
    )
    session.flush()
    text = f"⏰ Card #{card.id} snoozed {command.minutes} min: escalation {what}."
    return Outcome(text, card, timers=[(visit.id, visit.timers)])


def _visit_to_act_on(session: Session, card: Card, command: Command) -> StageVisit:
    """The card's current stage visit, unless the alert replied to was about an earlier
    one: then nothing is done (CommandError), as the sender never saw the current one."""
    visit = desk.current_visit(session, card)
    if visit is None:
        raise CommandError(f"Card #{card.id} is not in a stage yet: no escalation to act on.")
    seen = command.alert_visits
    if seen is None or visit.id in seen:
        return visit
    old = session.get(StageVisit, max(seen))
    assert old is not None
    if old.stage_id == visit.stage_id:
        moved = f"has left {old.stage.name} and come back since that alert"
    else:
        moved = f"has moved on from {old.stage.name} to {visit.stage.name} since that alert"
    verb, word = command.verb.upper(), "acknowledge" if command.verb == ACK else "snooze"
    example = f"{verb} {command.minutes} #{card.id}" if command.minutes else f"{verb} #{card.id}"
    raise CommandError(
        f"Card #{card.id} {moved}: nothing to {word} there. "
        f"Reply {example} to {word} its current stage."
    )


def alerts_on_or_off(session: Session, user: User, on: bool, now: datetime) -> Outcome:
    """STOP from a staff member's number: no alerts reach it (the next person in line for
    each alert is told instead, in the end every supervisor); START: they reach it again.
    Audited, and shown on the staff page."""
    before = alerts_state(user)
    if on:
        user.alerts_stopped_at = None
        text = "✅ Alerts reach this number again. Send STOP to stop them."
    else:
        user.alerts_stopped_at = user.alerts_stopped_at or now
        text = (
            "🔕 No more alerts to this number: each goes to the next person it names, "
            "else to the supervisors. Send START to get them again."
        )
    audit.record(session, user, AUDIT_ACTION, user.email, before, alerts_state(user), now)
    return Outcome(text)


def about(card: Card) -> str:
    """Whose conversation, and where it stands."""
    contact = card.contact
    return f"{contact.display_name} ({contact.phone}), {card.pipeline.name} › {card.stage.name}"


def help_text(user: User) -> str:
    """What a staff member can write to the desk number."""
    lines = [
        "whatsdesk commands — reply to an alert with one of these, or add the card's number "
        "(e.g. TAKE #12):",
        "• TAKE — the card becomes yours",
    ]
    if user.is_supervisor:
        lines += [
            "• ASSIGN Ana — give it to someone (name or email; ASSIGN me to take it over)",
            "• ACK — acknowledged: no further escalation levels for its current stage",
            "• SNOOZE 30 — the next escalation level comes 30 minutes later",
        ]
    else:
        lines.append("(ASSIGN, ACK and SNOOZE are for supervisors.)")
    lines += [
        "• STOP — no more alerts to this number (START to get them again)",
        "• HELP — this message",
        "A digest covers several cards: add the number of the one you mean.",
    ]
    return "\n".join(lines)


Action = Callable[[Session, User, Card, Command, datetime], Outcome]
ACTIONS: dict[str, Action] = {TAKE: take, ASSIGN: assign, ACK: acknowledge, SNOOZE: snooze}
