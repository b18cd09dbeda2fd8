"""Changing the desk's configuration — from the settings pages, an imported YAML file or an
applied SLA suggestion — through one path: validated as a whole, written in the caller's
transaction, audited with the configuration as YAML before and after."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from . import audit, pipeline_store, pipelines
from .models import User
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
