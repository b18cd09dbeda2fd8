"""Business calendars from the database, their closed days resolved: a country's public
holidays (the `holidays` package), the business's own dates, and an iCalendar file or URL."""

from __future__ import annotations

import urllib.request
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays as public_holidays
import icalendar
import recurring_ical_events

from . import clock
from .models import BusinessCalendar, Pipeline, Stage

ICS_TIMEOUT_SECONDS = 10
# Holidays are resolved for the years around an instant: enough for any SLA that ends in them.
YEARS_BEFORE, YEARS_AFTER = 1, 3
# An .ics file is read once, when the configuration is loaded: its recurring events are
# expanded from the year before that to ten years after (loading again extends them).
ICS_YEARS_BEFORE, ICS_YEARS_AFTER = 1, 10


def ics_years(year: int) -> range:
    """The years an .ics file read in `year` closes days in."""
    return range(year - ICS_YEARS_BEFORE, year + ICS_YEARS_AFTER + 1)


def row_for_stage(stage: Stage) -> BusinessCalendar | None:
    """The stored calendar a stage's clock follows (None: 24/7)."""
    return None if stage.always_open else (stage.calendar or stage.pipeline.calendar)


def told_in(stage: Stage) -> BusinessCalendar | None:
    """The calendar whose timezone a stage's times are told in: its clock's, else (a 24/7
    stage) its pipeline's, so that staff read the business's own clock; None: UTC."""
    return row_for_stage(stage) or stage.pipeline.calendar


def for_stage(stage: Stage, around: datetime) -> clock.Calendar | None:
    """The calendar a stage's clock follows (None: 24/7)."""
    row = row_for_stage(stage)
    return None if row is None else to_clock(row, around.year)


def for_pipeline(pipeline: Pipeline, around: datetime) -> clock.Calendar | None:
    """The calendar of the pipeline's card-level (resolution) clock (None: 24/7)."""
    return None if pipeline.calendar is None else to_clock(pipeline.calendar, around.year)


def to_clock(row: BusinessCalendar, year: int) -> clock.Calendar:
    """The arithmetic form of a stored calendar, with closed days for the years around `year`.

    Cached per calendar version (`updated_at` changes with every load of the configuration).
    """
    key = (row.id, row.updated_at, year)
    if key not in _resolved:
        if len(_resolved) > 256:
            _resolved.clear()
        _resolved[key] = build(row, range(year - YEARS_BEFORE, year + YEARS_AFTER + 1))
    return _resolved[key]


_resolved: dict[tuple[int, datetime, int], clock.Calendar] = {}


def build(row: BusinessCalendar, years: range) -> clock.Calendar:
    """A stored calendar with every closed day of `years` resolved."""
    days: set[date] = set()
    if row.holiday_country:
        days |= set(country_holidays(row.holiday_country, row.holiday_subdivision, years))
    for closed in row.closed_dates or []:
        days |= set(
            own_dates(date.fromisoformat(closed["date"]), bool(closed.get("yearly")), years)
        )
    days |= {date.fromisoformat(d) for d in row.ics_dates or []}
    return clock.Calendar.from_hours(row.timezone, row.hours, frozenset(days))


def country_holidays(country: str, subdivision: str | None, years: range) -> list[date]:
    """Public holidays; ValueError naming an unknown country or subdivision."""
    try:
        found = public_holidays.country_holidays(country, subdiv=subdivision, years=list(years))
    except NotImplementedError as exc:
        raise ValueError(str(exc)) from exc
    return list(found.keys())


def subdivision_named(country: str, subdivision: str) -> str:
    """The holidays package's own spelling of `country`'s subdivision given in any case: a
    code (sp → SP) or a name it knows (bayern → Bayern, são paulo capital → São Paulo
    Capital); as given when none matches, for `country_holidays` to refuse."""
    try:
        entity = public_holidays.country_holidays(country)
    except NotImplementedError:
        return subdivision
    names = [*entity.subdivisions, *getattr(entity, "subdivisions_aliases", {})]
    wanted = subdivision.casefold()
    return next((name for name in names if name.casefold() == wanted), subdivision)


def own_dates(day: date, yearly: bool, years: range) -> list[date]:
    """A business's own closed day, every year when yearly (29 Feb: leap years only)."""
    if not yearly:
        return [day]
    repeated = []
    for year in years:
        if year < day.year:  # a yearly closure starts in the year it was given
            continue
        try:
            repeated.append(day.replace(year=year))
        except ValueError:
            continue
    return repeated


def read_ics(source: str, years: range, timezone: str) -> list[date]:
    """Every day of `years` covered by the events of an iCalendar file (a path) or URL
    (http/https), recurring events expanded (RRULE and RDATE, less EXDATE; a moved or
    cancelled occurrence as its RECURRENCE-ID override says). Timed events close the days
    they touch in the calendar's `timezone` (an event given in UTC or another zone is
    converted; a floating time is the calendar's own)."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=ICS_TIMEOUT_SECONDS) as answer:  # noqa: S310
            raw = answer.read()
    else:
        raw = Path(source).read_bytes()
    try:
        parsed = icalendar.Calendar.from_ical(raw)
        events = recurring_ical_events.of(parsed).between(
            date(years.start, 1, 1), date(years.stop, 1, 1)
        )
    except ValueError as exc:
        raise ValueError(f"not an iCalendar file: {exc}") from exc
    days: set[date] = set()
    zone = ZoneInfo(timezone)
    for event in events:
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            continue
        days |= set(_event_days(event, zone))
    return sorted(day for day in days if day.year in years)


def _event_days(event: icalendar.Event, zone: ZoneInfo) -> list[date]:
    start = _local(event.decoded("DTSTART", None), zone)
    if start is None:
        return []
    end = _local(event.decoded("DTEND", None), zone)
    first = start.date() if isinstance(start, datetime) else start
    if end is None:
        return [first]
    # DTEND is exclusive; a timed event closes the days it touches (ending at midnight
    # does not touch the next day).
    last = end.date() if isinstance(end, datetime) else end
    if not isinstance(end, datetime) or end.time() == datetime.min.time():
        last = date.fromordinal(last.toordinal() - 1)
    last = max(last, first)  # DTEND on DTSTART (against RFC 5545, but seen): its one day
    return [date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1)]


def _local(value: date | datetime | None, zone: ZoneInfo) -> date | datetime | None:
    """A timed instant in the calendar's zone; a date, or a floating time, as it is."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(zone)
    return value
