"""The supervisors' live dashboard: SLA counts per pipeline and stage, the cards nearest their
deadline, each agent's load and breaches today; the page, its live fragment and who may see it."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Page, expect
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from whatsdesk import (
    accounts,
    dashboard,
    escalation,
    pipeline_store,
    pipelines,
    settings,
    sla,
    whatsapp,
)
from whatsdesk import desk as use
from whatsdesk.config import Config
from whatsdesk.db import get_engine
from whatsdesk.models import Card, Pipeline, Stage, StageVisit, User
from whatsdesk.web import dashboard as dashboard_web

from conftest import PASSWORD, inbound_form, login, query_plan, seed
from test_browser import browser, customer_writes, log_in, page, screenshot  # noqa: F401
from test_end_to_end import processes
from twilio_server import TwilioServer

# 15:00 UTC is noon in São Paulo, the desk's timezone (its default pipeline's calendar's).
T = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
SP_MIDNIGHT = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)  # 2026-03-10 00:00 in São Paulo
POLL_MS = 15_000  # the dashboard refreshes every 5 s: three chances

DESK_YAML = """
calendars:
  - key: office
    name: São Paulo office
    timezone: America/Sao_Paulo
    hours:
      mon-fri: ["09:00-18:00"]
pipelines:
  - key: support
    name: Support
    default: true
    calendar: office
    stages:
      - {key: new, name: New, sla: 1h, warning: 15m, calendar: 24/7}
      - {key: open, name: In progress, sla: 2h, calendar: 24/7}
      - {key: waiting, name: Waiting on customer, pause: true, calendar: 24/7}
      - {key: notes, name: Follow-up, calendar: 24/7}
  - key: sales
    name: Sales
    stages:
      - {key: lead, name: Lead, sla: 30m, warning: 10m}
"""

STAFF = [
    ("Ana Agent", "ana@example.com", "agent"),
    ("Bruno Agent", "bruno@example.com", "agent"),
    ("Sofia Supervisor", "sofia@example.com", "supervisor"),
    ("Ada Admin", "ada@example.com", "admin"),
]
ANA, BRUNO = "ana@example.com", "bruno@example.com"


def person(session: Session, email: str) -> User:
    return session.scalars(select(User).where(User.email == email)).one()


def writes(session: Session, phone: str, name: str, at: datetime, owner: str | None = None) -> int:
    """A customer's first message at `at` (a new card), owned by `owner`; the card's id."""
    inbound = whatsapp.parse_inbound(inbound_form(phone=phone, name=name))
    card = use.receive_message(session, inbound, at).card
    assert card is not None
    card.owner = person(session, owner) if owner else None
    session.flush()
    return card.id


def breach(session: Session, card_id: int, at: datetime) -> None:
    """The card's stage breach fires at `at` (its deadline)."""
    visit = use.current_visit(session, session.get_one(Card, card_id))
    assert visit is not None and visit.deadline_at == at
    assert escalation.fire(session, visit.id, sla.BREACH, at) is not None


def breached_and_resolved(session: Session, phone: str, at: datetime) -> int:
    """Ana's conversation whose New-stage breach fired at `at`; resolved since."""
    card_id = writes(session, phone, "Earlier", at - timedelta(hours=1), ANA)
    breach(session, card_id, at)
    use.resolve(session, card_id, at + timedelta(minutes=1))
    return card_id


def stage(session: Session, pipeline: str, key: str) -> Stage:
    return session.scalars(
        select(Stage).join(Pipeline).where(Pipeline.key == pipeline, Stage.key == key)
    ).one()


@pytest.fixture
def staffed(config: Config, session: Session) -> None:
    for name, email, role in STAFF:
        accounts.create_user(
            session, name=name, email=email, role=role, password=PASSWORD, whatsapp=None, now=T
        )
    session.commit()


@pytest.fixture
def scene(staffed: None, session: Session) -> dict[str, int]:
    """At T: Support/New (1h SLA, warned 15 min before) has two breached cards, one
    approaching, one on time; In progress one on time; Waiting on customer (pauses) one;
    Follow-up (no SLA) one; Sales/Lead (30 min, warned 10 min before) one approaching; one
    card is choosing a team; two of Ana's are resolved, breached yesterday and today."""
    pipeline_store.load(session, pipelines.parse(DESK_YAML), T - timedelta(days=2))
    minutes = lambda n: T + timedelta(minutes=n)  # noqa: E731
    # 23:30 yesterday in São Paulo (already today in UTC), and 00:30 today there.
    breached_and_resolved(session, "+5511900000090", SP_MIDNIGHT - timedelta(minutes=30))
    breached_and_resolved(session, "+5511900000091", SP_MIDNIGHT + timedelta(minutes=30))
    cards = {
        "olga": writes(session, "+5511900000001", "Olga", minutes(-100)),  # due T-40
        "caio": writes(session, "+5511900000002", "Caio", minutes(-70), ANA),  # due T-10
        "dora": writes(session, "+5511900000003", "Dora", minutes(-50), ANA),  # due T+10
        "edu": writes(session, "+5511900000004", "Edu", minutes(-20), BRUNO),  # due T+40
        "fabi": writes(session, "+5511900000005", "Fabi", minutes(-30)),
        "gil": writes(session, "+5511900000006", "Gil", minutes(-30)),
        "hugo": writes(session, "+5511900000007", "Hugo", minutes(-30)),
        "ines": writes(session, "+5511900000008", "Inês", minutes(-40), "sofia@example.com"),
    }
    breach(session, cards["caio"], minutes(-10))
    use.move_card(session, cards["fabi"], "open", minutes(-10))  # due T+110
    use.move_card(session, cards["gil"], "waiting", minutes(-20))
    use.move_card(session, cards["hugo"], "notes", minutes(-5))
    sales = session.get_one(Card, cards["ines"])
    sales.pipeline = stage(session, "sales", "lead").pipeline
    use.enter_stage(session, sales, stage(session, "sales", "lead"), minutes(-25))  # due T+5
    settings.save_menu(session, pipelines.MenuSpec(pipelines=["support", "sales"]), T)
    cards["jo"] = writes(session, "+5511900000010", "Jo", minutes(-1))  # choosing a team
    session.commit()
    return cards


def counts(board: dashboard.Dashboard) -> dict[str, dict[str, int]]:
    """{"pipeline/stage": {state: n}} without the zeros."""
    return {
        f"{p.name}/{s.name}": {state: n for state, n in s.counts.of.items() if n}
        for p in board.pipelines
        for s in p.stages
    }


def test_open_cards_are_counted_per_stage_pipeline_and_state(
    session: Session, scene: dict[str, int]
) -> None:
    board = dashboard.build(session, T)
    assert counts(board) == {
        "Support/New": {"breached": 2, "approaching": 1, "on_time": 1},
        "Support/In progress": {"on_time": 1},
        "Support/Waiting on customer": {"paused": 1},
        "Support/Follow-up": {"no_sla": 1},
        "Sales/Lead": {"approaching": 1},
    }
    support, sales = board.pipelines
    assert support.counts.total == 7 and sales.counts.of["approaching"] == 1
    assert dict(board.totals.of) == {
        "on_time": 2,
        "approaching": 2,
        "breached": 2,
        "paused": 1,
        "no_sla": 1,
    }
    assert board.choosing_team == 1
    assert board.open_cards == 9


def test_the_closest_to_breaching_come_first_and_the_most_overdue_apart(
    session: Session, scene: dict[str, int]
) -> None:
    board = dashboard.build(session, T)
    nearest = [(d.customer, d.pipeline, d.stage, d.owner, d.seconds_left) for d in board.nearest]
    assert nearest == [
        ("Inês", "Sales", "Lead", "Sofia Supervisor", 300),
        ("Dora", "Support", "New", "Ana Agent", 600),
        ("Edu", "Support", "New", "Bruno Agent", 2400),
        ("Fabi", "Support", "In progress", None, 6600),
    ]
    assert [d.state for d in board.nearest] == ["approaching", "approaching", "on_time", "on_time"]
    assert [(d.card_id, d.seconds_left) for d in board.overdue] == [
        (scene["olga"], -2400),
        (scene["caio"], -600),
    ]
    assert len(dashboard.build(session, T, nearest=1).nearest) == 1


@pytest.mark.parametrize("overdue", [False, True], ids=["nearest", "overdue"])
def test_the_cards_nearest_their_deadline_are_read_from_an_index(
    session: Session, scene: dict[str, int], overdue: bool
) -> None:
    """Both lists read the first ten open visits in deadline order from an index, however
    many cards are open (a scan and a sort of every open visit took 40 ms at 100,000)."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite, without statistics, picks an index by rule (it serves small desks)")
    plan = query_plan(session, dashboard.due_query(T, overdue, 10))
    assert "ix_stage_visits_open_deadline" in plan, plan


def test_each_agent_has_their_open_load_and_todays_breaches_in_the_desks_timezone(
    session: Session, scene: dict[str, int]
) -> None:
    board = dashboard.build(session, T)
    assert board.timezone == "America/Sao_Paulo"
    assert board.day_start == SP_MIDNIGHT
    # Ana: Caio's breach and the one at 00:30; the one at 23:30 yesterday does not count.
    # Supervisors own cards too (Inês) but are not in the list.
    assert [(a.name, a.open_cards, a.breaches_today) for a in board.agents] == [
        ("Ana Agent", 2, 2),
        ("Bruno Agent", 1, 0),
    ]
    # The next day in São Paulo starts at 03:00 UTC: nobody has breached yet.
    next_day = dashboard.build(session, SP_MIDNIGHT + timedelta(days=1, seconds=1))
    assert [a.breaches_today for a in next_day.agents] == [0, 0]


def test_the_sql_state_agrees_with_the_python_state(
    session: Session, scene: dict[str, int]
) -> None:
    """desk.visit_state_sql (the dashboard's counts), desk.in_state (the queue's filter)
    and desk.visit_state (the queue's column) on the same visits, at the edges: exactly at
    the warning and the deadline."""
    visits = session.scalars(select(StageVisit).where(StageVisit.left_at.is_(None))).all()
    instants = {T}
    for visit in visits:
        instants |= {at for at in (visit.warning_at, visit.deadline_at) if at is not None}
    edges = sorted(instants | {at - timedelta(microseconds=1) for at in instants})
    seen = set()
    for now in edges:
        in_sql = dict(
            session.execute(
                select(StageVisit.id, use.visit_state_sql(now)).where(StageVisit.left_at.is_(None))
            ).all()
        )
        in_python = {v.id: use.visit_state(v, now) for v in visits}
        assert in_sql == in_python, now
        for state in dashboard.STATES:  # the queue's filter says the same
            filtered = session.scalars(
                select(StageVisit.id).where(StageVisit.left_at.is_(None), use.in_state(now, state))
            ).all()
            assert sorted(filtered) == sorted(v for v, s in in_python.items() if s == state)
        seen |= set(in_python.values())
    assert seen == set(dashboard.STATES)


def test_building_the_dashboard_takes_the_same_few_queries_however_many_cards(
    config: Config, session: Session, scene: dict[str, int]
) -> None:
    statements: list[str] = []

    def counted(*args: object) -> None:
        statements.append(str(args[2]))

    engine = get_engine(config.database_url)
    event.listen(engine, "before_cursor_execute", counted)
    try:
        dashboard.build(session, T)
        few = len(statements)
        settings.put(session, settings.MENU, None, T)  # these go straight to a stage
        for n in range(20):
            writes(session, f"+55119100000{n:02d}", f"More {n}", T - timedelta(minutes=n))
        session.commit()
        statements.clear()
        dashboard.build(session, T)
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    assert len(statements) == few <= 10, statements


# --- the page -----------------------------------------------------------------------------------


def visible(fragment: str) -> str:
    """The text a person sees: charts (their tooltips), tags gone, spaces collapsed."""
    fragment = re.sub(r"<svg.*?</svg>", " ", fragment, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def part(shown: str, attribute: str, value: object, tag: str = "li") -> str:
    """The visible text of the element with data-`attribute`="`value`"."""
    match = re.search(rf'<{tag}[^>]*data-{attribute}="{value}"[^>]*>(.*?)</{tag}>', shown, re.S)
    assert match, (attribute, value)
    return visible(match.group(1))


def element(shown: str, id_: str) -> str:
    match = re.search(rf'id="{id_}"[^>]*>(.*?)<', shown, re.S)
    assert match, id_
    return match.group(1).strip()


@pytest.fixture
def at_t(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's clock reads T."""
    monkeypatch.setattr(dashboard_web, "utcnow", lambda: T)


def test_the_page_shows_counters_stages_lists_and_agents(
    client: FlaskClient, session: Session, scene: dict[str, int], at_t: None
) -> None:
    login(client, "sofia@example.com")
    answer = client.get("/dashboard")
    assert answer.status_code == 200
    shown = answer.get_data(as_text=True)
    assert "Dashboard" in visible(shown)
    totals = {
        key: element(shown, f"total-{key}")
        for key in ("on_time", "approaching", "breached", "paused", "no_sla", "choosing")
    }
    assert totals == {
        "on_time": "2",
        "approaching": "2",
        "breached": "2",
        "paused": "1",
        "no_sla": "1",
        "choosing": "1",
    }
    assert element(shown, "open-total") == "9"
    whole = visible(shown)
    assert "2 ✓ On time" in whole and "1 💬 Choosing a team" in whole
    ids = {s.key: s.id for s in session.scalars(select(Stage))}
    assert part(shown, "stage", ids["new"]) == "New 1 On time 1 Approaching 2 Breached"
    assert part(shown, "stage", ids["waiting"]) == "Waiting on customer 1 Paused"
    assert part(shown, "stage", ids["lead"]) == "Lead 1 Approaching"
    support = session.scalars(select(Pipeline.id).where(Pipeline.key == "support")).one()
    assert visible(part(shown, "pipeline", support, "section")).startswith("Support 7 open")
    nearest = part(shown, "card", scene["ines"])
    assert nearest == "5m 00s left Inês Sales › Lead · Sofia Supervisor"
    assert part(shown, "card", scene["olga"]) == "40m 00s over Olga Support › New · Unassigned"
    assert f'href="/cards/{scene["ines"]}"' in shown
    ana = person(session, ANA)
    assert part(shown, "agent", ana.id) == "Ana Agent 2 open 2 breaches today"
    # Charts are SVG drawn with attributes: nothing the Content-Security-Policy forbids.
    assert shown.count("<svg") >= 7
    assert "style=" not in shown and "<script>" not in shown


def test_the_fragment_is_the_body_alone_for_the_live_refresh(
    client: FlaskClient, scene: dict[str, int], at_t: None
) -> None:
    login(client, "ada@example.com")
    answer = client.get("/dashboard?fragment=1")
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.get_data(as_text=True)
    assert "<html" not in body and 'id="dashboard"' not in body
    assert element(body, "total-breached") == "2"
    assert element(body, "open-total") == "9"
    full = client.get("/dashboard").get_data(as_text=True)
    assert 'data-src="/dashboard?fragment=1"' in full
    assert 'src="/static/dashboard.js"' in full


def test_an_empty_desk_says_so(client: FlaskClient, config: Config) -> None:
    seed(config.database_url)
    login(client, "sofia@example.com")
    shown = client.get("/dashboard").get_data(as_text=True)
    assert element(shown, "open-total") == "0"
    text = visible(shown)
    assert "No deadline ahead." in text and "Nothing is breached." in text
    assert "Ana Agent 0 open 0 breaches today" in text


@pytest.mark.parametrize(
    ("email", "status"),
    [
        (None, 302),
        ("ana@example.com", 403),
        ("sofia@example.com", 200),
        ("ada@example.com", 200),
    ],
)
@pytest.mark.parametrize("path", ["/dashboard", "/dashboard?fragment=1"])
def test_only_supervisors_and_admins_see_the_dashboard(
    client: FlaskClient, staffed: None, email: str | None, status: int, path: str
) -> None:
    if email:
        login(client, email)
    answer = client.get(path)
    assert answer.status_code == status
    if status == 302:
        assert answer.headers["Location"].startswith("/login?next=")
    nav = client.get("/queue").get_data(as_text=True) if email else ""
    assert ('href="/dashboard"' in nav) == (status == 200)


# --- in a browser -------------------------------------------------------------------------------


@pytest.fixture
def running(config: Config) -> Iterator[tuple[str, TwilioServer]]:
    """The seeded desk running as in production: (web base URL, fake Twilio)."""
    seed(config.database_url, staff_windows=True)
    with (
        TwilioServer() as twilio,
        processes(config, twilio, "web", "worker", "sweep") as web,
    ):
        yield web, twilio


@pytest.mark.e2e
def test_a_new_conversation_shows_on_the_open_dashboard_without_a_reload(
    page: Page,  # noqa: F811
    running: tuple[str, TwilioServer],
) -> None:
    web, twilio = running
    refused: list[str] = []  # what the Content-Security-Policy blocked
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    log_in(page, web, "sofia@example.com")
    page.get_by_role("navigation").get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Dashboard")
    expect(page.locator("#open-total")).to_have_text("0")
    expect(page.locator("#total-on_time")).to_have_text("0")
    page.evaluate("window.sameDocument = true")

    customer_writes(web, twilio, "+5511987654321", "Maria Silva", "My order is late")

    expect(page.locator("#open-total")).to_have_text("1", timeout=POLL_MS)
    expect(page.locator("#total-on_time")).to_have_text("1")
    expect(page.locator(".stage-row").first).to_contain_text("New")
    expect(page.locator(".stage-row").first).to_contain_text("1 On time")
    expect(page.locator(".due.nearest li").first).to_contain_text("Maria Silva")
    expect(page.locator(".chart.donut .seg.on_time")).to_have_count(1)
    assert page.evaluate("window.sameDocument") is True, "the dashboard was reloaded"
    assert not refused, refused
    screenshot(page, "dashboard.png")
