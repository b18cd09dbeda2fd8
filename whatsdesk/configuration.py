"""Changing the desk's configuration — from the settings pages, an imported YAML file or an
applied SLA suggestion — through one path: validated as a whole, written in the caller's
transaction, audited with the configuration as YAML before and after."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, pipeline_store, pipelines
from .models import Pipeline, Stage, StageVisit, User
from .pipelines import DeskSpec
from .sla import Timers


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
    """Has any card ever been in this stage? (Such a stage cannot be removed.)"""
    visit = session.scalars(
        select(StageVisit.id)
        .join(Stage, Stage.id == StageVisit.stage_id)
        .join(Pipeline, Pipeline.id == Stage.pipeline_id)
        .where(Pipeline.key == pipeline_key, Stage.key == stage_key)
        .limit(1)
    ).first()
    return visit is not None


def apply(
    session: Session,
    spec: DeskSpec,
    user: User | None,
    action: str,
    target: str,
    now: datetime,
    retime: bool = False,
) -> Applied:
    """Load `spec` (refused whole, with PipelineFileError, on any problem: nothing changes)
    and audit it; `retime` re-times open cards of its pipelines to the new SLAs."""
    check(spec)
    before = current_yaml(session)
    loaded = pipeline_store.load(session, spec, now)
    visits = pipeline_store.retime(session, loaded) if retime else []
    session.flush()
    session.expire_all()  # read back what was written, not what the session remembers
    audit.record(session, user, action, target, before, current_yaml(session), now)
    session.flush()
    return Applied(len(spec.pipelines), [(visit.id, visit.timers) for visit in visits])


def edit(
    session: Session,
    change: Callable[[DeskSpec], DeskSpec],
    user: User | None,
    action: str,
    target: str,
    now: datetime,
    retime: bool = False,
) -> Applied:
    """Apply `change` to the current configuration (a page's edit of one part of it)."""
    return apply(session, change(current(session)), user, action, target, now, retime)
