"""One path for a settings page's change: configuration.edit as the signed-in user, commit,
then move the re-timed cards' alarms (Redis down: the sweep re-arms them within minutes)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask_login import current_user
from redis.exceptions import RedisError

from .. import configuration, current_alarms, get_session
from ..db import utcnow
from ..pipelines import DeskSpec, PipelineFileError
from ..sla import Timers

log = logging.getLogger(__name__)


def save(
    change: Callable[[DeskSpec], DeskSpec],
    action: str,
    target: str,
    retime: configuration.Retime = False,
) -> configuration.Applied:
    """Apply `change` (validated whole, audited) and commit; or roll back and raise
    PipelineFileError with problems for a person (no 'line N:' of a file nobody wrote)."""
    session = get_session()
    try:
        applied = configuration.edit(
            session, change, current_user._get_current_object(), action, target, utcnow(), retime
        )
        session.commit()
    except PipelineFileError as exc:
        session.rollback()
        raise PipelineFileError([configuration.without_line(p) for p in exc.problems]) from exc
    rearm(applied.timers, action)
    return applied


def rearm(timers: list[tuple[int, Timers]], action: str) -> None:
    """Schedule committed visits' new timers; a Redis failure is only logged (the database
    is right, and the sweep re-arms from it)."""
    if not timers:
        return
    try:
        alarms = current_alarms()
        for visit_id, visit_timers in timers:
            alarms.schedule_timers(visit_id, visit_timers)
    except RedisError as exc:
        log.warning(
            "settings %s: could not move timers in Redis now (%s); the sweep will", action, exc
        )
