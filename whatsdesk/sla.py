"""What a stage visit owes and when (pure: no I/O, time is a parameter)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from .clock import Calendar, add_business_time

WARNING = "warning"
BREACH = "breach"
EVENT_KINDS = (WARNING, BREACH)

ON_TIME = "on_time"
APPROACHING = "approaching"
BREACHED = "breached"
NO_SLA = "no_sla"

STATE_LABELS = {
    ON_TIME: "On time",
    APPROACHING: "Approaching",
    BREACHED: "Breached",
    NO_SLA: "No SLA",
}


@dataclass(frozen=True)
class Timers:
    """The instants a visit's alarms ring; None where the stage sets none."""

    warning_at: datetime | None
    deadline_at: datetime | None

    def instant(self, kind: str) -> datetime | None:
        return self.warning_at if kind == WARNING else self.deadline_at


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: whatsdesk keeps time as aware UTC")


def timers_for(
    entered_at: datetime,
    sla_seconds: int | None,
    warning_seconds: int | None,
    calendar: Calendar | None = None,
) -> Timers:
    """Deadline = entry + SLA of open time in the calendar (None: 24/7); the warning comes
    when `warning_seconds` of open time are left."""
    _require_aware(entered_at)
    if not sla_seconds:
        return Timers(None, None)
    deadline = add_business_time(calendar, entered_at, sla_seconds)
    warning = None
    if warning_seconds and 0 < warning_seconds < sla_seconds:
        warning = add_business_time(calendar, entered_at, sla_seconds - warning_seconds)
    return Timers(warning, deadline)


def state_at(now: datetime, timers: Timers) -> str:
    """On time, approaching (past the warning) or breached (past the deadline)."""
    _require_aware(now)
    if timers.deadline_at is None:
        return NO_SLA
    if now >= timers.deadline_at:
        return BREACHED
    if timers.warning_at is not None and now >= timers.warning_at:
        return APPROACHING
    return ON_TIME


def is_due(now: datetime, timers: Timers, kind: str) -> bool:
    """Has the instant of this event come?"""
    _require_aware(now)
    instant = timers.instant(kind)
    return instant is not None and now >= instant


def is_superseded(now: datetime, timers: Timers, kind: str) -> bool:
    """A warning whose deadline has passed would only arrive beside the breach: skip it."""
    return kind == WARNING and timers.deadline_at is not None and now >= timers.deadline_at


def due_kinds(now: datetime, timers: Timers, recorded: Iterable[str]) -> list[str]:
    """Events to fire now: their instant has come, nobody recorded them, none superseded."""
    done = set(recorded)
    return [
        kind
        for kind in EVENT_KINDS
        if kind not in done and is_due(now, timers, kind) and not is_superseded(now, timers, kind)
    ]


def upcoming_kinds(now: datetime, timers: Timers, recorded: Iterable[str]) -> list[str]:
    """Events still ahead: an instant in the future, nothing recorded."""
    _require_aware(now)
    done = set(recorded)
    return [
        kind
        for kind in EVENT_KINDS
        if kind not in done and (instant := timers.instant(kind)) is not None and instant > now
    ]


def next_instant(timers: Timers, recorded: Iterable[str]) -> datetime | None:
    """When the visit next needs attention: its earliest unrecorded instant; None once the
    breach is recorded (a warning cannot come after it)."""
    done = set(recorded)
    if BREACH in done:
        return None
    pending = [
        instant
        for kind in EVENT_KINDS
        if kind not in done and (instant := timers.instant(kind)) is not None
    ]
    return min(pending, default=None)


def seconds_left(now: datetime, timers: Timers) -> float | None:
    """Seconds to the deadline (negative once breached); None without an SLA."""
    _require_aware(now)
    if timers.deadline_at is None:
        return None
    return (timers.deadline_at - now).total_seconds()
