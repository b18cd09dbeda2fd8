"""The one write path for configuration: what a change from the web may touch, what it reads
and which open cards a re-time concerns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import make_url, select
from sqlalchemy.orm import Session

from whatsdesk import accounts, configuration, desk, pipelines, whatsapp
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import AuditEntry, BusinessCalendar, Stage, StageVisit
from whatsdesk.pipelines import DeskSpec, PipelineFileError

from conftest import (
    PASSWORD,
    commit_once_it_waits,
    count,
    csrf_token,
    ics_text,
    inbound_form,
    login,
    seed,
)

ICS = ics_text(
    ["UID:1", "DTSTART;VALUE=DATE:20261225", "DTEND;VALUE=DATE:20261226", "SUMMARY:Closed"]
)

DESK = """
calendars:
  - key: office
    name: Office
    timezone: UTC
    hours:
      mon-sun: ["00:00-24:00"]
{holidays}
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 10m
  - key: sales
    name: Sales
    calendar: office
    stages:
      - key: lead
        name: Lead
        sla: 1h
"""


def desk_yaml(ics: Path | None = None) -> str:
    holidays = f"    holidays:\n      ics: {ics}" if ics else ""
    return DESK.format(holidays=holidays)


@pytest.fixture
def admin(client: FlaskClient, config: Config) -> FlaskClient:
    """The seeded desk, and an admin logged in on the client."""
    seed(config.database_url)
    with session_factory(config.database_url)() as s:
        accounts.create_user(
            s,
            name="Ada Admin",
            email="ada@example.com",
            role="admin",
            whatsapp=None,
            password=PASSWORD,
            now=utcnow(),
        )
        s.commit()
    login(client, "ada@example.com")
    return client


def test_an_ics_source_cannot_be_set_from_the_web(admin: FlaskClient, session: Session) -> None:
    page = admin.get("/settings/yaml").get_data(as_text=True)
    audited = count(session, AuditEntry)

    answer = admin.post(
        "/settings/yaml",
        data={"yaml": desk_yaml(Path("/etc/hostname")), "csrf_token": csrf_token(page)},
    )

    text = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert "only `flask pipeline load` on the server may set or change it" in text
    assert count(session, AuditEntry) == audited
    assert session.scalars(select(BusinessCalendar)).first() is None


def loaded(config: Config, session: Session, ics: Path | None = None) -> DeskSpec:
    """The seeded desk running DESK (its office calendar closed by `ics`, read by the
    server), as `flask pipeline load` sets it."""
    seed(config.database_url)
    spec = pipelines.parse(desk_yaml(ics))
    configuration.apply(session, spec, None, "import", "file", utcnow(), from_server=True)
    session.commit()
    return spec


def loaded_with_ics(config: Config, session: Session, tmp_path: Path) -> tuple[Path, DeskSpec]:
    ics = tmp_path / "closed.ics"
    ics.write_text(ICS)
    return ics, loaded(config, session, ics)


def test_the_server_may_name_an_ics_file_and_a_page_edit_does_not_read_it_again(
    config: Config, session: Session, tmp_path: Path
) -> None:
    ics, spec = loaded_with_ics(config, session, tmp_path)
    ics.unlink()  # the source is gone: reading it again would refuse every change

    def rename(desk_spec: DeskSpec) -> DeskSpec:
        sales = replace(desk_spec.pipelines[1], name="Sales team")
        return replace(desk_spec, pipelines=[desk_spec.pipelines[0], sales])

    configuration.edit(session, rename, None, "pipeline", "sales", utcnow())
    session.commit()

    stored = session.scalars(select(BusinessCalendar)).one()
    assert stored.ics_dates == ["2026-12-25"]
    assert configuration.current(session).pipelines[1].name == "Sales team"
    # The operator's load reads it again, and says it cannot.
    with pytest.raises(PipelineFileError, match="cannot read"):
        configuration.apply(session, spec, None, "import", "file", utcnow(), from_server=True)


def test_a_retime_concerns_only_the_pipelines_the_change_touches(
    config: Config, session: Session
) -> None:
    loaded(config, session)
    now = utcnow()
    support = desk.receive_message(
        session, whatsapp.parse_inbound(inbound_form(phone="+5511999990001")), now
    ).new_visit
    assert support is not None
    session.commit()

    def slower(desk_spec: DeskSpec) -> DeskSpec:
        new = replace(desk_spec.pipelines[0].stages[0], sla_seconds=3600)
        first = replace(desk_spec.pipelines[0], stages=[new])
        return replace(desk_spec, pipelines=[first, desk_spec.pipelines[1]])

    def rename_sales(desk_spec: DeskSpec) -> DeskSpec:
        sales = replace(desk_spec.pipelines[1], name="Sales team")
        return replace(desk_spec, pipelines=[desk_spec.pipelines[0], sales])

    untouched = configuration.edit(session, rename_sales, None, "p", "sales", now, retime=True)
    touched = configuration.edit(session, slower, None, "stage", "support/new", now, retime=True)
    session.commit()

    assert untouched.timers == []
    assert [visit_id for visit_id, _ in touched.timers] == [support.id]
    visit = session.get(StageVisit, support.id)
    assert visit is not None and visit.deadline_at == support.entered_at + timedelta(hours=1)


def test_two_saves_of_a_page_opened_at_once_the_second_waits_and_is_refused(
    config: Config,
) -> None:
    """Two people save the same stage page, opened at the same version, at the same moment:
    the second change waits for the first to commit, then sees that the stage changed."""
    if make_url(config.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite takes its one write lock first: changes run one after the other")
    factory = session_factory(config.database_url)
    with factory() as s:
        configuration.apply(
            s, pipelines.parse(desk_yaml()), None, "import", "file", utcnow(), from_server=True
        )
        s.commit()
        opened = configuration.version(configuration.current(s).pipelines[0].stages[0])

    def rename(name: str) -> Callable[[DeskSpec], DeskSpec]:
        def change(stage: pipelines.StageSpec) -> pipelines.StageSpec:
            configuration.unchanged_since("Stage 'New'", stage, opened)
            return replace(stage, name=name)

        return configuration.on_pipeline("support", configuration.on_stage("new", change))

    first, second = factory(), factory()
    refused: list[str] = []

    def second_saves() -> None:
        try:
            configuration.edit(second, rename("Second"), None, "stage", "support/new", utcnow())
            second.commit()
        except PipelineFileError as exc:
            second.rollback()
            refused.extend(exc.problems)

    try:
        configuration.edit(first, rename("First"), None, "stage", "support/new", utcnow())
        commit_once_it_waits(first, config.database_url, second_saves)
    finally:
        first.close()
        second.close()

    assert refused == [f"Stage 'New': {configuration.STALE}"]
    with factory() as s:
        assert configuration.current(s).pipelines[0].stages[0].name == "First"


def open_sales_card(session: Session, at: datetime) -> StageVisit:
    """A customer's conversation in Sales › Lead (on the `office` calendar) since `at`."""
    received = desk.receive_message(
        session, whatsapp.parse_inbound(inbound_form(phone="+5511999990002")), at
    )
    assert received.card is not None
    lead = session.scalars(select(Stage).where(Stage.key == "lead")).one()
    received.card.pipeline = lead.pipeline
    visit = desk.enter_stage(session, received.card, lead, at)
    session.commit()
    return visit


def test_a_calendar_changed_by_a_file_re_times_stored_pipelines_the_file_leaves_out(
    config: Config, session: Session
) -> None:
    loaded(config, session)
    visit = open_sales_card(session, utcnow())
    # Only Support in the file, and the office now closes at night: Sales uses the office.
    without_sales = (
        desk_yaml().split("  - key: sales")[0].replace('["00:00-24:00"]', '["00:00-23:00"]')
    )

    applied = configuration.apply(
        session, pipelines.parse(without_sales), None, "import", "file", utcnow(), retime=True
    )

    assert [visit_id for visit_id, _ in applied.timers] == [visit.id]


def test_an_ics_file_read_again_with_new_days_re_times_the_pipelines_using_it(
    config: Config, session: Session, tmp_path: Path
) -> None:
    ics, spec = loaded_with_ics(config, session, tmp_path)
    now = utcnow()
    visit = open_sales_card(session, now)
    today, tomorrow = now.date(), now.date() + timedelta(days=1)
    ics.write_text(  # the office is closed today, under the same source
        ICS.replace("20261225", f"{today:%Y%m%d}").replace("20261226", f"{tomorrow:%Y%m%d}")
    )

    applied = configuration.apply(
        session, spec, None, "import", "file", now, retime=True, from_server=True
    )
    session.commit()

    [(visit_id, timers)] = applied.timers
    assert visit_id == visit.id and timers.deadline_at is not None
    assert timers.deadline_at.date() > now.date()  # not before the office opens again


def test_a_page_changing_a_calendar_keeps_its_ics_days_without_reading_the_source(
    config: Config, session: Session, tmp_path: Path
) -> None:
    """Only the server reads .ics sources (a file or a URL, seconds, which a change must
    not spend holding the configuration's lock): a page's change to the calendar keeps
    the days its source closed when last read."""
    ics, _spec = loaded_with_ics(config, session, tmp_path)
    ics.unlink()

    def rename_office(desk_spec: DeskSpec) -> DeskSpec:
        office = replace(desk_spec.calendars[0], name="Head office")
        return replace(desk_spec, calendars=[office])

    configuration.edit(session, rename_office, None, "calendar", "office", utcnow())
    session.commit()

    stored = session.scalars(select(BusinessCalendar)).one()
    assert (stored.name, stored.ics_dates) == ("Head office", ["2026-12-25"])
