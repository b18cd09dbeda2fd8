"""Logging in and out: the form, CSRF, inactive accounts, safe redirects, the cookie."""

from __future__ import annotations

import html
import re
import threading
import time
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from whatsdesk import create_app, desk, escalation, throttle, whatsapp
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import LoginFailure, Message, SlaEvent, User

from conftest import PASSWORD, free_port, fresh, inbound_form, login, page_token, statements


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


def test_the_login_form_names_each_field_with_one_label(
    client: FlaskClient, seeded: Config
) -> None:
    """Each field sits in a label of its own (a label inside a label is invalid HTML and
    confuses screen readers)."""

    class Labels(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.depth, self.deepest, self.fields = 0, 0, {}

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "label":
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)
            elif tag == "input" and dict(attrs).get("type") != "hidden":
                self.fields[dict(attrs).get("name")] = self.depth

        def handle_endtag(self, tag: str) -> None:
            if tag == "label":
                self.depth -= 1

    labels = Labels()
    labels.feed(client.get("/login").get_data(as_text=True))

    assert labels.deepest == 1
    assert labels.fields == {"email": 1, "password": 1}


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


def test_a_copy_of_the_session_cookie_stops_working_at_logout(
    app: Flask, client: FlaskClient, seeded: Config
) -> None:
    login(client)
    copy = app.test_client()
    cookie = client.get_cookie("session")
    assert cookie is not None
    copy.set_cookie("session", cookie.value)
    assert is_logged_in(copy)

    client.post("/logout", data={"csrf_token": page_token(client, "/queue")})

    assert not is_logged_in(copy)


def test_a_login_ends_after_twelve_hours_without_a_request(
    client: FlaskClient, seeded: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    login(client)

    def hours_later(hours: float) -> None:
        at = int(time.time() + hours * 3600)
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: at)

    hours_later(11)
    assert is_logged_in(client)  # used within 12 hours: it goes on, counted from now
    hours_later(11 + 12 + 1 / 60)
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


# --- throttling ---------------------------------------------------------------------------------


def fail_logins(client: FlaskClient, email: str, times: int) -> None:
    for _ in range(times):
        answer = post_login(client, email, "not-the-password")
        assert answer.status_code == 200
        assert "Wrong email or password." in answer.get_data(as_text=True)


def test_after_five_failed_logins_even_the_right_password_must_wait(
    client: FlaskClient, seeded: Config
) -> None:
    fail_logins(client, "ana@example.com", 5)

    answer = post_login(client, "ana@example.com", PASSWORD)

    assert answer.status_code == 429
    page = answer.get_data(as_text=True)
    assert re.search(r"Too many failed logins\. Try again in (15m 00s|14m [0-5]\ds)\.", page)
    assert "Wrong email or password." not in page
    assert not is_logged_in(client)


def test_failed_logins_count_for_the_account_whatever_the_case_of_the_email(
    client: FlaskClient, seeded: Config
) -> None:
    for email in ("ana@example.com", "ANA@example.com", "Ana@Example.com ", "ana@EXAMPLE.COM"):
        fail_logins(client, email, 1)
    fail_logins(client, "ana@example.com", 1)

    answer = post_login(client, "ana@example.com", PASSWORD)

    assert answer.status_code == 429


def test_an_account_waiting_does_not_block_other_accounts(
    client: FlaskClient, seeded: Config
) -> None:
    fail_logins(client, "ana@example.com", 5)

    answer = post_login(client, "bruno@example.com", PASSWORD)

    assert answer.status_code == 302
    assert is_logged_in(client)


def test_a_successful_login_starts_the_accounts_count_again(
    client: FlaskClient, seeded: Config
) -> None:
    fail_logins(client, "ana@example.com", 4)
    login(client, "ana@example.com")
    client.post("/logout", data={"csrf_token": page_token(client, "/queue")})

    fail_logins(client, "ana@example.com", 4)  # eight in all, four since the success
    answer = post_login(client, "ana@example.com", PASSWORD)

    assert answer.status_code == 302
    assert is_logged_in(client)


def test_twenty_failed_logins_from_one_address_make_every_account_wait(
    client: FlaskClient, seeded: Config
) -> None:
    for n in range(20):
        fail_logins(client, f"guess{n}@example.com", 1)

    answer = post_login(client, "bruno@example.com", PASSWORD)

    assert answer.status_code == 429
    assert "Too many failed logins." in answer.get_data(as_text=True)
    assert not is_logged_in(client)


def test_logging_in_and_its_throttle_work_while_redis_is_down(seeded: Config) -> None:
    """The pages read the database alone; so does logging in, throttle included, so a
    supervisor can still look at the desk during a Redis outage."""
    down = create_app(seeded.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = down.test_client()

    answer = post_login(client, "bruno@example.com", PASSWORD)
    assert answer.status_code == 302 and is_logged_in(client)

    other = down.test_client()
    fail_logins(other, "ana@example.com", 5)
    answer = post_login(other, "ana@example.com", PASSWORD)
    assert answer.status_code == 429
    assert "Too many failed logins." in answer.get_data(as_text=True)


def test_a_failed_login_after_the_window_counts_from_one_again(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    fail_logins(client, "ana@example.com", 4)
    fresh(session)
    for row in session.scalars(select(LoginFailure)):
        row.window_ends_at = utcnow() - timedelta(seconds=1)  # fifteen minutes have passed
    session.commit()

    fail_logins(client, "ana@example.com", 4)  # eight in all, four in this window
    answer = post_login(client, "ana@example.com", PASSWORD)

    assert answer.status_code == 302
    # The account's count here ended with the login, which took its try back from the
    # others: the four failures of this window are what is left.
    fresh(session)
    counts = sorted(
        (key.split(":")[0], failures)
        for key, failures in session.execute(select(LoginFailure.key, LoginFailure.failures))
    )
    assert counts == [("account", 4), ("address", 4)]


def test_guesses_from_elsewhere_do_not_lock_the_person_out_where_they_are(
    client: FlaskClient, seeded: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who knows Ana's email fails five times from their own address: Ana still
    logs in from hers. Guesses spread over many addresses lock the account everywhere
    (50 in 15 minutes; 6 here)."""
    monkeypatch.setattr(throttle, "FAILURES_PER_ACCOUNT_ANYWHERE", 6)

    def from_(address: str, password: str) -> int:
        token = page_token(client)
        answer = client.post(
            "/login",
            data={"email": "ana@example.com", "password": password, "csrf_token": token},
            environ_base={"REMOTE_ADDR": address},
        )
        client.post("/logout", data={"csrf_token": token})
        return answer.status_code

    assert [from_("203.0.113.9", "guess") for _ in range(6)] == [200] * 5 + [429]
    assert from_("127.0.0.1", PASSWORD) == 302  # the account's 6th try anywhere: allowed

    assert from_("198.51.100.7", "guess") == 200  # a 7th failure anywhere …
    assert from_("127.0.0.1", PASSWORD) == 429  # … and the account waits everywhere


def test_tries_refused_while_an_account_waits_do_not_count_against_the_address(
    client: FlaskClient, seeded: Config
) -> None:
    """Someone behind the office's one address keeps clicking Log in while their account
    waits: the refused clicks check no password and do not lock out their colleagues."""
    fail_logins(client, "ana@example.com", 5)
    for _ in range(15):
        assert post_login(client, "ana@example.com", PASSWORD).status_code == 429

    answer = post_login(client, "bruno@example.com", PASSWORD)

    assert answer.status_code == 302


def test_failed_logins_sent_at_once_are_all_counted_before_any_password_is_checked(
    seeded: Config,
) -> None:
    """Eight guesses in parallel: each try is counted (and committed) before its password
    is checked, so at most five of them are checked; the others wait."""
    app = create_app(seeded)
    token_client = app.test_client()
    codes: list[int] = []

    def guess() -> None:
        client = app.test_client()
        codes.append(post_login(client, "ana@example.com", "not-the-password").status_code)

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(codes) == [200] * 5 + [429] * 3
    assert post_login(token_client, "ana@example.com", PASSWORD).status_code == 429


@pytest.mark.parametrize("trusted_proxies", [1, 0], ids=["behind a trusted proxy", "direct"])
def test_the_address_limit_counts_the_client_a_trusted_proxy_names(
    seeded: Config, trusted_proxies: int
) -> None:
    """Behind a reverse proxy every request comes from the proxy's address: with
    TRUSTED_PROXIES=1 the client's own address (X-Forwarded-For) is counted, so one guesser
    does not lock out the whole team. Without it the header is not believed: a guesser
    cannot dodge the limit by writing any address there."""
    app = create_app(seeded.with_(trusted_proxies=trusted_proxies))
    app.config["TESTING"] = True
    guesser, colleague = app.test_client(), app.test_client()
    guesser.environ_base["HTTP_X_FORWARDED_FOR"] = "203.0.113.7"
    colleague.environ_base["HTTP_X_FORWARDED_FOR"] = "198.51.100.9"
    for n in range(20):
        fail_logins(guesser, f"guess{n}@example.com", 1)

    answer = post_login(colleague, "bruno@example.com", PASSWORD)

    if trusted_proxies:
        assert answer.status_code == 302
        assert is_logged_in(colleague)
        assert post_login(guesser, "bruno@example.com", PASSWORD).status_code == 429
    else:
        assert answer.status_code == 429
        assert not is_logged_in(colleague)


# --- the alerts page ----------------------------------------------------------------------------


def visible(fragment: str) -> str:
    """The text a person sees: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def alerts_fired(config: Config, **customer: str) -> dict[tuple[str, str], int]:
    """Maria (or `customer`, inbound_form's phone and name) has waited too long: the stage's
    warning went to its alert list (Ana, Bruno), then the breach, a minute late, to the
    supervisors (Sofia, Otto). Each alert's id by (event, person)."""
    opened = utcnow() - timedelta(minutes=10)  # "New": warning after 1 min, breach after 2
    told = {}
    with session_factory(config.database_url)() as s:
        inbound = whatsapp.parse_inbound(inbound_form(**customer))
        received = desk.receive_message(s, inbound, opened)
        assert received.card is not None
        visit = desk.current_visit(s, received.card)
        assert visit is not None
        for kind, at in (
            ("warning", opened + timedelta(minutes=1)),
            ("breach", opened + timedelta(minutes=3)),
        ):
            assert escalation.fire(s, visit.id, kind, at) is not None
        s.commit()
        alerts = s.execute(
            select(SlaEvent.kind, User.name, Message.id)
            .join(Message, Message.sla_event_id == SlaEvent.id)
            .join(User, User.id == Message.user_id)
            .where(SlaEvent.visit_id == visit.id)
        )
        told |= {(kind, name): message_id for kind, name, message_id in alerts}
    return told


def set_status(config: Config, message_id: int, status: str, **error: str) -> None:
    with session_factory(config.database_url)() as s:
        message = s.get(Message, message_id)
        assert message is not None
        message.status = status
        for name, value in error.items():
            setattr(message, name, value)
        s.commit()


def alert_rows(page: str) -> list[list[str]]:
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    assert body, page
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body[1], re.S)
    return [
        [visible(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows
    ]


def test_supervisors_see_each_alert_whom_it_told_and_whether_it_arrived(
    client: FlaskClient, seeded: Config
) -> None:
    told = alerts_fired(seeded)
    set_status(seeded, told["warning", "Ana Agent"], "read")
    set_status(seeded, told["warning", "Bruno Agent"], "undelivered", error_code="63016")
    set_status(seeded, told["breach", "Sofia Supervisor"], "delivered")
    set_status(
        seeded,
        told["breach", "Otto Supervisor"],
        "failed",
        error_code="21211",
        error_message="Invalid 'To' Phone Number",
    )
    login(client, "sofia@example.com")

    answer = client.get("/alerts")

    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert "⚠ 2 alert(s) did not reach their recipient — see the reasons below." in visible(page)
    breach, warning = alert_rows(page)
    assert breach[1:] == [
        "breach",
        "#1 Maria",
        "60.000 s",
        "Sofia Supervisor: delivered Otto Supervisor: failed — Invalid 'To' Phone Number",
    ]
    assert warning[1:] == [
        "warning",
        "#1 Maria",
        "0.000 s",
        "Ana Agent: read Bruno Agent: undelivered — outside WhatsApp's 24-hour window: only an "
        "approved template can reach them (error 63016)",
    ]
    assert breach[0].endswith(" UTC")
    assert '<a href="/cards/1">' in page


def test_the_alerts_page_costs_the_same_few_queries_however_many_alerts_it_shows(
    client: FlaskClient, seeded: Config
) -> None:
    alerts_fired(seeded)
    login(client, "sofia@example.com")
    with statements(seeded) as for_one_card:
        assert client.get("/alerts").status_code == 200
    for n in range(3):
        alerts_fired(seeded, phone=f"+5511988880{n:03d}", name=f"Customer {n}")

    with statements(seeded) as for_four_cards:
        page = client.get("/alerts").get_data(as_text=True)

    assert len(alert_rows(page)) == 8
    assert {row[2] for row in alert_rows(page)} == {
        "#1 Maria", "#2 Customer 0", "#3 Customer 1", "#4 Customer 2",
    }  # fmt: skip
    assert len(for_four_cards) == len(for_one_card)


def test_agents_may_not_see_the_alerts(client: FlaskClient, seeded: Config) -> None:
    login(client, "ana@example.com")
    assert ">Alerts</a>" not in client.get("/queue").get_data(as_text=True)

    answer = client.get("/alerts")

    assert answer.status_code == 403
    assert "this page is for supervisors" in answer.get_data(as_text=True)


def test_the_alerts_page_sends_the_anonymous_to_log_in(client: FlaskClient, seeded: Config) -> None:
    answer = client.get("/alerts")

    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": ["/alerts"]}


def test_an_alert_sent_in_a_digest_shows_why_the_digest_did_not_arrive(
    client: FlaskClient, seeded: Config
) -> None:
    told = alerts_fired(seeded)
    with session_factory(seeded.database_url)() as s:
        alert = s.get(Message, told["breach", "Sofia Supervisor"])
        assert alert is not None
        digest = desk.queue_outbound(
            s,
            to=alert.to_address,
            body="📋 2 SLA alerts",
            user=alert.user,
            dedupe_key="d",
            now=utcnow(),
        )
        s.flush()
        alert.status, alert.digest_id = "bundled", digest.id
        digest.status, digest.error_code = "undelivered", "63016"  # Twilio's status callback
        s.commit()
    login(client, "sofia@example.com")

    breach, _warning = alert_rows(client.get("/alerts").get_data(as_text=True))

    assert breach[4].startswith(
        "Sofia Supervisor: undelivered — outside WhatsApp's 24-hour window: only an approved "
        "template can reach them (error 63016) "
    )
