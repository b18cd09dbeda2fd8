"""The staff settings page: supervisors read it, admins add and change accounts, every change
audited without passwords, and the desk never left without an active admin."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import make_url, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from whatsdesk import accounts, configuration, pipelines
from whatsdesk.config import Config
from whatsdesk.db import session_factory
from whatsdesk.models import AuditEntry, User

from conftest import PASSWORD, commit_once_it_waits, count, fresh, login, page_token

ADMIN = "ada@example.com"
CALENDAR_YAML = """
calendars:
  - key: office
    name: Office hours
    timezone: Europe/Lisbon
    hours:
      mon-fri: ["09:00-18:00"]
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 2m
        warning: 1m
        alert: [ana@example.com, bruno@example.com]
      - key: open
        name: In progress
        sla: 1h
      - key: waiting
        name: Waiting on customer
        pause: true
"""


def add_admin(config: Config, email: str = ADMIN, name: str = "Ada Admin") -> None:
    with session_factory(config.database_url)() as s:
        accounts.create_user(
            s,
            name=name,
            email=email,
            role="admin",
            password=PASSWORD,
            whatsapp=None,
            now=datetime.now(UTC),
        )
        s.commit()


@pytest.fixture
def admin(seeded: Config) -> Config:
    add_admin(seeded)
    return seeded


def user(session: Session, email: str) -> User:
    fresh(session)
    found = accounts.find_by_email(session, email)
    assert found is not None
    return found


def post(client: FlaskClient, path: str, form: dict[str, str]) -> TestResponse:
    """Post a form as the browser would, with the CSRF token of the page it sits on."""
    token = page_token(client, "/settings/staff")
    return client.post(path, data={**form, "csrf_token": token})


def details(person: User, **changes: str) -> dict[str, str]:
    """The edit form as it is filled in for `person`, with `changes`."""
    form = {
        "name": person.name,
        "email": person.email,
        "role": person.role,
        "whatsapp": (person.whatsapp or "").removeprefix("whatsapp:"),
        "shift_calendar": person.shift_calendar.key if person.shift_calendar else "",
    }
    if person.can_edit_settings:
        form["can_edit_settings"] = "yes"
    form.update(changes)
    return {k: v for k, v in form.items() if v is not None}


def audit_entries(session: Session) -> list[AuditEntry]:
    fresh(session)
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def can_log_in(client: FlaskClient, email: str, password: str) -> bool:
    """Whether the login form lets this person in (in a browser of their own)."""
    client = client.application.test_client()
    answer = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": page_token(client, "/login")},
    )
    return answer.status_code == 302


def text(answer: TestResponse) -> str:
    return answer.get_data(as_text=True)


def test_agents_may_not_open_or_change_staff(client: FlaskClient, admin: Config) -> None:
    login(client, "ana@example.com")

    assert client.get("/settings/staff").status_code == 403
    answer = post(client, "/settings/staff", {"name": "X", "email": "x@example.com"})

    assert answer.status_code == 403


def test_supervisors_read_the_list_without_forms(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, "sofia@example.com")
    ana = user(session, "ana@example.com")

    page = text(client.get("/settings/staff"))

    assert "Ana Agent" in page and "ana@example.com" in page and "+15550000001" in page
    assert "Ada Admin" in page and "read-only" in page
    assert "Add an account" not in page and 'action="/settings/staff' not in page
    assert client.get(f"/settings/staff/{ana.id}").status_code == 403
    refused = post(client, f"/settings/staff/{ana.id}", details(ana, role="admin"))
    assert refused.status_code == 403
    assert post(client, f"/settings/staff/{ana.id}/deactivate", {}).status_code == 403
    assert user(session, "ana@example.com").role == "agent"


def test_an_admin_adds_an_account_audited_without_its_password(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    form = {
        "name": "Zoe Agent",
        "email": "Zoe@Example.com",
        "role": "agent",
        "whatsapp": " whatsapp:+15550000042 ",
        "shift_calendar": "",
        "password": "zoe-secret-99",
    }

    answer = post(client, "/settings/staff", form)

    assert answer.status_code == 302
    page = text(client.get(answer.headers["Location"]))
    assert "Account for Zoe Agent (zoe@example.com) created." in page
    assert "+15550000042" in page
    zoe = user(session, "zoe@example.com")
    assert (zoe.role, zoe.whatsapp, zoe.active) == ("agent", "whatsapp:+15550000042", True)
    [entry] = audit_entries(session)
    assert (entry.action, entry.target, entry.user.email) == ("staff", "zoe@example.com", ADMIN)
    assert entry.before is None and entry.after["role"] == "agent"
    assert "zoe-secret-99" not in json.dumps(entry.after) and "password_hash" not in entry.after
    assert can_log_in(client, "zoe@example.com", "zoe-secret-99")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"email": "not-an-email"}, "&#39;not-an-email&#39; is not an email address"),
        ({"password": "short"}, "Password must have at least 8 characters"),
        ({"whatsapp": "555-1234"}, "is not in E.164 form"),
        ({"email": "ana@example.com"}, "An account with email ana@example.com already exists"),
        ({"name": " "}, "Name must not be empty"),
        ({"name": "Z" * 121}, "Name must be at most 120 characters"),
        ({"name": "Zoe\x00"}, "without NUL characters"),
        ({"email": "z" * 250 + "@example.com"}, "Email must be at most 254 characters"),
    ],
)
def test_a_new_account_with_a_mistake_is_refused_keeping_the_form(
    client: FlaskClient, admin: Config, session: Session, change: dict[str, str], message: str
) -> None:
    login(client, ADMIN)
    form = {"name": "Zoe Agent", "email": "zoe@example.com", "role": "agent"}
    form |= {"whatsapp": "", "password": "zoe-secret-99", **change}
    before = count(session, User)

    answer = post(client, "/settings/staff", form)

    assert answer.status_code == 400
    assert message in text(answer)
    assert 'value="Zoe Agent"' in text(answer) or change.get("name")
    assert count(session, User) == before
    assert audit_entries(session) == []


def test_a_whatsapp_number_belongs_to_one_account(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    ana = user(session, "ana@example.com")

    answer = post(client, f"/settings/staff/{ana.id}", details(ana, whatsapp="+15550000002"))

    assert answer.status_code == 400
    assert (
        "WhatsApp whatsapp:+15550000002 already belongs to Bruno Agent (bruno@example.com)"
        in text(answer)
    )
    assert 'value="+15550000002"' in text(answer)  # what was typed stays
    assert user(session, "ana@example.com").whatsapp == "whatsapp:+15550000001"
    assert audit_entries(session) == []


def test_an_admin_changes_role_shift_number_and_settings_grant(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    configuration.apply(
        session, pipelines.parse(CALENDAR_YAML), None, "import", "file", datetime.now(UTC)
    )
    session.commit()
    login(client, ADMIN)
    ana = user(session, "ana@example.com")
    form = details(
        ana, role="supervisor", whatsapp="+15550000077", shift_calendar="office", name="Ana Lead"
    )
    form["can_edit_settings"] = "yes"

    answer = post(client, f"/settings/staff/{ana.id}", form)

    assert answer.status_code == 302
    assert "Ana Lead&#39;s account saved." in text(client.get(answer.headers["Location"]))
    ana = user(session, "ana@example.com")
    assert (ana.name, ana.role, ana.whatsapp) == ("Ana Lead", "supervisor", "whatsapp:+15550000077")
    assert ana.shift_calendar is not None and ana.shift_calendar.key == "office"
    assert ana.may_edit_settings
    entry = audit_entries(session)[-1]
    assert (entry.action, entry.target) == ("staff", "ana@example.com")
    assert entry.before["role"] == "agent" and entry.after["role"] == "supervisor"
    assert entry.before["shift_calendar"] is None and entry.after["shift_calendar"] == "office"
    assert entry.after["can_edit_settings"] is True
    page = text(client.get("/settings/staff"))
    assert "Ana Lead" in page and "Office hours" in page


def test_the_settings_grant_is_for_supervisors_only(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    bruno = user(session, "bruno@example.com")

    post(client, f"/settings/staff/{bruno.id}", details(bruno, can_edit_settings="yes"))

    bruno = user(session, "bruno@example.com")
    assert bruno.can_edit_settings is False and not bruno.may_edit_settings


def new_password(client: FlaskClient, person: User, password: str) -> TestResponse:
    """An admin sets `person`'s password on their page, typed twice."""
    form = {"password": password, "confirm": password}
    return post(client, f"/settings/staff/{person.id}/password", form)


def test_a_password_reset_ends_the_persons_sessions_and_keeps_the_admins_own(
    app: Flask, client: FlaskClient, admin: Config, session: Session
) -> None:
    """Ana's phone was stolen while she was logged in: Ada resets her password."""
    stolen, adas_laptop = app.test_client(), app.test_client()
    login(stolen, "ana@example.com")
    login(adas_laptop, ADMIN)
    login(client, ADMIN)
    ana, ada = user(session, "ana@example.com"), user(session, ADMIN)

    reset = new_password(client, ana, "new-secret-77")
    assert reset.status_code == 302
    assert stolen.get("/queue").status_code == 302  # back to the login page

    own = new_password(client, ada, "ada-secret-88")
    assert own.status_code == 302
    assert client.get("/settings/staff").status_code == 200  # Ada goes on working here
    assert adas_laptop.get("/queue").status_code == 302  # and her other session ended


def test_an_admin_resets_a_password_audited_as_changed(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    ana = user(session, "ana@example.com")
    path = f"/settings/staff/{ana.id}/password"

    differ = post(client, path, {"password": "new-secret-77", "confirm": "new-secret-78"})
    short = post(client, path, {"password": "tiny", "confirm": "tiny"})
    answer = post(client, path, {"password": "new-secret-77", "confirm": "new-secret-77"})

    assert differ.status_code == 400 and "The two passwords differ" in text(differ)
    assert short.status_code == 400 and "at least 8 characters" in text(short)
    assert answer.status_code == 302
    assert "Ana Agent&#39;s password changed." in text(client.get(answer.headers["Location"]))
    [entry] = audit_entries(session)
    assert (entry.before, entry.after) == ({}, {"password": "changed"})
    assert "new-secret" not in json.dumps([entry.before, entry.after])
    assert not can_log_in(client, "ana@example.com", PASSWORD)
    assert can_log_in(client, "ana@example.com", "new-secret-77")


def test_a_deactivated_account_cannot_log_in_until_reactivated(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    ana = user(session, "ana@example.com")

    answer = post(client, f"/settings/staff/{ana.id}/deactivate", {})

    assert answer.status_code == 302
    page = text(client.get(answer.headers["Location"]))
    assert "Ana Agent is deactivated and can no longer log in." in page
    assert "deactivated" in page
    assert user(session, "ana@example.com").active is False  # kept, not deleted
    entry = audit_entries(session)[-1]
    assert (entry.before["active"], entry.after["active"]) == (True, False)
    assert not can_log_in(client, "ana@example.com", PASSWORD)

    again = post(client, f"/settings/staff/{ana.id}/reactivate", {})

    assert "Ana Agent is active again" in text(client.get(again.headers["Location"]))
    assert can_log_in(client, "ana@example.com", PASSWORD)


def test_an_admin_cannot_deactivate_themself(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    add_admin(admin, "bob@example.com", "Bob Admin")
    login(client, ADMIN)
    me = user(session, ADMIN)

    answer = post(client, f"/settings/staff/{me.id}/deactivate", {})

    assert answer.status_code == 400
    assert "You cannot deactivate your own account; another admin can" in text(answer)
    assert user(session, ADMIN).active is True


def test_the_last_active_admin_cannot_be_demoted(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    login(client, ADMIN)
    me = user(session, ADMIN)

    answer = post(client, f"/settings/staff/{me.id}", details(me, role="supervisor"))

    assert answer.status_code == 400
    assert "Ada Admin is the last active admin: make someone else an admin first" in text(answer)
    assert user(session, ADMIN).role == "admin"
    assert audit_entries(session) == []


def demote(session: Session, email: str, by_email: str) -> None:
    target, by = accounts.find_by_email(session, email), accounts.find_by_email(session, by_email)
    assert target is not None and by is not None
    accounts.update_user(
        session, target, by, datetime.now(UTC), name=target.name, email=target.email,
        role="supervisor", whatsapp=None, shift_calendar=None, can_edit_settings=False,
    )  # fmt: skip


def test_two_admins_demoting_each_other_at_once_leave_one_admin(admin: Config) -> None:
    """Ada demotes Bob while Bob demotes Ada: the second waits for the first to commit, then
    finds itself the last active admin and is refused."""
    if make_url(admin.database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has no row locks: it runs one writer at a time")
    add_admin(admin, "bob@example.com", "Bob Admin")
    factory = session_factory(admin.database_url)
    ada_side, bob_side = factory(), factory()
    refused: list[str] = []

    def bob_demotes_ada() -> None:
        try:
            demote(bob_side, ADMIN, "bob@example.com")
            bob_side.commit()
        except accounts.AccountError as exc:
            bob_side.rollback()
            refused.append(str(exc))

    try:
        demote(ada_side, "bob@example.com", ADMIN)  # not committed yet
        commit_once_it_waits(ada_side, admin.database_url, bob_demotes_ada)
    finally:
        ada_side.close()
        bob_side.close()

    assert refused == ["Ada Admin is the last active admin: make someone else an admin first"]
    with factory() as s:
        roles = dict(s.execute(select(User.email, User.role).where(User.role != "agent")).all())
    assert (roles[ADMIN], roles["bob@example.com"]) == ("admin", "supervisor")


def test_an_admin_may_be_demoted_or_deactivated_while_another_remains(
    client: FlaskClient, admin: Config, session: Session
) -> None:
    add_admin(admin, "bob@example.com", "Bob Admin")
    login(client, ADMIN)
    bob = user(session, "bob@example.com")

    demoted = post(client, f"/settings/staff/{bob.id}", details(bob, role="supervisor"))
    promoted = post(client, f"/settings/staff/{bob.id}", details(bob, role="admin"))
    gone = post(client, f"/settings/staff/{bob.id}/deactivate", {})

    assert (demoted.status_code, promoted.status_code, gone.status_code) == (302, 302, 302)
    bob = user(session, "bob@example.com")
    assert (bob.role, bob.active) == ("admin", False)
    me = user(session, ADMIN)
    last = post(client, f"/settings/staff/{me.id}", details(me, role="agent"))
    assert last.status_code == 400 and "last active admin" in text(last)
