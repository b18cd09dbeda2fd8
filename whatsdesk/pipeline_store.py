"""Pipelines and calendars between the database and their YAML form."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.orm import Session

from . import calendars, escalation, settings, sla
from . import desk as desk_cases
from .models import (
    BusinessCalendar,
    Card,
    Pipeline,
    SlaEvent,
    Stage,
    StageEscalation,
    StageVisit,
    User,
)
from .pipelines import (
    ALWAYS_OPEN,
    LEAST_LOADED,
    AutomationRule,
    CalendarSpec,
    DeskSpec,
    EscalationSpec,
    HolidayDate,
    PipelineFileError,
    PipelineSpec,
    StageSpec,
    TimeoutSpec,
    same_calendar,
)


@dataclass(frozen=True)
class Holidays:
    """The holiday sources of a file's calendars, checked, and the days their .ics closes."""

    resolved: list[tuple[CalendarSpec, list[str]]]
    problems: list[str]


def read_holidays(
    desk: DeskSpec,
    now: datetime,
    unchanged: frozenset[str] = frozenset(),
    stored: dict[str, list[str]] | None = None,
) -> Holidays:
    """Check each calendar's holiday sources and read its .ics (a file or a URL: seconds,
    so before any lock is taken), but not those of `unchanged` calendars, which are not
    written again. `stored`: the days each stored calendar's .ics closed when last read,
    taken as they are rather than read again (a page's change: only the server reads)."""
    problems: list[str] = []
    resolved = [
        _resolve_calendar(spec, now, problems, (stored or {}).get(spec.key))
        for spec in desk.calendars
        if spec.key not in unchanged
    ]
    return Holidays(resolved, problems)


def load(
    session: Session,
    desk: DeskSpec,
    now: datetime,
    unchanged: frozenset[str] = frozenset(),
    holidays: Holidays | None = None,
) -> list[Pipeline]:
    """Create or update each calendar and pipeline of the file; refuses, changing nothing,
    on any problem. SLA changes apply to stage visits that start afterwards (see retime).
    `unchanged`: calendars stored exactly so already (unchanged_calendars), which are not
    written again. `holidays`: what read_holidays read; by default every other calendar's
    sources are read now."""
    specs = desk.pipelines
    holidays = holidays or read_holidays(desk, now, unchanged)
    problems = list(holidays.problems)
    resolved = [item for item in holidays.resolved if item[0].key not in unchanged]
    users = _alert_users(session, specs, problems)
    known = {c.key for c in desk.calendars} | set(session.scalars(select(BusinessCalendar.key)))
    problems += _calendar_reference_problems(specs, known)
    for spec in specs:
        pipeline = session.scalars(select(Pipeline).where(Pipeline.key == spec.key)).first()
        if pipeline is not None:
            problems += _removal_problems(session, pipeline, spec)
    if desk.menu is not None:
        stored = set(session.scalars(select(Pipeline.key)))
        for key in desk.menu.pipelines:
            if key not in stored | {p.key for p in specs}:
                problems.append(f"line {desk.menu.line}: menu.pipelines: no pipeline {key!r}")
    if problems:
        raise PipelineFileError(problems)
    for calendar in resolved:
        _upsert_calendar(session, calendar, now)
    session.flush()
    calendar_rows = {c.key: c for c in session.scalars(select(BusinessCalendar))}
    if any(spec.default for spec in specs):
        for other in session.scalars(select(Pipeline).where(Pipeline.is_default.is_(True))):
            other.is_default = False
    loaded = [_upsert(session, spec, users, calendar_rows) for spec in specs]
    if desk.notifications is not None:
        settings.save_notifications(session, desk.notifications, now)
    if desk.replies is not None:
        settings.save_replies(session, desk.replies, now)
    if desk.menu is not None:
        settings.save_menu(session, desk.menu, now)
    session.flush()
    return loaded


def lock_open_cards(session: Session, pipeline_keys: set[str]) -> None:
    """Lock the open cards of these pipelines, in id order (as every writer of visits)."""
    if pipeline_keys:
        chosen = select(Pipeline.id).where(Pipeline.key.in_(pipeline_keys))
        session.execute(
            select(Card.id)
            .where(Card.status == "open", Card.pipeline_id.in_(chosen))
            .order_by(Card.id)
            .with_for_update()
        ).all()


def retime(
    session: Session, pipelines: list[Pipeline], stage_ids: Collection[int] | None = None
) -> list[StageVisit]:
    """Re-time the open visits of these pipelines (in the stages `stage_ids` names, or all)
    to their stages' current SLAs, as if they had entered under them; the caller moves
    their RQ jobs (Alarms.schedule_timers). Events already recorded stay recorded. The
    cards and then their visits are locked in id order, as every writer of visits locks
    them, and read as they then are: a SNOOZE or an event committed meanwhile is re-timed,
    not overwritten."""
    open_cards = (
        select(Card.id)
        .where(Card.status == "open", Card.pipeline_id.in_([p.id for p in pipelines]))
        .order_by(Card.id)
    )
    session.execute(open_cards.with_for_update()).all()
    in_stages = StageVisit.stage_id.in_(stage_ids) if stage_ids is not None else true()
    visits = session.scalars(
        select(StageVisit)
        .where(StageVisit.left_at.is_(None), StageVisit.card_id.in_(open_cards), in_stages)
        .order_by(StageVisit.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    recorded_of = escalation.recorded_of(session, visits)
    for visit in visits:
        visit.paused = visit.stage.pauses  # its time is counted as its timers are set
        timers = desk_cases.visit_timers(session, visit.card, visit.stage, visit.entered_at)
        recorded = recorded_of[visit.id]
        # A SNOOZE stays: the levels still to come keep their delay over the new schedule.
        delay = timedelta(seconds=visit.escalation_delay_seconds or 0)
        timers = sla.delay_levels(timers, delay, recorded)
        desk_cases.set_timers(visit, timers, recorded)
    session.flush()
    return list(visits)


def renumber_levels(
    session: Session, changes: dict[tuple[str, str], dict[int, int | None]], retime: bool
) -> list[StageVisit]:
    """After a stage's escalation levels were removed or inserted (`pipelines.match_levels`,
    by (pipeline key, stage key)), the visits that may still owe its levels — open, or
    left with an event due before they ended — follow the new list, as a level's people
    are read by its number when it fires: a level recorded keeps its identity under its
    new number (a removed one becomes `sla.gone_level_kind`: still reached in the reports,
    no longer owed), the levels still to come keep their instants and a new one takes its
    place after the visit's own deadline (an open visit `retime` re-times is left to it).
    The visits changed, locked in id order (their cards are: `lock_open_cards`)."""
    stages = {
        session.scalars(
            select(Stage.id).join(Pipeline).where(Pipeline.key == pipeline, Stage.key == stage)
        ).one(): mapping
        for (pipeline, stage), mapping in changes.items()
    }
    if not stages:
        return []
    owing = or_(StageVisit.left_at.is_(None), StageVisit.next_due_at.is_not(None))
    visits = session.scalars(
        select(StageVisit)
        .where(StageVisit.stage_id.in_(stages), owing)
        .order_by(StageVisit.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for stage_id, mapping in stages.items():
        mine = [visit for visit in visits if visit.stage_id == stage_id]
        _rename_recorded_levels(session, [visit.id for visit in mine], mapping)
        recorded = escalation.recorded_of(session, mine)
        for visit in mine:
            if visit.left_at is not None or not retime:
                _follow_levels(visit, mapping, recorded[visit.id])
    session.flush()
    return list(visits)


def _rename_recorded_levels(
    session: Session, visit_ids: list[int], mapping: dict[int, int | None]
) -> None:
    """The visits' recorded levels under their new numbers, in two steps (a visit records
    each kind once, and two levels may swap numbers). A level the old list did not have
    (recorded before levels were followed) is gone too."""
    recorded = session.scalars(
        select(SlaEvent).where(
            SlaEvent.visit_id.in_(visit_ids), SlaEvent.kind.like(f"{sla.LEVEL_PREFIX}%")
        )
    )
    final: dict[SlaEvent, str] = {}
    for event in recorded:
        level = sla.level_of(event.kind)
        if level is None:  # a level already gone keeps its name
            continue
        new = mapping.get(level)
        final[event] = sla.gone_level_kind(level, event.id) if new is None else sla.level_kind(new)
        event.kind = f"renumbering-{event.id}"
    session.flush()
    for event, kind in final.items():
        event.kind = kind
    session.flush()


def _follow_levels(visit: StageVisit, mapping: dict[int, int | None], recorded: set[str]) -> None:
    """Each level keeps its instant under its new number; a level new to the list comes its
    `after` of open time past the visit's own deadline (later by any SNOOZE). What the visit
    owes next is read as it can still fire (acknowledged, or left: `escalation.owed`)."""
    old = visit.timers.levels
    kept = {new: old[was - 1] for was, new in mapping.items() if new and was <= len(old)}
    after = [level.after_seconds for level in visit.stage.escalations]
    scheduled: tuple[datetime, ...] = ()
    if visit.deadline_at is not None:
        calendar = calendars.for_stage(visit.stage, visit.entered_at)
        scheduled = sla.level_instants(visit.deadline_at, calendar, after)
    delay = timedelta(seconds=visit.escalation_delay_seconds or 0)
    levels: list[datetime] = []
    for n, at in enumerate(scheduled, 1):  # never before the level ahead of it
        levels.append(max([kept.get(n, at + delay), *levels[-1:]]))
    visit.escalations_at = [at.isoformat() for at in levels]
    owes = sla.left_behind(visit.timers, visit.left_at) if visit.left_at else visit.timers
    if visit.acknowledged_at is not None:
        owes = sla.without_levels(owes)
    visit.next_due_at = sla.next_instant(owes, recorded)


def _resolve_calendar(
    spec: CalendarSpec, now: datetime, problems: list[str], stored_days: list[str] | None
) -> tuple[CalendarSpec, list[str]]:
    """Check the holiday sources now, and read the .ics days once, at load time (or take
    `stored_days`, those its source closed when last read)."""
    where = f"line {spec.line}: calendar {spec.key!r}.holidays"
    if spec.country:
        try:
            calendars.country_holidays(
                spec.country, spec.subdivision, range(now.year, now.year + 1)
            )
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    ics_days: list[str] = []
    if spec.ics and stored_days is not None:
        ics_days = stored_days
    elif spec.ics:
        try:
            ics_days = [
                d.isoformat()
                for d in calendars.read_ics(spec.ics, calendars.ics_years(now.year), spec.timezone)
            ]
        except Exception as exc:  # any unreadable source: refuse the file, say why
            problems.append(f"{where}.ics: cannot read {spec.ics}: {exc}")
    return spec, ics_days


def ics_dates(session: Session) -> dict[str, list[str]]:
    """Each stored calendar's days closed by its .ics source, as last read."""
    return {
        key: list(days or [])
        for key, days in session.execute(select(BusinessCalendar.key, BusinessCalendar.ics_dates))
    }


def unchanged_calendars(session: Session, desk: DeskSpec) -> frozenset[str]:
    """The keys of the calendars in `desk` that are stored exactly so already."""
    stored = {row.key: row for row in session.scalars(select(BusinessCalendar))}
    return frozenset(
        spec.key
        for spec in desk.calendars
        if spec.key in stored and same_calendar(_calendar_spec(stored[spec.key]), spec)
    )


def _calendar_reference_problems(specs: list[PipelineSpec], known: set[str]) -> list[str]:
    problems = []
    for pipeline in specs:
        places = [(pipeline.line, f"pipeline {pipeline.key!r}", pipeline.calendar)]
        places += [(s.line, f"stage {s.key!r}", s.calendar) for s in pipeline.stages]
        for line, what, key in places:
            if key and key != ALWAYS_OPEN and key not in known:
                problems.append(
                    f"line {line}: {what}.calendar: no calendar {key!r} "
                    f"(define it under `calendars:`, or use {ALWAYS_OPEN})"
                )
    return problems


def _upsert_calendar(
    session: Session, resolved: tuple[CalendarSpec, list[str]], now: datetime
) -> BusinessCalendar:
    spec, ics_days = resolved
    row = session.scalars(select(BusinessCalendar).where(BusinessCalendar.key == spec.key)).first()
    if row is None:
        row = BusinessCalendar(key=spec.key)
        session.add(row)
    row.name, row.timezone, row.hours = spec.name, spec.timezone, spec.hours
    row.holiday_country, row.holiday_subdivision = spec.country, spec.subdivision
    row.closed_dates = [{"date": d.day.isoformat(), "yearly": d.yearly} for d in spec.dates]
    row.ics_source, row.ics_dates = spec.ics, ics_days
    row.updated_at = now
    return row


def _alert_users(
    session: Session, specs: list[PipelineSpec], problems: list[str]
) -> dict[str, User]:
    named = [(s, where, email) for p in specs for s in p.stages for where, email in _staff(s)]
    emails = {email for _, _, email in named}
    found = {
        u.email.lower(): u
        for u in session.scalars(select(User).where(func.lower(User.email).in_(emails)))
    }
    for stage, where, email in named:
        if email not in found:
            problems.append(
                f"line {stage.line}: stage {stage.key!r}.{where}: no staff account {email} "
                "(create it with `flask --app app users create`)"
            )
    return found


def _staff(stage: StageSpec) -> list[tuple[str, str]]:
    """(field, email) for every staff member a stage names."""
    named = [("alert", email) for email in stage.alert]
    if stage.reassign and stage.reassign != LEAST_LOADED:
        named.append(("reassign", stage.reassign))
    for number, level in enumerate(stage.escalate):
        named += [(f"escalate[{number}].to", email) for email in level.to]
    return named


def _removal_problems(session: Session, pipeline: Pipeline, spec: PipelineSpec) -> list[str]:
    keep = {s.key for s in spec.stages}
    problems = []
    for stage in pipeline.stages:
        if stage.key not in keep and has_cards(session, stage.id):
            problems.append(
                f"line {spec.line}: pipeline {spec.key!r}.stages: stage {stage.key!r} is missing "
                "from the file but has cards; keep it in the file"
            )
    return problems


def has_cards(session: Session, stage_id: int | ColumnElement[int]) -> bool:
    """Has a card ever been in this stage (a visit), or does one stand there without a
    visit (waiting for the team menu's answer, or resolved before it)? Such a stage cannot
    be removed: its cards and their timelines name it."""
    visited = select(StageVisit.id).where(StageVisit.stage_id == stage_id)
    standing = select(Card.id).where(Card.stage_id == stage_id)
    return bool(session.scalar(select(or_(visited.exists(), standing.exists()))))


def _upsert(
    session: Session,
    spec: PipelineSpec,
    users: dict[str, User],
    calendar_rows: dict[str, BusinessCalendar],
) -> Pipeline:
    pipeline = session.scalars(select(Pipeline).where(Pipeline.key == spec.key)).first()
    if pipeline is None:
        pipeline = Pipeline(key=spec.key)
        session.add(pipeline)
    pipeline.name = spec.name
    pipeline.is_default = spec.default
    pipeline.calendar = calendar_rows.get(spec.calendar) if spec.calendar else None
    pipeline.resolution_seconds = spec.resolution_seconds
    pipeline.resolution_warning_seconds = spec.resolution_warning_seconds
    pipeline.language, pipeline.texts = spec.language, dict(spec.texts)
    pipeline.keywords = {command: list(words) for command, words in spec.keywords.items()}
    pipeline.reopen_seconds, pipeline.reopen_stage = spec.reopen_seconds, spec.reopen_stage
    pipeline.automation = {
        event: {"to": rule.to, "from": list(rule.only_from)}
        for event, rule in spec.automation.items()
    }
    by_key = {s.key: s for s in pipeline.stages}
    stages = []
    for position, stage_spec in enumerate(spec.stages):
        stage = by_key.get(stage_spec.key) or Stage(key=stage_spec.key)
        _apply_stage(stage, stage_spec, position, users, calendar_rows)
        stages.append(stage)
    pipeline.stages = stages
    return pipeline


def _apply_stage(
    stage: Stage,
    spec: StageSpec,
    position: int,
    users: dict[str, User],
    calendar_rows: dict[str, BusinessCalendar],
) -> None:
    stage.name = spec.name
    stage.position = position
    stage.sla_seconds = spec.sla_seconds
    stage.warning_seconds = spec.warning_seconds
    stage.alert_users = [users[email] for email in spec.alert]
    _apply_escalations(stage, spec, users)
    stage.always_open = spec.calendar == ALWAYS_OPEN
    own = spec.calendar if spec.calendar and spec.calendar != ALWAYS_OPEN else None
    stage.calendar = calendar_rows[own] if own else None
    stage.pauses = spec.pause
    timeout = spec.timeout
    stage.timeout_seconds = timeout.after_seconds if timeout else None
    stage.timeout_action = timeout.then if timeout else None
    stage.timeout_message = timeout.message if timeout else None
    stage.reassign_least_loaded = spec.reassign == LEAST_LOADED
    named = spec.reassign if spec.reassign and spec.reassign != LEAST_LOADED else None
    stage.reassign_to = users[named] if named else None


def _apply_escalations(stage: Stage, spec: StageSpec, users: dict[str, User]) -> None:
    """Update levels in place (a stage's level numbers are unique)."""
    by_level = {e.level: e for e in stage.escalations}
    levels = []
    for number, level_spec in enumerate(spec.escalate, start=1):
        level = by_level.get(number) or StageEscalation(level=number)
        level.after_seconds = level_spec.after_seconds
        level.users = [users[email] for email in level_spec.to]
        levels.append(level)
    stage.escalations = levels


def dump(session: Session) -> DeskSpec:
    """Every calendar and pipeline as it stands, ready for pipelines.dump."""
    return DeskSpec(
        calendars=[
            _calendar_spec(c)
            for c in session.scalars(select(BusinessCalendar).order_by(BusinessCalendar.id))
        ],
        pipelines=[
            _pipeline_spec(p) for p in session.scalars(select(Pipeline).order_by(Pipeline.id))
        ],
        notifications=settings.notifications(session),
        replies=settings.replies(session),
        menu=settings.menu(session),
    )


def _calendar_spec(row: BusinessCalendar) -> CalendarSpec:
    return CalendarSpec(
        key=row.key,
        name=row.name,
        timezone=row.timezone,
        hours=row.hours,
        country=row.holiday_country,
        subdivision=row.holiday_subdivision,
        dates=[
            HolidayDate(date.fromisoformat(d["date"]), bool(d.get("yearly")))
            for d in row.closed_dates or []
        ],
        ics=row.ics_source,
    )


def _pipeline_spec(pipeline: Pipeline) -> PipelineSpec:
    return PipelineSpec(
        key=pipeline.key,
        name=pipeline.name,
        default=pipeline.is_default,
        calendar=pipeline.calendar.key if pipeline.calendar else None,
        resolution_seconds=pipeline.resolution_seconds,
        resolution_warning_seconds=pipeline.resolution_warning_seconds,
        automation={
            event: AutomationRule(rule["to"], list(rule.get("from") or []))
            for event, rule in (pipeline.automation or {}).items()
        },
        language=pipeline.language or "en",
        texts=dict(pipeline.texts or {}),
        keywords={k: list(v) for k, v in (pipeline.keywords or {}).items()},
        reopen_seconds=pipeline.reopen_seconds,
        reopen_stage=pipeline.reopen_stage,
        stages=[
            StageSpec(
                key=s.key,
                name=s.name,
                sla_seconds=s.sla_seconds,
                warning_seconds=s.warning_seconds,
                alert=sorted(u.email for u in s.alert_users),  # a set: stable order
                escalate=[
                    EscalationSpec(e.after_seconds, sorted(u.email for u in e.users))
                    for e in s.escalations
                ],
                calendar=ALWAYS_OPEN if s.always_open else (s.calendar.key if s.calendar else None),
                pause=s.pauses,
                timeout=TimeoutSpec(
                    s.timeout_seconds, s.timeout_action or "resolve", s.timeout_message
                )
                if s.timeout_seconds
                else None,
                reassign=LEAST_LOADED
                if s.reassign_least_loaded
                else (s.reassign_to.email if s.reassign_to else None),
            )
            for s in pipeline.stages
        ],
    )
