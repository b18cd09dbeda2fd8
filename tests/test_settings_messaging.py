"""The messaging settings page: canned replies, approved templates, staff alerts and the team
menu, changed through the one configuration path — audited, and the same in the YAML file."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from whatsdesk import accounts, configuration, pipeline_store, pipelines, settings
from whatsdesk.config import Config
from whatsdesk.models import AuditEntry

from conftest import PASSWORD, PIPELINE_YAML, fresh, login, page_token

ADMIN = "ada@example.com"
SID = "HX" + "0123456789abcdef" * 2
OTHER_SID = "HX" + "fedcba9876543210" * 2
TWO_TEAMS = (
    PIPELINE_YAML.format(sla="2m", warning="1m")
    + """
  - key: sales
    name: Sales
    stages:
      - key: new
        name: New
"""
)
TWO_TEAMS = TWO_TEAMS.replace("notifications:\n  digest_window: off\n", "") + (
    "notifications:\n  digest_window: off\n"
)


@pytest.fixture
def admin(seeded: Config, session: Session) -> Config:
    accounts.create_user(
        session,
        name="Ada Admin",
        email=ADMIN,
        role="admin",
        password=PASSWORD,
        whatsapp=None,
        now=datetime.now(UTC),
    )
    session.commit()
    return seeded


def post(client: FlaskClient, path: str, form: dict[str, str]) -> TestResponse:
    """Post a form as the browser would, with the CSRF token of the page it sits on."""
    token = page_token(client, "/settings/messaging")
    return client.post(f"/settings/messaging{path}", data={**form, "csrf_token": token})


def text(answer: TestResponse) -> str:
    return answer.get_data(as_text=True)


def followed(client: FlaskClient, answer: TestResponse) -> str:
    assert answer.status_code == 302, text(answer)
    return text(client.get(answer.headers["Location"]))


def audit_entries(session: Session) -> list[AuditEntry]:
    fresh(session)
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def exported(session: Session) -> pipelines.DeskSpec:
    """The configuration as the YAML export writes it, read back by the importer."""
    fresh(session)
    return pipelines.parse(pipelines.dump(pipeline_store.dump(session)))


def replies(session: Session) -> pipelines.RepliesSpec:
    fresh(session)
    return settings.replies(session)


def import_yaml(session: Session, source: str) -> None:
    configuration.apply(session, pipelines.parse(source), None, "import", "file", datetime.now(UTC))
    session.commit()


GREETING = {"title": "Greeting", "text": "Hello {customer}, {agent} here."}
TEMPLATE = {
    "key": "follow-up",
    "name": "Follow-up",
    "content_sid": SID,
    "text": "Hi {customer}, is there anything else about {card}?",
    "variables": "1 = {customer}\r\n2 = {card}\r\n",
}


def test_agents_may_not_open_or_change_messaging(client: FlaskClient, admin: Config) -> None:
    login(client, "ana@example.com")

    assert client.get("/settings/messaging").status_code == 403
    token = page_token(client, "/queue")
    answer = client.post("/settings/messaging/canned", data={**GREETING, "csrf_token": token})

    assert answer.status_code == 403


def test_supervisors_read_without_forms_and_may_not_change(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    import_yaml(
        session,
        PIPELINE_YAML.format(sla="2m", warning="1m")
        + "replies:\n  canned:\n    - {title: Thanks, text: Thank you!}\n",
    )
    login(client, "sofia@example.com")

    page = text(client.get("/settings/messaging"))
    answer = post(client, "/canned", GREETING)

    assert "Thanks" in page and "Thank you!" in page and "read-only" in page
    assert 'action="/settings/messaging' not in page and "Add a canned reply" not in page
    assert answer.status_code == 403
    assert [c.title for c in replies(session).canned] == ["Thanks"]


def test_a_supervisor_an_admin_granted_may_change_messaging(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    sofia = accounts.find_by_email(session, "sofia@example.com")
    assert sofia is not None
    grant = {"name": sofia.name, "email": sofia.email, "role": "supervisor"}
    grant |= {"whatsapp": "+15550000003", "can_edit_settings": "yes"}
    token = page_token(client, "/settings/staff")
    granted = client.post(f"/settings/staff/{sofia.id}", data={**grant, "csrf_token": token})
    assert granted.status_code == 302
    sofia_client = client.application.test_client()
    login(sofia_client, "sofia@example.com")

    page = followed(sofia_client, post(sofia_client, "/canned", GREETING))

    assert "Canned reply &#39;Greeting&#39; added." in page
    assert audit_entries(session)[-1].user.email == "sofia@example.com"


def test_an_editor_adds_a_canned_reply_audited_and_in_the_yaml(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)

    page = followed(client, post(client, "/canned", GREETING))

    assert "Canned reply &#39;Greeting&#39; added." in page
    assert "Hello {customer}, {agent} here." in page
    assert replies(session).canned == [pipelines.CannedReplySpec(**GREETING)]
    [entry] = audit_entries(session)
    assert (entry.action, entry.target, entry.user.email) == ("canned-reply", "Greeting", ADMIN)
    assert "Greeting" not in entry.before and "Hello {customer}, {agent} here." in entry.after
    assert exported(session).replies.canned == [pipelines.CannedReplySpec(**GREETING)]


def test_an_editor_edits_and_removes_a_canned_reply(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    post(client, "/canned", GREETING)
    post(client, "/canned", {"title": "Bye", "text": "Goodbye!"})

    edited = {"original": "Greeting", "title": "Hello", "text": "Hi {customer}!\r\nHow can I help?"}
    page = followed(client, post(client, "/canned/0", edited))
    assert "Canned reply &#39;Hello&#39; saved." in page
    assert replies(session).canned[0] == pipelines.CannedReplySpec(
        "Hello", "Hi {customer}!\nHow can I help?"
    )

    page = followed(client, post(client, "/canned/1/remove", {"original": "Bye"}))
    assert "Canned reply &#39;Bye&#39; removed." in page and "Goodbye!" not in page
    assert [c.title for c in exported(session).replies.canned] == ["Hello"]
    assert [e.action for e in audit_entries(session)] == ["canned-reply"] * 4


def test_a_stale_canned_reply_form_changes_nothing(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    post(client, "/canned", GREETING)

    answer = post(client, "/canned/0/remove", {"original": "Something else"})

    assert answer.status_code == 400
    assert "changed since you opened the page" in text(answer)
    assert [c.title for c in replies(session).canned] == ["Greeting"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"title": "Greeting", "text": "  "}, "Text: must not be empty"),
        ({"title": "", "text": "Hi"}, "Title: must not be empty"),
        ({"title": "Greeting", "text": "Hi {name}"}, "unknown placeholder {name}"),
        ({"title": "Greeting", "text": "Hi {customer"}, "a brace is not closed"),
        ({"title": "greeting", "text": "Hi"}, "Title: a canned reply is already called"),
    ],
)
def test_a_canned_reply_with_a_mistake_is_refused_keeping_what_was_typed(
    client: FlaskClient, admin: Config, session: Session, form: dict[str, str], message: str
) -> None:
    login(client, ADMIN)
    post(client, "/canned", {"title": "Greeting", "text": "Hello!"})

    answer = post(client, "/canned", form)

    assert answer.status_code == 400
    page = text(answer)
    assert "Nothing was changed:" in page and message in page
    assert f">{form['text']}</textarea>" in page
    assert [c.text for c in replies(session).canned] == ["Hello!"]
    assert len(audit_entries(session)) == 1


def test_an_editor_adds_an_approved_template_with_its_variables(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)

    page = followed(client, post(client, "/templates", TEMPLATE))

    assert "Template &#39;Follow-up&#39; added." in page
    assert SID in page and "{{1}}</code> → {customer}" in page
    expected = pipelines.CustomerTemplateSpec(
        key="follow-up",
        name="Follow-up",
        content_sid=SID,
        text="Hi {customer}, is there anything else about {card}?",
        variables={"1": "{customer}", "2": "{card}"},
    )
    assert replies(session).templates == [expected]
    assert exported(session).replies.templates == [expected]
    [entry] = audit_entries(session)
    assert (entry.action, entry.target) == ("template", "follow-up")


def test_an_editor_edits_and_removes_a_template(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    post(client, "/templates", TEMPLATE)

    changed = {**TEMPLATE, "name": "Check-in", "content_sid": OTHER_SID, "variables": ""}
    page = followed(client, post(client, "/templates/follow-up", changed))
    assert "Template &#39;Check-in&#39; saved." in page
    [template] = replies(session).templates
    assert (template.name, template.content_sid, template.variables) == ("Check-in", OTHER_SID, {})

    page = followed(client, post(client, "/templates/follow-up/remove", {}))
    assert "Template &#39;follow-up&#39; removed." in page and "No approved templates." in page
    assert replies(session).templates == []
    assert (exported(session).replies or pipelines.RepliesSpec()).templates == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"content_sid": "HX123"}, "&#39;HX123&#39; is not a Content SID"),
        ({"content_sid": ""}, "Content SID: is required"),
        ({"key": "Follow Up"}, "Key: lowercase letters, digits, - and _"),
        ({"variables": "1 = {agent.name}"}, "Variable 1: may only use"),
        ({"variables": "first: {customer}"}, "Variable, line 1: write it as 1 = {customer}"),
        ({"variables": "9" * 5000 + " = {customer}"}, "Variable, line 1: write it as 1 ="),
        ({"variables": "1 = {customer}\n1 = {card}"}, "variable 1 is given twice"),
        ({"text": "Hi {who}"}, "unknown placeholder {who}"),
        ({"key": "existing"}, "Key: a template with key &#39;existing&#39; exists already"),
        ({"name": "existing one"}, "Name: a template is already called"),
    ],
)
def test_a_template_with_a_mistake_is_refused(
    client: FlaskClient, admin: Config, session: Session, change: dict[str, str], message: str
) -> None:
    login(client, ADMIN)
    existing = {**TEMPLATE, "key": "existing", "name": "Existing one", "variables": ""}
    post(client, "/templates", existing)

    answer = post(client, "/templates", {**TEMPLATE, **change})

    assert answer.status_code == 400
    assert message in text(answer)
    assert [t.key for t in replies(session).templates] == ["existing"]
    assert len(audit_entries(session)) == 1


def test_an_editor_sets_how_staff_alerts_go_out(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    form = {"digest_window": "2m", "template_sid": SID, "variables": "1 = {name}\n2 = {text}"}

    page = followed(client, post(client, "/notifications", form))

    assert "Staff alert settings saved." in page and SID in page and "2m" in page
    fresh(session)
    expected = pipelines.NotificationsSpec(120, SID, {"1": "{name}", "2": "{text}"})
    assert settings.notifications(session) == expected
    assert exported(session).notifications == expected
    [entry] = audit_entries(session)
    assert (entry.action, entry.target) == ("notifications", "staff alerts")

    followed(client, post(client, "/notifications", {"digest_window": "off", "template_sid": ""}))
    assert settings.notifications(session) == pipelines.NotificationsSpec(0, None, {})


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"digest_window": "soon"}, "Digest window: &#39;soon&#39; is not a duration"),
        ({"digest_window": "1m", "template_sid": "XX1"}, "&#39;XX1&#39; is not a Content SID"),
        (
            {"digest_window": "1m", "template_sid": SID, "variables": "1 = {customer}"},
            "Variable 1: may only use {name}, {text}, {card}",
        ),
        ({"digest_window": "1m", "variables": "1 = {text}"}, "they need an alert template SID"),
    ],
)
def test_staff_alert_settings_with_a_mistake_are_refused(
    client: FlaskClient, admin: Config, session: Session, form: dict[str, str], message: str
) -> None:
    login(client, ADMIN)

    answer = post(client, "/notifications", form)

    assert answer.status_code == 400 and message in text(answer)
    fresh(session)
    assert settings.notifications(session) == pipelines.NotificationsSpec(0, None, {})
    assert audit_entries(session) == []


def test_an_editor_sets_up_and_removes_the_team_menu(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    import_yaml(session, TWO_TEAMS)
    login(client, ADMIN)
    form = {"pipelines": "sales, support", "wait": "10m", "clock_starts": "first_message"}
    form |= {"language": "es", "template_sid": SID}

    page = followed(client, post(client, "/menu", form))

    assert "Team menu saved." in page and "sales, support" in page
    menu = exported(session).menu
    assert menu is not None
    assert (menu.pipelines, menu.wait_seconds, menu.clock_starts) == (
        ["sales", "support"],
        600,
        "first_message",
    )
    assert (menu.language, menu.template_sid) == ("es", SID)

    page = followed(client, post(client, "/menu/remove", {}))
    assert "Team menu removed" in page and "No team menu" in page
    fresh(session)
    assert settings.menu(session) is None
    assert [e.action for e in audit_entries(session)][-2:] == ["menu", "menu"]


def test_a_team_menu_naming_an_unknown_pipeline_is_refused(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    import_yaml(session, TWO_TEAMS)
    login(client, ADMIN)
    form = {"pipelines": "support, billing", "wait": "5m", "clock_starts": "choice"}
    form |= {"language": "en", "template_sid": ""}

    answer = post(client, "/menu", form)

    assert answer.status_code == 400
    assert "Pipelines: no pipeline &#39;billing&#39;" in text(answer)
    fresh(session)
    assert settings.menu(session) is None


def test_a_yaml_import_shows_on_the_page(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    source = PIPELINE_YAML.format(sla="2m", warning="1m").replace(
        "digest_window: off", f"digest_window: 45s\n  alert_template:\n    content_sid: {SID}"
    ) + (
        "replies:\n"
        "  canned:\n"
        "    - {title: Opening hours, text: 'We open at nine, {customer}.'}\n"
        "  templates:\n"
        f"    - {{key: reminder, name: Reminder, content_sid: {OTHER_SID},"
        " text: 'Still there?', variables: {'1': '{customer}'}}\n"
    )
    import_yaml(session, source)
    login(client, ADMIN)

    page = text(client.get("/settings/messaging"))

    assert "Opening hours" in page and "We open at nine, {customer}." in page
    assert "Reminder" in page and OTHER_SID in page and "{{1}}</code> → {customer}" in page
    assert "45s" in page and SID in page and "{{1}}</code> → {text}" in page
