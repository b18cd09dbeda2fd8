"""The supervisors' live dashboard: how many open cards are on time, approaching, breached or
paused, for the whole desk and per pipeline and stage; the cards nearest their deadline; each
agent's open load and breaches today.

Everything is counted in the database (a handful of grouped queries, whatever the number of
open cards): an open card's SLA state is its current stage visit's (`left_at IS NULL`; desk
ends the visit when it resolves the card), as desk.visit_state_sql says it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session, selectinload

from . import clock, desk, sla
from .models import Card, Contact, Pipeline, SlaEvent, Stage, StageVisit, User

# In the order a person reads them, the good news first.
STATES = (sla.ON_TIME, sla.APPROACHING, sla.BREACHED, sla.PAUSED, sla.NO_SLA)
CHOOSING = "choosing"  # waiting for the team menu's answer: no stage, no SLA clock yet
LABELS = {**sla.STATE_LABELS, CHOOSING: "Choosing a team"}
NEAREST = 10


@dataclass(frozen=True)
class Counts:
    """Open cards per SLA state (every state present, 0 when none)."""

    of: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))

    @classmethod
    def of_states(cls, counted: Mapping[str, int]) -> Counts:
        return cls({state: counted.get(state, 0) for state in STATES})

    def __getitem__(self, state: str) -> int:
        return self.of.get(state, 0)

    @property
    def total(self) -> int:
        return sum(self.of.values())

    def segments(self) -> list[tuple[str, str, int]]:
        """(state, label, count) for each state, for the charts and counters."""
        return [(state, LABELS[state], self[state]) for state in STATES]

    def __add__(self, other: Counts) -> Counts:
        return Counts({state: self[state] + other[state] for state in STATES})


@dataclass(frozen=True)
class StageCounts:
    stage_id: int
    name: str
    counts: Counts


@dataclass(frozen=True)
class PipelineCounts:
    pipeline_id: int
    name: str
    stages: list[StageCounts]

    @property
    def counts(self) -> Counts:
        return sum((stage.counts for stage in self.stages), Counts())


@dataclass(frozen=True)
class DueCard:
    """An open card and its stage deadline, for the lists of cards nearest to it."""

    card_id: int
    customer: str
    pipeline: str
    stage: str
    owner: str | None
    deadline_at: datetime
    state: str
    seconds_left: float  # negative once breached


@dataclass(frozen=True)
class AgentRow:
    user_id: int
    name: str
    open_cards: int
    breaches_today: int


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    pipelines: list[PipelineCounts]
    choosing_team: int  # waiting for the team menu's answer: no stage clock yet
    nearest: list[DueCard]  # deadline still ahead, nearest first
    overdue: list[DueCard]  # breached, the longest overdue first
    agents: list[AgentRow]
    timezone: str  # the desk's: "today" starts at its midnight
    day_start: datetime

    @property
    def totals(self) -> Counts:
        return sum((pipeline.counts for pipeline in self.pipelines), Counts())

    @property
    def open_cards(self) -> int:
        return self.totals.total + self.choosing_team

    def total_segments(self) -> list[tuple[str, str, int]]:
        """Every open card: by SLA state, then those choosing a team."""
        return [*self.totals.segments(), (CHOOSING, LABELS[CHOOSING], self.choosing_team)]

    @property
    def local_now(self) -> datetime:
        return self.now.astimezone(ZoneInfo(self.timezone))

    @property
    def largest_stage(self) -> int:
        """The most open cards in one stage, to scale the stages' bars."""
        return max((s.counts.total for p in self.pipelines for s in p.stages), default=0)

    @property
    def busiest(self) -> int:
        """The largest open load, to scale the agents' bars."""
        return max((agent.open_cards for agent in self.agents), default=0)


def build(session: Session, now: datetime, nearest: int = NEAREST) -> Dashboard:
    """The dashboard as it stands at `now`."""
    pipelines = session.scalars(
        select(Pipeline)
        .options(selectinload(Pipeline.stages))
        .order_by(Pipeline.is_default.desc(), Pipeline.id)
    ).all()
    zone = desk.desk_timezone(session)
    today = now.astimezone(zone).date()
    start = clock.local_midnight(today, zone)
    end = clock.local_midnight(today + timedelta(days=1), zone)
    counts = state_counts(session, now)
    return Dashboard(
        now=now,
        pipelines=[
            PipelineCounts(
                p.id,
                p.name,
                [
                    StageCounts(s.id, s.name, Counts.of_states(counts.get(s.id, {})))
                    for s in p.stages
                ],
            )
            for p in pipelines
        ],
        choosing_team=choosing_team(session),
        nearest=due_cards(session, now, overdue=False, limit=nearest),
        overdue=due_cards(session, now, overdue=True, limit=nearest),
        agents=agent_rows(session, start, end),
        timezone=zone.key,
        day_start=start,
    )


def state_counts(session: Session, now: datetime) -> dict[int, dict[str, int]]:
    """{stage id: {state: open cards}} from the open stage visits, in one grouped query."""
    visits = select(
        StageVisit.stage_id.label("stage_id"), desk.visit_state_sql(now).label("state")
    ).where(StageVisit.left_at.is_(None))
    inner = visits.subquery()
    grouped = select(inner.c.stage_id, inner.c.state, func.count()).group_by(
        inner.c.stage_id, inner.c.state
    )
    counts: dict[int, dict[str, int]] = {}
    for stage_id, state, n in session.execute(grouped):
        counts.setdefault(stage_id, {})[state] = n
    return counts


def choosing_team(session: Session) -> int:
    """Open cards whose customer has not yet answered the team menu."""
    waiting = select(func.count()).where(Card.status == "open", Card.menu_deadline_at.is_not(None))
    return session.scalar(waiting) or 0


def due_cards(session: Session, now: datetime, overdue: bool, limit: int) -> list[DueCard]:
    """The open cards nearest their stage deadline: still ahead (`overdue` False) or past it
    (True, the longest overdue first). The earliest deadline comes first either way."""
    return [
        DueCard(
            card_id=card_id,
            customer=profile_name or address.removeprefix("whatsapp:"),
            pipeline=pipeline,
            stage=stage,
            owner=owner,
            deadline_at=deadline_at,
            state=sla.state_at(now, sla.Timers(warning_at, deadline_at)),
            seconds_left=(deadline_at - now).total_seconds(),
        )
        for card_id, warning_at, deadline_at, profile_name, address, pipeline, stage, owner in (
            session.execute(due_query(now, overdue, limit))
        )
    ]


def due_query(now: datetime, overdue: bool, limit: int) -> Select[Any]:
    """due_cards' statement: the first `limit` open visits in deadline order, read from
    ix_stage_visits_open_deadline, then their card, customer, stage and owner."""
    visit = StageVisit
    passed: ColumnElement[bool] = visit.deadline_at <= now if overdue else visit.deadline_at > now
    top = (
        select(visit.card_id, visit.stage_id, visit.warning_at, visit.deadline_at)
        .where(visit.left_at.is_(None), passed)
        .order_by(visit.deadline_at, visit.card_id)
        .limit(limit)
        .subquery()
    )
    return (
        select(
            top.c.card_id,
            top.c.warning_at,
            top.c.deadline_at,
            Contact.profile_name,
            Contact.address,
            Pipeline.name,
            Stage.name,
            User.name,
        )
        .join(Card, Card.id == top.c.card_id)
        .join(Contact, Contact.id == Card.contact_id)
        .join(Stage, Stage.id == top.c.stage_id)
        .join(Pipeline, Pipeline.id == Stage.pipeline_id)
        .outerjoin(User, User.id == Card.owner_id)
        .order_by(top.c.deadline_at, top.c.card_id)
    )


def agent_rows(session: Session, since: datetime, until: datetime) -> list[AgentRow]:
    """Every active agent: the open cards they own, and the breaches fired between `since`
    and `until` on cards that were theirs then."""
    load = (
        select(Card.owner_id.label("user_id"), func.count().label("n"))
        .where(Card.status == "open", Card.owner_id.is_not(None))
        .group_by(Card.owner_id)
        .subquery()
    )
    breaches = (
        select(SlaEvent.owner_id.label("user_id"), func.count().label("n"))
        .where(SlaEvent.kind == sla.BREACH, SlaEvent.fired_at >= since, SlaEvent.fired_at < until)
        .group_by(SlaEvent.owner_id)
        .subquery()
    )
    rows = session.execute(
        select(User.id, User.name, func.coalesce(load.c.n, 0), func.coalesce(breaches.c.n, 0))
        .outerjoin(load, load.c.user_id == User.id)
        .outerjoin(breaches, breaches.c.user_id == User.id)
        .where(User.role == "agent", User.active.is_(True))
        .order_by(User.name, User.id)
    )
    return [AgentRow(*row) for row in rows]
