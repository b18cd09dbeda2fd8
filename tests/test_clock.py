"""Business-hours arithmetic: explicit instants, DST days, and hypothesis properties."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whatsdesk.clock import (
    Calendar,
    add_business_time,
    business_seconds_between,
    is_open,
    next_open,
    open_intervals,
)

SAO_PAULO = "America/Sao_Paulo"
NEW_YORK = "America/New_York"
LONDON = "Europe/London"
HOUR = 3600
MICRO = timedelta(microseconds=1)

OFFICE = Calendar.from_hours(SAO_PAULO, {"mon-fri": ["09:00-18:00"]})
SPLIT = Calendar.from_hours(SAO_PAULO, {"mon-fri": ["09:00-12:00", "13:00-18:00"]})


def local(zone: str, *wall: int, fold: int = 0) -> datetime:
    """The UTC instant a wall clock in `zone` shows (fold=1: the second of a repeated time)."""
    naive = datetime(*wall)  # type: ignore[arg-type]
    return naive.replace(tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


def intervals(calendar: Calendar | None, start: datetime, end: datetime) -> list[tuple[Any, ...]]:
    return list(open_intervals(calendar, start, end))


def sunday_only(zone: str, *hours: str) -> Calendar:
    return Calendar.from_hours(zone, {"sun": list(hours)})


# --- everyday arithmetic (2026-05-15 is a Friday) ---------------------------------------------


@pytest.mark.parametrize(
    ("hours", "deadline"),
    [
        # The example says Monday 10:30 for a 09:00-18:00 day; that arithmetic needs a
        # 17:00 close (30 min on Friday + 90 on Monday). With 18:00, 90 + 30 gives 09:30.
        ("09:00-18:00", (2026, 5, 18, 9, 30)),
        ("09:00-17:00", (2026, 5, 18, 10, 30)),
    ],
)
def test_two_hour_sla_on_friday_afternoon_falls_on_monday(
    hours: str, deadline: tuple[int, ...]
) -> None:
    calendar = Calendar.from_hours(SAO_PAULO, {"mon-fri": [hours]})
    arrived = local(SAO_PAULO, 2026, 5, 15, 16, 30)
    assert add_business_time(calendar, arrived, 2 * HOUR) == local(SAO_PAULO, *deadline)


def test_lunch_break_does_not_count() -> None:
    arrived = local(SAO_PAULO, 2026, 5, 14, 11, 30)
    assert add_business_time(SPLIT, arrived, HOUR) == local(SAO_PAULO, 2026, 5, 14, 13, 30)


def test_holiday_is_skipped_whole() -> None:
    calendar = Calendar(OFFICE.timezone, OFFICE.weekly, frozenset({date(2026, 5, 15)}))
    arrived = local(SAO_PAULO, 2026, 5, 14, 17, 0)
    assert add_business_time(calendar, arrived, 2 * HOUR) == local(SAO_PAULO, 2026, 5, 18, 10, 0)


def test_message_arriving_while_closed_counts_from_the_next_opening() -> None:
    saturday = local(SAO_PAULO, 2026, 5, 16, 10, 0)
    assert add_business_time(OFFICE, saturday, 1800) == local(SAO_PAULO, 2026, 5, 18, 9, 30)


def test_message_arriving_before_opening_counts_from_opening() -> None:
    early = local(SAO_PAULO, 2026, 5, 18, 7, 0)
    assert add_business_time(OFFICE, early, 1800) == local(SAO_PAULO, 2026, 5, 18, 9, 30)


def test_deadline_that_uses_up_the_day_falls_at_closing_not_next_opening() -> None:
    arrived = local(SAO_PAULO, 2026, 5, 15, 17, 0)
    assert add_business_time(OFFICE, arrived, HOUR) == local(SAO_PAULO, 2026, 5, 15, 18, 0)


def test_weekends_do_not_count() -> None:
    monday = local(SAO_PAULO, 2026, 5, 11)
    assert business_seconds_between(OFFICE, monday, monday + timedelta(days=7)) == 5 * 9 * HOUR


def test_end_at_24_00_runs_into_the_next_day_without_a_gap() -> None:
    night = Calendar.from_hours(SAO_PAULO, {"mon": ["20:00-24:00"], "tue": ["00:00-02:00"]})
    monday = local(SAO_PAULO, 2026, 5, 18)
    opens, closes = local(SAO_PAULO, 2026, 5, 18, 20), local(SAO_PAULO, 2026, 5, 19, 2)
    assert intervals(night, monday, monday + timedelta(days=7)) == [(opens, closes)]
    assert add_business_time(night, opens, 5 * HOUR) == local(SAO_PAULO, 2026, 5, 19, 1)


def test_zero_seconds_is_the_start_when_open() -> None:
    moment = local(SAO_PAULO, 2026, 5, 18, 10, 0)
    assert add_business_time(OFFICE, moment, 0) == moment


def test_zero_seconds_is_the_next_opening_when_closed() -> None:
    sunday = local(SAO_PAULO, 2026, 5, 17, 10, 0)
    assert add_business_time(OFFICE, sunday, 0) == local(SAO_PAULO, 2026, 5, 18, 9, 0)


def test_intervals_include_their_start_and_exclude_their_end() -> None:
    assert is_open(OFFICE, local(SAO_PAULO, 2026, 5, 18, 9, 0))
    assert not is_open(OFFICE, local(SAO_PAULO, 2026, 5, 18, 9, 0) - MICRO)
    assert is_open(OFFICE, local(SAO_PAULO, 2026, 5, 18, 18, 0) - MICRO)
    assert not is_open(OFFICE, local(SAO_PAULO, 2026, 5, 18, 18, 0))


def test_holiday_is_closed_during_opening_hours() -> None:
    calendar = Calendar(OFFICE.timezone, OFFICE.weekly, frozenset({date(2026, 5, 18)}))
    assert not is_open(calendar, local(SAO_PAULO, 2026, 5, 18, 10, 0))
    assert is_open(calendar, local(SAO_PAULO, 2026, 5, 19, 10, 0))


def test_next_open_is_the_moment_itself_when_open() -> None:
    moment = local(SAO_PAULO, 2026, 5, 18, 12, 34, 56)
    assert next_open(OFFICE, moment) == moment


def test_next_open_skips_weekend_and_holiday() -> None:
    calendar = Calendar(OFFICE.timezone, OFFICE.weekly, frozenset({date(2026, 5, 18)}))
    friday_night = local(SAO_PAULO, 2026, 5, 15, 19, 0)
    assert next_open(calendar, friday_night) == local(SAO_PAULO, 2026, 5, 19, 9, 0)


def test_open_intervals_are_clipped_to_the_window() -> None:
    start, end = local(SAO_PAULO, 2026, 5, 18, 11), local(SAO_PAULO, 2026, 5, 19, 10)
    assert intervals(OFFICE, start, end) == [
        (start, local(SAO_PAULO, 2026, 5, 18, 18)),
        (local(SAO_PAULO, 2026, 5, 19, 9), end),
    ]


def test_business_seconds_are_zero_for_an_empty_or_reversed_window() -> None:
    moment = local(SAO_PAULO, 2026, 5, 18, 10)
    assert business_seconds_between(OFFICE, moment, moment) == 0
    assert business_seconds_between(OFFICE, moment, moment - timedelta(hours=1)) == 0


def test_results_are_utc_whatever_the_input_zone() -> None:
    arrived = datetime(2026, 5, 15, 16, 30, tzinfo=ZoneInfo(SAO_PAULO))
    deadline = add_business_time(OFFICE, arrived, 2 * HOUR)
    assert deadline.tzinfo is UTC
    assert next_open(OFFICE, arrived).tzinfo is UTC
    spans = intervals(OFFICE, arrived, deadline)
    assert all(moment.tzinfo is UTC for span in spans for moment in span)


def test_without_calendar_time_runs_24_7() -> None:
    saturday = datetime(2026, 5, 16, 23, 0, tzinfo=UTC)
    assert is_open(None, saturday)
    assert next_open(None, saturday) == saturday
    assert add_business_time(None, saturday, 2 * HOUR) == saturday + timedelta(hours=2)
    assert business_seconds_between(None, saturday, saturday + timedelta(days=2)) == 2 * 86400


def test_a_week_of_24_hour_days_is_open_around_the_clock() -> None:
    always = Calendar.from_hours(SAO_PAULO, {"mon-sun": ["00:00-24:00"]})
    start = datetime(2026, 5, 16, 23, 0, tzinfo=UTC)
    assert add_business_time(always, start, 10 * 86400) == start + timedelta(days=10)


# --- refusals ----------------------------------------------------------------------------------

NAIVE = datetime(2026, 5, 18, 10, 0)
AWARE = NAIVE.replace(tzinfo=UTC)


@pytest.mark.parametrize("calendar", [OFFICE, None])
@pytest.mark.parametrize(
    "call",
    [
        lambda cal: is_open(cal, NAIVE),
        lambda cal: next_open(cal, NAIVE),
        lambda cal: open_intervals(cal, NAIVE, AWARE),
        lambda cal: open_intervals(cal, AWARE, NAIVE),
        lambda cal: add_business_time(cal, NAIVE, 60),
        lambda cal: business_seconds_between(cal, AWARE, NAIVE),
    ],
)
def test_naive_datetimes_are_refused(
    calendar: Calendar | None, call: Callable[[Calendar | None], object]
) -> None:
    with pytest.raises(ValueError, match="naive"):
        call(calendar)


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_business_time_must_be_finite_and_non_negative(seconds: float) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        add_business_time(OFFICE, AWARE, seconds)


def test_calendar_without_hours_never_opens() -> None:
    with pytest.raises(ValueError, match="never opens"):
        Calendar.from_hours(SAO_PAULO, {"mon-fri": []})


def test_holidays_closing_every_day_for_years_never_open() -> None:
    start = date(2026, 1, 1)
    closed = frozenset(start + timedelta(days=n) for n in range(4 * 366))
    calendar = Calendar(OFFICE.timezone, OFFICE.weekly, closed)
    with pytest.raises(ValueError, match="never opens"):
        add_business_time(calendar, local(SAO_PAULO, 2026, 1, 1), HOUR)
    with pytest.raises(ValueError, match="never opens"):
        next_open(calendar, local(SAO_PAULO, 2026, 1, 1))


def test_a_long_closure_shorter_than_the_limit_is_waited_out() -> None:
    closed = frozenset(date(2026, 1, 1) + timedelta(days=n) for n in range(2 * 365))
    calendar = Calendar(OFFICE.timezone, OFFICE.weekly, closed)
    assert next_open(calendar, local(SAO_PAULO, 2026, 1, 1)) == local(SAO_PAULO, 2028, 1, 3, 9)


def test_measuring_across_a_long_closure_counts_only_open_time() -> None:
    closed = frozenset(date(2026, 1, 1) + timedelta(days=n) for n in range(4 * 366))
    calendar = Calendar(OFFICE.timezone, OFFICE.weekly, closed)
    start, end = local(SAO_PAULO, 2025, 12, 31, 17), local(SAO_PAULO, 2030, 1, 4, 10)
    assert business_seconds_between(calendar, start, end) == 2 * HOUR


def test_unknown_timezone_is_named() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        Calendar.from_hours("Mars/Olympus_Mons", {"mon": ["09:00-18:00"]})


@pytest.mark.parametrize(
    ("hours", "named"),
    [
        ({"funday": ["09:00-18:00"]}, "'funday'"),
        ({"sat-mon": ["09:00-18:00"]}, "'sat-mon'"),
        ({"mon-fri": ["09:00-18:00"], "wed": ["10:00-11:00"]}, "'wed'"),
        ({"mon": ["18:00-09:00"]}, "'18:00-09:00'"),
        ({"mon": ["09:00-09:00"]}, "'09:00-09:00'"),
        ({"mon": ["09:00-12:00", "11:00-13:00"]}, "'11:00-13:00'"),
        ({"mon": ["9h-18h"]}, "'9h-18h'"),
        ({"mon": ["09:00-24:30"]}, "'24:30'"),
        ({"mon": ["09:60-18:00"]}, "'09:60'"),
        ({"mon": ["09:00"]}, "'09:00'"),
        ({"mon": "09:00-18:00"}, "'mon'"),
        (["mon", "09:00-18:00"], "['mon', '09:00-18:00']"),
    ],
)
def test_from_hours_refusals_name_the_offending_key_or_value(
    hours: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError) as refusal:
        Calendar.from_hours(SAO_PAULO, hours)
    assert named in str(refusal.value)


@pytest.mark.parametrize(
    "weekly",
    [
        ((),) * 6,
        (((540, 600), (570, 660)),) + ((),) * 6,
        (((660, 720), (540, 600)),) + ((),) * 6,
        (((540, 1441),),) + ((),) * 6,
        (((600, 600),),) + ((),) * 6,
        (((9.5, 600),),) + ((),) * 6,
        {7: ((540, 600),)},
    ],
)
def test_weekly_must_be_seven_days_of_sorted_disjoint_minutes(weekly: Any) -> None:
    with pytest.raises(ValueError, match="weekly"):
        Calendar(SAO_PAULO, weekly)


def test_holidays_may_be_any_iterable_of_dates() -> None:
    calendar = Calendar(SAO_PAULO, OFFICE.weekly, iter([date(2026, 5, 18)]))  # type: ignore[arg-type]
    assert calendar.holidays == frozenset({date(2026, 5, 18)})


def test_holidays_must_be_dates_not_datetimes() -> None:
    with pytest.raises(ValueError, match="not a date"):
        Calendar(SAO_PAULO, OFFICE.weekly, frozenset({datetime(2026, 5, 18, tzinfo=UTC)}))


def test_hours_text_round_trips_from_hours() -> None:
    hours = {"mon-fri": ["09:00-12:00", "13:00-18:00"], "sat": ["09:00-13:00"], "sun": []}
    calendar = Calendar.from_hours(SAO_PAULO, hours)
    text = calendar.hours_text()
    assert text == {
        **{day: ["09:00-12:00", "13:00-18:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
        "sat": ["09:00-13:00"],
    }
    assert Calendar.from_hours(SAO_PAULO, text) == calendar


def test_hours_text_writes_midnight_at_the_end_as_24_00() -> None:
    calendar = Calendar.from_hours(SAO_PAULO, {"sun": ["18:00-24:00"]})
    assert calendar.weekly[6] == ((1080, 1440),)
    assert calendar.hours_text() == {"sun": ["18:00-24:00"]}


def test_weekly_may_be_given_as_a_mapping_of_open_days() -> None:
    calendar = Calendar(SAO_PAULO, {0: [(540, 1080)], 4: [(540, 1080)]})  # type: ignore[arg-type]
    assert calendar == Calendar.from_hours(
        SAO_PAULO, {"mon": ["09:00-18:00"], "fri": ["09:00-18:00"]}
    )


def test_calendar_is_hashable() -> None:
    same = Calendar.from_hours(SAO_PAULO, {"mon-fri": ["09:00-18:00"]})
    assert {OFFICE: "office"}[same] == "office"


# --- DST: wall times skipped never open, wall times repeated open twice ------------------------


def test_new_york_spring_forward_interval_over_the_gap_is_one_real_hour() -> None:
    calendar = sunday_only(NEW_YORK, "01:00-03:00")
    day = datetime(2026, 3, 8, tzinfo=UTC)
    assert intervals(calendar, day, day + timedelta(days=1)) == [
        (datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 8, 7, tzinfo=UTC))
    ]


def test_new_york_spring_forward_day_is_23_hours() -> None:
    calendar = sunday_only(NEW_YORK, "00:00-24:00")
    week = local(NEW_YORK, 2026, 3, 6)
    assert business_seconds_between(calendar, week, week + timedelta(days=7)) == 23 * HOUR


def test_new_york_deadline_across_spring_forward_keeps_wall_hours() -> None:
    calendar = Calendar.from_hours(NEW_YORK, {"mon-fri": ["09:00-18:00"]})
    friday = local(NEW_YORK, 2026, 3, 6, 9)
    assert add_business_time(calendar, friday, 10 * HOUR) == datetime(2026, 3, 9, 14, tzinfo=UTC)


def test_new_york_fall_back_interval_over_the_repeat_lasts_an_hour_longer() -> None:
    calendar = sunday_only(NEW_YORK, "00:00-03:00")
    day = local(NEW_YORK, 2026, 11, 1)
    assert business_seconds_between(calendar, day, day + timedelta(days=1)) == 4 * HOUR


def test_new_york_fall_back_repeated_wall_time_is_open_twice() -> None:
    calendar = sunday_only(NEW_YORK, "01:00-01:30")
    day = local(NEW_YORK, 2026, 11, 1)
    assert intervals(calendar, day, day + timedelta(days=1)) == [
        (local(NEW_YORK, 2026, 11, 1, 1, 0), local(NEW_YORK, 2026, 11, 1, 1, 30)),
        (local(NEW_YORK, 2026, 11, 1, 1, 0, fold=1), local(NEW_YORK, 2026, 11, 1, 1, 30, fold=1)),
    ]
    assert not is_open(calendar, local(NEW_YORK, 2026, 11, 1, 1, 45))


def test_london_spring_forward_skips_the_missing_hour() -> None:
    calendar = sunday_only(LONDON, "00:00-03:00")
    day = datetime(2026, 3, 29, tzinfo=UTC)
    assert intervals(calendar, day, day + timedelta(days=1)) == [
        (datetime(2026, 3, 29, 0, tzinfo=UTC), datetime(2026, 3, 29, 2, tzinfo=UTC))
    ]


def test_london_interval_inside_the_spring_gap_never_opens_that_day() -> None:
    calendar = sunday_only(LONDON, "01:00-02:00")
    day = datetime(2026, 3, 29, tzinfo=UTC)
    assert intervals(calendar, day, day + timedelta(days=1)) == []


def test_london_fall_back_interval_over_the_repeat_lasts_an_hour_longer() -> None:
    calendar = sunday_only(LONDON, "00:00-03:00")
    day = datetime(2026, 10, 24, 12, tzinfo=UTC)
    assert intervals(calendar, day, day + timedelta(days=1)) == [
        (datetime(2026, 10, 24, 23, tzinfo=UTC), datetime(2026, 10, 25, 3, tzinfo=UTC))
    ]


def test_sao_paulo_opening_at_midnight_opens_when_the_day_starts_at_01_00() -> None:
    # 2018-11-04: clocks jumped from 00:00 (-03) to 01:00 (-02); 00:00-00:59 never existed.
    calendar = sunday_only(SAO_PAULO, "00:00-12:00")
    saturday_night = local(SAO_PAULO, 2018, 11, 3, 23, 30)
    first_instant = datetime(2018, 11, 4, 3, tzinfo=UTC)
    assert first_instant.astimezone(ZoneInfo(SAO_PAULO)).hour == 1
    assert next_open(calendar, saturday_night) == first_instant
    assert is_open(calendar, first_instant)
    sunday_night = saturday_night + timedelta(days=1)
    assert business_seconds_between(calendar, saturday_night, sunday_night) == 11 * HOUR


def test_sao_paulo_closing_at_midnight_on_a_fall_back_day_repeats_23_00() -> None:
    # 2019-02-17 00:00 (-02) went back to 2019-02-16 23:00 (-03): Saturday lasted 25 hours.
    calendar = Calendar.from_hours(SAO_PAULO, {"sat": ["22:00-24:00"]})
    saturday = local(SAO_PAULO, 2019, 2, 16)
    assert intervals(calendar, saturday, saturday + timedelta(days=2)) == [
        (datetime(2019, 2, 17, 0, tzinfo=UTC), datetime(2019, 2, 17, 3, tzinfo=UTC))
    ]


def test_lord_howe_half_hour_fall_back_adds_half_an_hour() -> None:
    calendar = sunday_only("Australia/Lord_Howe", "00:00-03:00")
    day = local("Australia/Lord_Howe", 2026, 4, 5)
    assert business_seconds_between(calendar, day, day + timedelta(days=1)) == 3.5 * HOUR


# --- properties --------------------------------------------------------------------------------

ZONES = [NEW_YORK, LONDON, SAO_PAULO, "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
# Days on which each zone changed its UTC offset, so starts land near them often.
TRANSITIONS = {
    NEW_YORK: [date(2026, 3, 8), date(2026, 11, 1), date(2016, 3, 13)],
    LONDON: [date(2026, 3, 29), date(2026, 10, 25), date(2017, 10, 29)],
    SAO_PAULO: [date(2018, 11, 4), date(2019, 2, 17), date(2016, 10, 16)],
    "Asia/Kolkata": [date(2020, 1, 1)],
    "Australia/Lord_Howe": [date(2026, 4, 5), date(2026, 10, 4), date(2015, 10, 4)],
    "UTC": [date(2020, 1, 1)],
}
SETTINGS = settings(deadline=None, max_examples=200)
MAX_SECONDS = 30 * 86400


def _pairs(bounds: list[int]) -> tuple[tuple[int, int], ...]:
    ordered = sorted(bounds)
    return tuple(zip(ordered[::2], ordered[1::2], strict=False))


day_hours = st.lists(st.integers(0, 1440), unique=True, max_size=6).map(_pairs)
weeklies = st.tuples(*[day_hours] * 7).filter(any)
seconds = st.floats(0, MAX_SECONDS, allow_nan=False)
fortnights = st.timedeltas(timedelta(0), timedelta(days=15))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Calendar, datetime]:
    zone = draw(st.sampled_from(ZONES))
    uniform = st.datetimes(datetime(2015, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC))
    near_transition = st.builds(
        lambda day, shift: datetime.combine(day, datetime.min.time(), UTC) + shift,
        st.sampled_from(TRANSITIONS[zone]),
        st.timedeltas(timedelta(days=-3), timedelta(days=2)),
    )
    start = draw(st.one_of(uniform, near_transition))
    holidays = frozenset(
        start.date() + timedelta(days=n) for n in draw(st.lists(st.integers(-1, 40), max_size=6))
    )
    return Calendar(zone, draw(weeklies), holidays), start


def _touches_an_end(calendar: Calendar, moment: datetime) -> bool:
    before = open_intervals(calendar, moment - timedelta(days=2), moment)
    return any(end == moment for _, end in before)


@SETTINGS
@given(scenarios(), seconds)
def test_adding_then_measuring_business_time_round_trips(
    scenario: tuple[Calendar, datetime], amount: float
) -> None:
    calendar, start = scenario
    deadline = add_business_time(calendar, start, amount)
    assert business_seconds_between(calendar, start, deadline) == pytest.approx(amount, abs=1e-6)


@SETTINGS
@given(scenarios(), seconds)
def test_deadlines_never_fall_inside_closed_time(
    scenario: tuple[Calendar, datetime], amount: float
) -> None:
    calendar, start = scenario
    deadline = add_business_time(calendar, start, amount)
    assert deadline.tzinfo is UTC
    assert is_open(calendar, deadline) or _touches_an_end(calendar, deadline)


@SETTINGS
@given(scenarios(), seconds, seconds)
def test_more_business_time_never_ends_earlier(
    scenario: tuple[Calendar, datetime], first: float, second: float
) -> None:
    calendar, start = scenario
    less, more = sorted((first, second))
    assert add_business_time(calendar, start, less) <= add_business_time(calendar, start, more)


@SETTINGS
@given(scenarios(), st.timedeltas(timedelta(0), timedelta(days=20)))
def test_open_intervals_are_ordered_disjoint_and_clipped(
    scenario: tuple[Calendar, datetime], span: timedelta
) -> None:
    calendar, start = scenario
    found = intervals(calendar, start, start + span)
    bounds = [start] + [moment for interval in found for moment in interval] + [start + span]
    assert bounds == sorted(bounds)
    assert all(opens < closes for opens, closes in found)
    assert all(closes < opens for (_, closes), (opens, _) in pairwise(found))
    assert all(moment.tzinfo is UTC for interval in found for moment in interval)


@SETTINGS
@given(scenarios(), st.timedeltas(timedelta(0), timedelta(days=20)))
def test_is_open_agrees_with_open_intervals(
    scenario: tuple[Calendar, datetime], span: timedelta
) -> None:
    calendar, start = scenario
    found = intervals(calendar, start, start + span)
    bounds = [start] + [moment for interval in found for moment in interval] + [start + span]
    # The window alternates closed, open, closed, ...: check the middle of every stretch.
    for index, (first, last) in enumerate(pairwise(bounds)):
        if first < last:
            assert is_open(calendar, first + (last - first) / 2) == (index % 2 == 1)
    for opens, closes in found:
        assert is_open(calendar, opens) and is_open(calendar, closes - MICRO)


@SETTINGS
@given(scenarios(), fortnights, fortnights)
def test_business_seconds_add_up_over_a_split_point(
    scenario: tuple[Calendar, datetime], first: timedelta, second: timedelta
) -> None:
    calendar, start = scenario
    middle, end = start + first, start + first + second
    whole = business_seconds_between(calendar, start, end)
    parts = business_seconds_between(calendar, start, middle)
    parts += business_seconds_between(calendar, middle, end)
    assert whole == pytest.approx(parts, abs=1e-6)


@SETTINGS
@given(scenarios())
def test_next_open_is_open_and_nothing_opens_before_it(scenario: tuple[Calendar, datetime]) -> None:
    calendar, start = scenario
    opening = next_open(calendar, start)
    assert opening >= start
    assert is_open(calendar, opening)
    assert business_seconds_between(calendar, start, opening) == 0


@SETTINGS
@given(scenarios())
def test_hours_text_round_trips_any_calendar(scenario: tuple[Calendar, datetime]) -> None:
    calendar, _ = scenario
    rebuilt = Calendar.from_hours(calendar.timezone, calendar.hours_text(), calendar.holidays)
    assert rebuilt == calendar


@SETTINGS
@given(
    st.datetimes(datetime(2015, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC)),
    seconds,
    st.timedeltas(timedelta(days=-5), timedelta(days=30)),
)
def test_without_calendar_results_are_plain_timedelta_arithmetic(
    start: datetime, amount: float, span: timedelta
) -> None:
    assert add_business_time(None, start, amount) == start + timedelta(seconds=amount)
    assert next_open(None, start) == start
    assert business_seconds_between(None, start, start + span) == max(0.0, span.total_seconds())
