"""Pages on a big desk: the agents' queue (first page, by stage, by owner) with the plans of
its queries, the supervisors' dashboard and a 30-day report; the sweep's cost as it grows."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import requests
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from whatsdesk import desk
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import User

from . import data, timers
from .harness import Sizes, Stores, children, processes, rss_mib, summary


def login(base: str, email: str) -> requests.Session:
    browser = requests.Session()
    page = browser.get(base + "/login", timeout=10).text
    token = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page)
    assert token, "no CSRF token on /login"
    answer = browser.post(
        base + "/login",
        data={"email": email, "password": data.PASSWORD, "csrf_token": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, f"login as {email} failed: {answer.status_code}"
    return browser


def fetch(browser: requests.Session, url: str, repeat: int) -> dict[str, Any]:
    """Latency of `repeat` sequential GETs after two warm-up ones; None when absent."""
    first = browser.get(url, timeout=30)
    if first.status_code == 404:
        return {"missing": True}
    assert first.status_code == 200, f"{url}: {first.status_code}"
    browser.get(url, timeout=30)
    spent = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = browser.get(url, timeout=30)
        spent.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200
    return summary(spent)


def queue_plans(stores: Stores, filters: dict[str, desk.QueueFilter]) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of each statement desk.queue_page runs for each filter."""
    engine = get_engine(stores.database_url)
    plans: dict[str, list[str]] = {}
    for name, queue_filter in filters.items():
        seen: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            seen.append((statement, params))  # noqa: B023 (used before the next loop)

        event.listen(engine, "before_cursor_execute", capture)
        try:
            with session_factory(stores.database_url)() as session:
                desk.queue_page(session, datetime.now(UTC), queue_filter)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        shown = []
        with engine.connect() as conn:
            for statement, params in seen:
                if not statement.lstrip().upper().startswith("SELECT"):
                    continue
                rows = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + statement, params
                ).all()
                shown.append(statement.strip() + "\n\n" + "\n".join(r[0] for r in rows))
        plans[name] = shown
    return plans


def _filters(session: Session, seeded: dict[str, Any]) -> dict[str, desk.QueueFilter]:
    agent = session.scalars(select(User).where(User.email == data.AGENTS[0][1])).one()
    return {
        "first page": desk.QueueFilter(),
        "by stage": desk.QueueFilter(stage_id=seeded["stages"]["reply"]),
        "mine": desk.QueueFilter(owner="mine", viewer_id=agent.id),
        "unassigned": desk.QueueFilter(owner="unassigned"),
        "breached": desk.QueueFilter(state="breached"),
    }


def run(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    stores.empty()
    now = datetime.now(UTC)
    seeded = data.seed(stores.database_url, now)
    per_card = max(1, sizes.messages // sizes.open_cards)
    tenth = sizes.open_cards // 10
    started = time.perf_counter()
    data.open_cards(stores.database_url, seeded, tenth, now, messages_per_card=per_card)
    sweeps = [timers.sweep_nothing_due(stores, tenth, 20)]
    data.open_cards(
        stores.database_url, seeded, sizes.open_cards - tenth, now, messages_per_card=per_card
    )
    sweeps.append(timers.sweep_nothing_due(stores, sizes.open_cards, 20))
    visits = data.history(
        stores.database_url, seeded, sizes.history_days, sizes.history_visits_per_day, now
    )
    loaded_in = time.perf_counter() - started
    sweep = timers.sweep_cost(stores, seeded, sizes.open_cards, 20)
    with session_factory(stores.database_url)() as session:
        filters = _filters(session, seeded)
        agent_id = filters["mine"].viewer_id
    urls = {
        "first page": "/queue",
        "by stage": f"/queue?stage={seeded['stages']['reply']}",
        "mine": "/queue?owner=mine",
        "unassigned": "/queue?owner=unassigned",
        "breached": "/queue?state=breached",
        "rows refresh (fragment)": "/queue?fragment=1",
    }
    with processes(stores, ["web"]) as running:
        agent = login(running.base, data.AGENTS[0][1])
        queue = {
            name: fetch(agent, running.base + url, sizes.page_requests)
            for name, url in urls.items()
        }
        supervisor = login(running.base, data.SUPERVISORS[0][1])
        boards = {
            "dashboard": fetch(supervisor, running.base + "/dashboard", sizes.page_requests // 2),
            "30-day report": fetch(supervisor, running.base + "/reports?period=30d", 20),
        }
        web = children(running.pids("web")[0])
        rss_web = max((rss_mib(pid) for pid in web), default=0.0)
    return {
        "open_cards": sizes.open_cards,
        "messages": per_card * sizes.open_cards,
        "history_visits": visits,
        "history_days": sizes.history_days,
        "loaded_in_s": loaded_in,
        "queue": queue,
        "boards": boards,
        "plans": queue_plans(stores, filters),
        "sweep_open": sweeps,
        "sweep_due": sweep["rows"],
        "sweep_plan": timers.explain_sweep(stores),
        "rss_web_mib": rss_web,
        "agent_id": agent_id,
    }
