"""What a stage visit owes and when (pure: no I/O, time is a parameter)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .clock import Calendar, add_business_time, next_open

WARNING = "warning"
BREACH = "breach"
LEVEL_PREFIX = "level-"  # further escalation levels after the breach: level-1, level-2, …
# The card's resolution SLA across stages (recorded once per card).
RESOLUTION_WARNING = "resolution-warning"
RESOLUTION_BREACH = "resolution-breach"
# The stage's own timer (e.g. auto-resolve after a day of silence).
TIMEOUT = "timeout"
# Not a timer: recorded with the breach when the stage hands the card to someone else.
REASSIGNMENT = "reassignment"
CARD_KINDS = (RESOLUTION_WARNING, RESOLUTION_BREACH)
# A warning is pointless once its deadline has come.
SUPERSEDED_BY = {WARNING: BREACH, RESOLUTION_WARNING: RESOLUTION_BREACH}

ON_TIME = "on_time"
APPROACHING = "approaching"
BREACHED = "breached"
NO_SLA = "no_sla"
PAUSED = "paused"  # in a stage that stops the resolution clock, with no SLA of its own

STATE_LABELS = {
    ON_TIME: "On time",
    APPROACHING: "Approaching",
    BREACHED: "Breached",
    NO_SLA: "No SLA",
    PAUSED: "Paused",
}


def level_kind(level: int) -> str:
    return f"{LEVEL_PREFIX}{level}"


def level_of(kind: str) -> int | None:
    """1 for "level-1"; None for the warning and the breach."""
    if kind.startswith(LEVEL_PREFIX) and kind[len(LEVEL_PREFIX) :].isdigit():
        return int(kind[len(LEVEL_PREFIX) :])
    return None


GONE = "-gone-"  # "level-2-gone-81": event 81 fired level 2, a level removed since


def gone_level_kind(level: int, event_id: int) -> str:
    """What an open visit's recorded level becomes when the level is removed: no longer
    any level of the stage (the level now numbered 2 is still owed), still a level reached."""
    return f"{level_kind(level)}{GONE}{event_id}"


def level_reached(kind: str) -> int | None:
    """The level an event reached when it fired: 2 for "level-2" and "level-2-gone-81"."""
    number = kind.removeprefix(LEVEL_PREFIX).split(GONE)[0]
    return int(number) if kind.startswith(LEVEL_PREFIX) and number.isdigit() else None


def event_label(kind: str) -> str:
    """An event's kind as the conversation page names it."""
    level = level_reached(kind) if GONE in kind else None
    return kind if level is None else f"{level_kind(level)} (a level removed since)"


@dataclass(frozen=True)
class Timers:
    """The instants a visit's alarms ring; None where the stage sets none."""

    warning_at: datetime | None
    deadline_at: datetime | None
    levels: tuple[datetime, ...] = ()  # escalation level 1, 2, … after the breach
    resolution_warning_at: datetime | None = None
    resolution_at: datetime | None = None
    timeout_at: datetime | None = None

    def _named(self) -> list[tuple[str, datetime | None]]:
        return [
            (WARNING, self.warning_at),
            (BREACH, self.deadline_at),
            (RESOLUTION_WARNING, self.resolution_warning_at),
            (RESOLUTION_BREACH, self.resolution_at),
            (TIMEOUT, self.timeout_at),
        ]

    def instant(self, kind: str) -> datetime | None:
        for name, instant in self._named():
            if name == kind:
                return instant
        level = level_of(kind)
        if level is not None and 1 <= level <= len(self.levels):
            return self.levels[level - 1]
        return None

    def instants(self) -> list[datetime]:
        """Every instant the visit's alarms ring, in no particular order."""
        named = [instant for _kind, instant in self._named() if instant is not None]
        return named + list(self.levels)

    def kinds(self) -> list[str]:
        """Every event this visit can fire, the stage's timeout last: a sweep catching up
        fires the alerts that are due before the timeout moves the card on."""
        kinds = [kind for kind, instant in self._named() if instant is not None]
        levels = [level_kind(n) for n in range(1, len(self.levels) + 1)]
        timeout = [TIMEOUT] if TIMEOUT in kinds else []
        return [kind for kind in kinds if kind != TIMEOUT] + levels + timeout


def without_levels(timers: Timers) -> Timers:
    """What an acknowledged visit still owes: every timer but the escalation levels."""
    return replace(timers, levels=())


def left_behind(timers: Timers, left_at: datetime) -> Timers:
    """What a visit that ended at `left_at` still owes: its breach, escalation levels and
    resolution breach whose instant came before it ended (the card moved on or was resolved
    just after a deadline, before the clock recorded it). No warning (the card has been
    acted on) and no stage timeout (it has left the stage)."""
    levels = tuple(itertools.takewhile(lambda at: at <= left_at, timers.levels))
    return Timers(
        warning_at=None,
        deadline_at=_by(timers.deadline_at, left_at),
        levels=levels,
        resolution_at=_by(timers.resolution_at, left_at),
    )


def _by(instant: datetime | None, end: datetime) -> datetime | None:
    return instant if instant is not None and instant <= end else None


def delay_levels(timers: Timers, later: timedelta, recorded: Iterable[str]) -> Timers:
    """The escalation levels not recorded yet, `later` (a SNOOZE, or one kept over a new
    schedule); those already fired keep their instant."""
    if not later:
        return timers
    done = set(recorded)
    levels = tuple(
        at if level_kind(n) in done else at + later for n, at in enumerate(timers.levels, start=1)
    )
    return replace(timers, levels=levels)


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: whatsdesk keeps time as aware UTC")


def timers_for(
    entered_at: datetime,
    sla_seconds: int | None,
    warning_seconds: int | None,
    calendar: Calendar | None = None,
    levels_after: Sequence[int] = (),
) -> Timers:
    """Deadline = entry + SLA of open time in the calendar (None: 24/7); the warning comes
    when `warning_seconds` of open time are left; escalation level N comes `levels_after[N-1]`
    seconds of open time after the deadline."""
    _require_aware(entered_at)
    if not sla_seconds:
        return Timers(None, None)
    warning = None
    if warning_seconds and 0 < warning_seconds < sla_seconds:
        # One walk through the calendar: the deadline is the lead time after the warning.
        warning = add_business_time(calendar, entered_at, sla_seconds - warning_seconds)
        deadline = add_business_time(calendar, warning, warning_seconds)
    else:
        deadline = add_business_time(calendar, entered_at, sla_seconds)
    return Timers(warning, deadline, level_instants(deadline, calendar, levels_after))


def level_instants(
    deadline: datetime, calendar: Calendar | None, levels_after: Sequence[int]
) -> tuple[datetime, ...]:
    """Escalation level N's instant: `levels_after[N-1]` seconds of open time after the
    deadline."""
    return tuple(add_business_time(calendar, deadline, after) for after in levels_after)


def resolution_timers(
    entered_at: datetime,
    sla_seconds: int | None,
    used_seconds: int,
    warning_seconds: int | None,
    calendar: Calendar | None = None,
) -> tuple[datetime | None, datetime | None]:
    """The card's resolution warning and deadline, for a visit entered with `used_seconds`
    of its resolution SLA already spent (its clock runs again from `entered_at`)."""
    _require_aware(entered_at)
    if not sla_seconds:
        return None, None
    left = max(0, sla_seconds - used_seconds)
    # Nothing left: the SLA ran out before this visit (its breach is due now, not at the
    # next opening).
    deadline = add_business_time(calendar, entered_at, left) if left else entered_at
    if not warning_seconds or warning_seconds >= sla_seconds:
        return None, deadline
    if left <= warning_seconds:  # already inside the warning's lead time: at once, or at
        return min(next_open(calendar, entered_at), deadline), deadline  # the next opening
    return add_business_time(calendar, entered_at, left - warning_seconds), deadline


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
    deadline = timers.instant(SUPERSEDED_BY[kind]) if kind in SUPERSEDED_BY else None
    return deadline is not None and now >= deadline


def due_kinds(now: datetime, timers: Timers, recorded: Iterable[str]) -> list[str]:
    """Events to fire now: their instant has come, nobody recorded them, none superseded."""
    _require_aware(now)
    done = set(recorded)
    due = [
        kind
        for kind in timers.kinds()
        if kind not in done and is_due(now, timers, kind) and not is_superseded(now, timers, kind)
    ]
    timeout_at = timers.instant(TIMEOUT) if TIMEOUT in due else None
    if timeout_at is None:
        return due
    # Fired late (a sweep catching up): the card left the stage at its timeout, so what
    # fell due after it is not the stage's to fire.
    return [kind for kind in due if (timers.instant(kind) or timeout_at) <= timeout_at]


def upcoming_kinds(now: datetime, timers: Timers, recorded: Iterable[str]) -> list[str]:
    """Events still ahead: an instant in the future, nothing recorded."""
    _require_aware(now)
    done = set(recorded)
    return [
        kind
        for kind in timers.kinds()
        if kind not in done and (instant := timers.instant(kind)) is not None and instant > now
    ]


def next_instant(timers: Timers, recorded: Iterable[str]) -> datetime | None:
    """When the visit next needs attention: its earliest unrecorded instant (a warning no
    longer counts once the breach is recorded); None when it owes nothing more."""
    done = set(recorded)
    done |= {warning for warning, breach in SUPERSEDED_BY.items() if breach in done}
    pending = [
        instant
        for kind in timers.kinds()
        if kind not in done and (instant := timers.instant(kind)) is not None
    ]
    return min(pending, default=None)


def seconds_left(now: datetime, timers: Timers) -> float | None:
    """Seconds to the deadline (negative once breached); None without an SLA."""
    _require_aware(now)
    if timers.deadline_at is None:
        return None
    return (timers.deadline_at - now).total_seconds()
