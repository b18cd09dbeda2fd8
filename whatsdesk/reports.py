"""Supervisors' reports from the stage-visit and SLA-event history, and SLAs suggested by it.

Every function takes a Session and a Period; the number of queries does not grow with the
number of stages. Days are the desk's days: in the default pipeline calendar's timezone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, and_, case, cast, exists, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session, aliased, contains_eager, selectinload
from sqlalchemy.sql.elements import ColumnElement

from . import clock, configuration
from .durations import spoken
from .models import Pipeline, SlaEvent, Stage, StageVisit, User
from .pipelines import StageSpec
from .sla import (
    BREACH,
    GONE,
    LEVEL_PREFIX,
    RESOLUTION_BREACH,
    RESOLUTION_WARNING,
    WARNING,
    level_reached,
)

PRESETS = {"today": 1, "7d": 7, "30d": 30}
PERIOD_LABELS = {"today": "Today", "7d": "7 days", "30d": "30 days", "custom": "Custom"}
DEFAULT_PERIOD = "7d"
MAX_DAYS = 366
EARLIEST_DAY = date(2000, 1, 1)  # custom periods: no history before, and ...
LATEST_AHEAD = timedelta(days=366)  # ... nothing to report more than a year ahead
PERCENTILES = (0.5, 0.9, 0.95)

# Suggestions: the share of visits a suggested SLA leaves over it, and the least evidence.
SUGGESTION_PERCENTILE = 0.9
MIN_SAMPLE = 20
AUDIT_ACTION = "sla-suggestion"


class PeriodError(ValueError):
    """The period asked for cannot be reported on; the message says why."""


@dataclass(frozen=True)
class Period:
    """Whole days, first to last inclusive, in `timezone`."""

    kind: str  # today, 7d, 30d or custom
    first_day: date
    last_day: date
    timezone: str

    @property
    def start(self) -> datetime:
        return _midnight(self.first_day, self.timezone)

    @property
    def end(self) -> datetime:
        """The instant the period ends (exclusive): midnight after its last day."""
        return _midnight(self.last_day + timedelta(days=1), self.timezone)

    @property
    def days(self) -> list[date]:
        count = (self.last_day - self.first_day).days + 1
        return [self.first_day + timedelta(days=n) for n in range(count)]

    @property
    def label(self) -> str:
        if self.first_day == self.last_day:
            return self.first_day.isoformat()
        return f"{self.first_day.isoformat()} – {self.last_day.isoformat()}"

    def args(self) -> dict[str, str]:
        """The query arguments that ask for this period again."""
        if self.kind == "custom":
            return {
                "period": "custom",
                "start": self.first_day.isoformat(),
                "end": self.last_day.isoformat(),
            }
        return {"period": self.kind}


def _midnight(day: date, timezone: str) -> datetime:
    return clock.local_midnight(day, ZoneInfo(timezone))


def parse_period(args: Mapping[str, str], now: datetime, timezone: str) -> Period:
    """The period that `period` (today, 7d, 30d, custom with `start`/`end` dates) names;
    PeriodError with a message for a person otherwise."""
    kind = (args.get("period") or DEFAULT_PERIOD).strip()
    today = now.astimezone(ZoneInfo(timezone)).date()
    if kind in PRESETS:
        return Period(kind, today - timedelta(days=PRESETS[kind] - 1), today, timezone)
    if kind != "custom":
        raise PeriodError(f"Unknown period {kind!r}: choose today, 7 days, 30 days or custom.")
    first = _date(args.get("start"), "start")
    last = _date(args.get("end"), "end")
    if last < first:
        raise PeriodError("The end date is before the start date.")
    latest = today + LATEST_AHEAD
    if first < EARLIEST_DAY or last > latest:
        raise PeriodError(
            f"Dates must be from {EARLIEST_DAY.isoformat()} to {latest.isoformat()} "
            "(a year from today)."
        )
    days = (last - first).days + 1
    if days > MAX_DAYS:
        raise PeriodError(f"A period covers at most {MAX_DAYS} days; this one covers {days}.")
    return Period("custom", first, last, timezone)


def _date(raw: str | None, name: str) -> date:
    raw = (raw or "").strip()
    if not raw:
        raise PeriodError(f"A custom period needs a {name} date (YYYY-MM-DD).")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise PeriodError(f"The {name} date {raw!r} is not a date (YYYY-MM-DD).") from None


# --- percentiles ---------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont over sorted values: linear between the nearest two."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


@dataclass
class StageTimes:
    """The visits of one stage that ended in the period."""

    finished: int = 0
    met: int = 0
    breached: int = 0
    # Business seconds in the stage at the PERCENTILES, and the suggestion's percentile.
    percentiles: dict[float, float | None] = field(default_factory=dict)
    # Wall-clock seconds in the stage at the same fractions (nights and weekends included).
    wall: dict[float, float | None] = field(default_factory=dict)

    @property
    def with_sla(self) -> int:
        return self.met + self.breached

    @property
    def hit_rate(self) -> float | None:
        """Met ÷ finished visits that had an SLA."""
        return self.met / self.with_sla if self.with_sla else None


def stage_times(
    session: Session, period: Period, fractions: Sequence[float] = PERCENTILES
) -> dict[int, StageTimes]:
    """Per stage: finished visits, met, breached and percentiles of business and of wall
    time — in SQL on PostgreSQL (percentile_cont), from the sorted values elsewhere. One
    query."""
    in_period = and_(StageVisit.left_at >= period.start, StageVisit.left_at < period.end)
    met = func.sum(case((StageVisit.outcome == "met", 1), else_=0))
    breached = func.sum(case((StageVisit.outcome == "breached", 1), else_=0))
    times: dict[int, StageTimes] = {}
    if session.get_bind().dialect.name == "postgresql":
        spreads = [
            func.percentile_cont(fraction).within_group(column)
            for column in (StageVisit.business_seconds, StageVisit.wall_seconds)
            for fraction in fractions
        ]
        rows = session.execute(
            select(StageVisit.stage_id, func.count(), met, breached, *spreads)
            .where(in_period)
            .group_by(StageVisit.stage_id)
        )
        for stage_id, finished, n_met, n_breached, *spread in rows:
            found = [float(v) if v is not None else None for v in spread]
            times[stage_id] = StageTimes(
                finished,
                int(n_met or 0),
                int(n_breached or 0),
                dict(zip(fractions, found[: len(fractions)], strict=True)),
                dict(zip(fractions, found[len(fractions) :], strict=True)),
            )
        return times
    business: dict[int, list[int]] = defaultdict(list)
    wall: dict[int, list[int]] = defaultdict(list)
    listed = session.execute(
        select(
            StageVisit.stage_id,
            StageVisit.outcome,
            StageVisit.business_seconds,
            StageVisit.wall_seconds,
        ).where(in_period)
    )
    for stage_id, outcome, seconds, wall_seconds in listed:
        entry = times.setdefault(stage_id, StageTimes())
        entry.finished += 1
        entry.met += int(outcome == "met")
        entry.breached += int(outcome == "breached")
        if seconds is not None:
            business[stage_id].append(seconds)
        if wall_seconds is not None:
            wall[stage_id].append(wall_seconds)
    for stage_id, entry in times.items():
        entry.percentiles = {f: percentile(sorted(business[stage_id]), f) for f in fractions}
        entry.wall = {f: percentile(sorted(wall[stage_id]), f) for f in fractions}
    return times


# --- the report ----------------------------------------------------------------------------


@dataclass
class StageInfo:
    id: int
    pipeline_id: int
    pipeline_key: str
    pipeline_name: str
    key: str
    name: str
    sla_seconds: int | None
    warning_seconds: int | None
    pauses: bool
    levels: int  # escalation levels configured

    @property
    def label(self) -> str:
        return f"{self.pipeline_name} / {self.name}"

    @property
    def target(self) -> str:
        return f"{self.pipeline_key}/{self.key}"


def stages(session: Session) -> list[StageInfo]:
    """Every stage, pipeline by pipeline in stage order (two queries)."""
    rows = session.scalars(
        select(Stage)
        .join(Stage.pipeline)
        .options(contains_eager(Stage.pipeline), selectinload(Stage.escalations))
        .order_by(Pipeline.name, Pipeline.id, Stage.position)
    )
    return [
        StageInfo(
            s.id,
            s.pipeline_id,
            s.pipeline.key,
            s.pipeline.name,
            s.key,
            s.name,
            s.sla_seconds,
            s.warning_seconds,
            s.pauses,
            max((e.level for e in s.escalations), default=0),
        )
        for s in rows
    ]


@dataclass
class Violations:
    """Stage SLA breaches and resolution breaches counted under one heading."""

    breaches: int = 0
    resolution_breaches: int = 0

    def add(self, kind: str, n: int) -> None:
        if kind == BREACH:
            self.breaches += n
        else:
            self.resolution_breaches += n


@dataclass
class StageReport:
    stage: StageInfo
    times: StageTimes
    violations: Violations
    levels: dict[int, int]  # escalation level -> visits that reached it
    warnings: int = 0
    warned_then_breached: int = 0

    @property
    def conversion(self) -> float | None:
        return self.warned_then_breached / self.warnings if self.warnings else None


@dataclass
class Conversion:
    warnings: int = 0
    breached: int = 0

    @property
    def rate(self) -> float | None:
        return self.breached / self.warnings if self.warnings else None


@dataclass
class Tally:
    """One pipeline's or one agent's violations, counted by id: two of the same name (or a
    name like "Unassigned") stay apart."""

    id: int | None  # an agent's None: the cards nobody owns
    name: str
    email: str = ""  # an agent's, to tell namesakes apart
    violations: Violations = field(default_factory=Violations)

    @property
    def total(self) -> int:
        return self.violations.breaches + self.violations.resolution_breaches


@dataclass
class Report:
    period: Period
    days: dict[date, Violations]
    stages: list[StageReport]
    pipelines: list[Tally]  # by name, with violations in the period
    agents: list[Tally]  # by whose card it was when each fired, the most violations first
    resolution_conversion: list[tuple[str, Conversion]]  # (pipeline name, …) by name
    max_level: int

    @property
    def total(self) -> Violations:
        return Violations(
            sum(v.breaches for v in self.days.values()),
            sum(v.resolution_breaches for v in self.days.values()),
        )

    @property
    def hit_rate(self) -> float | None:
        met = sum(s.times.met for s in self.stages)
        finished = sum(s.times.with_sla for s in self.stages)
        return met / finished if finished else None


UNASSIGNED = "Unassigned"


def build(session: Session, period: Period) -> Report:
    """Everything the reports page shows for `period`."""
    infos = stages(session)
    by_id = {s.id: s for s in infos}
    days = {day: Violations() for day in period.days}
    per_stage: dict[int, Violations] = defaultdict(Violations)
    levels: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    pipelines: dict[int, Tally] = {}
    owners: dict[int | None, Violations] = defaultdict(Violations)
    for day, kind, stage_id, owner_id, n in _event_counts(session, period):
        reached = level_reached(kind)
        if reached is not None:
            levels[stage_id][reached] += n
            continue
        day = day if isinstance(day, date) else date.fromisoformat(day)
        if day in days:
            days[day].add(kind, n)
        per_stage[stage_id].add(kind, n)
        owners[owner_id].add(kind, n)
        if stage_id in by_id:
            info = by_id[stage_id]
            tally = pipelines.setdefault(
                info.pipeline_id, Tally(info.pipeline_id, info.pipeline_name)
            )
            tally.violations.add(kind, n)
    users = _users(session, [o for o in owners if o is not None])
    agents = [
        Tally(o, *users.get(o, (f"User #{o}", "")), v) if o else Tally(None, UNASSIGNED, "", v)
        for o, v in owners.items()
    ]
    for (stage_id, reached), twice in _levels_reached_twice(session, period).items():
        levels[stage_id][reached] -= twice
    conversion, resolution = _conversions(session, period, by_id)
    times = stage_times(session, period)
    max_level = max(
        [s.levels for s in infos] + [max(v, default=0) for v in levels.values()], default=0
    )
    return Report(
        period=period,
        days=days,
        stages=[
            StageReport(
                s,
                times.get(s.id, StageTimes()),
                per_stage.get(s.id, Violations()),
                dict(levels.get(s.id, {})),
                *conversion.get(s.id, (0, 0)),
            )
            for s in infos
        ],
        pipelines=sorted(pipelines.values(), key=lambda p: (p.name, p.id or 0)),
        agents=sorted(agents, key=lambda a: (-a.total, a.name, a.id is None, a.id or 0)),
        resolution_conversion=resolution,
        max_level=max_level,
    )


def _event_counts(session: Session, period: Period) -> list[Any]:
    """(local day, kind, stage id, owner id, count) of the period's breaches and escalation
    levels; the owner is whose card it was when each fired."""
    day = local_day(session, SlaEvent.fired_at, period)
    query = (
        select(day, SlaEvent.kind, StageVisit.stage_id, SlaEvent.owner_id, func.count())
        .join(StageVisit, StageVisit.id == SlaEvent.visit_id)
        .where(
            SlaEvent.fired_at >= period.start,
            SlaEvent.fired_at < period.end,
            or_(
                SlaEvent.kind.in_((BREACH, RESOLUTION_BREACH)),
                SlaEvent.kind.like(f"{LEVEL_PREFIX}%"),
            ),
        )
        .group_by(day, SlaEvent.kind, StageVisit.stage_id, SlaEvent.owner_id)
    )
    return list(session.execute(query))


def _levels_reached_twice(session: Session, period: Period) -> dict[tuple[int, int], int]:
    """{(stage id, level): visits counted more than once at it}: a visit that reached a
    level later removed (`sla.gone_level_kind`) and then the level now numbered the same
    has two events at one level, and the report counts visits. Only visits with a removed
    level's event in the period are read."""
    in_period = and_(SlaEvent.fired_at >= period.start, SlaEvent.fired_at < period.end)
    with_gone = select(SlaEvent.visit_id).where(
        in_period, SlaEvent.kind.like(f"{LEVEL_PREFIX}%{GONE}%")
    )
    rows = session.execute(
        select(StageVisit.stage_id, SlaEvent.visit_id, SlaEvent.kind)
        .join(StageVisit, StageVisit.id == SlaEvent.visit_id)
        .where(
            in_period,
            SlaEvent.kind.like(f"{LEVEL_PREFIX}%"),
            SlaEvent.visit_id.in_(with_gone),
        )
    )
    events: dict[tuple[int, int, int], int] = defaultdict(int)  # (stage, visit, level)
    for stage_id, visit_id, kind in rows:
        reached = level_reached(kind)
        if reached is not None:
            events[stage_id, visit_id, reached] += 1
    twice: dict[tuple[int, int], int] = defaultdict(int)
    for (stage_id, _visit, reached), n in events.items():
        if n > 1:
            twice[stage_id, reached] += n - 1
    return twice


def _conversions(
    session: Session, period: Period, by_id: dict[int, StageInfo]
) -> tuple[dict[int, tuple[int, int]], list[tuple[str, Conversion]]]:
    """Warnings fired in the period and how many of them were followed by the breach: per
    stage for the stage clock, per pipeline for the resolution clock. One query."""
    later = aliased(SlaEvent)
    stage_breach = exists().where(later.visit_id == SlaEvent.visit_id, later.kind == BREACH)
    resolution_breach = exists().where(
        later.card_id == SlaEvent.card_id, later.kind == RESOLUTION_BREACH
    )
    followed = case(
        (and_(SlaEvent.kind == WARNING, stage_breach), 1),
        (and_(SlaEvent.kind == RESOLUTION_WARNING, resolution_breach), 1),
        else_=0,
    )
    rows = session.execute(
        select(StageVisit.stage_id, SlaEvent.kind, func.count(), func.sum(followed))
        .join(StageVisit, StageVisit.id == SlaEvent.visit_id)
        .where(
            SlaEvent.fired_at >= period.start,
            SlaEvent.fired_at < period.end,
            SlaEvent.kind.in_((WARNING, RESOLUTION_WARNING)),
        )
        .group_by(StageVisit.stage_id, SlaEvent.kind)
    )
    per_stage: dict[int, tuple[int, int]] = {}
    resolution: dict[int, tuple[str, Conversion]] = {}  # by pipeline id
    for stage_id, kind, warnings, breached in rows:
        if kind == WARNING:
            per_stage[stage_id] = (warnings, int(breached or 0))
        elif stage_id in by_id:
            info = by_id[stage_id]
            _, entry = resolution.setdefault(info.pipeline_id, (info.pipeline_name, Conversion()))
            entry.warnings += warnings
            entry.breached += int(breached or 0)
    ordered = sorted(resolution.items(), key=lambda item: (item[1][0], item[0]))
    return per_stage, [named for _, named in ordered]


def _users(session: Session, ids: list[int]) -> dict[int, tuple[str, str]]:
    """{user id: (name, email)}."""
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.name, User.email).where(User.id.in_(ids)))
    return {user_id: (name, email) for user_id, name, email in rows}


def local_day(session: Session, column: Any, period: Period) -> ColumnElement[Any]:
    """The date, in the period's timezone, of a UTC instant column: PostgreSQL converts with
    the zone's rules; SQLite shifts by the UTC offset in force, which changes only at the
    zone's transitions inside the period (a CASE over those few stretches)."""
    if session.get_bind().dialect.name == "postgresql":
        zone = "'" + period.timezone.replace("'", "''") + "'"
        # A literal, not a parameter: GROUP BY must see the very same expression.
        return cast(func.timezone(literal_column(zone), column), Date)
    stretches = utc_offsets(period.timezone, period.start, period.end)

    def shifted(offset: int) -> ColumnElement[Any]:
        return func.date(column, literal_column(f"'{offset:+d} seconds'"))

    if len(stretches) == 1:
        return shifted(stretches[0][1])
    whens = [(column < until, shifted(offset)) for until, offset in stretches[:-1]]
    return case(*whens, else_=shifted(stretches[-1][1]))


def utc_offsets(timezone: str, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """[(until, offset seconds)]: the zone's UTC offset from `start`, stretch by stretch,
    each in force until the next one's instant (the last one's `until` is `end`)."""
    zone = ZoneInfo(timezone)

    def offset(epoch: int) -> int:
        delta = datetime.fromtimestamp(epoch, UTC).astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta else 0

    # Zones change offset at whole seconds, and at most once in any twelve hours.
    at, last = math.floor(start.timestamp()), math.ceil(end.timestamp())
    current = offset(at)
    stretches: list[tuple[datetime, int]] = []
    while at < last:
        step = min(at + 12 * 3600, last)
        if offset(step) == current:
            at = step
            continue
        low, high = at, step  # the change: the first second of (low, high] off `current`
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if offset(middle) == current else (low, middle)
        stretches.append((datetime.fromtimestamp(high, UTC), current))
        current, at = offset(high), high
    stretches.append((end, current))
    return stretches


# --- deadlines from history ------------------------------------------------------------------


def round_up_sla(seconds: float) -> int:
    """The next step above `seconds` people set deadlines in: a minute under an hour, 5
    minutes under four hours, a quarter of an hour above. Strictly above: a visit that
    takes exactly the p90 reaches an SLA equal to it, and that is a breach."""
    step = 60 if seconds < 3600 else 300 if seconds < 4 * 3600 else 900
    return max(step, (math.floor(seconds / step) + 1) * step)


@dataclass
class Suggestion:
    stage: StageInfo
    sample: int  # finished visits with a business time in the period
    p90: float | None
    over_current: float | None  # share of them that breached the current SLA
    suggested_seconds: int | None
    over_suggested: float | None  # share that would have breached the suggestion
    reason: str | None  # why there is no suggestion to apply

    @property
    def applicable(self) -> bool:
        return self.reason is None and self.suggested_seconds is not None


def suggestions(session: Session, period: Period) -> list[Suggestion]:
    """For every stage: its SLA, the share of the period's visits over it, and the p90 of
    their business time rounded up as a new SLA, with the share that would be over that.
    Two queries on the history, however many stages."""
    infos = stages(session)
    times = stage_times(session, period, (SUGGESTION_PERCENTILE,))
    proposed: dict[int, int] = {}
    for info in infos:
        p90 = times.get(info.id, StageTimes()).percentiles.get(SUGGESTION_PERCENTILE)
        if p90 is not None and info.sla_seconds and not info.pauses:
            proposed[info.id] = round_up_sla(p90)
    samples, over_current, over_proposed = _over(session, period, infos, proposed)
    result = []
    for info in infos:
        sample = samples.get(info.id, 0)
        p90 = times.get(info.id, StageTimes()).percentiles.get(SUGGESTION_PERCENTILE)
        suggested = proposed.get(info.id)
        reason = _no_suggestion(info, sample, suggested)
        result.append(
            Suggestion(
                stage=info,
                sample=sample,
                p90=p90 if sample else None,
                over_current=over_current.get(info.id, 0) / sample
                if sample and info.sla_seconds
                else None,
                suggested_seconds=suggested if sample >= MIN_SAMPLE else None,
                over_suggested=over_proposed.get(info.id, 0) / sample
                if sample >= MIN_SAMPLE and suggested
                else None,
                reason=reason,
            )
        )
    return result


def _no_suggestion(info: StageInfo, sample: int, suggested: int | None) -> str | None:
    if info.pauses:
        return "A pause stage waits on the customer: no SLA to suggest."
    if not info.sla_seconds:
        return "This stage has no SLA; set one in the configuration first."
    if sample < MIN_SAMPLE:
        return (
            f"Only {sample} finished visit{'s' if sample != 1 else ''} in the period; "
            f"a suggestion needs at least {MIN_SAMPLE}."
        )
    if suggested == info.sla_seconds:
        return "The current SLA already matches the history."
    return None


def _over(
    session: Session, period: Period, infos: list[StageInfo], proposed: dict[int, int]
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Per stage: finished visits with a business time, how many breached the current SLA,
    and how many would have breached the proposed one. A visit breaches when its time in
    the stage reaches the SLA (the deadline fires at `now >= deadline`): the whole seconds
    `business_seconds` keeps are at least the SLA."""
    current = {s.id: s.sla_seconds for s in infos if s.sla_seconds}
    seconds = StageVisit.business_seconds

    def breaching(limits: dict[int, int]) -> ColumnElement[Any]:
        if not limits:
            return literal(0)
        limit = case(limits, value=StageVisit.stage_id, else_=None)
        return func.sum(case((seconds >= limit, 1), else_=0))

    rows = session.execute(
        select(StageVisit.stage_id, func.count(), breaching(current), breaching(proposed))
        .where(
            StageVisit.left_at >= period.start,
            StageVisit.left_at < period.end,
            seconds.is_not(None),
        )
        .group_by(StageVisit.stage_id)
    )
    samples, over_current, over_proposed = {}, {}, {}
    for stage_id, n, over_now, over_new in rows:
        samples[stage_id] = n
        over_current[stage_id] = int(over_now or 0)
        over_proposed[stage_id] = int(over_new or 0)
    return samples, over_current, over_proposed


class SuggestionError(ValueError):
    """The suggestion cannot be applied; the message says why."""


@dataclass
class AppliedSuggestion:
    stage: StageInfo
    old_seconds: int | None
    new_seconds: int
    old_warning: int | None
    new_warning: int | None

    @property
    def warning_changed(self) -> bool:
        return self.old_warning != self.new_warning


def apply_suggestion(
    session: Session, period: Period, stage_id: int, expected: int, user: User, now: datetime
) -> AppliedSuggestion:
    """Set the stage's SLA to the suggestion for `period` — the `expected` seconds the page
    showed, refused if the history has since moved it. A warning lead that would not fit
    under the new SLA becomes a fifth of it. Audited; visits that start afterwards use it.
    Raises SuggestionError, or PipelineFileError from the configuration's checks."""
    found = next((s for s in suggestions(session, period) if s.stage.id == stage_id), None)
    if found is None:
        raise SuggestionError("There is no such stage.")
    if not found.applicable:
        raise SuggestionError(f"{found.stage.label}: {found.reason or 'no suggestion.'}")
    new = found.suggested_seconds
    assert new is not None
    if new != expected:
        raise SuggestionError(
            f"{found.stage.label}: the suggestion changed since the page was shown "
            f"(now {spoken(new)}); look at it again before applying."
        )
    info = found.stage
    warnings: list[int | None] = []  # the stage's warning lead, as it stands, then as set

    def set_sla(stage: StageSpec) -> StageSpec:
        """Read afresh, with other changes waiting: a change made since the page was shown
        refuses the suggestion, and the warning kept is the one stored now."""
        if stage.sla_seconds != info.sla_seconds:
            raise SuggestionError(
                f"{info.label}: its SLA was changed since the page was shown (now "
                f"{spoken(stage.sla_seconds) if stage.sla_seconds else 'none'}); look again."
            )
        warning = stage.warning_seconds
        if warning is not None and warning >= new:
            warning = max(1, new // 5)
        warnings[:] = [stage.warning_seconds, warning]
        return replace(stage, sla_seconds=new, warning_seconds=warning)

    change = configuration.on_pipeline(info.pipeline_key, configuration.on_stage(info.key, set_sla))
    configuration.edit(session, change, user, AUDIT_ACTION, info.target, now)
    return AppliedSuggestion(info, info.sla_seconds, new, *warnings)
