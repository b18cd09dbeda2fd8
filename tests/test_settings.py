"""The settings pages: pipelines, stages, calendars, YAML import/export and the audit log —
each edit made through the real pages (login, CSRF token, POST), as an admin would."""

from __future__ import annotations

import io
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from whatsdesk import accounts, audit, configuration, pipeline_store, pipelines
from whatsdesk.config import Config
from whatsdesk.db import session_factory
from whatsdesk.models import AuditEntry, Card, Contact, Stage, StageVisit, User
from whatsdesk.pipelines import DeskSpec, PipelineFileError

from conftest import (
    PASSWORD,
    STAFF,
    count,
    fresh,
    inbound_form,
    login,
    page_token,
    seed,
    signed_post,
)

ADMIN = "ada@example.com"
SUPERVISOR = "sofia@example.com"
GRANTED = "otto@example.com"
AGENT = "ana@example.com"
STAGE = "/settings/pipelines/support/stages/new"


@pytest.fixture
def desk(config: Config) -> Config:
    """The conftest staff and pipeline, an admin, and Otto allowed to change settings."""
    seed(config.database_url)
    with session_factory(config.database_url)() as s:
        add_admin(s)
        otto = s.scalars(select(User).where(User.email == GRANTED)).one()
        otto.can_edit_settings = True
        s.commit()
    return config


def add_admin(s: Session) -> None:
    accounts.create_user(
        s,
        name="Ada Admin",
        email=ADMIN,
        role="admin",
        whatsapp="+15550000009",
        password=PASSWORD,
        now=datetime.now(UTC),
    )


def post(client: FlaskClient, path: str, data: dict[str, object]) -> object:
    """A form posted as the browser would, with the CSRF token of the user's session."""
    token = page_token(client, "/settings")
    return client.post(path, data={**data, "csrf_token": token})


def stored(session: Session) -> DeskSpec:
    fresh(session)
    return configuration.current(session)


def stored_yaml(session: Session) -> str:
    fresh(session)
    return configuration.current_yaml(session)


def stage_form(**changes: object) -> dict[str, object]:
    """The stage page's form for 'new' as it stands in the seed, with `changes`."""
    form: dict[str, object] = {
        "name": "New",
        "sla": "2m",
        "warning": "1m",
        "calendar": "",
        "alert": ["ana@example.com", "bruno@example.com"],
        "levels": "0",
        "reassign": "",
        "timeout_after": "",
        "timeout_then": "resolve",
        "timeout_message": "",
    }
    form.update(changes)
    return form


def text(answer: object) -> str:
    return answer.get_data(as_text=True)  # type: ignore[attr-defined]


# --- roles ---------------------------------------------------------------------------------------

PAGES = [
    "/settings",
    "/settings/pipelines/support",
    STAGE,
    "/settings/yaml",
    "/settings/yaml.txt",
    "/settings/audit",
]


def test_agents_get_403_on_every_settings_page(client: FlaskClient, desk: Config) -> None:
    login(client, AGENT)
    for path in PAGES:
        assert client.get(path).status_code == 403, path
    assert post(client, STAGE, stage_form(sla="9m")).status_code == 403  # type: ignore[attr-defined]
    assert "Settings" not in text(client.get("/queue"))


def test_a_supervisor_reads_the_settings_without_forms_and_cannot_post(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, SUPERVISOR)
    before = stored_yaml(session)

    pages = {path: client.get(path) for path in PAGES}

    assert all(answer.status_code == 200 for answer in pages.values())
    overview = text(pages["/settings"])
    assert 'href="/settings"' in text(client.get("/queue"))  # the nav link
    assert "read-only" in overview and "Waiting on customer" in overview
    assert 'href="/settings/staff"' in overview and 'href="/settings/messaging"' in overview
    stage_page = text(pages[STAGE])
    assert "Ana Agent, Bruno Agent" in stage_page and "2m" in stage_page
    for path in PAGES[:-1]:
        if path.endswith(".txt"):
            continue
        assert 'action="/settings' not in text(pages[path]), path
    assert post(client, STAGE, stage_form(sla="9m")).status_code == 403  # type: ignore[attr-defined]
    assert post(client, "/settings/yaml", {"yaml": before}).status_code == 403  # type: ignore[attr-defined]
    assert stored_yaml(session) == before
    assert count(session, AuditEntry) == 0


@pytest.mark.parametrize("email", [GRANTED, ADMIN])
def test_admins_and_granted_supervisors_can_edit(
    client: FlaskClient, desk: Config, session: Session, email: str
) -> None:
    login(client, email)
    assert 'action="/settings/pipelines/support/stages/new"' in text(client.get(STAGE))

    answer = post(client, STAGE, stage_form(sla="9m"))

    assert answer.status_code == 302  # type: ignore[attr-defined]
    assert stored(session).pipelines[0].stages[0].sla_seconds == 540
    [entry] = session.scalars(select(AuditEntry)).all()
    assert entry.user is not None and entry.user.email == email


# --- stages --------------------------------------------------------------------------------------


def test_editing_a_stage_stores_every_field_and_the_page_shows_it(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    form = stage_form(
        name="First answer",
        sla="10m",
        warning="4m",
        pause="on",
        calendar="24/7",
        alert=["bruno@example.com"],
        levels="0",
        **{"level-0-after": "15m", "level-0-to": [SUPERVISOR, GRANTED]},
        reassign="least-loaded",
        timeout_after="2h",
        timeout_then="open",
        timeout_message="Still there?",
    )

    answer = post(client, STAGE, form)

    assert answer.status_code == 302, text(answer)  # type: ignore[attr-defined]
    stage = stored(session).pipelines[0].stages[0]
    assert (stage.name, stage.sla_seconds, stage.warning_seconds) == ("First answer", 600, 240)
    assert (stage.pause, stage.calendar, stage.alert) == (True, "24/7", ["bruno@example.com"])
    assert [(e.after_seconds, e.to) for e in stage.escalate] == [(900, [GRANTED, SUPERVISOR])]
    assert stage.reassign == "least-loaded"
    assert stage.timeout == pipelines.TimeoutSpec(7200, "open", "Still there?")
    page = text(client.get("/settings"))
    assert "Saved stage &#39;First answer&#39;." in page
    assert "First answer" in page and "always open (24/7)" in page
    assert "after 15m → Otto Supervisor, Sofia Supervisor" in page
    assert "least-loaded agent on shift" in page and "after 2h: move to open" in page


def test_escalation_levels_are_added_and_removed_on_the_stage_page(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    two = {
        "levels": "1",
        "level-0-after": "10m",
        "level-0-to": [SUPERVISOR],
        "level-1-after": "1h",
        "level-1-to": [GRANTED],
    }
    post(client, STAGE, stage_form(**two))
    assert len(stored(session).pipelines[0].stages[0].escalate) == 2

    answer = post(client, STAGE, stage_form(**{**two, "levels": "2", "level-0-remove": "on"}))

    assert answer.status_code == 302  # type: ignore[attr-defined]
    [level] = stored(session).pipelines[0].stages[0].escalate
    assert (level.after_seconds, level.to) == (3600, [GRANTED])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warning": "2m"}, "Warning: 2m must be shorter than the SLA (2m)"),
        ({"warning": "5m"}, "Warning: 5m must be shorter than the SLA (2m)"),
        ({"sla": "soon"}, "SLA: &#39;soon&#39; is not a duration such as 90s, 15m, 2h or 1h30m"),
        ({"sla": "", "warning": "1m"}, "Warning: needs the SLA it warns before"),
        ({"name": " "}, "Name: is required"),
        ({"name": "N" * 130}, "is 130 characters; at most 120"),
        ({"reassign": "least-loaded", "sla": "", "warning": ""}, "Reassign: reassigning on"),
        ({"level-0-after": "later", "level-0-to": [SUPERVISOR]}, "Escalation level 1: After:"),
        ({"level-0-after": "5m"}, "Escalation level 1: choose who is told"),
        ({"timeout_after": "1h", "timeout_then": "new"}, "cannot time out into itself"),
        ({"alert": ["nobody@example.com"]}, "Alert: no staff account nobody@example.com"),
    ],
)
def test_a_stage_edit_with_a_mistake_says_which_field_and_changes_nothing(
    client: FlaskClient, desk: Config, session: Session, changes: dict[str, object], message: str
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)

    answer = post(client, STAGE, stage_form(**{"name": "Renamed", **changes}))

    assert answer.status_code == 400  # type: ignore[attr-defined]
    page = text(answer)
    assert message in page and "Nothing was changed" in page
    typed = changes.get("name", "Renamed")
    assert f'value="{typed}"' in page or typed == " "  # what was typed stays
    assert stored_yaml(session) == before
    assert count(session, AuditEntry) == 0


def test_the_whole_configuration_check_refuses_what_a_page_cannot_catch(
    desk: Config, session: Session
) -> None:
    def two_defaults(d: DeskSpec) -> DeskSpec:
        extra = pipelines.PipelineSpec("sales", "Sales", default=True, stages=d.pipelines[0].stages)
        return DeskSpec(pipelines=[*d.pipelines, extra], calendars=d.calendars)

    with pytest.raises(PipelineFileError) as caught:
        configuration.edit(session, two_defaults, None, "pipeline", "sales", datetime.now(UTC))

    assert caught.value.problems == [
        "pipeline 'sales', default: only one pipeline can be `default: true` "
        "(pipelines[0] already is)"
    ]


# --- pipelines and stage order -------------------------------------------------------------------


def test_editing_a_pipeline_stores_it_and_the_page_shows_it(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    form = {
        "name": "Customer support",
        "default": "on",
        "calendar": "",
        "resolution": "8h",
        "resolution_warning": "1h",
        "reopen_within": "24h",
        "reopen_stage": "open",
    }

    answer = post(client, "/settings/pipelines/support", form)

    assert answer.status_code == 302, text(answer)  # type: ignore[attr-defined]
    p = stored(session).pipelines[0]
    assert (p.name, p.default, p.resolution_seconds, p.resolution_warning_seconds) == (
        "Customer support",
        True,
        8 * 3600,
        3600,
    )
    assert (p.reopen_seconds, p.reopen_stage) == (86400, "open")
    page = text(client.get("/settings"))
    assert "Customer support" in page and "Resolution SLA: <strong>8h</strong>" in page


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"resolution": "1h", "resolution_warning": "2h"},
            "Resolution warning: 2h must be shorter than the resolution SLA (1h)",
        ),
        ({"resolution": "8 hours"}, "Resolution SLA: &#39;8 hours&#39; is not a duration"),
        ({"default": ""}, "Default: make another pipeline the default instead"),
        ({"reopen_stage": "open", "reopen_within": ""}, "Reopen in stage: also say within"),
    ],
)
def test_a_pipeline_edit_with_a_mistake_changes_nothing(
    client: FlaskClient, desk: Config, session: Session, changes: dict[str, str], message: str
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)
    form = {"name": "Support", "default": "on", "calendar": "", **changes}

    answer = post(client, "/settings/pipelines/support", form)

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert message in text(answer)
    assert stored_yaml(session) == before
    assert count(session, AuditEntry) == 0


def test_stages_are_added_moved_and_removed(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    base = "/settings/pipelines/support/stages"

    added = post(client, base, {"key": "billing", "name": "Billing", "sla": "30m"})
    post(client, f"{base}/billing/move", {"direction": "up"})
    post(client, f"{base}/billing/move", {"direction": "up"})

    assert added.headers["Location"] == f"{base}/billing"  # type: ignore[attr-defined]
    keys = [s.key for s in stored(session).pipelines[0].stages]
    assert keys == ["new", "billing", "open", "waiting"]
    page = text(client.get("/settings/pipelines/support"))
    assert page.index("Billing") < page.index("In progress")

    removed = post(client, f"{base}/billing/remove", {})

    assert removed.status_code == 302  # type: ignore[attr-defined]
    assert [s.key for s in stored(session).pipelines[0].stages] == ["new", "open", "waiting"]
    assert [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))] == [
        "stage",
        "stage-order",
        "stage-order",
        "stage-removed",
    ]


def test_a_new_stage_needs_a_fresh_key(client: FlaskClient, desk: Config, session: Session) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)
    base = "/settings/pipelines/support/stages"

    taken = post(client, base, {"key": "open", "name": "Again"})
    bad = post(client, base, {"key": "Bad Key", "name": "Bad"})

    assert taken.status_code == bad.status_code == 400  # type: ignore[attr-defined]
    assert "Key: there is already a stage &#39;open&#39;" in text(taken)
    assert "must be lowercase letters, digits, - or _" in text(bad)
    assert stored_yaml(session) == before


def test_removing_a_stage_with_history_is_refused(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    assert signed_post(client, desk, "/twilio/whatsapp", inbound_form()).status_code == 200  # type: ignore[attr-defined]
    assert count(session, StageVisit) == 1
    login(client, ADMIN)
    before = stored_yaml(session)

    answer = post(client, f"{STAGE}/remove", {})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "has conversations in its history, so it cannot be removed" in text(answer)
    assert stored_yaml(session) == before


def a_card_at_the_team_menu(session: Session) -> None:
    """A card waiting for the team menu's answer (or resolved before it) stands in its
    pipeline's first stage, with no visit yet."""
    now = datetime.now(UTC)
    stage = session.scalars(select(Stage).where(Stage.key == "new")).one()
    session.add(
        Card(
            contact=Contact(address="whatsapp:+5511999990000", created_at=now),
            pipeline=stage.pipeline,
            stage=stage,
            status="open",
            opened_at=now,
            waiting_since=now,
            menu_deadline_at=now + timedelta(minutes=2),
        )
    )
    session.commit()


def test_removing_a_stage_a_card_stands_in_without_a_visit_is_refused(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    a_card_at_the_team_menu(session)
    login(client, ADMIN)
    before = stored_yaml(session)
    spec = pipelines.parse(before)
    spec.pipelines[0].stages = spec.pipelines[0].stages[1:]

    removed = post(client, f"{STAGE}/remove", {})
    imported = post(client, "/settings/yaml", {"yaml": pipelines.dump(spec)})

    assert removed.status_code == 400  # type: ignore[attr-defined]
    assert "has conversations in its history, so it cannot be removed" in text(removed)
    assert imported.status_code == 400  # type: ignore[attr-defined]
    assert "stage &#39;new&#39; is missing from the file but has cards" in text(imported)
    assert stored_yaml(session) == before


def test_removing_a_stage_the_pipeline_still_names_says_where_it_is_named(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    form = {"name": "Support", "default": "on", "reopen_within": "1d", "reopen_stage": "open"}
    post(client, "/settings/pipelines/support", form)
    before = stored_yaml(session)

    answer = post(client, "/settings/pipelines/support/stages/open/remove", {})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "pipeline &#39;support&#39;, reopen.stage: no such stage in this pipeline" in text(
        answer
    )
    assert stored_yaml(session) == before


def test_a_new_pipeline_is_created_from_the_overview(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    form = {"key": "sales", "name": "Sales", "stage_key": "lead", "stage_name": "New lead"}

    answer = post(client, "/settings/pipelines", form)

    assert answer.headers["Location"] == "/settings/pipelines/sales"  # type: ignore[attr-defined]
    sales = stored(session).pipelines[1]
    assert (sales.key, sales.default, [s.key for s in sales.stages]) == ("sales", False, ["lead"])
    assert post(client, "/settings/pipelines", form).status_code == 400  # type: ignore[attr-defined]


def test_retime_moves_the_deadlines_of_open_cards(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    signed_post(client, desk, "/twilio/whatsapp", inbound_form())
    login(client, ADMIN)
    visit = session.scalars(select(StageVisit)).one()
    entered = visit.entered_at

    answer = post(client, STAGE, stage_form(sla="1h", warning="10m", retime="on"))

    assert "Re-timed 1 open card(s)." in text(client.get(answer.headers["Location"]))  # type: ignore[attr-defined]
    fresh(session)
    visit = session.scalars(select(StageVisit)).one()
    assert visit.deadline_at == entered + timedelta(hours=1)


def test_retime_from_a_stage_page_moves_only_that_stage_s_cards(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    """The first stage's SLA was lengthened for new cards only; re-timing the next stage
    later leaves the first stage's open cards as they were (and sets off no alert)."""
    signed_post(client, desk, "/twilio/whatsapp", inbound_form())
    login(client, ADMIN)
    entered = session.scalars(select(StageVisit)).one().entered_at
    post(client, STAGE, stage_form(sla="1h", warning="10m"))  # new cards only

    following = stage_form(name="In progress", sla="2h", warning="", alert=[], retime="on")
    answer = post(client, "/settings/pipelines/support/stages/open", following)

    assert "Re-timed 0 open card(s)." in text(client.get(answer.headers["Location"]))  # type: ignore[attr-defined]
    fresh(session)
    visit = session.scalars(select(StageVisit)).one()
    assert visit.deadline_at == entered + timedelta(minutes=2)
    assert [s.sla_seconds for s in stored(session).pipelines[0].stages[:2]] == [3600, 7200]


def test_retime_on_a_stage_page_applies_its_earlier_change_for_new_cards_only(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    signed_post(client, desk, "/twilio/whatsapp", inbound_form())
    login(client, ADMIN)
    entered = session.scalars(select(StageVisit)).one().entered_at
    post(client, STAGE, stage_form(sla="1h", warning="10m"))  # new cards only

    answer = post(client, STAGE, stage_form(sla="1h", warning="10m", retime="on"))  # as saved

    assert "Re-timed 1 open card(s)." in text(client.get(answer.headers["Location"]))  # type: ignore[attr-defined]
    fresh(session)
    assert session.scalars(select(StageVisit)).one().deadline_at == entered + timedelta(hours=1)


# --- calendars -----------------------------------------------------------------------------------

CALENDAR = {
    "key": "office",
    "name": "São Paulo office",
    "timezone": "America/Sao_Paulo",
    "groups": "0",
    "days-0": "mon-fri",
    "hours-0": "09:00-12:00, 13:00-18:00",
    "days-1": "sat",
    "hours-1": "09:00-13:00",
    "country": "br",
    "subdivision": "sp",
    "dates": "2026-12-24\n2026-12-31 yearly\n",
}


def test_a_calendar_is_created_then_used_by_a_stage(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)

    answer = post(client, "/settings/calendars", CALENDAR)

    assert answer.headers["Location"] == "/settings/calendars/office"  # type: ignore[attr-defined]
    [office] = stored(session).calendars
    assert office.hours == {"mon-fri": ["09:00-12:00", "13:00-18:00"], "sat": ["09:00-13:00"]}
    assert (office.name, office.country, office.subdivision) == ("São Paulo office", "BR", "SP")
    assert [(d.day.isoformat(), d.yearly) for d in office.dates] == [
        ("2026-12-24", False),
        ("2026-12-31", True),
    ]
    page = text(client.get("/settings/calendars/office"))
    assert 'value="09:00-12:00, 13:00-18:00"' in page and "2026-12-31 yearly" in page

    post(client, STAGE, stage_form(calendar="office"))

    assert stored(session).pipelines[0].stages[0].calendar == "office"
    assert "São Paulo office" in text(client.get("/settings"))


def test_editing_a_calendar_keeps_its_key(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    post(client, "/settings/calendars", CALENDAR)
    changed = {**CALENDAR, "groups": "2", "days-1": "", "hours-1": "", "key": "ignored"}

    answer = post(client, "/settings/calendars/office", {**changed, "timezone": "Europe/Lisbon"})

    assert answer.status_code == 302  # type: ignore[attr-defined]
    [office] = stored(session).calendars
    assert (office.key, office.timezone) == ("office", "Europe/Lisbon")
    assert office.hours == {"mon-fri": ["09:00-12:00", "13:00-18:00"]}


def test_a_holiday_subdivision_named_in_any_case_is_kept_as_the_holidays_list_spells_it(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    """Codes are upper case, but some subdivisions are names (Bayern, São Paulo Capital):
    they are saved, and saved again on the next edit, in the list's own spelling."""
    login(client, ADMIN)
    city = {**CALENDAR, "subdivision": "são paulo capital"}

    assert post(client, "/settings/calendars", city).status_code == 302  # type: ignore[attr-defined]
    assert post(client, "/settings/calendars/office", city).status_code == 302  # type: ignore[attr-defined]

    [office] = stored(session).calendars
    assert (office.country, office.subdivision) == ("BR", "São Paulo Capital")
    assert 'value="São Paulo Capital"' in text(client.get("/settings/calendars/office"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "Timezone: unknown timezone &#39;Mars/Olympus&#39;"),
        ({"hours-0": "09:00-12:00, 11:00-18:00"}, "Hours: hours[&#39;mon-fri&#39;]"),
        ({"hours-0": "9 to 5"}, "is not &#39;HH:MM-HH:MM&#39;"),
        ({"days-1": "fri"}, "Hours: &#39;fri&#39; names fri again"),
        ({"days-1": "weekend"}, "Hours: unknown day &#39;weekend&#39;"),
        ({"dates": "24/12/2026"}, "Closed dates: line 1: &#39;24/12/2026&#39; is not a date"),
        ({"country": "XX"}, "Public holidays:"),
        ({"country": "", "subdivision": "SP"}, "Public holidays: a subdivision needs a country"),
        ({"key": "Office!"}, "Key: &#39;Office!&#39; must be lowercase"),
    ],
)
def test_a_calendar_with_a_mistake_changes_nothing(
    client: FlaskClient, desk: Config, session: Session, changes: dict[str, str], message: str
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)

    answer = post(client, "/settings/calendars", {**CALENDAR, **changes})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert message in text(answer), text(answer)
    assert stored_yaml(session) == before
    assert count(session, AuditEntry) == 0


# --- YAML ----------------------------------------------------------------------------------------


def version_on(client: FlaskClient, path: str) -> str:
    """The version of what the page at `path` shows, as its form sends it back."""
    found = re.search(r'name="version" value="([0-9a-f]+)"', text(client.get(path)))
    assert found, path
    return found[1]


def test_a_stage_saved_from_a_page_opened_before_another_edit_is_refused(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    opened = version_on(client, STAGE)  # Ada opens the stage page; Otto saves first
    assert post(client, STAGE, stage_form(sla="30m", version=opened)).status_code == 302

    answer = post(client, STAGE, stage_form(name="First reply", version=opened))

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "Stage &#39;New&#39;: it changed since you opened the page" in text(answer)
    stage = stored(session).pipelines[0].stages[0]
    assert (stage.name, stage.sla_seconds) == ("New", 1800)
    fresh_page = version_on(client, STAGE)  # reloaded: saved
    answer = post(client, STAGE, stage_form(name="First reply", sla="30m", version=fresh_page))
    assert answer.status_code == 302  # type: ignore[attr-defined]
    assert stored(session).pipelines[0].stages[0].name == "First reply"


def test_a_pipeline_saved_from_a_page_opened_before_another_edit_is_refused(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    path = "/settings/pipelines/support"
    opened = version_on(client, path)
    form = {"name": "Support", "default": "on", "version": opened}
    assert post(client, path, {**form, "resolution": "8h"}).status_code == 302
    assert post(client, STAGE, stage_form(sla="30m")).status_code == 302  # a stage: not stale

    answer = post(client, path, {**form, "name": "Customer support"})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "Pipeline &#39;Support&#39;: it changed since you opened the page" in text(answer)
    pipeline = stored(session).pipelines[0]
    assert (pipeline.name, pipeline.resolution_seconds) == ("Support", 8 * 3600)


def test_a_pipeline_saved_from_its_page_keeps_a_stage_edited_meanwhile(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    path = "/settings/pipelines/support"
    opened = version_on(client, path)
    assert post(client, STAGE, stage_form(sla="30m")).status_code == 302

    answer = post(client, path, {"name": "Customer support", "default": "on", "version": opened})

    assert answer.status_code == 302, text(answer)  # type: ignore[attr-defined]
    pipeline = stored(session).pipelines[0]
    assert (pipeline.name, pipeline.stages[0].sla_seconds) == ("Customer support", 1800)


def test_a_calendar_saved_from_a_page_opened_before_another_edit_is_refused(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    post(client, "/settings/calendars", CALENDAR)
    path = "/settings/calendars/office"
    opened = version_on(client, path)
    assert post(client, path, {**CALENDAR, "timezone": "UTC", "version": opened}).status_code == 302

    answer = post(client, path, {**CALENDAR, "name": "Office", "version": opened})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "Calendar &#39;São Paulo office&#39;: it changed since you opened" in text(answer)
    [office] = stored(session).calendars
    assert (office.name, office.timezone) == ("São Paulo office", "UTC")


def test_the_yaml_page_shows_the_export_and_the_download_is_the_same(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, SUPERVISOR)
    current = stored_yaml(session)

    download = client.get("/settings/yaml.txt")

    assert download.get_data(as_text=True) == current
    assert "attachment" in download.headers["Content-Disposition"]
    assert "key: support" in text(client.get("/settings/yaml"))


def test_an_imported_file_shows_on_the_pages(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    edited = stored_yaml(session).replace("name: In progress", "name: Working on it")
    edited = edited.replace("sla: 1h", "sla: 45m\n    warning: 15m")

    answer = client.post(
        "/settings/yaml",
        data={
            "csrf_token": page_token(client, "/settings/yaml"),
            "yaml": "",
            "file": (io.BytesIO(edited.encode()), "desk.yaml"),
        },
        content_type="multipart/form-data",
    )

    assert answer.status_code == 302, text(answer)
    page = text(client.get("/settings"))
    assert "Imported 1 pipeline(s) from desk.yaml." in page
    assert "Working on it" in page and "<td>45m</td>" in page and "<td>15m</td>" in page
    assert "15m" in text(client.get("/settings/pipelines/support/stages/open"))
    [entry] = session.scalars(select(AuditEntry)).all()
    assert (entry.action, entry.target) == ("import", "desk.yaml")


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("sla: 2m\n    warning: 1m", "sla: 2m\n    warning: 3m"),
        ("pipelines:", "pipelines: ["),
        ("sla: 2m\n    warning: 1m", "sla: 2026-02-29\n    warning: 1m"),  # YAML's date, no day
        ("sla: 2m\n    warning: 1m", "sla: !!timestamp soon\n    warning: 1m"),  # a tag refused
        ("pause: true", "pause: !!bool maybe"),
    ],
)
def test_an_import_with_mistakes_lists_them_by_line_and_changes_nothing(
    client: FlaskClient, desk: Config, session: Session, mistake: str, message: str
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)
    broken = before.replace(mistake, message)
    assert broken != before

    answer = post(client, "/settings/yaml", {"yaml": broken})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    page = text(answer)
    assert "Not imported — the configuration is unchanged" in page
    assert "line " in page
    assert stored_yaml(session) == before
    assert count(session, AuditEntry) == 0


def test_an_import_that_drops_a_stage_with_cards_is_refused(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    signed_post(client, desk, "/twilio/whatsapp", inbound_form())
    login(client, ADMIN)
    before = stored_yaml(session)
    spec = pipelines.parse(before)
    spec.pipelines[0].stages = spec.pipelines[0].stages[1:]

    answer = post(client, "/settings/yaml", {"yaml": pipelines.dump(spec)})

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "stage &#39;new&#39; is missing from the file but has cards" in text(answer)
    assert stored_yaml(session) == before


# --- audit log -----------------------------------------------------------------------------------


def test_every_change_is_audited_and_shown_as_a_diff(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)

    post(client, STAGE, stage_form(sla="10m", warning="4m"))

    [entry] = session.scalars(select(AuditEntry)).all()
    assert (entry.action, entry.target, entry.user.email) == ("stage", "support/new", ADMIN)  # type: ignore[union-attr]
    assert entry.before == before and entry.after == stored_yaml(session)
    page = text(client.get("/settings/audit"))
    assert "Ada Admin" in page and "<strong>stage</strong> support/new" in page
    assert '<span class="del">-    sla: 2m</span>' in page
    assert '<span class="add">+    sla: 10m</span>' in page


def test_the_audit_page_shows_other_entries_as_json_newest_first_a_page_at_a_time(
    client: FlaskClient, desk: Config, session: Session
) -> None:
    now = datetime.now(UTC)
    for number in range(30):
        audit.record(session, None, "user", f"person{number}@example.com", {"n": number}, {}, now)
    session.commit()
    login(client, SUPERVISOR)

    first = text(client.get("/settings/audit"))

    assert first.index("person29@") < first.index("person28@")
    assert "person5@" in first and "person4@" not in first
    assert "&#34;n&#34;: 29" in first and "command line" in first
    older = first.split('href="/settings/audit?before=')[1].split('"')[0]
    second = text(client.get(f"/settings/audit?before={older}"))
    assert "person4@" in second and "person0@" in second and "person5@" not in second
    assert "?before=" not in second


@pytest.mark.parametrize("before", ["²", "99999999999999999999", "-1"])
def test_an_audit_page_link_that_names_no_entry_is_a_clear_400(
    client: FlaskClient, desk: Config, before: str
) -> None:
    login(client, SUPERVISOR)

    answer = client.get("/settings/audit", query_string={"before": before})

    assert answer.status_code == 400
    assert "is not an audit entry number" in text(answer)


# --- numbers from the forms ----------------------------------------------------------------------


@pytest.mark.parametrize("rows", ["²", "1000000000"])
def test_a_damaged_row_count_is_refused_and_changes_nothing(
    client: FlaskClient, desk: Config, session: Session, rows: str
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)

    stage = post(client, STAGE, stage_form(levels=rows))
    calendar = post(client, "/settings/calendars", {**CALENDAR, "groups": rows})

    for answer in (stage, calendar):
        assert answer.status_code == 400  # type: ignore[attr-defined]
        assert "the form is damaged (at most 50 rows); reload" in text(answer)
    assert stored_yaml(session) == before
    assert count(session, AuditEntry) == 0


@pytest.mark.parametrize("sla", ["3000000d", "366d", str(2**31)])
def test_a_duration_over_a_year_is_refused_on_the_page(
    client: FlaskClient, desk: Config, session: Session, sla: str
) -> None:
    login(client, ADMIN)
    before = stored_yaml(session)

    answer = post(client, STAGE, stage_form(sla=sla))

    assert answer.status_code == 400  # type: ignore[attr-defined]
    assert "SLA: must be at most 365 days" in text(answer)
    assert stored_yaml(session) == before
    assert post(client, STAGE, stage_form(sla="365d")).status_code == 302  # type: ignore[attr-defined]


# --- round trip ----------------------------------------------------------------------------------


def test_page_edits_export_as_yaml_that_loads_into_a_fresh_database_unchanged(
    client: FlaskClient,
    desk: Config,
    session: Session,
    sqlite_template: Path,
    tmp_path: Path,
) -> None:
    login(client, ADMIN)
    post(client, "/settings/calendars", CALENDAR)
    post(
        client,
        "/settings/pipelines/support",
        {"name": "Support", "default": "on", "calendar": "office", "resolution": "8h",
         "resolution_warning": "1h", "reopen_within": "1d", "reopen_stage": "open"},
    )  # fmt: skip
    post(client, "/settings/pipelines/support/stages", {"key": "vip", "name": "VIP", "sla": "5m"})
    post(client, "/settings/pipelines/support/stages/vip/move", {"direction": "up"})
    post(
        client,
        STAGE,
        stage_form(
            sla="10m", warning="4m", pause="on", calendar="24/7", reassign=SUPERVISOR,
            timeout_after="2h", timeout_then="vip", timeout_message="Bye",
            **{"level-0-after": "15m", "level-0-to": [SUPERVISOR, GRANTED]},
        ),
    )  # fmt: skip
    assert count(session, AuditEntry) == 5
    exported = text(client.get("/settings/yaml.txt"))

    fresh_db = tmp_path / "fresh.db"
    shutil.copy(sqlite_template, fresh_db)
    with session_factory(f"sqlite:///{fresh_db}")() as other:
        for name, email, role, phone in STAFF:
            accounts.create_user(
                other, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD,
                now=datetime.now(UTC),
            )  # fmt: skip
        add_admin(other)
        pipeline_store.load(other, pipelines.parse(exported), datetime.now(UTC))
        other.commit()
        again = pipelines.dump(pipeline_store.dump(other))

    assert again == exported
    assert "calendar: office" in exported and "reassign: sofia@example.com" in exported
