"""Reports and deadlines from history, read by a supervisor from history rows written with
explicit timestamps (days in the default pipeline calendar's timezone, America/Sao_Paulo:
UTC-3 all year)."""

from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from whatsdesk import configuration, dashboard, escalation, pipeline_store, pipelines, reports
from whatsdesk import desk as desk_module
from whatsdesk.config import Config
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import (
    AuditEntry,
    Card,
    Contact,
    Pipeline,
    SlaEvent,
    Stage,
    StageVisit,
    User,
)

from conftest import count, csrf_token, fresh, login, seed

ZONE = "America/Sao_Paulo"
DESK_YAML = """
calendars:
  - key: office
    name: Office
    timezone: America/Sao_Paulo
    hours:
      mon-sun: ["08:00-20:00"]
pipelines:
  - key: support
    name: Support
    default: true
    calendar: office
    resolution: 8h
    resolution_warning: 1h
    stages:
      - key: new
        name: New
        sla: 2m
        warning: 1m
        escalate:
          - after: 10m
            to: [sofia@example.com]
      - key: open
        name: In progress
        sla: 1h
        warning: 50m
      - key: waiting
        name: Waiting on customer
        pause: true
notifications:
  digest_window: off
"""
PERIOD = {"period": "custom", "start": "2026-03-02", "end": "2026-03-04"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def desk(config: Config) -> Config:
    seed(config.database_url)
    with session_factory(config.database_url)() as s:
        pipeline_store.load(s, pipelines.parse(DESK_YAML), at("2026-01-01T00:00:00"))
        s.commit()
    return config


class History:
    """Writes cards, stage visits and SLA events as they would have been recorded."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.stages = {s.key: s for s in session.scalars(select(Stage))}
        self.users = {u.email.split("@")[0]: u for u in session.scalars(select(User))}
        self.cards = len(session.scalars(select(Contact.id)).all())

    def card(self, owner: str | None = None) -> Card:
        self.cards += 1
        contact = Contact(
            address=f"whatsapp:+551190000{self.cards:04d}", created_at=at("2026-03-01T00:00:00")
        )
        card = Card(
            contact=contact,
            pipeline_id=self.stages["new"].pipeline_id,
            stage_id=self.stages["new"].id,
            owner_id=self.users[owner].id if owner else None,
            opened_at=at("2026-03-01T00:00:00"),
        )
        self.session.add(card)
        self.session.flush()
        return card

    def visit(
        self, card: Card, stage: str, left: str, seconds: int, outcome: str, wall: int = 0
    ) -> StageVisit:
        """A visit of `seconds` in business time and `wall` on the clock (the same if 0)."""
        left_at = at(left)
        visit = StageVisit(
            card_id=card.id,
            stage_id=self.stages[stage].id,
            entered_at=left_at - timedelta(seconds=wall or seconds),
            left_at=left_at,
            business_seconds=seconds,
            wall_seconds=wall or seconds,
            outcome=outcome,
        )
        self.session.add(visit)
        self.session.flush()
        return visit

    def event(self, visit: StageVisit, kind: str, fired: str) -> None:
        card = self.session.get_one(Card, visit.card_id)
        self.session.add(
            SlaEvent(
                visit_id=visit.id,
                card_id=visit.card_id,
                kind=kind,
                due_at=at(fired),
                fired_at=at(fired),
                owner_id=card.owner_id,  # the card's owner when it fired
            )
        )


def write_history(config: Config) -> None:
    """Three days of the support pipeline (2026-03-02 to 04, local), with rows just outside."""
    with session_factory(config.database_url)() as s:
        h = History(s)
        ana, bruno, nobody = h.card("ana"), h.card("bruno"), h.card()
        new = [
            h.visit(ana, "new", "2026-03-02T12:00:00", 30, "met", wall=900),
            h.visit(bruno, "new", "2026-03-02T13:00:00", 60, "met"),
            h.visit(nobody, "new", "2026-03-03T12:00:00", 90, "met"),
            h.visit(ana, "new", "2026-03-03T14:00:00", 150, "breached"),
            # 23:59 local on the last day: in the period.
            h.visit(bruno, "new", "2026-03-05T02:59:00", 300, "breached"),
        ]
        # Midnight local after the last day: outside.
        h.visit(nobody, "new", "2026-03-05T03:00:00", 10_000, "breached")
        opened = [
            h.visit(ana, "open", "2026-03-03T15:00:00", 600, "met"),
            h.visit(nobody, "open", "2026-03-04T16:00:00", 4000, "breached"),
        ]
        h.visit(ana, "waiting", "2026-03-04T10:00:00", 7200, "no_sla")
        h.event(new[3], "warning", "2026-03-02T11:59:00")
        h.event(new[3], "breach", "2026-03-02T12:00:00")
        h.event(new[3], "level-1", "2026-03-02T12:10:00")
        h.event(new[3], "level-2", "2026-03-02T13:00:00")
        h.event(new[4], "warning", "2026-03-03T02:20:00")
        # 23:30 local on the 2nd, though the 3rd in UTC.
        h.event(new[4], "breach", "2026-03-03T02:30:00")
        h.event(new[4], "level-1", "2026-03-03T02:40:00")
        h.event(new[0], "warning", "2026-03-02T11:59:00")
        h.event(new[1], "warning", "2026-03-02T12:59:00")
        h.event(opened[0], "resolution-warning", "2026-03-03T12:00:00")
        h.event(opened[0], "resolution-breach", "2026-03-03T13:00:00")
        h.event(opened[1], "breach", "2026-03-04T15:00:00")
        h.event(new[1], "resolution-warning", "2026-03-02T12:30:00")
        # 23:00 local on the 1st: before the period.
        h.event(new[2], "breach", "2026-03-02T02:00:00")
        s.commit()


def visible(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def table(page: str, name: str) -> list[list[str]]:
    """A report table's rows as the cells' visible text, the header first."""
    section = re.search(
        rf'<section class="report-table" id="table-{name}">(.*?)</section>', page, re.S
    )
    assert section, page
    return [
        [visible(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section.group(1), re.S)
    ]


def get_csv(client: FlaskClient, **args: str) -> list[list[str]]:
    answer = client.get("/reports.csv", query_string={**PERIOD, **args})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = answer.get_data(as_text=True)
    assert text.startswith("\ufeff")  # the byte-order mark: Excel reads accents as UTF-8
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))


def report_page(client: FlaskClient, **args: str) -> str:
    answer = client.get("/reports", query_string=args or PERIOD)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def test_violations_by_day_stage_pipeline_and_agent(client: FlaskClient, desk: Config) -> None:
    write_history(desk)
    login(client, "sofia@example.com")
    page = report_page(client)
    assert "America/Sao_Paulo" in page and "2026-03-02 – 2026-03-04" in page
    assert table(page, "days") == [
        ["Day", "Stage SLA breaches", "Resolution breaches"],
        ["2026-03-02", "2", "0"],
        ["2026-03-03", "0", "1"],
        ["2026-03-04", "1", "0"],
    ]
    assert table(page, "stages") == [
        [
            "Pipeline",
            "Stage",
            "Stage SLA breaches",
            "Resolution breaches",
            "Level 1 reached",
            "Level 2 reached",
        ],
        ["Support", "New", "2", "0", "2", "1"],
        ["Support", "In progress", "1", "1", "0", "0"],
        ["Support", "Waiting on customer", "0", "0", "0", "0"],
    ]
    assert table(page, "pipelines")[1:] == [["Support", "3", "1"]]
    assert table(page, "agents")[1:] == [
        ["Ana Agent", "ana@example.com", "1", "1"],
        ["Bruno Agent", "bruno@example.com", "1", "0"],
        ["Unassigned", "", "1", "0"],
    ]


def test_agents_and_pipelines_are_counted_by_id_not_by_name(
    client: FlaskClient, desk: Config
) -> None:
    with session_factory(desk.database_url)() as s:
        for name, email in [("Ana Agent", "ana.two@example.com"), ("Unassigned", "un@example.com")]:
            s.add(User(name=name, email=email, role="agent", password_hash="!"))
        s.flush()
        h = History(s)
        for owner in ("ana", "ana.two", "un", None):
            visit = h.visit(h.card(owner), "new", "2026-03-02T12:00:00", 300, "breached")
            h.event(visit, "breach", "2026-03-02T12:00:00")
        s.commit()
    login(client, "sofia@example.com")

    rows = [
        ["Ana Agent", "ana.two@example.com", "1", "0"],
        ["Ana Agent", "ana@example.com", "1", "0"],
        ["Unassigned", "", "1", "0"],
        ["Unassigned", "un@example.com", "1", "0"],
    ]
    assert sorted(table(report_page(client), "agents")[1:]) == rows
    assert sorted(get_csv(client, table="agents")[1:]) == rows
    assert table(report_page(client), "pipelines")[1:] == [["Support", "4", "0"]]


REASSIGNING = """
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - {key: reply, name: Waiting for our reply, sla: 5m, reassign: bruno@example.com}
notifications:
  digest_window: off
"""


def test_a_breach_is_credited_to_whose_card_it_was_not_to_who_received_it(
    config: Config, session: Session
) -> None:
    """The stage hands a breached card to Bruno: the breach is Ana's, who let it run out."""
    seed(config.database_url)
    t0 = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    pipeline_store.load(session, pipelines.parse(REASSIGNING), t0)
    contact = Contact(address="whatsapp:+5511900000001", created_at=t0)
    pipeline = session.scalars(select(Pipeline)).one()
    card, visit = desk_module.open_card(session, contact, pipeline, t0)
    card.owner = session.scalars(select(User).where(User.email == "ana@example.com")).one()
    session.commit()

    assert escalation.fire(session, visit.id, "breach", t0 + timedelta(minutes=6)) is not None
    session.commit()

    assert card.owner is not None and card.owner.name == "Bruno Agent"
    report = reports.build(session, reports.Period("custom", t0.date(), t0.date(), "UTC"))
    board = dashboard.build(session, t0 + timedelta(minutes=7))
    credited = {a.name: a.violations.breaches for a in report.agents}
    today = {a.name: a.breaches_today for a in board.agents}
    assert credited == {"Ana Agent": 1}
    assert (today["Ana Agent"], today["Bruno Agent"]) == (1, 0)


def test_hit_rate_time_in_stage_and_conversion(client: FlaskClient, desk: Config) -> None:
    write_history(desk)
    login(client, "sofia@example.com")
    page = report_page(client)
    assert table(page, "times") == [
        [
            "Pipeline",
            "Stage",
            "SLA",
            "Finished visits",
            "Met",
            "Breached",
            "Hit rate",
            "Business p50",
            "Business p90",
            "Business p95",
            "Wall p50",
            "Wall p90",
        ],
        # Business [30, 60, 90, 150, 300]: p90 = 150 + 0.6 × 150 = 240 s; wall [60, 90,
        # 150, 300, 900] (the first visit spent 15 minutes, 30 s of them open): p90 = 660 s.
        [
            "Support",
            "New",
            "2m 00s",
            "5",
            "3",
            "2",
            "60.0 %",
            "1m 30s",
            "4m 00s",
            "4m 30s",
            "2m 30s",
            "11m 00s",
        ],
        [
            "Support",
            "In progress",
            "1h 00m",
            "2",
            "1",
            "1",
            "50.0 %",
            "38m 20s",
            "1h 01m",
            "1h 03m",
            "38m 20s",
            "1h 01m",
        ],
        [
            "Support",
            "Waiting on customer",
            "—",
            "1",
            "0",
            "0",
            "—",
            "2h 00m",
            "2h 00m",
            "2h 00m",
            "2h 00m",
            "2h 00m",
        ],
    ]
    assert table(page, "conversion")[1:] == [
        ["Support", "New", "4", "2", "50.0 %"],
        ["Support", "Resolution", "2", "1", "50.0 %"],
    ]
    assert "57.1 % hit rate" in visible(page)  # met ÷ finished visits with an SLA: 4 of 7
    assert page.count("<svg") == 3 and "<script" not in page and " style=" not in page


def test_csv_has_the_page_rows(client: FlaskClient, desk: Config) -> None:
    write_history(desk)
    login(client, "sofia@example.com")
    assert get_csv(client, table="days") == [
        ["Day", "Stage SLA breaches", "Resolution breaches"],
        ["2026-03-02", "2", "0"],
        ["2026-03-03", "0", "1"],
        ["2026-03-04", "1", "0"],
    ]
    rows = get_csv(client, table="times")
    assert rows[0] == [
        "Pipeline",
        "Stage",
        "SLA (s)",
        "Finished visits",
        "Met",
        "Breached",
        "Hit rate (%)",
        "Business p50 (s)",
        "Business p90 (s)",
        "Business p95 (s)",
        "Wall p50 (s)",
        "Wall p90 (s)",
    ]
    assert rows[1] == [
        *("Support", "New", "120", "5", "3", "2", "60.0"),
        *("90", "240", "270", "150", "660"),
    ]
    assert get_csv(client, table="agents")[1] == ["Ana Agent", "ana@example.com", "1", "1"]
    answer = client.get("/reports.csv", query_string={**PERIOD, "table": "everything"})
    assert answer.status_code == 400 and "table must be one of" in answer.get_data(as_text=True)


def test_percentiles_agree_on_both_backends(desk: Config, session: Session) -> None:
    write_history(desk)
    period = reports.Period(
        "custom", *(datetime.fromisoformat(d).date() for d in ("2026-03-02", "2026-03-04")), ZONE
    )
    times = reports.stage_times(session, period)
    new = times[session.scalars(select(Stage.id).where(Stage.key == "new")).one()]
    assert (new.finished, new.met, new.breached) == (5, 3, 2)
    assert new.percentiles == {0.5: 90.0, 0.9: 240.0, 0.95: 270.0}
    assert {f: round(v or 0, 6) for f, v in new.wall.items()} == {0.5: 150, 0.9: 660, 0.95: 780}
    assert reports.percentile([10, 20], 0.5) == 15.0 and reports.percentile([], 0.9) is None


def test_queries_do_not_grow_with_stages(desk: Config, session: Session) -> None:
    write_history(desk)
    period = reports.parse_period(PERIOD, at("2026-03-10T00:00:00"), ZONE)
    statements: list[str] = []
    engine = get_engine(desk.database_url)

    def counted(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", counted)
    try:
        reports.build(session, period)
        few = len(statements)
        extra = DESK_YAML.replace(
            "      - key: waiting",
            "".join(
                f"      - key: extra{n}\n        name: Extra {n}\n        sla: 5m\n"
                for n in range(6)
            )
            + "      - key: waiting",
        )
        pipeline_store.load(session, pipelines.parse(extra), at("2026-03-10T00:00:00"))
        session.commit()
        statements.clear()
        assert len(reports.build(session, period).stages) == 9
        assert len(statements) == few
    finally:
        event.remove(engine, "before_cursor_execute", counted)


def test_periods_and_their_errors(client: FlaskClient, desk: Config) -> None:
    # 02:00 UTC on the 5th is still the 4th in São Paulo.
    now = at("2026-03-05T02:00:00")
    week = reports.parse_period({"period": "7d"}, now, ZONE)
    assert (week.first_day.isoformat(), week.last_day.isoformat()) == ("2026-02-26", "2026-03-04")
    assert week.start == at("2026-02-26T03:00:00") and week.end == at("2026-03-05T03:00:00")
    today = reports.parse_period({"period": "today"}, now, ZONE)
    assert today.days == [week.last_day]
    assert len(reports.parse_period({"period": "30d"}, now, ZONE).days) == 30
    login(client, "sofia@example.com")
    for args, message in [
        (
            {"period": "custom", "start": "2026-03-04", "end": "2026-03-01"},
            "The end date is before the start date.",
        ),
        (
            {"period": "custom", "start": "2025-01-01", "end": "2026-01-02"},
            "at most 366 days; this one covers 367",
        ),
        (
            {"period": "custom", "start": "03/01/2026", "end": "2026-03-04"},
            "The start date &#39;03/01/2026&#39; is not a date",
        ),
        ({"period": "custom", "start": "2026-03-01"}, "A custom period needs a end date"),
        ({"period": "fortnight"}, "Unknown period"),
        (
            {"period": "custom", "start": "9999-12-31", "end": "9999-12-31"},
            "Dates must be from 2000-01-01 to ",
        ),
        (
            {"period": "custom", "start": "0001-01-01", "end": "0001-01-02"},
            "Dates must be from 2000-01-01 to ",
        ),
    ]:
        answer = client.get("/reports", query_string=args)
        assert answer.status_code == 400 and message in answer.get_data(as_text=True), args
    far = {"period": "custom", "start": "9999-12-31", "end": "9999-12-31"}
    suggestions = client.get("/reports/suggestions", query_string=far)
    assert suggestions.status_code == 400 and "Dates must be from" in suggestions.get_data(
        as_text=True
    )
    year = {"period": "custom", "start": "2025-03-05", "end": "2026-03-05"}
    assert client.get("/reports", query_string=year).status_code == 200
    csv_answer = client.get(
        "/reports.csv", query_string={"table": "days", "period": "custom", "start": "x", "end": "y"}
    )
    assert csv_answer.status_code == 400 and "is not a date" in csv_answer.get_data(as_text=True)


def test_unknown_query_arguments_beside_a_bad_period_are_dropped_from_the_links(
    client: FlaskClient, desk: Config
) -> None:
    login(client, "sofia@example.com")
    odd = {"period": "fortnight", "endpoint": "x", "table": "days", "next": "//evil.example"}
    for path in ("/reports", "/reports/suggestions"):
        answer = client.get(path, query_string=odd)
        page = answer.get_data(as_text=True)
        assert answer.status_code == 400 and "Unknown period" in page, path
        assert "period=fortnight" in page and "evil" not in page and "endpoint" not in page


def test_agents_may_not_read_or_apply(client: FlaskClient, desk: Config) -> None:
    assert client.get("/reports").status_code == 302  # to the login page
    login(client, "ana@example.com")
    assert "Reports" not in client.get("/queue").get_data(as_text=True)
    for path in ("/reports", "/reports.csv?table=days", "/reports/suggestions"):
        assert client.get(path).status_code == 403, path
    token = csrf_token(client.get("/queue").get_data(as_text=True))
    answer = client.post(
        "/reports/suggestions/1/apply", data={"csrf_token": token, **PERIOD, "sla_seconds": "600"}
    )
    assert answer.status_code == 403


def write_sample(config: Config, stage: str, minutes: range) -> None:
    """One finished visit of `stage` per value, on 2026-03-03, `minutes` long in business time."""
    with session_factory(config.database_url)() as s:
        h = History(s)
        card = h.card("ana")
        for n, m in enumerate(minutes):
            outcome = "met" if m * 60 <= (h.stages[stage].sla_seconds or 0) else "breached"
            h.visit(card, stage, f"2026-03-03T12:{n:02d}:00", m * 60, outcome)
        s.commit()


def suggestion_rows(client: FlaskClient) -> dict[str, list[str]]:
    answer = client.get("/reports/suggestions", query_string=PERIOD)
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    rows = re.findall(r'<tr id="stage-\d+">(.*?)</tr>', page, re.S)
    cells = [[visible(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]
    return {row[0]: row[1:] for row in cells}


def test_suggestions_from_the_history(client: FlaskClient, desk: Config) -> None:
    write_sample(desk, "new", range(1, 21))  # 1 … 20 minutes
    write_sample(desk, "open", range(30, 33))
    login(client, "sofia@example.com")
    rows = suggestion_rows(client)
    # p90 of 60 … 1200 s = 1080 + 0.1 × 60 = 1086 s, up to the minute: 19m. A visit breaches
    # when its time reaches the SLA: 2m … 20m breached 2m (19 of 20), 19m and 20m would 19m.
    assert rows["Support · New"] == [
        "2m 00s",
        "20",
        "95.0 %",
        "18m 06s",
        "19m 00s",
        "10.0 %",
        "Applying needs an admin, or a supervisor allowed to change settings.",
    ]
    assert rows["Support · In progress"][:2] == ["1h 00m", "3"]
    assert (
        "Only 3 finished visits in the period; a suggestion needs at least 20."
        in rows["Support · In progress"][-1]
    )
    assert "pause stage" in rows["Support · Waiting on customer"][-1]
    exported = get_csv(client, table="suggestions")
    assert exported[0][:8] == [
        "Pipeline",
        "Stage",
        "Current SLA (s)",
        "Finished visits",
        "Breached the current SLA (%)",
        "p90 (s)",
        "Suggested SLA (s)",
        "Would breach the suggestion (%)",
    ]
    assert exported[1][:8] == ["Support", "New", "120", "20", "95.0", "1086", "1140", "10.0"]
    assert reports.round_up_sla(3599) == 3600 and reports.round_up_sla(3601) == 3900
    assert reports.round_up_sla(1140) == 1200  # a p90 of exactly 19m: those visits met it
    assert reports.round_up_sla(4 * 3600 + 1) == 4 * 3600 + 900 and reports.round_up_sla(5) == 60


def grant(config: Config, email: str) -> None:
    with session_factory(config.database_url)() as s:
        user = s.scalars(select(User).where(User.email == email)).one()
        user.can_edit_settings = True
        s.commit()


def apply(client: FlaskClient, stage: str, seconds: int, session: Session) -> object:
    stage_id = session.scalars(select(Stage.id).where(Stage.key == stage)).one()
    token = csrf_token(
        client.get("/reports/suggestions", query_string=PERIOD).get_data(as_text=True)
    )
    return client.post(
        f"/reports/suggestions/{stage_id}/apply",
        data={"csrf_token": token, **PERIOD, "sla_seconds": str(seconds)},
        follow_redirects=True,
    )


def stage_row(session: Session, key: str) -> Stage:
    fresh(session)
    return session.scalars(select(Stage).where(Stage.key == key)).one()


def test_applying_a_suggestion_changes_the_sla_and_audits_it(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    write_sample(desk, "new", range(1, 21))
    grant(desk, "sofia@example.com")
    login(client, "sofia@example.com")
    answer = apply(client, "new", 1140, session)
    text = visible(answer.get_data(as_text=True))
    assert "Support / New: SLA 19m (was 2m)." in text
    assert "applies to visits that start from now on" in text
    stage = stage_row(session, "new")
    assert (stage.sla_seconds, stage.warning_seconds) == (1140, 60)
    entry = session.scalars(select(AuditEntry)).one()
    assert (entry.action, entry.target) == ("sla-suggestion", "support/new")
    assert "sla: 19m" in entry.after and "sla: 2m" in entry.before
    assert (
        entry.user_id
        == session.scalars(select(User.id).where(User.email == "sofia@example.com")).one()
    )


def test_a_warning_that_would_not_fit_becomes_a_fifth(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    write_sample(desk, "open", range(1, 21))  # suggests 19m; the warning lead is 50m
    grant(desk, "sofia@example.com")
    login(client, "sofia@example.com")
    text = visible(apply(client, "open", 1140, session).get_data(as_text=True))
    assert "The warning lead of 50m would not fit under it, so it is now 3m48s (a fifth)." in text
    stage = stage_row(session, "open")
    assert (stage.sla_seconds, stage.warning_seconds) == (1140, 228)


def test_a_changed_suggestion_or_no_grant_changes_nothing(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    write_sample(desk, "new", range(1, 21))
    login(client, "otto@example.com")  # a supervisor without the settings grant
    assert apply(client, "new", 1140, session).status_code == 403
    client.post(
        "/logout", data={"csrf_token": csrf_token(client.get("/queue").get_data(as_text=True))}
    )
    grant(desk, "sofia@example.com")
    login(client, "sofia@example.com")
    text = visible(apply(client, "new", 900, session).get_data(as_text=True))
    assert "the suggestion changed since the page was shown (now 19 minutes)" in text
    text = visible(apply(client, "open", 3600, session).get_data(as_text=True))
    assert "Only 0 finished visits in the period" in text
    assert stage_row(session, "new").sla_seconds == 120
    assert count(session, AuditEntry) == 0


def test_chart_styles_are_a_file(client: FlaskClient, desk: Config) -> None:
    answer = client.get("/reports/charts.css")
    assert answer.status_code == 200 and answer.mimetype == "text/css"
    assert "svg.pygal-chart.palette-violations .color-0" in answer.get_data(as_text=True)


def test_without_a_default_pipeline_reports_and_dashboard_use_the_first_ones_timezone(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    for pipeline in session.scalars(select(Pipeline)):
        pipeline.is_default = False  # as a database from before `default:` was required
    session.commit()

    assert desk_module.desk_timezone(session).key == ZONE  # the first pipeline's calendar's
    assert dashboard.build(session, at("2026-03-10T12:00:00")).timezone == ZONE
    login(client, "sofia@example.com")
    assert f"<strong>{ZONE}</strong>" in report_page(client)


def test_a_suggestion_applied_after_someone_changed_the_stage_is_refused(
    desk: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page showed 19m against an SLA of 2m; meanwhile someone set 5m (warning 4m) on
    the stage page. Applying then is refused: the stage keeps their SLA and warning."""
    write_sample(desk, "new", range(1, 21))
    period = reports.parse_period(PERIOD, at("2026-03-10T00:00:00"), ZONE)
    shown = reports.suggestions(session, period)
    slower = configuration.on_pipeline(
        "support",
        configuration.on_stage("new", lambda s: replace(s, sla_seconds=300, warning_seconds=240)),
    )
    configuration.edit(session, slower, None, "stage", "support/new", at("2026-03-10T00:00:00"))
    session.commit()
    monkeypatch.setattr(reports, "suggestions", lambda _session, _period: shown)
    sofia = session.scalars(select(User).where(User.email == "sofia@example.com")).one()
    new = stage_row(session, "new")

    with pytest.raises(reports.SuggestionError, match="its SLA was changed since the page"):
        reports.apply_suggestion(session, period, new.id, 1140, sofia, at("2026-03-10T00:00:00"))
    session.rollback()

    again = stage_row(session, "new")
    assert (again.sla_seconds, again.warning_seconds) == (300, 240)
