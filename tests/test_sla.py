"""SLA timers and states: pure functions, time passed in explicitly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from whatsdesk import sla
from whatsdesk.clock import Calendar
from whatsdesk.durations import humanize

ENTERED = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MICRO = timedelta(microseconds=1)


def two_minute_timers() -> sla.Timers:
    """Entered at 09:00:00, SLA 2 min, warning 1 min before: 09:01:00 and 09:02:00."""
    return sla.timers_for(ENTERED, 120, 60)


def test_deadline_is_entry_plus_sla() -> None:
    assert sla.timers_for(ENTERED, 120, None).deadline_at == datetime(2025, 3, 4, 9, 2, tzinfo=UTC)


def test_warning_comes_its_lead_time_before_the_deadline() -> None:
    timers = sla.timers_for(ENTERED, 3600, 900)
    assert timers.warning_at == datetime(2025, 3, 4, 9, 45, tzinfo=UTC)
    assert timers.instant(sla.WARNING) == timers.warning_at
    assert timers.instant(sla.BREACH) == datetime(2025, 3, 4, 10, 0, tzinfo=UTC)


def test_stage_without_sla_has_no_timers() -> None:
    assert sla.timers_for(ENTERED, None, 60) == sla.Timers(None, None)
    assert sla.timers_for(ENTERED, 0, None) == sla.Timers(None, None)


@pytest.mark.parametrize("warning", [120, 300])
def test_warning_not_shorter_than_the_sla_is_ignored(warning: int) -> None:
    timers = sla.timers_for(ENTERED, 120, warning)
    assert timers.warning_at is None
    assert timers.deadline_at == ENTERED + timedelta(seconds=120)


def test_on_time_until_the_warning_instant() -> None:
    timers = two_minute_timers()
    assert sla.state_at(ENTERED, timers) == sla.ON_TIME
    assert sla.state_at(ENTERED + 60 * SECOND - MICRO, timers) == sla.ON_TIME


def test_approaching_from_the_warning_instant_until_the_deadline() -> None:
    timers = two_minute_timers()
    assert sla.state_at(ENTERED + 60 * SECOND, timers) == sla.APPROACHING
    assert sla.state_at(ENTERED + 120 * SECOND - MICRO, timers) == sla.APPROACHING


def test_breached_from_the_deadline_instant_on() -> None:
    timers = two_minute_timers()
    assert sla.state_at(ENTERED + 120 * SECOND, timers) == sla.BREACHED
    assert sla.state_at(ENTERED + timedelta(days=3), timers) == sla.BREACHED


def test_without_warning_on_time_goes_straight_to_breached() -> None:
    timers = sla.timers_for(ENTERED, 120, None)
    assert sla.state_at(ENTERED + 120 * SECOND - MICRO, timers) == sla.ON_TIME
    assert sla.state_at(ENTERED + 120 * SECOND, timers) == sla.BREACHED


def test_no_sla_state() -> None:
    assert sla.state_at(ENTERED, sla.Timers(None, None)) == sla.NO_SLA
    assert sla.STATE_LABELS[sla.NO_SLA] == "No SLA"


def test_due_kinds_are_the_instants_that_have_come_in_order() -> None:
    timers = two_minute_timers()
    assert sla.due_kinds(ENTERED + 60 * SECOND - MICRO, timers, []) == []
    assert sla.due_kinds(ENTERED + 60 * SECOND, timers, []) == [sla.WARNING]
    assert sla.due_kinds(ENTERED + 120 * SECOND - MICRO, timers, []) == [sla.WARNING]


def test_a_warning_not_sent_by_the_deadline_is_superseded_by_the_breach() -> None:
    timers = two_minute_timers()
    assert sla.due_kinds(ENTERED + 120 * SECOND, timers, []) == [sla.BREACH]
    assert sla.is_superseded(ENTERED + 120 * SECOND, timers, sla.WARNING)
    assert not sla.is_superseded(ENTERED + 120 * SECOND, timers, sla.BREACH)


def test_due_kinds_skips_recorded_kinds() -> None:
    timers = two_minute_timers()
    late = ENTERED + timedelta(hours=1)
    assert sla.due_kinds(late, timers, [sla.WARNING]) == [sla.BREACH]
    assert sla.due_kinds(late, timers, {sla.BREACH}) == []
    assert sla.due_kinds(ENTERED + 90 * SECOND, timers, {sla.WARNING}) == []


def test_a_visit_left_after_its_deadline_owes_the_breach_and_the_levels_come_by_then() -> None:
    minute = timedelta(minutes=1)
    timers = sla.Timers(
        warning_at=ENTERED + minute,
        deadline_at=ENTERED + 2 * minute,
        levels=(ENTERED + 5 * minute, ENTERED + 10 * minute),
        resolution_warning_at=ENTERED + 3 * minute,
        resolution_at=ENTERED + 20 * minute,
        timeout_at=ENTERED + 4 * minute,
    )
    left = ENTERED + 5 * minute  # exactly at level 1

    owed = sla.left_behind(timers, left)

    assert sla.due_kinds(left + minute, owed, []) == [sla.BREACH, sla.level_kind(1)]
    assert sla.left_behind(timers, ENTERED + 90 * SECOND).kinds() == []  # left before it


def test_a_visits_instants_are_those_of_its_kinds() -> None:
    minute = timedelta(minutes=1)
    timers = sla.Timers(
        warning_at=None,
        deadline_at=ENTERED + 2 * minute,
        levels=(ENTERED + 5 * minute, ENTERED + 10 * minute),
        resolution_warning_at=ENTERED + 3 * minute,
        resolution_at=None,
        timeout_at=ENTERED + 4 * minute,
    )

    assert sorted(timers.instants()) == sorted(
        instant for kind in timers.kinds() if (instant := timers.instant(kind)) is not None
    )
    assert len(timers.instants()) == 5
    assert sla.Timers(None, None).instants() == []


def test_upcoming_kinds_are_the_unrecorded_instants_still_ahead() -> None:
    timers = two_minute_timers()
    assert sla.upcoming_kinds(ENTERED, timers, []) == [sla.WARNING, sla.BREACH]
    assert sla.upcoming_kinds(ENTERED + 60 * SECOND, timers, []) == [sla.BREACH]
    assert sla.upcoming_kinds(ENTERED, timers, [sla.BREACH]) == [sla.WARNING]
    assert sla.upcoming_kinds(ENTERED + 120 * SECOND, timers, []) == []


def test_seconds_left_counts_down_and_goes_negative_after_the_deadline() -> None:
    timers = two_minute_timers()
    assert sla.seconds_left(ENTERED + 30 * SECOND, timers) == 90.0
    assert sla.seconds_left(ENTERED + 150 * SECOND, timers) == -30.0
    assert sla.seconds_left(ENTERED, sla.Timers(None, None)) is None


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2025, 3, 4, 9, 0)
    timers = two_minute_timers()
    with pytest.raises(ValueError, match="naive"):
        sla.timers_for(naive, 120, 60)
    with pytest.raises(ValueError, match="naive"):
        sla.state_at(naive, timers)
    with pytest.raises(ValueError, match="naive"):
        sla.due_kinds(naive, timers, [])
    with pytest.raises(ValueError, match="naive"):
        sla.seconds_left(naive, timers)
    with pytest.raises(ValueError, match="naive"):  # even where there is nothing to compare
        sla.due_kinds(naive, sla.Timers(None, None), [])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (59.9, "59s"),
        (60, "1m 00s"),
        (185, "3m 05s"),
        (3600, "1h 00m"),
        (7620, "2h 07m"),
        (86400, "1d 0h"),
        (3 * 86400 + 4 * 3600 + 59 * 60, "3d 4h"),
        (-30, "0s"),
    ],
)
def test_humanize(seconds: float, text: str) -> None:
    assert humanize(seconds) == text


def test_next_instant_is_the_earliest_unrecorded_until_the_breach() -> None:
    timers = two_minute_timers()
    assert sla.next_instant(timers, []) == timers.warning_at
    assert sla.next_instant(timers, [sla.WARNING]) == timers.deadline_at
    assert sla.next_instant(timers, [sla.BREACH]) is None
    assert sla.next_instant(sla.Timers(None, None), []) is None


def test_a_snooze_delay_moves_only_the_levels_not_yet_fired() -> None:
    first, second = ENTERED + timedelta(minutes=15), ENTERED + timedelta(minutes=30)
    timers = sla.Timers(ENTERED, ENTERED + timedelta(minutes=10), levels=(first, second))

    delayed = sla.delay_levels(timers, timedelta(minutes=10), recorded={"breach", "level-1"})

    assert delayed.levels == (first, second + timedelta(minutes=10))
    assert (delayed.warning_at, delayed.deadline_at) == (timers.warning_at, timers.deadline_at)
    assert sla.delay_levels(timers, timedelta(0), recorded=set()) == timers


def test_a_resolution_warning_already_due_waits_for_the_next_opening() -> None:
    """A card that has used 40 of its 60 resolution minutes comes back on Saturday night:
    its warning (30 minutes ahead) is due at once, but nobody is told at 02:00 on a
    weekend — it comes when the business opens, as a stage's warning would."""
    office = Calendar.from_hours("America/Sao_Paulo", {"mon-fri": ["09:00-18:00"]})
    saturday_night = datetime(2026, 11, 28, 5, 0, tzinfo=UTC)  # 02:00 in São Paulo
    monday_opening = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # 09:00

    warning, deadline = sla.resolution_timers(saturday_night, 3600, 2400, 1800, office)

    assert (warning, deadline) == (monday_opening, monday_opening + timedelta(minutes=20))
    # Open now: at once.
    monday_ten = monday_opening + timedelta(hours=1)
    assert sla.resolution_timers(monday_ten, 3600, 2400, 1800, office)[0] == monday_ten


def test_a_timeout_fired_late_takes_nothing_due_after_it() -> None:
    """Swept at 09:15 after an outage: the breach (09:02) and the timeout (09:05) are due;
    level 1 (09:12) and the resolution breach (09:14) fell after the card should have left."""
    minute = timedelta(minutes=1)
    timers = sla.Timers(
        warning_at=None,
        deadline_at=ENTERED + 2 * minute,
        levels=(ENTERED + 12 * minute,),
        resolution_at=ENTERED + 14 * minute,
        timeout_at=ENTERED + 5 * minute,
    )

    assert sla.due_kinds(ENTERED + 15 * minute, timers, ()) == ["breach", "timeout"]
    # Without a timeout due, everything that has come is due.
    assert sla.due_kinds(ENTERED + 15 * minute, timers, {"timeout"}) == [
        "breach",
        "resolution-breach",
        "level-1",
    ]
