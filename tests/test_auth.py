"""Logging in and out: the form, CSRF, inactive accounts, safe redirects, the cookie."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from whatsdesk.config import Config
from whatsdesk.db import session_factory
from whatsdesk.models import User

from conftest import PASSWORD, login, page_token


def post_login(
    client: FlaskClient, email: str, password: str, next_url: str | None = None
) -> TestResponse:
    token = page_token(client)
    path = "/login" if next_url is None else "/login?" + urlencode({"next": next_url})
    return client.post(path, data={"email": email, "password": password, "csrf_token": token})


def is_logged_in(client: FlaskClient) -> bool:
    answer = client.get("/queue")
    if answer.status_code == 200:
        return True
    assert answer.status_code == 302 and urlsplit(answer.headers["Location"]).path == "/login"
    return False


def deactivate(config: Config, email: str) -> None:
    with session_factory(config.database_url)() as s:
        s.execute(update(User).where(User.email == email).values(active=False))
        s.commit()


def test_queue_redirects_anonymous_users_to_login(client: FlaskClient, seeded: Config) -> None:
    answer = client.get("/queue")

    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": ["/queue"]}
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "<h1>Log in</h1>" in page


def test_home_leads_to_the_queue(client: FlaskClient, seeded: Config) -> None:
    answer = client.get("/")

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/queue"


def test_wrong_password_says_so_and_logs_nobody_in(client: FlaskClient, seeded: Config) -> None:
    answer = post_login(client, "ana@example.com", "not-the-password")

    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert "Wrong email or password." in page
    assert 'value="ana@example.com"' in page  # the email stays filled in
    assert PASSWORD not in page and "not-the-password" not in page
    with client.session_transaction() as sess:
        assert "_user_id" not in sess
    assert not is_logged_in(client)


def test_unknown_email_gets_the_same_answer_as_a_wrong_password(
    client: FlaskClient, seeded: Config
) -> None:
    answer = post_login(client, "nobody@example.com", PASSWORD)

    assert answer.status_code == 200
    assert "Wrong email or password." in answer.get_data(as_text=True)
    assert not is_logged_in(client)


def test_right_password_redirects_to_the_queue(client: FlaskClient, seeded: Config) -> None:
    answer = post_login(client, "ANA@example.com", PASSWORD)

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/queue"
    page = client.get("/queue").get_data(as_text=True)
    assert "Ana Agent · agent" in page
    assert "Log out" in page


def test_logged_in_user_visiting_login_goes_to_the_queue(
    client: FlaskClient, seeded: Config
) -> None:
    login(client)

    answer = client.get("/login")

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/queue"


def test_login_without_csrf_token_is_refused(client: FlaskClient, seeded: Config) -> None:
    client.get("/login")

    answer = client.post("/login", data={"email": "ana@example.com", "password": PASSWORD})

    assert answer.status_code == 400
    assert "CSRF" in answer.get_data(as_text=True)
    assert not is_logged_in(client)


def test_login_with_a_forged_csrf_token_is_refused(client: FlaskClient, seeded: Config) -> None:
    client.get("/login")

    answer = client.post(
        "/login",
        data={"email": "ana@example.com", "password": PASSWORD, "csrf_token": "forged"},
    )

    assert answer.status_code == 400
    assert not is_logged_in(client)


def test_logout_with_csrf_ends_the_session(client: FlaskClient, seeded: Config) -> None:
    login(client)
    token = page_token(client, "/queue")

    answer = client.post("/logout", data={"csrf_token": token})

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/login"
    assert not is_logged_in(client)


def test_logout_without_csrf_is_refused_and_keeps_the_session(
    client: FlaskClient, seeded: Config
) -> None:
    login(client)

    answer = client.post("/logout")

    assert answer.status_code == 400
    assert is_logged_in(client)


def test_logout_by_get_is_not_allowed(client: FlaskClient, seeded: Config) -> None:
    login(client)

    answer = client.get("/logout")

    assert answer.status_code == 405
    assert is_logged_in(client)


def test_inactive_user_cannot_log_in(client: FlaskClient, seeded: Config) -> None:
    deactivate(seeded, "bruno@example.com")

    answer = post_login(client, "bruno@example.com", PASSWORD)

    assert answer.status_code == 200
    assert "Wrong email or password." in answer.get_data(as_text=True)
    assert not is_logged_in(client)


def test_deactivating_a_logged_in_user_ends_their_session(
    client: FlaskClient, seeded: Config
) -> None:
    login(client, "bruno@example.com")
    assert is_logged_in(client)

    deactivate(seeded, "bruno@example.com")

    assert not is_logged_in(client)


def test_next_sends_to_a_same_site_path(client: FlaskClient, seeded: Config) -> None:
    answer = post_login(client, "ana@example.com", PASSWORD, next_url="/queue?fragment=1")

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/queue?fragment=1"


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "\\\\evil.example/",
        "/\t/evil.example/",
        "javascript:alert(1)",
        "evil.example",
    ],
)
def test_next_never_leaves_the_site(client: FlaskClient, seeded: Config, next_url: str) -> None:
    answer = post_login(client, "ana@example.com", PASSWORD, next_url=next_url)

    assert answer.status_code == 302
    assert answer.headers["Location"] == "/queue"


def test_session_cookie_is_httponly_and_samesite_lax(client: FlaskClient, seeded: Config) -> None:
    answer = post_login(client, "ana@example.com", PASSWORD)

    cookies = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert len(cookies) == 1, answer.headers.getlist("Set-Cookie")
    attributes = [part.strip() for part in cookies[0].split(";")]
    assert "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes
