"""Fixtures: real Redis (own database number per run), real SQLite and PostgreSQL."""

from __future__ import annotations

import os
import tempfile

# Each test process (and what it starts) counts its metrics in a directory of its own, set
# before whatsdesk.metrics is imported: never in instance/metrics, which `make run` uses.
METRICS_DIR = tempfile.mkdtemp(prefix="whatsdesk-test-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = METRICS_DIR
import re
import shutil
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

from whatsdesk import accounts, create_app, pipeline_store, pipelines, whatsapp
from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.db import Base, _sqlite_write_lock, get_engine, session_factory
from whatsdesk.models import Contact, User
from whatsdesk.redis_server import PrivateRedis

PASSWORD = "correct-horse-42"
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])
RUN_ID = uuid.uuid4().hex[:8]
# Nothing listens on these: a backing service that is down.
CLOSED_REDIS = "redis://127.0.0.1:1/0"
CLOSED_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/none"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(METRICS_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start the real processes (marked e2e) run once: on PostgreSQL when it is
    set, the production database, else on SQLite. Every other database test runs on both."""
    if len(BACKENDS) < 2:
        return
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_sqlite = params.get("database_url") == "sqlite"
        (dropped if item.get_closest_marker("e2e") and on_sqlite else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# --- Redis --------------------------------------------------------------------------------------


def _claim_key(number: int) -> str:
    return f"whatsdesk-test-db:{number}"


def _free_database_number(base_url: str) -> tuple[str, int]:
    """Claim a Redis database number no other test run holds. The claims live in database 0,
    which the tests never flush: a test that flushes its own database keeps its claim."""
    claims = Redis.from_url(f"{base_url.rstrip('/')}/0")
    for number in range(1, 16):
        if claims.set(_claim_key(number), RUN_ID, nx=True, ex=3 * 3600):
            return f"{base_url.rstrip('/')}/{number}", number
    raise RuntimeError("all Redis databases 1-15 are claimed by other test runs")


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TEST_REDIS_URL, else the machine's Redis, else a private redis-server for this run."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
    try:
        Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except Exception:
        pass
    # A unix socket path must stay short, so not under pytest's deep tmp folders.
    folder = Path("/tmp") / f"wd-redis-{RUN_ID}"
    private = PrivateRedis(folder / "redis.sock", persist=False)
    yield private.start()
    private.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(redis_base: str) -> Iterator[str]:
    url, number = _free_database_number(redis_base)
    yield url
    Redis.from_url(url).flushdb()
    claims = Redis.from_url(f"{redis_base.rstrip('/')}/0")
    if claims.get(_claim_key(number)) == RUN_ID.encode():
        claims.delete(_claim_key(number))


@pytest.fixture
def redis(redis_url: str) -> Redis:
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    return conn


# --- Databases ----------------------------------------------------------------------------------


def migrate(url: str) -> None:
    cfg = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, "head")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite:///{path}"
    migrate(url)
    get_engine(url).dispose()
    return path


@contextmanager
def postgres_schema(name: str) -> Iterator[str]:
    """A URL into a new, empty schema `name` of TEST_DATABASE_URL; dropped afterwards."""
    base = os.environ["TEST_DATABASE_URL"]
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
    rendered = url.render_as_string(hide_password=False)
    try:
        yield rendered
    finally:
        get_engine(rendered).dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A schema of its own for this run in TEST_DATABASE_URL, migrated once."""
    with postgres_schema(f"wd_test_{RUN_ID}") as url:
        migrate(url)
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "whatsdesk.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return url


# --- The app ------------------------------------------------------------------------------------


@pytest.fixture
def config(database_url: str, redis_url: str, redis: Redis) -> Config:
    return Config(
        database_url=database_url,
        redis_url=redis_url,
        redis_url_is_private=False,
        secret_key="test-secret",
    )


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, config: Config) -> Config:
    """The environment a worker process would have, so jobs can run in-process."""
    monkeypatch.setenv("DATABASE_URL", config.database_url)
    monkeypatch.setenv("REDIS_URL", config.redis_url)
    monkeypatch.setenv("SECRET_KEY", config.secret_key)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "TWILIO_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return config


@pytest.fixture
def app(config: Config) -> Flask:
    app = create_app(config)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def session(config: Config) -> Iterator[Session]:
    s = session_factory(config.database_url)()
    yield s
    s.close()


def now() -> datetime:
    return datetime.now(UTC)


STAFF = [
    ("Ana Agent", "ana@example.com", "agent", "+15550000001"),
    ("Bruno Agent", "bruno@example.com", "agent", "+15550000002"),
    ("Sofia Supervisor", "sofia@example.com", "supervisor", "+15550000003"),
    ("Otto Supervisor", "otto@example.com", "supervisor", "+15550000004"),
]

PIPELINE_YAML = """
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: {sla}
        warning: {warning}
        alert: [ana@example.com, bruno@example.com]
      - key: open
        name: In progress
        sla: 1h
      - key: waiting
        name: Waiting on customer
        pause: true
# Most tests count alerts one by one; digests have tests of their own.
notifications:
  digest_window: off
"""


# Two pipelines and a team menu asking which one a new conversation is for.
MENU_YAML = """
pipelines:
  - key: sales
    name: Sales
    stages: [{key: lead, name: New lead, sla: 1h}]
  - key: support
    name: Support
    default: true
    stages: [{key: new, name: New, sla: 15m}]
menu:
  pipelines: [sales, support]
  wait: 2m
"""


def query_plan(session: Session, query: ClauseElement) -> str:
    """The database's plan for `query` (PostgreSQL with sequential scans off, so a usable
    index shows even on a table too small to need it)."""
    engine = session.get_bind()
    compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
        conn.exec_driver_sql("SET enable_seqscan = off")
        return " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))


def seed(
    database_url: str, sla: str = "2m", warning: str = "1m", staff_windows: bool = False
) -> None:
    """Staff and a default pipeline whose first stage has the given SLA; `staff_windows`:
    every staff member has just written to the desk (alerts to them go as free text)."""
    with session_factory(database_url)() as s:
        for name, email, role, phone in STAFF:
            accounts.create_user(
                s, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD, now=now()
            )
        config = pipelines.parse(PIPELINE_YAML.format(sla=sla, warning=warning))
        pipeline_store.load(s, config, now())
        if staff_windows:
            open_staff_windows(s, now())
        s.commit()


def open_staff_windows(session: Session, at: datetime) -> None:
    """Every staff member wrote to the desk at `at`: their 24-hour WhatsApp window is open,
    so alerts go to them as free text (not committed)."""
    for user in session.scalars(select(User).where(User.whatsapp.is_not(None))):
        contact = session.scalars(select(Contact).where(Contact.address == user.whatsapp)).first()
        if contact is None:
            contact = Contact(address=user.whatsapp, created_at=at)
            session.add(contact)
        contact.last_inbound_at = at


@pytest.fixture
def seeded(config: Config) -> Config:
    seed(config.database_url)
    return config


def csrf_token(page: str) -> str:
    """The CSRF token of the first form in the page, as a browser would post it."""
    match = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def page_token(client: FlaskClient, path: str = "/login") -> str:
    return csrf_token(client.get(path).get_data(as_text=True))


def fresh(session: Session) -> None:
    """Forget what the session has seen, to read what the app's connections committed."""
    session.rollback()
    session.expire_all()


def count(session: Session, model: type) -> int:
    fresh(session)
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def login(client: FlaskClient, email: str = "ana@example.com", password: str = PASSWORD) -> None:
    """Log in through the real form, CSRF token included."""
    token = page_token(client)
    answer = client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    assert answer.status_code == 302, answer.get_data(as_text=True)


def inbound_form(
    phone: str = "+5511999990000", body: str = "Hello", name: str = "Maria", sid: str | None = None
) -> dict[str, str]:
    return {
        "MessageSid": sid or "SM" + uuid.uuid4().hex,
        "AccountSid": "AC" + "0" * 32,
        "From": f"whatsapp:{phone}",
        "To": "whatsapp:+14155238886",
        "Body": body,
        "NumMedia": "0",
        "ProfileName": name,
        "WaId": phone.lstrip("+"),
    }


def signed_post(
    client: FlaskClient,
    config: Config,
    path: str,
    form: dict[str, str],
    base: str = "http://localhost",
) -> object:
    signature = whatsapp.sign(whatsapp.webhook_token(config), base + path, form)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature})


# --- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@contextmanager
def statements(config: Config) -> Iterator[list[str]]:
    """The SQL statements run meanwhile (BEGIN and COMMIT are not statements here)."""
    seen: list[str] = []

    def capture(*args: object) -> None:
        seen.append(str(args[2]))

    engine = get_engine(config.database_url)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


@pytest.fixture
def without_sqlite_write_lock() -> Iterator[None]:
    """SQLite's stand-in for row locks off (whatsdesk.db._sqlite_write_lock): two sessions
    may read the same card before either writes — the worst interleaving, which the unique
    constraints and conditional updates must still make safe."""
    event.remove(Session, "do_orm_execute", _sqlite_write_lock)
    try:
        yield
    finally:
        event.listen(Session, "do_orm_execute", _sqlite_write_lock)


def keeps_another_waiting(database_url: str, dbapi_connection: Any) -> bool:
    """PostgreSQL: a lock this connection holds keeps another connection waiting."""
    if make_url(database_url).get_backend_name() != "postgresql":
        return False
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))")
    with get_engine(database_url).connect() as watcher:
        return bool(watcher.scalar(query, {"me": dbapi_connection.info.backend_pid}))


def commit_once_it_waits(session: Session, database_url: str, other: Callable[[], Any]) -> None:
    """PostgreSQL: run `other` in a thread until it waits on a lock `session` holds, then
    commit `session` and let `other` finish."""
    thread = threading.Thread(target=other)
    thread.start()
    holder = session.connection().connection.dbapi_connection
    assert eventually(lambda: keeps_another_waiting(database_url, holder), timeout=10)
    session.commit()
    thread.join(timeout=10)
    assert not thread.is_alive()


def ics_text(*events: list[str]) -> str:
    """An iCalendar file (CRLF line ends) holding one VEVENT per list of content lines."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//whatsdesk test//EN"]
    for vevent in events:
        lines += ["BEGIN:VEVENT", *vevent, "END:VEVENT"]
    return "".join(f"{line}\r\n" for line in [*lines, "END:VCALENDAR"])


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll until the condition holds or the time is up (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
