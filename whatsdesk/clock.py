"""Business-hours arithmetic (pure: no I/O beyond the tz database, time is a parameter).

An instant is open when its local wall-clock reading, in the calendar's timezone, falls in
one of the opening intervals of its local weekday and its local date is not a holiday. DST
follows from that: wall times skipped by a spring-forward never occur, so they are never open
(01:00-03:00 on such a day is one real hour); wall times repeated by a fall-back occur twice
and are open twice (an interval spanning the repeated hour lasts one hour longer).

Every function takes and returns aware datetimes, returned in UTC; calendar None means 24/7.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo, available_timezones

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 1440

Interval = tuple[int, int]
Span = tuple[datetime, datetime]

# tzdata has no two UTC-offset changes less than ~95 hours apart (since 1900), so comparing
# the offsets at both ends of a 12-hour stretch cannot miss one.
_PROBE = timedelta(hours=12)
_SECOND = timedelta(seconds=1)
# Walking forward this long without finding open time means the calendar never opens.
_NEVER_OPENS_SPAN = timedelta(days=3 * 366)
_EXAMPLE = "{'mon-fri': ['09:00-12:00', '13:00-18:00']}"
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The start of `day` in `zone`, as aware UTC."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def known_timezone(name: object) -> bool:
    """An IANA timezone name this machine knows. Looked up in the list rather than by
    ZoneInfo(name), which tries to import a module per unknown name (and import hooks,
    such as pygal's, warn about that)."""
    return isinstance(name, str) and name in _timezones()


@dataclass(frozen=True)
class Calendar:
    """Weekly opening hours in a timezone, minus holidays.

    `weekly` holds 7 entries, Monday first; each is a sorted tuple of non-overlapping
    (start_minute, end_minute) local wall-time intervals, 0 <= start < end <= 1440 (1440 is
    the midnight ending the day). Lists, or a mapping {weekday: intervals} with closed days
    left out, are accepted and stored as that tuple, so a Calendar is hashable.
    """

    timezone: str
    weekly: tuple[tuple[Interval, ...], ...]
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if not known_timezone(self.timezone):
            raise ValueError(f"unknown timezone {self.timezone!r}: use an IANA name")
        object.__setattr__(self, "weekly", _checked_weekly(self.weekly))
        object.__setattr__(self, "holidays", _checked_holidays(self.holidays))
        if not any(self.weekly):
            raise ValueError(f"calendar in {self.timezone} never opens: no opening hours")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def from_hours(
        cls,
        timezone: str,
        hours: Mapping[str, Sequence[str]],
        holidays: frozenset[date] = frozenset(),
    ) -> Calendar:
        """Build from {"mon-fri": ["09:00-12:00", "13:00-18:00"], "sat": [...]}; others closed."""
        if not isinstance(hours, Mapping):
            raise ValueError(f"hours must map days to intervals, e.g. {_EXAMPLE}; got {hours!r}")
        weekly: list[list[Interval]] = [[] for _ in WEEKDAYS]
        given_by: dict[int, str] = {}
        for key, texts in hours.items():
            intervals = _parse_intervals(key, texts)
            for day in _parse_days(key):
                if day in given_by:
                    raise ValueError(
                        f"hours: {key!r} names {WEEKDAYS[day]} again ({given_by[day]!r} did)"
                    )
                given_by[day] = key
                weekly[day] = intervals
        return cls(timezone, tuple(tuple(day) for day in weekly), holidays)

    def hours_text(self) -> dict[str, list[str]]:
        """The inverse of from_hours: one key per open weekday, e.g. {"mon": ["09:00-18:00"]}."""
        return {
            WEEKDAYS[day]: [f"{_hhmm(start)}-{_hhmm(end)}" for start, end in intervals]
            for day, intervals in enumerate(self.weekly)
            if intervals
        }


def is_open(calendar: Calendar | None, moment: datetime) -> bool:
    """Is the business open at this instant?"""
    moment = _utc(moment)
    if calendar is None:
        return True
    local = moment.astimezone(calendar.zone).replace(tzinfo=None)
    if local.date() in calendar.holidays:
        return False
    since_midnight = local - datetime.combine(local.date(), time())
    return any(
        timedelta(minutes=start) <= since_midnight < timedelta(minutes=end)
        for start, end in calendar.weekly[local.weekday()]
    )


def next_open(calendar: Calendar | None, moment: datetime) -> datetime:
    """The moment itself when open, else the next instant the business opens."""
    moment = _utc(moment)
    if calendar is None:
        return moment
    start, _ = next(_open_pieces(calendar, moment, None))
    return start


def open_intervals(calendar: Calendar | None, start: datetime, end: datetime) -> Iterator[Span]:
    """The maximal open intervals intersecting [start, end), clipped to it, in order."""
    start, end = _utc(start), _utc(end)
    if calendar is None:
        return iter([(start, end)] if start < end else [])
    return _merged(_open_pieces(calendar, start, end))


def add_business_time(calendar: Calendar | None, start: datetime, seconds: float) -> datetime:
    """The instant when `seconds` of open time have passed since start.

    Zero seconds gives next_open(start). A deadline that uses up an interval exactly falls on
    that interval's end (Friday 18:00), not on the next opening.
    """
    start = _utc(start)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"business time must be a finite, non-negative number of seconds: {seconds}"
        )
    remaining = timedelta(seconds=seconds)
    if calendar is None:
        return start + remaining
    pieces = _open_pieces(calendar, start, None)  # endless, or raises when it never opens
    while True:
        piece_start, piece_end = next(pieces)
        if remaining <= piece_end - piece_start:
            return piece_start + remaining
        remaining -= piece_end - piece_start


def business_seconds_between(calendar: Calendar | None, start: datetime, end: datetime) -> float:
    """Open seconds in [start, end); 0 when end <= start."""
    spans = open_intervals(calendar, start, end)
    return sum((close - open_ for open_, close in spans), timedelta()).total_seconds()


# --- walking the UTC timeline ------------------------------------------------------------------


def _open_pieces(calendar: Calendar, start: datetime, stop: datetime | None) -> Iterator[Span]:
    """Open stretches from start (clipped) to stop, or forever; adjacent ones are not merged.

    The timeline is cut where the UTC offset changes: within a cut the local time is UTC plus
    a constant, so the local opening hours map back to UTC by subtracting it.
    """
    zone = calendar.zone
    cursor = last_open = start
    while stop is None or cursor < stop:
        if stop is None and cursor - last_open > _NEVER_OPENS_SPAN:
            raise ValueError(
                f"calendar in {calendar.timezone} never opens in the "
                f"{_NEVER_OPENS_SPAN.days} days after {last_open.isoformat()}: check its holidays"
            )
        cut = cursor + _PROBE if stop is None else min(cursor + _PROBE, stop)
        offset = _offset(zone, cursor)
        if _offset(zone, cut) != offset:
            cut = _offset_change(zone, cursor, cut, offset)
        for piece in _open_within(calendar, cursor, cut, offset):
            last_open = piece[1]
            yield piece
        cursor = cut


def _open_within(
    calendar: Calendar, start: datetime, end: datetime, offset: timedelta
) -> Iterator[Span]:
    """Open stretches of [start, end), a stretch of UTC where the local time is UTC + offset."""
    local_start = start.replace(tzinfo=None) + offset
    local_end = end.replace(tzinfo=None) + offset
    day = local_start.date()
    while day <= local_end.date():
        if day not in calendar.holidays:
            midnight = datetime.combine(day, time())
            for first, last in calendar.weekly[day.weekday()]:
                opens = max(midnight + timedelta(minutes=first), local_start)
                closes = min(midnight + timedelta(minutes=last), local_end)
                if opens < closes:
                    yield (
                        (opens - offset).replace(tzinfo=UTC),
                        (closes - offset).replace(tzinfo=UTC),
                    )
        day += timedelta(days=1)


def _merged(pieces: Iterable[Span]) -> Iterator[Span]:
    pending: Span | None = None
    for start, end in pieces:
        if pending is not None and pending[1] == start:
            pending = (pending[0], end)
            continue
        if pending is not None:
            yield pending
        pending = (start, end)
    if pending is not None:
        yield pending


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    """The zone's UTC offset at this UTC instant."""
    return moment.astimezone(zone).replace(tzinfo=None) - moment.replace(tzinfo=None)


def _offset_change(
    zone: ZoneInfo, before: datetime, after: datetime, offset: timedelta
) -> datetime:
    """The instant in (before, after] where the offset stops being `offset`."""
    # Bisect to within a second; tz transitions fall on whole seconds, so the one second
    # boundary in (before, before + 1 s] is the transition.
    while after - before > _SECOND:
        middle = before + (after - before) / 2
        if _offset(zone, middle) == offset:
            before = middle
        else:
            after = middle
    return before.replace(microsecond=0) + _SECOND


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: whatsdesk keeps time as aware UTC")
    return moment.astimezone(UTC)


# --- validation and text -----------------------------------------------------------------------


def _checked_weekly(
    weekly: Sequence[Sequence[Sequence[int]]] | Mapping[int, Sequence[Sequence[int]]],
) -> tuple[tuple[Interval, ...], ...]:
    if isinstance(weekly, Mapping):
        if not set(weekly) <= set(range(len(WEEKDAYS))):
            raise ValueError(f"weekly: weekdays are 0 (Monday) to 6 (Sunday), got {sorted(weekly)}")
        weekly = [weekly.get(day, ()) for day in range(len(WEEKDAYS))]
    if len(weekly) != len(WEEKDAYS):
        raise ValueError("weekly must hold 7 days of (start_minute, end_minute), Monday first")
    return tuple(_checked_day(day, intervals) for day, intervals in enumerate(weekly))


def _checked_day(day: int, intervals: Sequence[Sequence[int]]) -> tuple[Interval, ...]:
    checked: list[Interval] = []
    for interval in intervals:
        start, end = interval if len(interval) == 2 else (-1, -1)
        previous_end = checked[-1][1] if checked else 0
        if not (_is_int(start) and _is_int(end) and previous_end <= start < end <= DAY_MINUTES):
            raise ValueError(
                f"weekly[{day}] ({WEEKDAYS[day]}): {intervals!r} must be sorted, non-overlapping "
                f"(start, end) minutes with 0 <= start < end <= {DAY_MINUTES}"
            )
        checked.append((start, end))
    return tuple(checked)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_holidays(holidays: Iterable[date]) -> frozenset[date]:
    days = frozenset(holidays)
    for day in days:
        if not isinstance(day, date) or isinstance(day, datetime):
            raise ValueError(f"holiday {day!r} is not a date")
    return days


def _parse_days(key: str) -> range:
    names = key.strip().lower().split("-") if isinstance(key, str) else []
    if not 1 <= len(names) <= 2 or any(name not in WEEKDAYS for name in names):
        raise ValueError(f"hours: unknown day {key!r}; use mon..sun or a range like 'mon-fri'")
    first, last = WEEKDAYS.index(names[0]), WEEKDAYS.index(names[-1])
    if last < first:
        raise ValueError(f"hours: {key!r} wraps past Sunday; split it, e.g. 'sat-sun' and 'mon'")
    return range(first, last + 1)


def _parse_intervals(key: str, texts: Sequence[str]) -> list[Interval]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"hours[{key!r}]: {texts!r} must be a list like ['09:00-18:00']")
    parsed = sorted((_parse_interval(key, text), text) for text in texts)
    for ((_, end), earlier), ((start, _), later) in pairwise(parsed):
        if start < end:
            raise ValueError(f"hours[{key!r}]: {later!r} overlaps {earlier!r}")
    return [interval for interval, _ in parsed]


def _parse_interval(key: str, text: str) -> Interval:
    parts = text.split("-") if isinstance(text, str) else []
    if len(parts) != 2:
        raise ValueError(f"hours[{key!r}]: {text!r} is not 'HH:MM-HH:MM'")
    start, end = (_parse_minute(key, text, part.strip()) for part in parts)
    if end <= start:
        raise ValueError(
            f"hours[{key!r}]: {text!r} does not end after it starts "
            "(split overnight hours across two days, ending the first at 24:00)"
        )
    return start, end


def _parse_minute(key: str, text: str, clock: str) -> int:
    match = _TIME.fullmatch(clock)
    hours, minutes = (int(match[1]), int(match[2])) if match else (-1, -1)
    if not ((0 <= hours < 24 and 0 <= minutes < 60) or (hours, minutes) == (24, 0)):
        raise ValueError(f"hours[{key!r}]: {text!r} has a bad time {clock!r} (HH:MM, up to 24:00)")
    return hours * 60 + minutes


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
