"""Tables. The schema itself is made only by the Alembic migrations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base, UTCDateTime, utcnow
from .sla import Timers

ROLES = ("agent", "supervisor", "admin")
SUPERVISOR_ROLES = ("supervisor", "admin")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    whatsapp: Mapped[str | None] = mapped_column(String(40), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the person works (reassignment picks people on shift); None: any time.
    shift_calendar_id: Mapped[int | None] = mapped_column(ForeignKey("calendars.id"))
    shift_calendar: Mapped[BusinessCalendar | None] = relationship()
    # A supervisor an admin lets change settings (admins always may; agents never).
    can_edit_settings: Mapped[bool] = mapped_column(Boolean, default=False)
    # Names the person's logged-in sessions (in their cookie, through get_id): a new one
    # (accounts.end_sessions) ends them all — at logout, a password change, deactivation.
    session_token: Mapped[str | None] = mapped_column(String(64))
    # The person sent STOP from their WhatsApp number: no alerts reach it until START (or
    # until an admin gives the account another number).
    alerts_stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Flask-Login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token or ''}"

    @property
    def is_supervisor(self) -> bool:
        return self.role in SUPERVISOR_ROLES

    @property
    def reachable_by_whatsapp(self) -> bool:
        """Can alerts reach the person now: active, with a WhatsApp number that has not
        sent STOP?"""
        return self.active and bool(self.whatsapp) and self.alerts_stopped_at is None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_edit_settings(self) -> bool:
        return self.role == "admin" or (self.role == "supervisor" and self.can_edit_settings)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)  # whatsapp:+E164
    wa_id: Mapped[str | None] = mapped_column(String(32))
    profile_name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Sent STOP: no business-initiated messages (templates, timeouts' goodbyes) until START.
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def display_name(self) -> str:
        return self.profile_name or self.phone

    @property
    def phone(self) -> str:
        return self.address.removeprefix("whatsapp:")


class BusinessCalendar(Base):
    """Opening hours in a timezone, and the days the business is closed."""

    __tablename__ = "calendars"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    hours: Mapped[dict[str, list[str]]] = mapped_column(JSON)  # {"mon-fri": ["09:00-18:00"]}
    holiday_country: Mapped[str | None] = mapped_column(String(8))
    holiday_subdivision: Mapped[str | None] = mapped_column(String(64))
    # [{"date": "2026-12-24", "yearly": false}, …]: the business's own closed days.
    closed_dates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    ics_source: Mapped[str | None] = mapped_column(Text)
    # Days read from the .ics file or URL when the configuration was loaded.
    ics_dates: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Pipeline(Base):
    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # None: the clock runs 24/7.
    calendar_id: Mapped[int | None] = mapped_column(ForeignKey("calendars.id"))
    calendar: Mapped[BusinessCalendar | None] = relationship()
    # Card-level resolution SLA, in business time, time in pausing stages excluded.
    resolution_seconds: Mapped[int | None] = mapped_column(Integer)
    resolution_warning_seconds: Mapped[int | None] = mapped_column(Integer)
    # Where events take a card: {"customer_message": "reply", "agent_reply": "waiting", …}.
    automation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What the bot says: its language (en, pt-BR, es), texts replacing the built-in ones,
    # extra keywords ({"stop": [...], "start": [...], "status": [...]}).
    language: Mapped[str] = mapped_column(String(8), default="en")
    texts: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    keywords: Mapped[dict[str, list[str]]] = mapped_column(JSON, default=dict)
    # A customer writing within this long of resolution reopens the card in `reopen_stage`
    # (a stage key; None: the `reopen` automation's); later, a new card links the old one.
    reopen_seconds: Mapped[int | None] = mapped_column(Integer)
    reopen_stage: Mapped[str | None] = mapped_column(String(64))
    stages: Mapped[list[Stage]] = relationship(
        back_populates="pipeline", order_by="Stage.position", cascade="all, delete-orphan"
    )


class StageAlertRecipient(Base):
    """Who is warned about an unowned card in a stage."""

    __tablename__ = "stage_alert_recipients"

    stage_id: Mapped[int] = mapped_column(
        ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class StageEscalationRecipient(Base):
    __tablename__ = "stage_escalation_recipients"

    escalation_id: Mapped[int] = mapped_column(
        ForeignKey("stage_escalations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class StageEscalation(Base):
    """Escalation level N of a stage: who is told, how long after the breach."""

    __tablename__ = "stage_escalations"
    __table_args__ = (UniqueConstraint("stage_id", "level"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer)
    after_seconds: Mapped[int] = mapped_column(Integer)
    users: Mapped[list[User]] = relationship(secondary="stage_escalation_recipients")


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("pipeline_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(120))
    position: Mapped[int] = mapped_column(Integer)
    sla_seconds: Mapped[int | None] = mapped_column(Integer)
    warning_seconds: Mapped[int | None] = mapped_column(Integer)
    # Its own calendar, or 24/7 whatever the pipeline keeps; neither: the pipeline's.
    calendar_id: Mapped[int | None] = mapped_column(ForeignKey("calendars.id"))
    always_open: Mapped[bool] = mapped_column(Boolean, default=False)
    # Time here does not count against the card's resolution SLA ("waiting on customer").
    pauses: Mapped[bool] = mapped_column(Boolean, default=False)
    # The stage's own timer: after this long in the stage, resolve the card or move it to
    # the stage `timeout_action` names, telling the customer `timeout_message`.
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    timeout_action: Mapped[str | None] = mapped_column(String(64))
    timeout_message: Mapped[str | None] = mapped_column(Text)
    # On breach, give the card to this person, or to the least-loaded agent on shift.
    reassign_to_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reassign_least_loaded: Mapped[bool] = mapped_column(Boolean, default=False)

    pipeline: Mapped[Pipeline] = relationship(back_populates="stages")
    calendar: Mapped[BusinessCalendar | None] = relationship()
    escalations: Mapped[list[StageEscalation]] = relationship(
        order_by="StageEscalation.level", cascade="all, delete-orphan"
    )
    alert_users: Mapped[list[User]] = relationship(secondary="stage_alert_recipients")
    reassign_to: Mapped[User | None] = relationship(foreign_keys=[reassign_to_id])


class Card(Base):
    __tablename__ = "cards"
    __table_args__ = (
        # The queue: open cards, the longest-waiting customer first.
        Index("ix_cards_queue", "status", "waiting_since", "id"),
        # A new customer's place in their pipeline's queue (the bot's acknowledgement).
        Index("ix_cards_pipeline_queue", "status", "pipeline_id", "waiting_since", "id"),
        # The queue filtered to one owner ("mine"): its page and its count.
        Index("ix_cards_owner_queue", "status", "owner_id", "waiting_since", "id"),
        # The queue filtered to one stage: its page and its count.
        Index("ix_cards_stage_queue", "status", "stage_id", "waiting_since", "id"),
        # One open conversation per customer, even when their messages arrive at once.
        Index(
            "uq_cards_open_contact",
            "contact_id",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id"))
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="open")
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Since the oldest customer message nobody has answered; None when answered.
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Business seconds spent so far against the resolution SLA (finished, unpaused visits).
    resolution_used_seconds: Mapped[int] = mapped_column(Integer, default=0)
    paused_seconds: Mapped[int] = mapped_column(Integer, default=0)
    # The customer's earlier conversation, when this one started after it was resolved.
    previous_card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"))
    # Asked which team it is for: until then no stage clock runs; at this instant the
    # default pipeline is taken. None once a pipeline is chosen.
    menu_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    contact: Mapped[Contact] = relationship()
    pipeline: Mapped[Pipeline] = relationship()
    stage: Mapped[Stage] = relationship()
    owner: Mapped[User | None] = relationship()


class StageVisit(Base):
    __tablename__ = "stage_visits"
    __table_args__ = (
        # Reports: the visits that finished in a period, per stage.
        Index("ix_stage_visits_left", "left_at", "stage_id"),
        # The dashboard, from the index alone: the open visits nearest their deadline (and
        # the longest overdue), and how many open visits of each stage are in each state.
        Index(
            "ix_stage_visits_open_deadline",
            "deadline_at",
            "card_id",
            "stage_id",
            "warning_at",
            "paused",
            sqlite_where=text("left_at IS NULL"),
            postgresql_where=text("left_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id", ondelete="CASCADE"), index=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id"))
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    warning_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Escalation levels' instants (ISO, UTC), fixed when the visit starts, like the deadline.
    escalations_at: Mapped[list[str]] = mapped_column(JSON, default=list)
    # How much later than its stage's schedule SNOOZE has put the levels still to come: kept
    # when the visit is re-timed to changed SLAs.
    escalation_delay_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The card's resolution clock, as it stood when the visit began (None when paused).
    resolution_warning_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolution_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    timeout_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    wall_seconds: Mapped[int | None] = mapped_column(Integer)
    business_seconds: Mapped[int | None] = mapped_column(Integer)
    paused_seconds: Mapped[int | None] = mapped_column(Integer)
    # ongoing, met, breached (the stage SLA), or no_sla.
    outcome: Mapped[str] = mapped_column(String(16), default="ongoing")
    # The earliest instant still owed an event; None when nothing is (left, or breached).
    # The sweep's range query on it costs what is due, not what is open.
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # A supervisor acknowledged the escalation (by WhatsApp or on the page): no further levels.
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    card: Mapped[Card] = relationship()
    stage: Mapped[Stage] = relationship()
    acknowledged_by: Mapped[User | None] = relationship()

    # The columns the timers are read from, in the order `timers_from` takes them.
    TIMER_COLUMNS = (
        "warning_at",
        "deadline_at",
        "escalations_at",
        "resolution_warning_at",
        "resolution_at",
        "timeout_at",
    )

    @property
    def timers(self) -> Timers:
        return timers_from(*(getattr(self, name) for name in self.TIMER_COLUMNS))


def timers_from(
    warning_at: datetime | None,
    deadline_at: datetime | None,
    escalations_at: list[str] | str | None,
    resolution_warning_at: datetime | None,
    resolution_at: datetime | None,
    timeout_at: datetime | None,
) -> Timers:
    """A visit's timers from its columns (StageVisit.TIMER_COLUMNS), loaded or not; the
    escalation levels as loaded, or as the column's JSON text (decoded only where there are
    some: most visits have none)."""
    if isinstance(escalations_at, str):
        escalations_at = json.loads(escalations_at) if escalations_at not in ("[]", "null") else []
    levels = tuple(datetime.fromisoformat(at) for at in escalations_at or [])
    return Timers(warning_at, deadline_at, levels, resolution_warning_at, resolution_at, timeout_at)


class SlaEvent(Base):
    """An event of one stage visit (warning, breach, level N, reassignment, timeout) or of
    its card (resolution warning and breach): recorded once, whatever fires it."""

    __tablename__ = "sla_events"
    __table_args__ = (
        UniqueConstraint("visit_id", "kind"),
        # The resolution SLA belongs to the card: once per card, whichever visit fires it.
        # Reports: the events of a period, by kind.
        Index("ix_sla_events_fired", "fired_at", "kind"),
        Index(
            "uq_sla_events_card_resolution",
            "card_id",
            "kind",
            unique=True,
            sqlite_where=text("kind LIKE 'resolution%'"),
            postgresql_where=text("kind LIKE 'resolution%'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("stage_visits.id", ondelete="CASCADE"))
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What the event did besides telling people, e.g. {"from": 3, "to": 5} for a reassignment.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Whose card it was when the event fired (before any reassignment it set off): reports
    # and the dashboard credit a breach to them, not to whoever owns the card later.
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    visit: Mapped[StageVisit] = relationship()
    notifications: Mapped[list[Message]] = relationship(
        primaryjoin="SlaEvent.id == Message.sla_event_id",
        foreign_keys="Message.sla_event_id",
        viewonly=True,
        order_by="Message.id",
    )

    @property
    def lateness_seconds(self) -> float:
        """How long after its instant the event was recorded (never negative: never early)."""
        return (self.fired_at - self.due_at).total_seconds()


class Message(Base):
    """Every WhatsApp message in or out, customers' and staff alerts alike."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_card", "card_id", "created_at"),
        # Outbound messages by status and age (the sweep, refused alerts to send again).
        Index("ix_messages_waiting", "direction", "status", "updated_at"),
        # A recipient's alerts waiting for their digest.
        Index("ix_messages_user_status", "user_id", "status"),
        # The alerts a digest carried (is a message a digest: notifications.LAST_ALERTED).
        Index("ix_messages_digest", "digest_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Makes each outbound effect (an ack, an alert to one person) happen once.
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    direction: Mapped[str] = mapped_column(String(8))  # "in" | "out"
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id", ondelete="SET NULL"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    sla_event_id: Mapped[int | None] = mapped_column(ForeignKey("sla_events.id"))
    from_address: Mapped[str] = mapped_column(String(64))
    to_address: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(Text, default="")
    # An approved template instead of free text (outside the 24-hour window).
    content_sid: Mapped[str | None] = mapped_column(String(64))
    content_variables: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # An alert that went out inside a digest message: that message.
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    # When it was handed to the sender (the digest window counts from here).
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A person's message that answered a waiting customer: since when they had waited. Put
    # back on the card if the message never reaches them (desk.reply_failed), then cleared.
    answered_waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)

    card: Mapped[Card | None] = relationship()
    contact: Mapped[Contact | None] = relationship()
    user: Mapped[User | None] = relationship()
    sla_event: Mapped[SlaEvent | None] = relationship(foreign_keys=[sla_event_id])
    digest: Mapped[Message | None] = relationship(remote_side=[id])

    @property
    def delivery_status(self) -> str:
        """Its own status, or that of the digest it went out in."""
        return self.digest.status if self.digest is not None else self.status


class EarlyStatus(Base):
    """A status callback that beat the send job to storing the message's sid."""

    __tablename__ = "early_statuses"

    id: Mapped[int] = mapped_column(primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CardActivity(Base):
    """The card's history besides its messages: notes, claims, assignments, moves."""

    __tablename__ = "card_activity"
    __table_args__ = (Index("ix_card_activity_card", "card_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(24))  # note, claimed, assigned, moved, …
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    card: Mapped[Card] = relationship()
    user: Mapped[User | None] = relationship()


class LoginFailure(Base):
    """Failed logins counted for an account (its email, hashed) or a client address, in a
    window that starts at the first failure (throttle.py). In the database, so logging in
    works while Redis is down."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Setting(Base):
    """Desk-wide settings changed without code (alert digests, the alert template, …)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """A change to the desk's settings: who made it, when, and what it was before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # What changed, e.g. "stage", "calendar", "user", "replies", "sla-suggestion", "import".
    action: Mapped[str] = mapped_column(String(40))
    # Which one, e.g. "support/reply", "europe", "ana@example.com".
    target: Mapped[str] = mapped_column(String(200))
    before: Mapped[Any] = mapped_column(JSON, nullable=True)
    after: Mapped[Any] = mapped_column(JSON, nullable=True)

    user: Mapped[User | None] = relationship()
