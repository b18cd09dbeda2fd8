"""Business calendars in the configuration file, the database and the SLA timers."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from whatsdesk import clock, desk, escalation, pipeline_store, pipelines, sla
from whatsdesk.calendars import ics_years, read_ics
from whatsdesk.config import Config
from whatsdesk.models import BusinessCalendar, Card, Message, StageVisit
from whatsdesk.whatsapp import Inbound

from conftest import ics_text

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
FILE = """
calendars:
  - key: office
    name: Office
    timezone: America/Sao_Paulo
    hours:
      mon-fri: ["09:00-18:00"]
    holidays:
      country: BR
      subdivision: SP
      dates:
        - 2026-12-24
        - {date: 2025-12-31, yearly: true}
pipelines:
  - key: support
    name: Support
    default: true
    calendar: office
    stages:
      - key: new
        name: New
        sla: 2h
        warning: 30m
      - key: urgent
        name: Urgent
        sla: 2h
        calendar: 24/7
"""


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=SAO_PAULO).astimezone(UTC)


def load(session: Session, text: str, now: datetime | None = None) -> None:
    pipeline_store.load(session, pipelines.parse(text), now or datetime.now(UTC))
    session.commit()


def problems_of(session: Session, text: str) -> list[str]:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        load(session, textwrap.dedent(text))
    session.rollback()
    return refused.value.problems


def customer_writes(session: Session, at: datetime) -> Card:
    inbound = Inbound(
        sid=f"SM{int(at.timestamp())}aaaaaaaaaaaaaaaaaaaaaaaa",
        from_address=f"whatsapp:+55119{int(at.timestamp()) % 100000000:08d}",
        to_address="whatsapp:+14155238886",
        body="Hello",
        profile_name="Maria",
        wa_id=None,
    )
    received = desk.receive_message(session, inbound, at)
    session.commit()
    assert received.card is not None
    return received.card


def visit_of(session: Session, card: Card) -> StageVisit:
    visit = desk.current_visit(session, card)
    assert visit is not None
    return visit


def test_a_two_hour_sla_on_friday_afternoon_falls_on_monday_morning(
    config: Config, session: Session
) -> None:
    load(session, FILE)
    card = customer_writes(session, local(2026, 11, 27, 17, 30))  # Friday, 30 open minutes left

    visit = visit_of(session, card)
    assert visit.deadline_at == local(2026, 11, 30, 10, 30)
    assert visit.warning_at == local(2026, 11, 30, 10, 0)  # 30 open minutes before


def test_a_customer_writing_near_closing_is_told_when_the_answer_will_come(
    config: Config, session: Session
) -> None:
    """Two business hours from Friday 17:30 end on Monday at 10:30: "within 2 hours" would
    promise what the desk does not."""
    load(session, FILE)
    card = customer_writes(session, local(2026, 11, 27, 17, 30))

    [ack] = session.scalars(
        select(Message).where(Message.card_id == card.id, Message.direction == "out")
    ).all()
    assert ack.body.endswith(
        "You are 1st in line; a person from our Support team will answer by 10:30 on Monday "
        "(America/Sao_Paulo time)."
    )
    customer_writes(session, local(2026, 11, 25, 10, 0))  # Wednesday morning: within the day
    said = session.scalars(select(Message.body).order_by(Message.id.desc()).limit(1)).one()
    assert said.endswith("a person from our Support team will answer within 2 hours.")


def test_a_message_at_night_starts_its_clock_at_the_next_opening(
    config: Config, session: Session
) -> None:
    load(session, FILE)
    card = customer_writes(session, local(2026, 11, 24, 23, 59))  # Tuesday night

    assert visit_of(session, card).deadline_at == local(2026, 11, 25, 11, 0)


def test_public_and_own_holidays_are_closed(config: Config, session: Session) -> None:
    load(session, FILE)
    # 2026-04-21, Tiradentes (national); 2026-07-09 São Paulo's own; 12-24 and 12-31 the firm's.
    before_tiradentes = customer_writes(session, local(2026, 4, 20, 17, 0))
    before_sp_day = customer_writes(session, local(2026, 7, 8, 17, 0))
    before_new_year = customer_writes(session, local(2026, 12, 30, 17, 0))

    assert visit_of(session, before_tiradentes).deadline_at == local(2026, 4, 22, 10, 0)
    assert visit_of(session, before_sp_day).deadline_at == local(2026, 7, 10, 10, 0)
    assert visit_of(session, before_new_year).deadline_at == local(2027, 1, 4, 10, 0)


def test_a_24_7_stage_ignores_its_pipelines_calendar_and_records_business_time(
    config: Config, session: Session
) -> None:
    load(session, FILE)
    card = customer_writes(session, local(2026, 11, 27, 17, 0))  # Friday, 1 open hour left

    urgent = desk.move_card(session, card.id, "urgent", local(2026, 11, 28, 12, 0))
    session.commit()

    assert urgent.deadline_at == local(2026, 11, 28, 14, 0)
    first = session.scalars(
        select(StageVisit).where(StageVisit.card_id == card.id).order_by(StageVisit.id)
    ).first()
    assert first is not None
    assert (first.wall_seconds, first.business_seconds) == (19 * 3600, 3600)


def test_a_24_7_stage_s_alerts_tell_times_in_the_business_s_timezone(
    config: Config, session: Session
) -> None:
    load(session, FILE)
    card = customer_writes(session, local(2026, 11, 27, 17, 0))
    urgent = desk.move_card(session, card.id, "urgent", local(2026, 11, 28, 12, 0))
    session.commit()

    said = escalation.alert_text(urgent, sla.WARNING, local(2026, 11, 28, 13, 30))

    assert "The deadline is in 30m 00s (14:00:00 America/Sao_Paulo)" in said


def test_calendars_round_trip_through_dump(config: Config, session: Session) -> None:
    load(session, FILE)
    dumped = pipelines.dump(pipeline_store.dump(session))

    again = pipelines.parse(dumped)
    [calendar] = again.calendars
    assert (calendar.key, calendar.timezone, calendar.hours) == (
        "office",
        "America/Sao_Paulo",
        {"mon-fri": ["09:00-18:00"]},
    )
    assert (calendar.country, calendar.subdivision) == ("BR", "SP")
    assert [(d.day, d.yearly) for d in calendar.dates] == [
        (date(2026, 12, 24), False),
        (date(2025, 12, 31), True),
    ]
    assert again.pipelines[0].calendar == "office"
    assert [s.calendar for s in again.pipelines[0].stages] == [None, "24/7"]


def test_an_ics_file_closes_its_days(config: Config, session: Session, tmp_path: Path) -> None:
    ics = tmp_path / "closures.ics"
    ics.write_text(
        ics_text(
            [
                "UID:1",
                "DTSTART;VALUE=DATE:20261125",
                "DTEND;VALUE=DATE:20261127",
                "SUMMARY:Team offsite",
            ],
        )
    )
    assert read_ics(str(ics), ics_years(2026), "America/Sao_Paulo") == [
        date(2026, 11, 25),
        date(2026, 11, 26),
    ]
    yearly = "        - {date: 2025-12-31, yearly: true}\n"
    load(session, FILE.replace(yearly, f"{yearly}      ics: {ics}\n"))

    card = customer_writes(session, local(2026, 11, 24, 17, 0))  # Tuesday; Wed–Thu closed

    assert visit_of(session, card).deadline_at == local(2026, 11, 27, 10, 0)
    stored = session.scalars(select(BusinessCalendar)).one()
    assert stored.ics_dates == ["2026-11-25", "2026-11-26"]


def test_a_recurring_ics_holiday_closes_its_day_in_years_after_the_load(
    config: Config, session: Session, tmp_path: Path
) -> None:
    ics = tmp_path / "founders.ics"
    ics.write_text(
        ics_text(
            [
                "UID:founders",
                "DTSTART;VALUE=DATE:20201124",
                "DTEND;VALUE=DATE:20201125",
                "RRULE:FREQ=YEARLY",
                "SUMMARY:Founders' day",
            ],
        )
    )
    yearly = "        - {date: 2025-12-31, yearly: true}\n"
    load(session, FILE.replace(yearly, f"{yearly}      ics: {ics}\n"), now=local(2026, 6, 1, 9, 0))

    # Thursday 23 Nov 2028, an hour before closing; Friday 24 is Founders' day.
    card = customer_writes(session, local(2028, 11, 23, 17, 0))

    assert visit_of(session, card).deadline_at == local(2028, 11, 27, 10, 0)


def test_recurring_ics_events_skip_excluded_dates_and_follow_moved_ones(tmp_path: Path) -> None:
    ics = tmp_path / "closures.ics"
    ics.write_text(
        ics_text(
            [
                "UID:xmas",
                "DTSTART;VALUE=DATE:20201225",
                "DTEND;VALUE=DATE:20201226",
                "RRULE:FREQ=YEARLY",
                "EXDATE;VALUE=DATE:20271225",
                "SUMMARY:Christmas",
            ],
            [
                "UID:xmas",
                "RECURRENCE-ID;VALUE=DATE:20281225",
                "DTSTART;VALUE=DATE:20281227",
                "DTEND;VALUE=DATE:20281228",
                "SUMMARY:Christmas (closed two days later)",
            ],
            [
                "UID:stocktake",
                "DTSTART;VALUE=DATE:20260105",
                "RRULE:FREQ=WEEKLY;COUNT=3",
                "SUMMARY:Stocktake Mondays",
            ],
        )
    )

    assert read_ics(str(ics), range(2026, 2030), "America/Sao_Paulo") == [
        date(2026, 1, 5),
        date(2026, 1, 12),
        date(2026, 1, 19),
        date(2026, 12, 25),
        date(2028, 12, 27),
        date(2029, 12, 25),
    ]


def test_an_ics_event_given_in_utc_closes_the_day_it_falls_on_in_the_calendars_zone(
    tmp_path: Path,
) -> None:
    """23:00–24:00 on 24 Dec in São Paulo, written in UTC (02:00–03:00 on the 25th)."""
    ics = tmp_path / "evening.ics"
    ics.write_text(
        ics_text(
            [
                "UID:1",
                "DTSTART:20261225T020000Z",
                "DTEND:20261225T030000Z",
                "SUMMARY:Christmas Eve stocktake",
            ],
        )
    )

    assert read_ics(str(ics), ics_years(2026), "America/Sao_Paulo") == [date(2026, 12, 24)]
    assert read_ics(str(ics), ics_years(2026), "UTC") == [date(2026, 12, 25)]


def test_calendar_mistakes_in_the_file_are_refused_naming_line_and_field() -> None:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        pipelines.parse(
            textwrap.dedent(
                """
                calendars:
                  - key: office
                    timezone: Mars/Olympus
                    hours:
                      mon-fri: ["09:00-18:00"]
                  - key: shop
                    timezone: Europe/London
                    hours:
                      mon: ["09:00-13:00", "12:00-18:00"]
                    holidays:
                      subdivision: SP
                      dates: [not-a-date]
                pipelines:
                  - key: support
                    name: Support
                    stages: [{key: new, name: New}]
                """
            )
        )
    problems = refused.value.problems
    assert problems[0].startswith("line 4: calendars[0].timezone: unknown timezone 'Mars/Olympus'")
    assert problems[1].startswith("line 10: calendars[1].hours: ") and "overlap" in problems[1]
    assert problems[2] == "line 12: calendars[1].holidays.subdivision: needs a `country`"
    assert problems[3] == (
        "line 13: calendars[1].holidays.dates[0]: expected a date such as 2026-12-24"
    )


def test_calendar_sources_that_cannot_be_used_are_refused_and_nothing_is_stored(
    config: Config, session: Session, tmp_path: Path
) -> None:
    problems = problems_of(
        session,
        f"""
        calendars:
          - key: shop
            timezone: Europe/London
            hours:
              mon-fri: ["09:00-17:00"]
            holidays:
              country: XX
              ics: {tmp_path / "missing.ics"}
        pipelines:
          - key: support
            name: Support
            calendar: nowhere
            stages: [{{key: new, name: New, calendar: elsewhere}}]
        """,
    )

    assert problems[0] == "line 3: calendar 'shop'.holidays: Country XX not available"
    assert problems[1].startswith("line 3: calendar 'shop'.holidays.ics: cannot read")
    assert problems[2].startswith("line 11: pipeline 'support'.calendar: no calendar 'nowhere'")
    assert problems[3].startswith("line 14: stage 'new'.calendar: no calendar 'elsewhere'")
    assert session.scalars(select(BusinessCalendar)).all() == []


def test_a_calendar_that_never_opens_is_refused(config: Config, session: Session) -> None:
    problems = problems_of(
        session,
        """
        calendars:
          - key: never
            timezone: UTC
            hours: {}
        pipelines:
          - key: support
            name: Support
            stages: [{key: new, name: New}]
        """,
    )
    assert any("calendars[0].hours" in p for p in problems), problems


def test_arithmetic_calendar_of_a_stored_one_has_its_holidays(
    config: Config, session: Session
) -> None:
    load(session, FILE)
    stored = session.scalars(select(BusinessCalendar)).one()
    from whatsdesk.calendars import to_clock

    calendar = to_clock(stored, 2026)
    assert date(2026, 12, 25) in calendar.holidays  # Christmas, from the holidays package
    assert date(2027, 12, 31) in calendar.holidays  # the firm's own, yearly
    assert not clock.is_open(calendar, local(2026, 12, 25, 10, 0))


def test_a_subdivision_longer_than_any_name_the_holidays_list_has_is_refused() -> None:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        pipelines.parse(FILE.replace("subdivision: SP", "subdivision: " + "S" * 65))
    assert refused.value.problems == [
        "line 10: calendars[0].holidays.subdivision: is 65 characters; at most 64"
    ]


@pytest.mark.parametrize("given", ["2026-12-24 10:00:00", "2026-02-29", "2026-13-01"])
def test_a_holiday_given_with_a_time_or_as_no_real_day_is_refused(given: str) -> None:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        pipelines.parse(FILE.replace("        - 2026-12-24\n", f"        - {given}\n"))
    assert refused.value.problems == [
        "line 12: calendars[0].holidays.dates[0]: expected a date such as 2026-12-24"
    ]


def test_a_yearly_closure_starts_in_the_year_it_was_given() -> None:
    from whatsdesk.calendars import own_dates

    assert own_dates(date(2027, 5, 1), True, range(2026, 2029)) == [
        date(2027, 5, 1),
        date(2028, 5, 1),
    ]


def test_ics_timed_events_ending_at_midnight_and_cancelled_events(tmp_path: Path) -> None:
    ics = tmp_path / "events.ics"
    ics.write_text(
        ics_text(
            [
                "UID:1",
                "DTSTART:20261201T180000",
                "DTEND:20261202T000000",
                "SUMMARY:Evening closure",
            ],
            ["UID:2", "STATUS:CANCELLED", "DTSTART;VALUE=DATE:20261210", "SUMMARY:Called off"],
        )
    )
    assert read_ics(str(ics), ics_years(2026), "America/Sao_Paulo") == [date(2026, 12, 1)]


def test_an_all_day_ics_event_ending_on_its_start_day_still_closes_it(tmp_path: Path) -> None:
    """DTEND equal to DTSTART breaks RFC 5545 (DTEND is exclusive), but some exporters
    write it for a one-day holiday: the day it names is closed, not none."""
    ics = tmp_path / "events.ics"
    ics.write_text(
        ics_text(
            [
                "UID:1",
                "DTSTART;VALUE=DATE:20261224",
                "DTEND;VALUE=DATE:20261224",
                "SUMMARY:Christmas Eve",
            ],
        )
    )
    assert read_ics(str(ics), ics_years(2026), "America/Sao_Paulo") == [date(2026, 12, 24)]
