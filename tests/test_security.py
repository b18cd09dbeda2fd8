"""Nobody gets in who shouldn't: every route is public by declaration or needs a login and its
role; CSRF on every write; security headers on every answer; no markup the
Content-Security-Policy would block; secure cookies; no secret in the logs."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from whatsdesk import accounts, create_app
from whatsdesk.config import DEFAULT_SECRET_KEY, PROJECT_ROOT, Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Card, Message, User
from whatsdesk.web.security import CONTENT_SECURITY_POLICY

from conftest import PASSWORD, inbound_form, login, page_token, seed, signed_post
from twilio_server import TwilioServer

# --- who may open what (docs/reliability.md lists the public ones) ------------------------------

# Endpoints anyone may call, and why. Everything else needs a login and the role below.
PUBLIC = {
    "static": "stylesheets and scripts",
    "reports.chart_styles": "the charts' stylesheet (pygal's), a static file in all but name",
    "auth.login": "the login page",
    "health.healthz": "monitors; says only up or down",
    "health.readyz": "load balancers; says only up or down",
    "webhooks.inbound": "Twilio; refused without a valid X-Twilio-Signature",
    "webhooks.status": "Twilio; refused without a valid X-Twilio-Signature",
    "queue.home": "only a redirect to /queue, which asks for a login",
    "metrics.scrape": "Prometheus; its own bearer token (METRICS_TOKEN), else loopback only",
}
AGENT, SUPERVISOR, EDITOR, ADMIN = "agent", "supervisor", "editor", "admin"
# The role a blueprint's pages need: (to read: GET, to write: POST/PUT/PATCH/DELETE).
# EDITOR: admins, and supervisors an admin allowed to change settings.
ROLE_BY_BLUEPRINT = {
    "auth": (AGENT, AGENT),  # log out
    "queue": (AGENT, AGENT),
    "cards": (AGENT, AGENT),
    "simulator": (AGENT, AGENT),
    "alerts": (SUPERVISOR, SUPERVISOR),
    "dashboard": (SUPERVISOR, SUPERVISOR),
    "reports": (SUPERVISOR, SUPERVISOR),
    "settings": (SUPERVISOR, EDITOR),
    "messaging": (SUPERVISOR, EDITOR),
    "staff": (SUPERVISOR, ADMIN),
}
# Endpoints whose role differs from their blueprint's.
ROLE_BY_ENDPOINT = {
    "settings.new_calendar": EDITOR,  # a form only an editor can submit
    "staff.edit": ADMIN,  # a person's account, with the password form
}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
# Who holds each role in these tests, and who is one step below it.
HOLDER = {
    AGENT: "ana@example.com",
    SUPERVISOR: "sofia@example.com",
    EDITOR: "otto@example.com",
    ADMIN: "ada@example.com",
}
BELOW = {SUPERVISOR: AGENT, EDITOR: SUPERVISOR, ADMIN: EDITOR}


def needed_role(rule: Rule, method: str) -> str | None:
    """The role `method` on `rule` needs; None when the table does not say."""
    endpoint = rule.endpoint
    if endpoint in ROLE_BY_ENDPOINT:
        return ROLE_BY_ENDPOINT[endpoint]
    blueprint = endpoint.rpartition(".")[0]
    if blueprint not in ROLE_BY_BLUEPRINT:
        return None
    read, write = ROLE_BY_BLUEPRINT[blueprint]
    return write if method in WRITES else read


def methods_of(rule: Rule) -> list[str]:
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})


def staff_routes(app: Flask) -> list[tuple[Rule, str, str]]:
    """(rule, method, role) of every route that is not public."""
    return [
        (rule, method, needed_role(rule, method) or "undeclared")
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in PUBLIC
        for method in methods_of(rule)
    ]


@pytest.fixture
def desk(seeded: Config, client: FlaskClient) -> dict[str, object]:
    """The seeded desk, plus an admin, a supervisor allowed to edit settings (Otto) and a
    conversation: the sample values each URL is built with."""
    with session_factory(seeded.database_url)() as s:
        accounts.create_user(
            s,
            name="Ada Admin",
            email="ada@example.com",
            role="admin",
            whatsapp=None,
            password=PASSWORD,
            now=utcnow(),
        )
        otto = s.scalars(select(User).where(User.email == "otto@example.com")).one()
        otto.can_edit_settings = True
        s.commit()
    assert signed_post(client, seeded, "/twilio/whatsapp", inbound_form()).status_code == 200
    with session_factory(seeded.database_url)() as s:
        card = s.scalars(select(Card)).one()
        message = s.scalars(select(Message).where(Message.direction == "in")).one()
        ana = s.scalars(select(User).where(User.email == "ana@example.com")).one()
        return {
            "card_id": card.id,
            "message_id": message.id,
            "number": 0,
            "user_id": ana.id,
            "key": "support",
            "stage_key": "new",
            "index": 0,
        }


def url_of(rule: Rule, samples: dict[str, object]) -> str:
    """A real URL for the rule: its arguments filled with sample values."""

    def value(match: re.Match[str]) -> str:
        converter, name = match["converter"], match["name"]
        default = 1 if converter in ("int", "float") else "sample"
        return str(samples.get(name, default))

    return re.sub(
        r"<(?:(?P<converter>[^:<>(]+)(?:\([^)]*\))?:)?(?P<name>[^<>]+)>", value, rule.rule
    )


def goes_to_login(answer: TestResponse) -> bool:
    location = answer.headers.get("Location", "")
    return answer.status_code in (301, 302, 303) and urlsplit(location).path == "/login"


def logged_in(app: Flask, role: str) -> FlaskClient:
    client = app.test_client()
    login(client, HOLDER[role])
    return client


def call(client: FlaskClient, method: str, url: str, token: str | None = None) -> TestResponse:
    data = {"csrf_token": token} if token and method in WRITES else None
    return client.open(url, method=method, data=data)


def test_every_endpoint_is_public_by_declaration_or_has_a_role(app: Flask) -> None:
    undeclared = [
        f"{rule.endpoint} ({method} {rule.rule})"
        for rule, method, role in staff_routes(app)
        if role == "undeclared"
    ]
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}

    assert not undeclared, (
        "declare the role these endpoints need in ROLE_BY_BLUEPRINT or ROLE_BY_ENDPOINT of "
        "tests/test_security.py (or, if truly public, in PUBLIC and docs/reliability.md): "
        + ", ".join(undeclared)
    )
    assert set(PUBLIC) <= endpoints, (
        f"PUBLIC names endpoints that are gone: {set(PUBLIC) - endpoints}"
    )


def test_the_anonymous_are_sent_to_log_in_from_every_staff_route(
    app: Flask, desk: dict[str, object]
) -> None:
    client = app.test_client()
    token = page_token(client, "/login")  # so a write reaches the login check, not CSRF's
    wrong = []
    for rule, method, _role in staff_routes(app):
        answer = call(client, method, url_of(rule, desk), token)
        if not (goes_to_login(answer) or answer.status_code == 401):
            wrong.append(f"{method} {url_of(rule, desk)}: {answer.status_code}")

    assert not wrong, "open to the anonymous: " + ", ".join(wrong)


def test_staff_below_the_role_a_route_needs_get_403(app: Flask, desk: dict[str, object]) -> None:
    clients = {role: logged_in(app, role) for role in BELOW.values()}
    tokens = {role: page_token(c, "/queue") for role, c in clients.items()}
    wrong = []
    for rule, method, role in staff_routes(app):
        if role not in BELOW:
            continue  # every logged-in person is at least an agent
        below = BELOW[role]
        answer = call(clients[below], method, url_of(rule, desk), tokens[below])
        if answer.status_code != 403:
            wrong.append(f"{below} {method} {url_of(rule, desk)}: {answer.status_code}")

    assert not wrong, "let in below the role they need: " + ", ".join(wrong)


def test_staff_with_the_role_a_page_needs_can_open_it(app: Flask, desk: dict[str, object]) -> None:
    clients = {role: logged_in(app, role) for role in HOLDER}
    wrong = []
    for rule, method, role in staff_routes(app):
        if method != "GET":
            continue
        answer = call(clients[role], method, url_of(rule, desk))
        if answer.status_code in (401, 403) or goes_to_login(answer):
            wrong.append(f"{role} GET {url_of(rule, desk)}: {answer.status_code}")

    assert not wrong, "refused to the role that should open them: " + ", ".join(wrong)


def test_ids_too_large_for_the_database_are_not_found_never_an_error(
    app: Flask, desk: dict[str, object]
) -> None:
    admin = logged_in(app, "admin")
    huge = {name: 10**20 for name, value in desk.items() if isinstance(value, int)}
    pages = [r for r, method, _role in staff_routes(app) if method == "GET" and "<int:" in r.rule]
    assert pages
    for rule in pages:
        assert admin.get(url_of(rule, {**desk, **huge})).status_code == 404, rule.rule
    for query in ("pipeline=99999999999999999999", "stage=2147483648", "page=" + "9" * 30):
        assert admin.get(f"/queue?{query}").status_code == 200, query


def test_a_value_the_database_refuses_is_a_bad_request_not_an_outage(seeded: Config) -> None:
    """Whatever check a value slipped past, PostgreSQL refusing it (too long, a NUL) is the
    request's fault: 400, not the 503 that says the database is down and invites retries."""
    app = create_app(seeded)

    @app.get("/refused-value")
    def refused_value() -> str:
        raise DataError("INSERT …", {}, Exception("value too long for type varchar(120)"))

    answer = app.test_client().get("/refused-value")

    assert answer.status_code == 400
    assert "cannot store" in answer.get_data(as_text=True)


def test_a_write_refused_as_a_conflict_is_said_as_one_not_as_an_outage(seeded: Config) -> None:
    """A duplicate or a row another still names, that no check caught: a person is told the
    change clashed (409), not that the database is down; Twilio still gets its 503 to retry."""
    app = create_app(seeded)

    @app.get("/clash")
    @app.get("/twilio/clash")
    def clash() -> str:
        raise IntegrityError("DELETE …", {}, Exception("violates foreign key constraint"))

    client = app.test_client()
    page, webhook = client.get("/clash"), client.get("/twilio/clash")

    assert page.status_code == 409
    assert "clashes with something stored meanwhile" in page.get_data(as_text=True)
    assert (webhook.status_code, webhook.headers["Retry-After"]) == (503, "5")


def test_every_write_without_a_csrf_token_is_refused(app: Flask, desk: dict[str, object]) -> None:
    admin = logged_in(app, ADMIN)
    signed_by_twilio = {"webhooks.inbound", "webhooks.status"}
    wrong = []
    for rule in app.url_map.iter_rules():
        for method in set(methods_of(rule)) & WRITES:
            if rule.endpoint in signed_by_twilio:
                continue
            answer = call(admin, method, url_of(rule, desk))
            text = answer.get_data(as_text=True)
            if answer.status_code != 400 or "CSRF" not in text:
                wrong.append(f"{method} {url_of(rule, desk)}: {answer.status_code}")

    assert not wrong, "taken without a CSRF token: " + ", ".join(wrong)


# --- headers and what the Content-Security-Policy blocks ----------------------------------------

EXPECTED_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
# Markup the policy refuses to run: inline scripts, style elements and attributes, event
# handler attributes, javascript: URLs.
BLOCKED = {
    "inline <script>": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),
    "<style> element": re.compile(r"<style[\s>]", re.I),
    'style="" attribute': re.compile(r"<[^>]+\sstyle\s*=", re.I),
    'on*="" handler': re.compile(r"<[^>]+\son[a-z]+\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
}
# In our scripts: code from strings, and markup with the attributes above.
BLOCKED_IN_SCRIPTS = {
    "eval": re.compile(r"\beval\s*\("),
    "new Function": re.compile(r"\bnew\s+Function\s*\("),
    "timer from a string": re.compile(r"\bset(?:Timeout|Interval)\s*\(\s*['\"`]"),
    "style or on* attribute set": re.compile(r"setAttribute\s*\(\s*['\"`](?:style|on)", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
    "markup with style or on*": re.compile(r"['\"`][^'\"`]*<[^>]*\s(?:style|on[a-z]+)\s*=", re.I),
}


def blocked_markup(text: str) -> list[str]:
    return [what for what, pattern in BLOCKED.items() if pattern.search(text)]


def test_the_policy_is_the_one_documented() -> None:
    assert CONTENT_SECURITY_POLICY == EXPECTED_HEADERS["Content-Security-Policy"]


def test_every_answer_carries_the_security_headers_and_pages_nothing_the_policy_blocks(
    app: Flask, desk: dict[str, object]
) -> None:
    anonymous = app.test_client()
    answers = {
        "login page": anonymous.get("/login"),
        "health": anonymous.get("/healthz"),
        "readiness": anonymous.get("/readyz"),
        "stylesheet": anonymous.get("/static/style.css"),
        "not found": anonymous.get("/no-such-page"),
        "unsigned webhook": anonymous.post("/twilio/whatsapp", data=inbound_form()),
        "login redirect": anonymous.get("/queue"),
    }
    admin, agent = logged_in(app, ADMIN), logged_in(app, AGENT)
    answers["forbidden"] = agent.get("/alerts")
    for rule, method, _role in staff_routes(app):
        if method == "GET":
            answers[url_of(rule, desk)] = admin.get(url_of(rule, desk))
    wrong = []
    for what, answer in answers.items():
        missing = {k: v for k, v in EXPECTED_HEADERS.items() if answer.headers.get(k) != v}
        if missing:
            wrong.append(f"{what}: lacks {', '.join(missing)}")
        if answer.mimetype == "text/html" and blocked_markup(answer.get_data(as_text=True)):
            wrong.append(f"{what}: {', '.join(blocked_markup(answer.get_data(as_text=True)))}")

    assert not wrong, wrong


def test_templates_and_scripts_hold_nothing_the_policy_blocks() -> None:
    found = [
        f"{path.relative_to(PROJECT_ROOT)}: {what}"
        for path in sorted((PROJECT_ROOT / "templates").rglob("*.html"))
        for what in blocked_markup(path.read_text())
    ]
    found += [
        f"{path.relative_to(PROJECT_ROOT)}: {what}"
        for path in sorted((PROJECT_ROOT / "static").rglob("*.js"))
        for what, pattern in BLOCKED_IN_SCRIPTS.items()
        if pattern.search(path.read_text())
    ]

    assert not found, "move these to static/*.js and CSS classes in static/style.css: " + str(found)


# --- cookies and settings -----------------------------------------------------------------------


def test_the_session_cookie_is_secure_httponly_and_samesite_under_https(seeded: Config) -> None:
    client = create_app(seeded.with_(public_url="https://desk.example.com")).test_client()
    token = page_token(client)

    answer = client.post(
        "/login", data={"email": "ana@example.com", "password": PASSWORD, "csrf_token": token}
    )

    [cookie] = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith("session=")]
    attributes = {part.strip().split("=")[0] for part in cookie.split(";")}
    assert {"Secure", "HttpOnly", "SameSite"} <= attributes
    assert "SameSite=Lax" in cookie


def test_production_read_from_the_environment_refuses_the_default_secret_key() -> None:
    environ = {
        "WHATSDESK_ENV": "production",
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "TWILIO_AUTH_TOKEN": "tok-12345",
    }
    for secret in ({}, {"SECRET_KEY": ""}, {"SECRET_KEY": DEFAULT_SECRET_KEY}):
        with pytest.raises(RuntimeError, match="SECRET_KEY must be set"):
            create_app(Config.from_env(environ | secret))


# --- logs ---------------------------------------------------------------------------------------

WRONG_PASSWORD = "wrong-horse-43-never-logged"
NEW_PASSWORD = "new-battery-staple-44"


class Everything(logging.Handler):
    """Keeps every record, formatted, with its arguments and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.args!r}")
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


@contextmanager
def every_log_at_debug() -> Iterator[Everything]:
    """Every logger (werkzeug, twilio, urllib3, rq, ours) at DEBUG into one handler."""
    handler = Everything()
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    levels = {logger: logger.level for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        if logger is logging.root or not logger.propagate:
            logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
            logger.removeHandler(handler)


def run_jobs(config: Config, redis: Redis) -> None:
    SimpleWorker([Queue(config.queue_name, connection=redis)], connection=redis).work(burst=True)


def test_a_full_run_never_logs_the_auth_token_or_a_password(
    env: Config, monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    with TwilioServer() as twilio, every_log_at_debug() as logs:
        for name, value in twilio.environ().items():
            monkeypatch.setenv(name, value)
        config = env.with_(
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=twilio.auth_token,
            twilio_api_url=twilio.url,
        )
        seed(config.database_url)
        app = create_app(config)
        result = app.test_cli_runner().invoke(
            args=["users", "create", "--name", "Ada Admin", "--email", "ada@example.com"]
            + ["--role", "admin", "--password", PASSWORD]
        )
        assert result.exit_code == 0, result.output
        client = app.test_client()
        failed = client.post(
            "/login",
            data={
                "email": "ada@example.com",
                "password": WRONG_PASSWORD,
                "csrf_token": page_token(client),
            },
        )
        assert "Wrong email or password." in failed.get_data(as_text=True)
        login(client, "ada@example.com")
        assert signed_post(client, config, "/twilio/whatsapp", inbound_form()).status_code == 200
        run_jobs(config, redis)  # the acknowledgement, through the Twilio server
        token = page_token(client, "/cards/1")
        client.post("/cards/1/claim", data={"csrf_token": token})
        client.post("/cards/1/reply", data={"body": "On its way", "csrf_token": token})
        run_jobs(config, redis)
        status = {"MessageSid": twilio.sids[0], "MessageStatus": "delivered"}
        assert signed_post(client, config, "/twilio/status", status).status_code == 200
        bruno = f"/settings/staff/{user_id(config, 'bruno@example.com')}/password"
        changed = client.post(
            bruno, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": token}
        )
        assert changed.status_code == 302

    assert len(twilio.messages) == 2  # the acknowledgement and the reply went to "Twilio"
    logged = "\n".join(logs.lines)
    assert "twilio.http_client" in logged and "urllib3" in logged  # DEBUG really was on
    basic = base64.b64encode(f"{twilio.account_sid}:{twilio.auth_token}".encode()).decode()
    for secret in (twilio.auth_token, basic, PASSWORD, WRONG_PASSWORD, NEW_PASSWORD):
        assert secret not in logged and secret not in result.output


def user_id(config: Config, email: str) -> int:
    with session_factory(config.database_url)() as s:
        return s.scalars(select(User.id).where(User.email == email)).one()


def test_docs_list_every_public_endpoint() -> None:
    docs = (PROJECT_ROOT / "docs" / "reliability.md").read_text()

    assert [e for e in PUBLIC if f"`{e}`" not in docs] == []
