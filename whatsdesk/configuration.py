"""Changing the desk's configuration — from the settings pages, an imported YAML file or an
applied SLA suggestion — through one path: validated as a whole, written in the caller's
transaction, audited with the configuration as YAML before and after."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import audit, pipeline_store, pipelines
from .db import sqlite_write_lock
from .models import Pipeline, Stage, User
from .pipelines import DeskSpec
from .sla import Timers

# What a change re-times (`apply`): nothing, the open cards the change concerns (True), or
# those and the ones named, {pipeline key: stage keys, or None for all its stages} (a page's
# own stage or pipeline, re-timed when asked even if the save changed nothing of it).
Retime = bool | Mapping[str, "set[str] | None"]


@dataclass
class Applied:
    """What a change did: pipelines written, and open visits re-timed (their alarms move
    after commit: `Alarms.schedule_timers` for each)."""

    count: int
    timers: list[tuple[int, Timers]] = field(default_factory=list)


def current(session: Session) -> DeskSpec:
    """The configuration as it stands, in the form the YAML file holds."""
    return pipeline_store.dump(session)


def current_yaml(session: Session) -> str:
    return pipelines.dump(current(session))


_LINE = re.compile(r"^line \d+: ")
_WHERE = re.compile(r"^(?:pipelines\[(\d+)\](?:\.stages\[(\d+)\])?|calendars\[(\d+)\])\.?")


def check(spec: DeskSpec) -> None:
    """Refuse, as `pipelines.parse` would refuse its YAML, a configuration built in code (a
    page's edit): PipelineFileError names each problem by pipeline, stage or calendar key
    rather than by the line of a file nobody wrote."""
    try:
        pipelines.parse(pipelines.dump(spec))
    except pipelines.PipelineFileError as exc:
        raise pipelines.PipelineFileError([_readable(p, spec) for p in exc.problems]) from exc


def _readable(problem: str, spec: DeskSpec) -> str:
    """'pipelines[0].stages[1].warning: …' → "pipeline 'support', stage 'new', warning: …"."""
    text = without_line(problem)
    match = _WHERE.match(text)
    if match is None:
        return text
    pipeline, stage, calendar = (int(g) if g else None for g in match.groups())
    if calendar is not None:
        where = f"calendar {spec.calendars[calendar].key!r}"
    else:
        assert pipeline is not None
        found = spec.pipelines[pipeline]
        where = f"pipeline {found.key!r}"
        if stage is not None:
            where += f", stage {found.stages[stage].key!r}"
    rest = text[match.end() :]
    return f"{where}{rest}" if rest.startswith(":") else f"{where}, {rest}"


def without_line(problem: str) -> str:
    """A problem without its 'line N: ' prefix (for changes that came from no file)."""
    return _LINE.sub("", problem)


def stage_has_history(session: Session, pipeline_key: str, stage_key: str) -> bool:
    """Has any card been in this stage, or stands there now (pipeline_store.has_cards)?"""
    stage = (
        select(Stage.id)
        .join(Pipeline, Pipeline.id == Stage.pipeline_id)
        .where(Pipeline.key == pipeline_key, Stage.key == stage_key)
        .scalar_subquery()
    )
    return pipeline_store.has_cards(session, stage)


def apply(
    session: Session,
    spec: DeskSpec,
    user: User | None,
    action: str,
    target: str,
    now: datetime,
    retime: Retime = False,
    from_server: bool = False,
) -> Applied:
    """Load `spec` (refused whole, with PipelineFileError, on any problem: nothing changes)
    and audit it; `retime` (see `Retime`) re-times the open cards the change concerns
    (`_retime_scope`) to their stages' settings as they now are.

    `from_server`: the operator's `flask pipeline load`, which may name .ics files and URLs
    (read by the server) and reads every calendar's again. From the web, a new or changed
    .ics source is refused — the server would read any file or address it names — and only
    the calendars the change touches are read."""
    check(spec)
    # The server reads every calendar's sources again, before the lock (files, URLs); a
    # page reads none: a calendar it changes keeps the days its .ics closed when last read.
    holidays = pipeline_store.read_holidays(spec, now) if from_server else None
    one_change_at_a_time(session)
    before_spec = current(session)
    if not from_server:
        _refuse_new_sources(spec, before_spec)
    unchanged = pipeline_store.unchanged_calendars(session, spec)
    ics_before = pipeline_store.ics_dates(session)
    if holidays is None:
        holidays = pipeline_store.read_holidays(spec, now, unchanged, stored=ics_before)
    before = pipelines.dump(before_spec)
    pipeline_store.load(session, spec, now, frozenset() if from_server else unchanged, holidays)
    # An .ics file read again may close other days under the same source.
    reread = {
        calendar.key
        for calendar, days in holidays.resolved
        if days != ics_before.get(calendar.key, days)
    }
    scope = _retime_scope(spec, before_spec, unchanged - reread, retime) if retime else {}
    levels = _renumbered(spec, before_spec)
    # Every open card either step writes, locked at once in id order (each step locks its
    # own again, already held): no other writer of cards can hold one while waiting for us.
    pipeline_store.lock_open_cards(session, set(scope) | {key for key, _stage in levels})
    touched = (
        list(session.scalars(select(Pipeline).where(Pipeline.key.in_(scope)))) if scope else []
    )
    renumbered = pipeline_store.renumber_levels(session, levels, bool(retime))
    visits = pipeline_store.retime(session, touched, _stage_ids(touched, scope)) if retime else []
    visits += [visit for visit in renumbered if visit not in visits]
    session.flush()
    session.expire_all()  # read back what was written, not what the session remembers
    audit.record(session, user, action, target, before, current_yaml(session), now)
    session.flush()
    return Applied(len(spec.pipelines), [(visit.id, visit.timers) for visit in visits])


def _refuse_new_sources(spec: DeskSpec, before: DeskSpec) -> None:
    stored = {calendar.key: calendar.ics for calendar in before.calendars}
    problems = [
        f"calendar {calendar.key!r}, holidays.ics: an .ics file or URL is read by the server, "
        "so only `flask pipeline load` on the server may set or change it"
        for calendar in spec.calendars
        if calendar.ics and calendar.ics != stored.get(calendar.key)
    ]
    if problems:
        raise pipelines.PipelineFileError(problems)


def _renumbered(spec: DeskSpec, before: DeskSpec) -> dict[tuple[str, str], dict[int, int | None]]:
    """The stages whose escalation levels were removed, inserted or reordered, each with
    what its old levels became (pipelines.match_levels)."""
    old = {(p.key, s.key): s for p in before.pipelines for s in p.stages}
    changes = {}
    for pipeline in spec.pipelines:
        for stage in pipeline.stages:
            was = old.get((pipeline.key, stage.key))
            mapping = pipelines.match_levels(was.escalate, stage.escalate) if was else {}
            if mapping:
                changes[(pipeline.key, stage.key)] = mapping
    return changes


def _retime_scope(
    spec: DeskSpec, before: DeskSpec, unchanged: frozenset[str] | set[str], asked: Retime
) -> dict[str, set[str] | None]:
    """{pipeline key: the keys of its stages whose open visits a re-time concerns, or None
    for all of them}. All of a new pipeline's, or of one whose own clock the change alters
    (its calendar, its resolution SLA, or the calendar it uses); otherwise each stage whose
    own settings changed, or whose own calendar the change alters. A stored pipeline the
    change leaves out counts for the calendars it uses. Re-timing sets a visit's every
    timer from its stage as it now stands, so a stage the change did not touch keeps the
    timers it has (an earlier change saved for new cards only stays so) unless `asked`
    names it (see `Retime`)."""
    old = {pipeline.key: pipeline for pipeline in before.pipelines}
    altered = {c.key for c in spec.calendars} - unchanged

    def own_clock(pipeline: pipelines.PipelineSpec) -> tuple[object, ...]:
        return (pipeline.calendar, pipeline.resolution_seconds, pipeline.resolution_warning_seconds)

    scope: dict[str, set[str] | None] = {}
    in_spec = {pipeline.key for pipeline in spec.pipelines}
    left_out = [pipeline for pipeline in before.pipelines if pipeline.key not in in_spec]
    for pipeline in [*spec.pipelines, *left_out]:
        was = old.get(pipeline.key) if pipeline.key in in_spec else pipeline
        if was is None or own_clock(was) != own_clock(pipeline) or pipeline.calendar in altered:
            scope[pipeline.key] = None
            continue
        stages_before = {stage.key: stage for stage in was.stages}
        stages = {
            stage.key
            for stage in pipeline.stages
            if stage.key not in stages_before
            or not pipelines.same_stage(stages_before[stage.key], stage)
            or stage.calendar in altered
        }
        if stages:
            scope[pipeline.key] = stages
    for key, named in asked.items() if isinstance(asked, Mapping) else ():
        had = scope.get(key, set())
        scope[key] = None if named is None or had is None else had | named
    return scope


def _stage_ids(touched: list[Pipeline], scope: dict[str, set[str] | None]) -> set[int]:
    """The ids of the stages `scope` names (`_retime_scope`), of the pipelines read."""
    return {
        stage.id
        for pipeline in touched
        for stage in pipeline.stages
        if scope[pipeline.key] is None or stage.key in (scope[pipeline.key] or ())
    }


def edit(
    session: Session,
    change: Callable[[DeskSpec], DeskSpec],
    user: User | None,
    action: str,
    target: str,
    now: datetime,
    retime: Retime = False,
) -> Applied:
    """Apply `change` to the current configuration (a page's edit of one part of it), read
    afresh from the database: a change's check of what its page showed (`version`) compares
    it with what is stored, not with what the request loaded earlier. Changes are made one
    at a time, so of two saves of the same page at once the second sees the first's."""
    one_change_at_a_time(session)
    session.expire_all()
    return apply(session, change(current(session)), user, action, target, now, retime)


CHANGE_LOCK = 0x77647366  # PostgreSQL's advisory lock for configuration changes ("wdsf")


def one_change_at_a_time(session: Session) -> None:
    """Wait until no other configuration change is under way, and keep others waiting until
    this transaction ends. PostgreSQL: a transaction-scoped advisory lock, not a lock on the
    pipelines' rows (which the cards' inserts key-share: that deadlocked); SQLite: its one
    write lock, taken before the configuration is read."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(CHANGE_LOCK)))
    else:
        sqlite_write_lock(connection)


def version(part: object) -> str:
    """A short fingerprint of a part of the configuration as a page shows it: a form sends
    it back, and a save whose part has changed since is refused (see STALE)."""
    return hashlib.sha256(repr(part).encode()).hexdigest()[:16]


STALE = "it changed since you opened the page (someone else edited it): reload and try again"


def unchanged_since(what: str, part: object, seen: str | None) -> None:
    """Refuse (PipelineFileError) a page's save of `part` when it is no longer the version
    the page showed; `seen` None: the page sent none (made before versions), not checked."""
    if seen is not None and seen != version(part):
        raise pipelines.PipelineFileError([f"{what}: {STALE}"])


def on_pipeline(
    key: str, change: Callable[[pipelines.PipelineSpec], pipelines.PipelineSpec]
) -> Callable[[DeskSpec], DeskSpec]:
    """A change for `edit`: `change` applied to pipeline `key`, the others left alone (a
    stage's change: `on_pipeline(key, on_stage(stage_key, change))`)."""
    from dataclasses import replace

    return lambda desk: replace(
        desk, pipelines=[change(p) if p.key == key else p for p in desk.pipelines]
    )


def on_stage(
    key: str, change: Callable[[pipelines.StageSpec], pipelines.StageSpec]
) -> Callable[[pipelines.PipelineSpec], pipelines.PipelineSpec]:
    """A pipeline's change: `change` applied to its stage `key`, the others left alone."""
    from dataclasses import replace

    return lambda pipeline: replace(
        pipeline, stages=[change(s) if s.key == key else s for s in pipeline.stages]
    )
