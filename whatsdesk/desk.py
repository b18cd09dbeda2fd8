"""Use-cases of the desk on a database session: receive, open, move, queue, status."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    inspect,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import (
    Session,
    aliased,
    joinedload,
    make_transient_to_detached,
)
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from sqlalchemy.orm.util import identity_key

from . import bot, calendars, clock, settings, sla
from .db import sqlite_write_lock
from .models import (
    Card,
    CardActivity,
    Contact,
    EarlyStatus,
    Message,
    Pipeline,
    SlaEvent,
    Stage,
    StageVisit,
    User,
)
from .pipelines import MenuSpec
from .whatsapp import Inbound, failure_reason

# A stage visit's outcome.
ONGOING, MET, BREACHED, NO_SLA_OUTCOME = "ongoing", "met", "breached", "no_sla"


class DeskError(Exception):
    """A use-case cannot go ahead; the text says why, for a person."""


class Raced(Exception):
    """Another message of the same customer changed what this one had read: roll back and
    take the message again."""


@dataclass
class Received:
    message: Message
    card: Card | None
    duplicate: bool = False
    new_visit: StageVisit | None = None
    outbound: list[Message] = field(default_factory=list)
    menu_deadline: datetime | None = None  # a team menu awaits an answer until then
    # Visits whose timers moved (a supervisor's SNOOZE): re-armed after commit.
    timers: list[tuple[int, sla.Timers]] = field(default_factory=list)


def default_pipeline(session: Session) -> Pipeline:
    # Read in one statement with what a new card needs: its stages, their escalation levels
    # (its first visit's timers) and the calendar.
    pipeline = (
        session.scalars(
            select(Pipeline)
            .options(
                joinedload(Pipeline.stages).joinedload(Stage.escalations),
                joinedload(Pipeline.calendar),
            )
            .order_by(Pipeline.is_default.desc(), Pipeline.id)
            .limit(1)
        )
        .unique()
        .first()
    )
    if pipeline is None or not pipeline.stages:
        raise DeskError("no pipeline is configured: load one with `flask pipeline load`")
    return pipeline


def desk_timezone(session: Session) -> ZoneInfo:
    """The desk's days run in this zone (dashboard's "today", reports' days): the calendar's
    of the pipeline default_pipeline picks (the first when none is marked default); UTC
    without a pipeline or a calendar."""
    pipeline = session.scalars(
        select(Pipeline)
        .options(joinedload(Pipeline.calendar))
        .order_by(Pipeline.is_default.desc(), Pipeline.id)
        .limit(1)
    ).first()
    if pipeline is None or pipeline.calendar is None:
        return ZoneInfo("UTC")
    return ZoneInfo(pipeline.calendar.timezone)


def _latest(inbound: Inbound, now: datetime) -> dict[str, Any]:
    """What a message tells about its sender: when they last wrote, and their profile (a
    message without one keeps the one known)."""
    latest: dict[str, Any] = {"last_inbound_at": now}
    if inbound.profile_name:
        latest["profile_name"] = inbound.profile_name
    if inbound.wa_id:
        latest["wa_id"] = inbound.wa_id
    return latest


def upsert_contact(
    session: Session, inbound: Inbound, now: datetime, known: bool = True
) -> tuple[Contact, bool]:
    """The sender's contact with their latest message and profile (one UPDATE … RETURNING
    for a number the desk knows), and whether it was made just now. `known=False`: the
    number had no contact a moment ago in this transaction; it is made at once (a twin
    message making it meanwhile fails the insert, and the webhook tries again)."""
    latest = _latest(inbound, now)
    if known:
        found = session.scalars(
            update(Contact)
            .where(Contact.address == inbound.from_address)
            .values(latest)
            .returning(Contact),
            # The row it returns refreshes the contact if the session holds it already.
            execution_options={"synchronize_session": False, "populate_existing": True},
        ).one_or_none()
        if found is not None:
            return found, False
    contact: Contact = _inserted(
        session, Contact, address=inbound.from_address, created_at=now, **latest
    )
    return contact, True


@dataclass(frozen=True)
class _Sender:
    """What the first read of an inbound message learns: the message already stored under
    its sid (Twilio delivered it again), whether the sender is an active staff member's
    WhatsApp (a former employee writing in is a customer), whether the number has a
    contact, and the sender's open card, locked until commit (None for a number without
    one, and for a message stored already or a staff member's)."""

    stored: int | None
    staff: bool
    known: bool  # the number has a contact
    card: Card | None


_CARDS = Card.__table__
_CONTACTS = Contact.__table__
_CARD_COLUMNS = [(attr.key, attr.columns[0]) for attr in inspect(Card).column_attrs]
_MESSAGES = Message.__table__


def _first_read_statement() -> Select[Any]:
    contacts, users = _CONTACTS, User.__table__
    stored = select(_MESSAGES.c.id).where(_MESSAGES.c.sid == bindparam("sid")).scalar_subquery()
    known = select(contacts.c.id).where(contacts.c.address == bindparam("address")).exists()
    staff = (
        select(users.c.id)
        .where(users.c.whatsapp == bindparam("address"), users.c.active.is_(True))
        .exists()
    )
    # A message delivered again, or a staff member's (their commands lock the cards they
    # name, in their own order), locks no card.
    locked = (
        select(*(column.label(key) for key, column in _CARD_COLUMNS))
        .join_from(_CARDS, contacts, contacts.c.id == _CARDS.c.contact_id)
        .where(
            contacts.c.address == bindparam("address"),
            _CARDS.c.status == "open",
            stored.is_(None),
            ~staff,
        )
        .limit(1)
        .with_for_update(of=_CARDS)
        .cte("locked")
    )
    one = select(literal(1).label("one")).subquery("one")
    return (
        select(stored.label("stored"), staff.label("staff"), known.label("known"), locked)
        .select_from(one)
        .outerjoin(locked, true())
    )


_FIRST_READ = _first_read_statement()


def _first_read(session: Session, inbound: Inbound) -> _Sender:
    """One statement, before anything is written: the sid, the sender (staff, or a number
    the desk knows), their open card.

    The card is locked as lock_card locks it (on SQLite, the database's write lock): a card
    changed while we waited for the lock is read as it now is (PostgreSQL checks the
    conditions again on its new version), so one closed meanwhile is not found. Its pipeline
    is not joined in: a join is checked again against the pipeline row read before the
    wait, and would skip a card whose pipeline a team menu's timeout just chose. The lock is
    taken in a CTE so that the sid and the sender come back in the same row even when the
    sender has no open card (a locking clause cannot reach the nullable side of a join)."""
    session.flush()  # as the ORM's reads would: what the session holds is written first
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        sqlite_write_lock(connection)
    row = connection.execute(
        _FIRST_READ, {"address": inbound.from_address, "sid": inbound.sid}
    ).one()
    card = None
    if row.id is not None:
        card = _as_loaded(session, Card, {key: row._mapping[key] for key, _ in _CARD_COLUMNS})
    return _Sender(row.stored, bool(row.staff), bool(row.known), card)


def _as_loaded(session: Session, cls: Any, values: dict[str, Any]) -> Any:
    """The session's object for a row read or written on the table (all its columns), as if
    the ORM had loaded it: an object the session holds already is brought up to date."""
    held = _update_held(session, cls, values["id"], values)
    if held is not None:
        return held
    # As the ORM loads a row: the values are the object's state, with no change events.
    loaded = inspect(cls).class_manager.new_instance()
    instance_dict(loaded).update(values)
    make_transient_to_detached(loaded)
    session.add(loaded)
    return loaded


def _update_held(session: Session, cls: Any, ident: int, values: dict[str, Any]) -> Any:
    """The object the session holds for row `ident` (None if none), given `values` as
    stored now. As the ORM's populate_existing, its related objects are looked up again."""
    held = session.identity_map.get(identity_key(cls, ident))
    if held is not None:
        for key, value in values.items():
            set_committed_value(held, key, value)
        session.expire(held, [relation.key for relation in inspect(cls).relationships])
    return held


def open_card_of(session: Session, contact: Contact) -> Card | None:
    return session.scalars(
        select(Card).where(Card.contact_id == contact.id, Card.status == "open").limit(1)
    ).first()


def receive_message(session: Session, inbound: Inbound, now: datetime) -> Received:
    """Store a customer's message once per MessageSid, on their open card or a new one.

    - STOP / START / STATUS (and the pipeline's own keywords) are answered by the bot and
      open no conversation.
    - A customer writing again after being answered sets off the pipeline's
      `customer_message` automation (e.g. back to "waiting for a reply").
    - After resolution: within the pipeline's `reopen.within` the card reopens; later a new
      card starts, linked to the previous one.
    - The bot answers only a new conversation (honest about the wait); once a person works
      the conversation it stays silent."""
    sender = _first_read(session, inbound)
    if sender.stored is not None:
        existing = session.get_one(Message, sender.stored)
        return Received(message=existing, card=existing.card, duplicate=True)
    card = sender.card
    if card is not None and _only_adds_to(card, inbound):
        return _add_to_waiting_card(session, inbound, card, now)
    contact, new_contact = upsert_contact(session, inbound, now, sender.known)
    if card is None and not new_contact and not sender.staff and open_card_of(session, contact):
        # A twin message of theirs opened a card since the first read (the contact's row,
        # updated just now, waited for it to commit). Start again: the first read locks
        # that card. Waiting for it here, holding the contact's row, could deadlock with a
        # message joining the card, which locks the card before the contact's row.
        raise Raced(f"{inbound.sid}: a conversation was opened meanwhile")
    if sender.staff:
        # Staff writing to the desk open their 24-hour window (alerts may go as free text);
        # they are not customers: no card, no acknowledgement. What they write is a command
        # (TAKE, ACK, …) or gets the commands' help.
        from . import commands  # commands builds on desk (and workspace)

        note = _inbound_message(session, inbound, None, contact.id, now)
        return commands.handle(session, inbound, note, now)
    if card is None:
        return _new_conversation(session, inbound, contact, now, first_contact=new_contact)
    return _on_open_card(session, inbound, contact, card, now)


# The contact's latest (`_latest`: the columns set are the parameters given).
_TOUCH_CONTACT = update(_CONTACTS).where(_CONTACTS.c.id == bindparam("contact"))


def _only_adds_to(card: Card, inbound: Inbound) -> bool:
    """Whether the message only joins its open card: the customer is waiting already, the
    card is past the team menu, and the message is not a single word (which may be a
    command) — what most messages are. `_on_open_card` handles every other case."""
    if card.waiting_since is None or card.menu_deadline_at is not None:
        return False
    return bool(inbound.media) or not bot.may_be_command(inbound.body)


def _add_to_waiting_card(session: Session, inbound: Inbound, card: Card, now: datetime) -> Received:
    """The message joins the card it belongs to, in two statements on the tables (the
    ORM's unit of work would cost more than the writes): the contact's latest, the message."""
    latest = _latest(inbound, now)
    session.connection().execute(_TOUCH_CONTACT, {"contact": card.contact_id, **latest})
    _update_held(session, Contact, card.contact_id, latest)
    return Received(_inbound_message(session, inbound, card.id, card.contact_id, now), card)


def _inserted(session: Session, cls: Any, **values: Any) -> Any:
    """A row inserted on the table in one statement (no unit of work), and the session's
    object for it as stored (the table's defaults included), as if loaded. What the session
    holds is written first, as the ORM's own writes would (a contact made just now, the
    visit a card leaves)."""
    session.flush()
    statement = _INSERTS.get(cls)
    if statement is None:
        table = cls.__table__
        statement = _INSERTS[cls] = table.insert().returning(*table.c)
    # Columns given None are left out: NULL (a JSON column given None would store null).
    given = {key: value for key, value in values.items() if value is not None}
    row = session.connection().execute(statement, given).one()
    return _as_loaded(session, cls, dict(row._mapping))


_INSERTS: dict[Any, Any] = {}


def _new_conversation(
    session: Session, inbound: Inbound, contact: Contact, now: datetime, first_contact: bool
) -> Received:
    """The customer has no open card: a command is answered; else their latest card reopens,
    or a new one starts (after the team menu, if there is one) and the bot acknowledges it."""
    pipeline = default_pipeline(session)
    texts = bot.Texts(pipeline.language, pipeline.texts)
    command = None if inbound.media else bot.command_of(inbound.body, texts.lang, pipeline.keywords)
    if command is not None:
        return _command(session, inbound, contact, None, texts, command, now)
    menu = settings.menu(session)
    card, new_visit, opened = _reopen_or_open(
        session, contact, pipeline, now, menu, first_contact=first_contact
    )
    if new_visit is None and opened and menu is not None:
        return _ask_menu(session, inbound, contact, card, menu, now)
    if card.waiting_since is None:
        card.waiting_since = now
    # The customer's message is written before the bot's answer: the thread reads in order
    # (the two share created_at).
    wait = estimate(session, card, now) if opened else None
    message = _inbound_message(session, inbound, card.id, contact.id, now)
    outbound = []
    if wait is not None:
        ack = texts.acknowledgement(contact.profile_name, card.pipeline.name, wait)
        outbound.append(_bot_says(session, contact, card, ack, f"ack-{inbound.sid}", now))
    session.flush()
    return Received(message, card, new_visit=new_visit, outbound=outbound)


def _on_open_card(
    session: Session, inbound: Inbound, contact: Contact, card: Card, now: datetime
) -> Received:
    """A message on the customer's open card: a command is answered, an answer to the team
    menu routes the card, a new question after an answer sets off `customer_message`."""
    # Only a single word can be a command: the card's pipeline (its language and keywords)
    # is read for those alone, and when the card moves.
    if not inbound.media and bot.may_be_command(inbound.body):
        texts = bot.Texts(card.pipeline.language, card.pipeline.texts)
        command = bot.command_of(inbound.body, texts.lang, card.pipeline.keywords)
        if command is not None:
            return _command(session, inbound, contact, card, texts, command, now)
    if card.menu_deadline_at is not None:
        return _menu_answer(session, inbound, contact, card, now)
    new_visit = None
    if card.waiting_since is None:  # they had an answer: this is a new question
        new_visit = automate(session, card, CUSTOMER_MESSAGE, now)
        card.waiting_since = now
    message = _inbound_message(session, inbound, card.id, contact.id, now)
    session.flush()
    return Received(message, card, new_visit=new_visit)


def _bot_says(
    session: Session,
    contact: Contact,
    card: Card | None,
    text: str,
    key: str,
    now: datetime,
    **template: Any,
) -> Message:
    """The bot's answer to the customer, written at once (one INSERT, as `queue_outbound`
    records it); `template`: its content_sid and content_variables, if it has them."""
    row = outbound_row(to=contact.address, body=text, now=now, dedupe_key=key)
    card_id = card.id if card is not None else None
    message: Message = _inserted(
        session, Message, **row, card_id=card_id, contact_id=contact.id, **template
    )
    return message


def _reopen_or_open(
    session: Session,
    contact: Contact,
    pipeline: Pipeline,
    now: datetime,
    menu: MenuSpec | None = None,
    first_contact: bool = False,
) -> tuple[Card, StageVisit | None, bool]:
    """The customer's latest card again if it was resolved within its pipeline's reopen
    window, else a new card (linked to that one): (card, its new visit, whether new). With
    a team menu the new card has no stage visit yet: its clock starts with the choice.
    `first_contact`: the contact was made by this message, so has no earlier card."""
    last = None
    if not first_contact:
        last = session.scalars(
            select(Card)
            .where(Card.contact_id == contact.id, Card.status == "resolved")
            .order_by(Card.resolved_at.desc(), Card.id.desc())
            .limit(1)
        ).first()
    window = last.pipeline.reopen_seconds if last is not None else None
    if last is not None and window and last.resolved_at is not None:
        if now - last.resolved_at <= timedelta(seconds=window):
            return last, reopen(session, last.id, now, last.pipeline.reopen_stage), False
    previous = last.id if last is not None else None
    if menu is not None:
        # Its stage until a team is chosen: the first of the default pipeline.
        deadline = now + timedelta(seconds=menu.wait_seconds)
        card = _new_card(session, contact, pipeline, pipeline.stages[0], now, previous, deadline)
        return card, None, True
    card, visit = open_card(session, contact, pipeline, now, previous)
    return card, visit, True


def menu_options(session: Session, menu: MenuSpec) -> list[tuple[str, str]]:
    """(pipeline key, name) of each team the menu offers, in its order."""
    rows = session.execute(
        select(Pipeline.key, Pipeline.name).where(Pipeline.key.in_(menu.pipelines))
    ).all()
    names = {key: name for key, name in rows}
    return [(key, names[key]) for key in menu.pipelines if key in names]


def _ask_menu(
    session: Session,
    inbound: Inbound,
    contact: Contact,
    card: Card,
    menu: MenuSpec,
    now: datetime,
    message: Message | None = None,
) -> Received:
    """Ask which team (again, when `message` is the customer's answer that matched none)."""
    again = message is not None
    if message is None:
        message = _inbound_message(session, inbound, card.id, contact.id, now)
    texts = bot.Texts(menu.language)
    question = texts.menu(contact.profile_name, menu_options(session, menu), again=again)
    template = {}
    # The same question with quick-reply buttons, its variable the customer's name: Twilio
    # refuses an empty variable, so a customer without a profile name gets the text alone.
    if menu.template_sid and not again and contact.profile_name:
        template = {
            "content_sid": menu.template_sid,
            "content_variables": {"1": contact.profile_name},
        }
    ask = _bot_says(session, contact, card, question, f"menu-{inbound.sid}", now, **template)
    session.flush()
    return Received(message, card, outbound=[ask], menu_deadline=card.menu_deadline_at)


def _menu_answer(
    session: Session, inbound: Inbound, contact: Contact, card: Card, now: datetime
) -> Received:
    """The customer answers the team menu: the chosen pipeline's clock starts and the bot
    tells them the wait; anything else gets the options again."""
    message = _inbound_message(session, inbound, card.id, contact.id, now)
    menu = settings.menu(session)
    options = menu_options(session, menu) if menu is not None else []
    choice = bot.menu_choice(inbound.body, inbound.button_payload, options)
    if menu is None or choice is None:
        if menu is None:  # the menu was switched off meanwhile: the default pipeline
            return _chosen(session, card, default_pipeline(session).key, now, message, None)
        return _ask_menu(session, inbound, contact, card, menu, now, message)
    return _chosen(session, card, choice, now, message, menu)


def _chosen(
    session: Session,
    card: Card,
    key: str,
    now: datetime,
    message: Message | None,
    menu: MenuSpec | None,
) -> Received:
    pipeline = session.scalars(select(Pipeline).where(Pipeline.key == key)).one()
    card.pipeline = pipeline
    visit = _leave_menu(session, card, first_stage(pipeline), menu, now)
    if message is None and card.contact.opted_out_at is not None:
        # The menu timed out on a customer who has sent STOP (and not START since): their
        # card is with the team, and the bot says nothing they did not ask for (a choice
        # is asking).
        session.flush()
        return Received(_latest_inbound(session, card), card, new_visit=visit)
    texts = bot.Texts(pipeline.language, pipeline.texts)
    wait = estimate(session, card, now)
    ack = texts.acknowledgement(card.contact.profile_name, pipeline.name, wait)
    key_of = f"ack-{message.sid}" if message is not None else f"ack-menu-{card.id}"
    reply = _bot_says(session, card.contact, card, ack, key_of, now)
    session.flush()
    return Received(message or reply, card, new_visit=visit, outbound=[reply])


def _latest_inbound(session: Session, card: Card) -> Message:
    """The customer's latest message on the card."""
    return session.scalars(
        select(Message)
        .where(Message.card_id == card.id, Message.direction == "in")
        .order_by(Message.id.desc())
        .limit(1)
    ).one()


def _leave_menu(
    session: Session, card: Card, stage: Stage, menu: MenuSpec | None, now: datetime
) -> StageVisit:
    """The card at the team menu goes to `stage`, whose clock starts now, or at the
    customer's first message when the menu says the clock starts there."""
    card.menu_deadline_at = None
    starts = card.opened_at if menu is not None and menu.clock_starts == "first_message" else now
    return enter_stage(session, card, stage, starts)


def _person_takes_over_menu(
    session: Session, card: Card, now: datetime, stage: Stage | None = None
) -> StageVisit | None:
    """A person answers, moves or resolves a card whose customer is still choosing a team:
    the menu is over (its timeout must not move the card back, nor the bot speak after the
    person), and the card stays with the team it is with, its clock running in `stage` (by
    default the stage a new conversation starts in). None if the card is not at the menu."""
    if card.menu_deadline_at is None:
        return None
    first = stage or first_stage(card.pipeline)
    return _leave_menu(session, card, first, settings.menu(session), now)


def menu_timeout(session: Session, card_id: int, now: datetime) -> Received | None:
    """Nobody answered the team menu in time: the default pipeline takes the card."""
    card = lock_card(session, card_id)
    if card is None or card.status != "open" or card.menu_deadline_at is None:
        return None
    if now < card.menu_deadline_at:
        return None
    return _chosen(session, card, default_pipeline(session).key, now, None, settings.menu(session))


def _command(
    session: Session,
    inbound: Inbound,
    contact: Contact,
    card: Card | None,
    texts: bot.Texts,
    command: str,
    now: datetime,
) -> Received:
    """STOP, START or STATUS: recorded, answered by the bot, no conversation opened."""
    message = _inbound_message(session, inbound, card.id if card else None, contact.id, now)
    if command == "stop":
        contact.opted_out_at = now
        answer = texts.say("stopped")
    elif command == "start":
        contact.opted_out_at = None
        answer = texts.say("started")
    elif card is None:
        answer = texts.status(None, None)
    elif card.menu_deadline_at is not None and (menu := settings.menu(session)) is not None:
        # Still choosing a team: in no team's line yet, so the question again.
        answer = bot.Texts(menu.language).menu(
            contact.profile_name, menu_options(session, menu), again=False
        )
    else:
        wait = estimate(session, card, now) if card.waiting_since is not None else None
        answer = texts.status(card.pipeline.name, wait)
    reply = _bot_says(session, contact, card, answer, f"bot-{inbound.sid}", now)
    session.flush()
    return Received(message, card, outbound=[reply])


# Recent first responses the estimate reads: this many days back, at least this many.
ESTIMATE_DAYS = 7
ESTIMATE_MIN_SAMPLES = 5


def _waiting_ahead_statement() -> Select[tuple[int]]:
    """How many of the pipeline's customers, up to :most, have waited longer than card
    :card, waiting since :since, less those still choosing a team at the menu (who are in
    no team's line yet): a range of ix_cards_pipeline_queue, read only as far as :most
    customers, so a new conversation costs the same with 100 waiting or 100,000."""
    cards = _CARDS.c
    since = bindparam("since", type_=cards.waiting_since.type)
    ahead = (
        select(cards.id)
        .where(
            cards.status == "open",
            cards.pipeline_id == bindparam("pipeline"),
            cards.waiting_since.is_not(None),
            or_(
                cards.waiting_since < since,
                and_(cards.waiting_since == since, cards.id < bindparam("card")),
            ),
            cards.menu_deadline_at.is_(None),
        )
        # Written into the statement: a prepared statement's generic plan guesses at a bound
        # LIMIT, and could read every row ahead.
        .limit(bindparam("most", type_=Integer(), literal_execute=True))
        .subquery("ahead")
    )
    return select(func.count()).select_from(ahead)


_WAITING_AHEAD = _waiting_ahead_statement()


# The most customers counted ahead: with more, the customer is told "102nd or later".
MOST_AHEAD = 100


def _ahead_of(card: Card, since: datetime) -> dict[str, Any]:
    # One more than MOST_AHEAD is read, to tell "more than MOST_AHEAD" from exactly as many.
    return {"pipeline": card.pipeline_id, "since": since, "card": card.id, "most": MOST_AHEAD + 1}


def waiting_ahead(card: Card, since: datetime) -> Select[tuple[int]]:
    """The count estimate reads for `card`, its values bound (to show its query plan)."""
    return _WAITING_AHEAD.params(_ahead_of(card, since))


_VISITS = StageVisit.__table__
# The stage's recent answers, in business seconds (the newest first).
_RECENT_ANSWERS = (
    select(_VISITS.c.business_seconds)
    .where(
        _VISITS.c.stage_id == bindparam("stage"),
        _VISITS.c.left_at >= bindparam("since", type_=_VISITS.c.left_at.type),
        _VISITS.c.business_seconds.is_not(None),
    )
    .order_by(_VISITS.c.left_at.desc())
    .limit(500)
)


def estimate(session: Session, card: Card, now: datetime) -> bot.Wait:
    """What to tell a waiting customer: their place among the pipeline's waiting customers,
    and the wait — the next opening when closed, else the 80th percentile of the stage's
    recent answers in business time, else its SLA."""
    session.flush()  # the card is counted by its id
    connection = session.connection()
    ahead = connection.scalar(_WAITING_AHEAD, _ahead_of(card, card.waiting_since or now)) or 0
    position, or_later = ahead + 1, ahead > MOST_AHEAD
    stage = card.stage
    calendar = calendars.for_stage(stage, now)
    zone, local = None, {}  # the business's clock, for a wait told as an instant
    if calendar is not None:
        row = calendars.row_for_stage(stage)
        assert row is not None
        zone = ZoneInfo(row.timezone)
        local = {"today_local": now.astimezone(zone), "zone": row.timezone}
        if not clock.is_open(calendar, now):
            opens = clock.next_open(calendar, now).astimezone(zone)
            return bot.Wait(position, None, False, opens_local=opens, or_later=or_later, **local)
    recent = connection.scalars(
        _RECENT_ANSWERS, {"stage": stage.id, "since": now - timedelta(days=ESTIMATE_DAYS)}
    ).all()
    if len(recent) >= ESTIMATE_MIN_SAMPLES:
        ordered = sorted(int(seconds or 0) for seconds in recent)
        seconds, usual = ordered[math.ceil(0.8 * len(ordered)) - 1], True
    else:
        seconds, usual = stage.sla_seconds, False
    if calendar is not None and seconds:
        # Business time: a wait that runs past closing ends later than it sounds, so it is
        # said as when it ends ("by 10:55 on Monday").
        ends = clock.add_business_time(calendar, now, seconds)
        if ends > now + timedelta(seconds=seconds):
            local["by_local"] = ends.astimezone(zone)
    return bot.Wait(position, seconds, usual, or_later=or_later, **local)


def _inbound_message(
    session: Session, inbound: Inbound, card_id: int | None, contact_id: int, now: datetime
) -> Message:
    """The customer's message, written at once (one INSERT)."""
    fields = _inbound_fields(inbound, now)
    message: Message = _inserted(session, Message, card_id=card_id, contact_id=contact_id, **fields)
    return message


def _inbound_fields(inbound: Inbound, now: datetime) -> dict[str, Any]:
    """An inbound message's columns, but for its card and contact."""
    return {
        "sid": inbound.sid,
        "direction": "in",
        "from_address": inbound.from_address,
        "to_address": inbound.to_address,
        "body": inbound.body,
        "media": inbound.media,
        "status": "received",
        "created_at": now,
        "updated_at": now,
    }


def open_card(
    session: Session,
    contact: Contact,
    pipeline: Pipeline,
    now: datetime,
    previous_card_id: int | None = None,
) -> tuple[Card, StageVisit]:
    """A new conversation, the customer waiting since now, and its first stage visit (each
    written at once, one INSERT)."""
    first = first_stage(pipeline)
    session.add(contact)  # a contact the caller made just now is written first
    session.flush()
    card = _new_card(session, contact, pipeline, first, now, previous_card_id)
    return card, _start_visit(session, card, first, now, set())


def _new_card(
    session: Session,
    contact: Contact,
    pipeline: Pipeline,
    stage: Stage,
    now: datetime,
    previous_card_id: int | None,
    menu_deadline_at: datetime | None = None,
) -> Card:
    """An open card in `stage`, the customer waiting since now, written at once (one
    INSERT, no unit of work)."""
    card: Card = _inserted(
        session,
        Card,
        contact_id=contact.id,
        pipeline_id=pipeline.id,
        stage_id=stage.id,
        status="open",
        opened_at=now,
        waiting_since=now,
        resolution_used_seconds=0,
        paused_seconds=0,
        previous_card_id=previous_card_id,
        menu_deadline_at=menu_deadline_at,
    )
    return card


def current_visit(session: Session, card: Card) -> StageVisit | None:
    return session.scalars(
        select(StageVisit).where(StageVisit.card_id == card.id, StageVisit.left_at.is_(None))
    ).first()


def card_events(session: Session, card_id: int) -> set[str]:
    """The card-level (resolution) events the card has recorded, on any visit."""
    return set(
        session.scalars(
            select(SlaEvent.kind).where(
                SlaEvent.card_id == card_id, SlaEvent.kind.in_(sla.CARD_KINDS)
            )
        )
    )


def recorded_kinds(session: Session, visit: StageVisit) -> set[str]:
    """The events a visit has recorded, with its card's resolution events from any visit."""
    own = set(session.scalars(select(SlaEvent.kind).where(SlaEvent.visit_id == visit.id)))
    return own | card_events(session, visit.card_id)


def visit_timers(
    session: Session, card: Card, stage: Stage, now: datetime, done: set[str] | None = None
) -> sla.Timers:
    """The instants a visit of `card` to `stage` starting now will ring at. `done`: the
    card's resolution events, read when not given (a card opened just now has none)."""
    calendar = calendars.for_stage(stage, now)
    levels_after = [e.after_seconds for e in stage.escalations]
    timers = sla.timers_for(now, stage.sla_seconds, stage.warning_seconds, calendar, levels_after)
    timeout_at = None
    if stage.timeout_seconds:
        timeout_at = clock.add_business_time(calendar, now, stage.timeout_seconds)
    resolution_warning_at = resolution_at = None
    pipeline = card.pipeline
    if pipeline.resolution_seconds and not stage.pauses:
        if done is None:
            done = card_events(session, card.id)
        if sla.RESOLUTION_BREACH not in done:
            resolution_warning_at, resolution_at = sla.resolution_timers(
                now,
                pipeline.resolution_seconds,
                card.resolution_used_seconds or 0,
                pipeline.resolution_warning_seconds,
                calendars.for_pipeline(pipeline, now),
            )
            if sla.RESOLUTION_WARNING in done:
                resolution_warning_at = None
    return replace(
        timers,
        resolution_warning_at=resolution_warning_at,
        resolution_at=resolution_at,
        timeout_at=timeout_at,
    )


def enter_stage(session: Session, card: Card, stage: Stage, now: datetime) -> StageVisit:
    """Close the card's current stage visit and open one in `stage` with its timers.

    The caller arms the new visit's timers (Alarms.schedule_timers) after commit."""
    visit = current_visit(session, card)
    if visit is not None:
        leave(visit, now)
    return _start_visit(session, card, stage, now)


def _start_visit(
    session: Session, card: Card, stage: Stage, now: datetime, done: set[str] | None = None
) -> StageVisit:
    """A visit of `card` to `stage` with its timers; the card has no other visit open.
    `done`: the card's resolution events, when known (see visit_timers)."""
    # Only here does a card change stage, and _inserted's flush below writes it: stage_id is
    # current. A card already there (one opened just now) is left clean.
    if card.stage_id != stage.id:
        card.stage = stage
    timers = visit_timers(session, card, stage, now, done)
    visit: StageVisit = _inserted(
        session,
        StageVisit,
        card_id=card.id,
        stage_id=stage.id,
        entered_at=now,
        paused=stage.pauses,
        outcome=ONGOING,
        **timer_columns(timers, set()),
    )
    return visit


def timer_columns(timers: sla.Timers, recorded: set[str]) -> dict[str, Any]:
    """A visit's columns for its timers, with the next instant it owes an event at."""
    return {
        "warning_at": timers.warning_at,
        "deadline_at": timers.deadline_at,
        "escalations_at": [at.isoformat() for at in timers.levels],
        "resolution_warning_at": timers.resolution_warning_at,
        "resolution_at": timers.resolution_at,
        "timeout_at": timers.timeout_at,
        "next_due_at": sla.next_instant(timers, recorded),
    }


def set_timers(visit: StageVisit, timers: sla.Timers, recorded: set[str]) -> None:
    for key, value in timer_columns(timers, recorded).items():
        setattr(visit, key, value)


def leave(visit: StageVisit, now: datetime) -> None:
    """End a stage visit: time spent in wall and business seconds, paused time, whether its
    SLA was met, and the time it adds to the card's resolution clock."""
    visit.left_at = now
    # What fell due and was not recorded yet is still owed (escalation.owed): the clock or
    # the sweep records it, never lost because the card moved or closed a moment after.
    if visit.next_due_at is not None and visit.next_due_at > now:
        visit.next_due_at = None
    visit.wall_seconds = int((now - visit.entered_at).total_seconds())
    calendar = calendars.for_stage(visit.stage, visit.entered_at)
    visit.business_seconds = int(clock.business_seconds_between(calendar, visit.entered_at, now))
    visit.paused_seconds = visit.wall_seconds if visit.paused else 0
    card = visit.card
    if visit.paused:
        card.paused_seconds = (card.paused_seconds or 0) + visit.wall_seconds
    else:
        own = calendars.for_pipeline(card.pipeline, visit.entered_at)
        used = int(clock.business_seconds_between(own, visit.entered_at, now))
        card.resolution_used_seconds = (card.resolution_used_seconds or 0) + used
    visit.outcome = outcome_of(visit, now)


def outcome_of(visit: StageVisit, now: datetime) -> str:
    """met / breached for a visit with a stage SLA, no_sla without; ongoing until it ends
    (or breaches)."""
    if visit.deadline_at is None:
        return NO_SLA_OUTCOME if visit.left_at is not None else ONGOING
    if visit.outcome == BREACHED or now >= visit.deadline_at:
        return BREACHED
    return MET if visit.left_at is not None else ONGOING


def lock_card(session: Session, card_id: int) -> Card | None:
    """The card, re-read with its row locked until commit, so that two changes to one card
    (a timeout and the customer's message, two agents) happen one after the other
    (PostgreSQL, the production database; SQLite has no row locks and lets one writer at a
    time)."""
    return session.scalars(
        select(Card)
        .where(Card.id == card_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _open_card(session: Session, card_id: int) -> Card:
    card = lock_card(session, card_id)
    if card is None or card.status != "open":
        raise DeskError(f"card {card_id} is not open")
    return card


def _stage_of(pipeline: Pipeline, stage_key: str) -> Stage:
    stage = next((s for s in pipeline.stages if s.key == stage_key), None)
    if stage is None:
        raise DeskError(f"pipeline {pipeline.key!r} has no stage {stage_key!r}")
    return stage


def move_card(session: Session, card_id: int, stage_key: str, now: datetime) -> StageVisit:
    """Move an open card to another stage of its pipeline (the caller arms its timers). Not
    to the stage it is in: that would restart its SLA clock and record the visit as met,
    silencing its warning and breach."""
    card = _open_card(session, card_id)
    stage = _stage_of(card.pipeline, stage_key)
    at_menu = _person_takes_over_menu(session, card, now, stage)
    if at_menu is not None:
        return at_menu
    if card.stage.key == stage_key:
        raise DeskError(f"the conversation is already in {card.stage.name}")
    return enter_stage(session, card, stage, now)


# Events a pipeline's automation answers, and the stage each takes the card to.
NEW_CONVERSATION = "new_conversation"
CUSTOMER_MESSAGE = "customer_message"
AGENT_REPLY = "agent_reply"
REOPEN = "reopen"
AUTOMATION_EVENTS = (NEW_CONVERSATION, CUSTOMER_MESSAGE, AGENT_REPLY, REOPEN)


def stage_for_event(pipeline: Pipeline, event: str, current: Stage | None = None) -> Stage | None:
    """The stage the pipeline's automation sends a card to on `event`; None: stay put.

    A rule reads {"to": stage key, "from": [stage keys] or absent for any stage}."""
    rule = (pipeline.automation or {}).get(event)
    if not rule:
        return None
    if current is not None and rule.get("from") and current.key not in rule["from"]:
        return None
    target = next((s for s in pipeline.stages if s.key == rule["to"]), None)
    if target is None or target is current:
        return None
    return target


def first_stage(pipeline: Pipeline) -> Stage:
    """Where a new conversation starts: the stage its automation names, else the first."""
    return stage_for_event(pipeline, NEW_CONVERSATION) or pipeline.stages[0]


def automate(session: Session, card: Card, event: str, now: datetime) -> StageVisit | None:
    """Apply the pipeline's automation for `event`: the new visit, or None if it stays."""
    target = stage_for_event(card.pipeline, event, card.stage)
    return None if target is None else enter_stage(session, card, target, now)


# WhatsApp lets a business write freely for 24 hours after the person's latest message.
WINDOW = timedelta(hours=24)


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    return last_inbound_at is not None and now - last_inbound_at < WINDOW


@dataclass
class Replied:
    message: Message
    new_visit: StageVisit | None
    repeated: bool = False  # the same form sent again: its message was queued already


def sent_before(
    session: Session, kind: str, once: str | None, body: str
) -> tuple[str, Message | None]:
    """The dedupe key of a message a person sends from a page, and the message if the same
    form sent it already (a double click, a resubmitted page): `once`, the page form's
    one-time token, with the same text. Another text under that token (a page come back to
    with the browser's Back) is a new message; so is one without a token."""
    key = f"{kind}-{once}" if once else f"{kind}-{uuid.uuid4().hex}"
    earlier = session.scalars(select(Message).where(Message.dedupe_key == key)).first()
    if earlier is None:
        return key, None
    if earlier.body == body:
        return key, earlier
    return f"{kind}-{uuid.uuid4().hex}", None


MAX_BODY = 1600  # WhatsApp's limit for one message through Twilio


def agent_reply(
    session: Session, card_id: int, agent: User, body: str, now: datetime, once: str | None = None
) -> Replied:
    """An agent answers the customer: the message is queued for the send job, the customer
    is no longer waiting, an unowned card becomes the agent's, and the pipeline's
    `agent_reply` automation moves the card (e.g. to "waiting on customer"). `once`: the
    form's one-time token (see sent_before); the same form sent again queues nothing more."""
    card = _open_card(session, card_id)  # locked: a second submission waits for the first
    text = body.strip()
    if not text:
        raise DeskError("the reply is empty")
    if len(text) > MAX_BODY:
        raise DeskError(f"the reply is {len(text)} characters; WhatsApp takes at most {MAX_BODY}")
    key, repeated = sent_before(session, "reply", once, text)
    if repeated is not None:
        return Replied(repeated, None, repeated=True)
    if not window_open(card.contact.last_inbound_at, now):
        raise DeskError(
            "the customer's last message is more than 24 hours old: WhatsApp only accepts an "
            "approved template until they write again"
        )
    message = queue_outbound(
        session,
        to=card.contact.address,
        body=text,
        card=card,
        contact=card.contact,
        user=agent,
        dedupe_key=key,
        now=now,
    )
    return answered(session, card, agent, message, now)


def answered(session: Session, card: Card, agent: User, message: Message, now: datetime) -> Replied:
    """An agent's message to the customer is queued: the customer is no longer waiting, an
    unowned card becomes the agent's, and the `agent_reply` automation moves the card."""
    started = _person_takes_over_menu(session, card, now)
    message.answered_waiting_since = card.waiting_since  # put back if it never arrives
    card.waiting_since = None
    if card.owner is None:
        card.owner = agent
    session.flush()
    return Replied(message, automate(session, card, AGENT_REPLY, now) or started)


# Statuses of a message that never reached the person.
NOT_DELIVERED = ("failed", "undelivered")
REPLY_FAILED = "reply-failed"  # the card history's kind for a reply that never arrived
# A person's message to a customer that failed this long ago no longer reopens their wait.
FAILED_REPLY_HOURS = 24


def _persons_message_to_customer(message: type[Message]) -> ColumnElement[bool]:
    """An agent's reply or template to a customer (not the bot's, not a staff alert)."""
    return and_(
        message.direction == "out",
        message.contact_id.is_not(None),
        message.user_id.is_not(None),
        message.card_id.is_not(None),
    )


def failed_replies(now: datetime) -> Select[tuple[int]]:
    """A person's messages that answered a waiting customer (`answered_waiting_since`) and
    did not reach them, not yet handled, whose card — open, or resolved since (a reply and
    then Resolve is the usual way) — still counts the customer as answered: no later
    message of a person reached them, and the customer has not written since (which would
    have them waiting already). A range on the outbound messages' status index; empty but
    for failures not yet handled."""
    later = aliased(Message)
    return (
        select(Message.id)
        .join(Card, Card.id == Message.card_id)
        .where(
            Message.direction == "out",
            Message.status.in_(NOT_DELIVERED),
            Message.updated_at >= now - timedelta(hours=FAILED_REPLY_HOURS),
            Message.answered_waiting_since.is_not(None),
            Card.waiting_since.is_(None),
            ~exists().where(
                _persons_message_to_customer(later),
                later.card_id == Message.card_id,
                later.id > Message.id,
                later.status.not_in(NOT_DELIVERED),
            ),
        )
        .order_by(Message.id)
    )


def reply_failed(session: Session, message_id: int, now: datetime) -> StageVisit | None:
    """A person's answer did not reach the customer: the customer is waiting again since
    when they were waiting before it, and the pipeline's `customer_message` automation
    applies (e.g. back to "Waiting for our reply", with its SLA); a card resolved since is
    reopened first (as `reopen` would; not when the customer has another conversation
    open, which then has their attention). The card's history says why. Handled once: the
    message no longer keeps the time. The new visit, if any; nothing changes when the card
    no longer counts them as answered by it (`failed_replies`)."""
    message = session.get_one(Message, message_id)
    assert message.card_id is not None
    card = lock_card(session, message.card_id)
    if card is None or session.scalar(failed_replies(now).where(Message.id == message_id)) is None:
        return None
    since, message.answered_waiting_since = message.answered_waiting_since, None
    who = message.user.name if message.user else "A person"
    reason = failure_reason(message.error_message, message.error_code)
    lost = f"⚠️ {who}'s message did not reach the customer ({reason})"
    reopened = None
    if card.status != "open":
        other = open_card_of(session, card.contact)
        if other is not None:
            elsewhere = f"have another conversation open (card #{other.id})"
            log(session, card, None, REPLY_FAILED, f"{lost}; they {elsewhere}.", now)
            return None
        reopened = reopen(session, card.id, now)
    card.waiting_since = since
    again = f"are waiting for an answer again{' (reopened)' if reopened else ''}"
    log(session, card, None, REPLY_FAILED, f"{lost}: they {again}.", now)
    session.flush()
    return automate(session, card, CUSTOMER_MESSAGE, now) or reopened


def log(
    session: Session, card: Card, user: User | None, kind: str, body: str, now: datetime
) -> None:
    """A line of the card's history: who did what, when."""
    session.add(CardActivity(card=card, user=user, kind=kind, body=body, created_at=now))


def resolve(session: Session, card_id: int, now: datetime, seen: int | None = None) -> Card:
    """Close the conversation: its stage visit ends, its timers stop. `seen`: the id of the
    customer's latest message the person resolving has seen (0: none); a message that came
    after it is not buried unread."""
    card = _open_card(session, card_id)
    if seen is not None:
        latest = session.scalar(
            select(func.max(Message.id)).where(
                Message.card_id == card.id, Message.direction == "in"
            )
        )
        if latest is not None and latest > seen:
            raise DeskError(
                f"{card.contact.display_name} wrote again since this page was opened: "
                "read it before resolving"
            )
    visit = current_visit(session, card)
    if visit is not None:
        leave(visit, now)
    card.menu_deadline_at = None  # resolved before choosing a team: nothing to time out
    card.status, card.resolved_at, card.waiting_since = "resolved", now, None
    session.flush()
    return card


def reopen(
    session: Session, card_id: int, now: datetime, stage_key: str | None = None
) -> StageVisit:
    """Open a resolved card again, in `stage_key`, else the stage the pipeline's `reopen`
    automation names, else its first; the resolution clock goes on from where it stopped."""
    card = lock_card(session, card_id)
    if card is None:
        raise DeskError(f"no card {card_id}")
    if card.status == "open":
        raise DeskError(f"card {card_id} is already open")
    other = open_card_of(session, card.contact)
    if other is not None:
        raise DeskError(
            f"{card.contact.display_name} already has an open conversation (card #{other.id})"
        )
    card.status, card.resolved_at = "open", None
    named = next((s for s in card.pipeline.stages if s.key == stage_key), None)
    stage = named or stage_for_event(card.pipeline, REOPEN) or card.pipeline.stages[0]
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
        **outbound_row(to=to, body=body, now=now, dedupe_key=dedupe_key, from_address=from_address),
        sla_event_id=sla_event_id,
        card=card,
        contact=contact,
        user=user,
    )
    session.add(message)
    return message


def outbound_row(
    *, to: str, body: str, now: datetime, dedupe_key: str | None, from_address: str = ""
) -> dict[str, Any]:
    """The columns of a message to send, as `queue_outbound` records it (for writing many at
    once without the ORM: `escalation.write_alerts`)."""
    return {
        "direction": "out",
        "to_address": to,
        "from_address": from_address,
        "body": body,
        "dedupe_key": dedupe_key,
        "status": "pending",
        "media": [],
        "created_at": now,
        "updated_at": now,
    }


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
    # One conditional UPDATE, not a read then a write: "sent" and "delivered" often arrive
    # together at two web processes, and the one read before the other's commit would
    # otherwise write its lower status last. The second waits for the first's row lock
    # (PostgreSQL) or write lock (SQLite) and then finds the status already higher.
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if error_code:
        values["error_code"] = error_code
    raised = session.execute(
        update(Message).where(Message.sid == sid, Message.status.in_(_below(status))).values(values)
    ).rowcount
    if raised:
        return True
    if session.scalar(select(Message.id).where(Message.sid == sid)) is None:
        session.add(EarlyStatus(sid=sid, status=status, error_code=error_code, received_at=now))
    return False


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
        select(EarlyStatus, Message)
        .outerjoin(Message, Message.sid == EarlyStatus.sid)
        .where(
            or_(
                Message.id.is_not(None),
                EarlyStatus.received_at < now - timedelta(hours=keep_hours),
            )
        )
    ).all():
        if message is not None:
            _raise_status(message, callback.status, callback.error_code, now)
            settled += 1
        session.delete(callback)
    return settled


def _below(status: str) -> list[str]:
    """The statuses a message may leave for `status`: those of a lower rank."""
    return [known for known, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]


def _raise_status(message: Message, status: str, error_code: str | None, now: datetime) -> bool:
    if message.status not in _below(status):
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


@dataclass(frozen=True)
class QueueFilter:
    """What an agent narrows the queue to; None / "anyone": no narrowing."""

    pipeline_id: int | None = None
    stage_id: int | None = None
    owner: str = "anyone"  # "mine", "unassigned" or "anyone"
    viewer_id: int | None = None  # whose "mine"
    state: str | None = None  # sla.ON_TIME, APPROACHING, BREACHED, NO_SLA or PAUSED


@dataclass
class QueuePage:
    rows: list[QueueRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _filtered(query: Select[Any], filters: QueueFilter, now: datetime) -> Select[Any]:
    if filters.pipeline_id is not None:
        query = query.where(Card.pipeline_id == filters.pipeline_id)
    if filters.stage_id is not None:
        query = query.where(Card.stage_id == filters.stage_id)
    if filters.owner == "mine":
        query = query.where(Card.owner_id == filters.viewer_id)
    elif filters.owner == "unassigned":
        query = query.where(Card.owner_id.is_(None))
    if filters.state == sla.NO_SLA:
        # Cards in a stage without an SLA, and those whose customer is still choosing a
        # team at the menu (no visit yet; their row says "No SLA" too): each set read from
        # its own index, so the filter costs what it finds, not what is open.
        choosing = aliased(Card)
        without = union_all(
            select(StageVisit.card_id).where(
                StageVisit.left_at.is_(None), in_state(now, sla.NO_SLA)
            ),
            select(choosing.id).where(choosing.menu_deadline_at.is_not(None)),
        )
        query = query.where(Card.id.in_(without))
    elif filters.state:
        visit = StageVisit
        query = query.join(visit, and_(visit.card_id == Card.id, visit.left_at.is_(None)))
        query = query.where(in_state(now, filters.state))
    return query


def open_count(filters: QueueFilter, now: datetime) -> Select[tuple[int]]:
    """How many open cards `filters` keeps: the queue's total and the open-card gauges.
    Counts rows (`count(*)`), so PostgreSQL may answer from an index alone."""
    return _filtered(
        select(func.count()).select_from(Card).where(Card.status == "open"), filters, now
    )


def queue_page(
    session: Session,
    now: datetime,
    filters: QueueFilter | None = None,
    page: int = 1,
    per_page: int = 50,
) -> QueuePage:
    """One page of the queue: customers waiting longest first, then those answered."""
    filters = filters or QueueFilter()
    total = session.scalar(open_count(filters, now)) or 0
    page = max(1, min(page, max(1, -(-total // per_page))))
    rows = waiting_queue(session, now, per_page, (page - 1) * per_page, filters)
    return QueuePage(rows, total, page, per_page)


def waiting_queue(
    session: Session,
    now: datetime,
    limit: int = 200,
    offset: int = 0,
    filters: QueueFilter | None = None,
) -> list[QueueRow]:
    """Open cards, the customer waiting longest first (ix_cards_queue), then the answered."""
    filters = filters or QueueFilter()
    options = (
        joinedload(Card.contact),
        joinedload(Card.pipeline),
        joinedload(Card.stage),
        joinedload(Card.owner),
    )
    open_cards = _filtered(select(Card).where(Card.status == "open"), filters, now)
    waiting_cards = open_cards.where(Card.waiting_since.is_not(None))
    waiting = session.scalars(
        waiting_cards.options(*options)
        .order_by(Card.waiting_since, Card.id)
        .limit(limit)
        .offset(offset)
    ).all()
    answered_offset = 0
    if len(waiting) < limit:
        if not waiting and offset:  # this page starts among the answered
            count = select(func.count()).select_from(waiting_cards.subquery())
            answered_offset = offset - (session.scalar(count) or 0)
        answered = session.scalars(
            open_cards.where(Card.waiting_since.is_(None))
            .options(*options)
            .order_by(Card.opened_at, Card.id)
            .limit(limit - len(waiting))
            .offset(max(0, answered_offset))
        ).all()
    else:
        answered = []
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
    state = visit_state(visit, now)
    return QueueRow(card, waited, state, sla.seconds_left(now, timers), last)


def visit_state(visit: StageVisit | None, now: datetime) -> str:
    """The SLA state a card shows: its current visit's (sla.state_at), or paused in a
    pausing stage without an SLA of its own. visit_state_sql says the same in SQL."""
    state = sla.state_at(now, visit.timers if visit else sla.Timers(None, None))
    if state == sla.NO_SLA and visit is not None and visit.paused:
        return sla.PAUSED
    return state


def in_state(now: datetime, state: str) -> ColumnElement[bool]:
    """`visit_state_sql(now) == state` as ranges on the visit's columns, which an index can
    serve (ix_stage_visits_open_deadline): the queue's filter by SLA state and the open-card
    gauges. Breached, say, is a range of deadlines, not a CASE worked out for every open
    visit."""
    visit = StageVisit
    ahead = visit.deadline_at > now
    conditions: dict[str, ColumnElement[bool]] = {
        sla.BREACHED: visit.deadline_at <= now,
        sla.APPROACHING: and_(ahead, visit.warning_at <= now),
        sla.ON_TIME: and_(ahead, or_(visit.warning_at.is_(None), visit.warning_at > now)),
        sla.PAUSED: and_(visit.deadline_at.is_(None), visit.paused.is_(True)),
        sla.NO_SLA: and_(visit.deadline_at.is_(None), visit.paused.is_not(True)),
    }
    return conditions[state]


def visit_state_sql(now: datetime) -> ColumnElement[str]:
    """visit_state as a SQL CASE on StageVisit, to count states in the database: each
    state's `in_state` condition (they exclude one another), no SLA otherwise."""
    order = (sla.BREACHED, sla.APPROACHING, sla.ON_TIME, sla.PAUSED)
    return case(*((in_state(now, state), state) for state in order), else_=sla.NO_SLA)
