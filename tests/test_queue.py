"""The agents' queue page, as a logged-in agent reads it."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, select, text

from whatsdesk import desk, pipeline_store, pipelines, settings, whatsapp
from whatsdesk.config import Config
from whatsdesk.db import get_engine, session_factory, utcnow
from whatsdesk.models import Card, Contact, Pipeline, Stage, StageVisit, User

from conftest import inbound_form, login, signed_post

ROW_RE = re.compile(r'<tr class="sla-[a-z_]+" data-card="(\d+)">(.*?)</tr>', re.S)
CELL_RE = re.compile(r"<td[^>]*>(.*?)</td>", re.S)
COLUMNS = ("#", "customer", "where", "owner", "last", "waiting", "sla")


def visible(fragment: str) -> str:
    """The text a person sees: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def queue_rows(page: str) -> list[dict[str, str]]:
    """Each row of the queue as {column: visible text}, top to bottom."""
    rows = []
    for card_id, row in ROW_RE.findall(page):
        cells = [visible(c) for c in CELL_RE.findall(row)]
        assert len(cells) == len(COLUMNS), row
        rows.append({"card": card_id, **dict(zip(COLUMNS, cells, strict=True))})
    return rows


def customer_writes(
    client: FlaskClient, config: Config, phone: str, name: str, body: str = "Hello", **extra: str
) -> int:
    """A signed inbound WhatsApp message; returns the customer's card id."""
    form = {**inbound_form(phone=phone, body=body, name=name), **extra}
    answer = signed_post(client, config, "/twilio/whatsapp", form)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    with session_factory(config.database_url)() as s:
        card_id = s.scalars(
            select(Card.id).join(Contact).where(Contact.address == f"whatsapp:{phone}")
        ).one()
    return card_id


def set_card(config: Config, card_id: int, **values: object) -> None:
    with session_factory(config.database_url)() as s:
        card = s.get(Card, card_id)
        assert card is not None
        for name, value in values.items():
            setattr(card, name, value)
        s.commit()


def set_timers(
    config: Config, card_id: int, warning_at: datetime | None, deadline_at: datetime | None
) -> None:
    """The card's current stage visit rings at these instants."""
    with session_factory(config.database_url)() as s:
        visit = s.scalars(
            select(StageVisit).where(StageVisit.card_id == card_id, StageVisit.left_at.is_(None))
        ).one()
        visit.warning_at, visit.deadline_at = warning_at, deadline_at
        s.commit()


def queue_page(client: FlaskClient) -> str:
    answer = client.get("/queue")
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


@pytest.fixture
def agent(client: FlaskClient, seeded: Config) -> Config:
    """An agent logged in on `client`; the seeded config."""
    login(client)
    return seeded


def test_queue_lists_the_longest_waiting_customer_first(client: FlaskClient, agent: Config) -> None:
    alice = customer_writes(client, agent, "+5511900000001", "Alice")
    bob = customer_writes(client, agent, "+5511900000002", "Bob")
    carla = customer_writes(client, agent, "+5511900000003", "Carla")
    dora = customer_writes(client, agent, "+5511900000004", "Dora")
    set_card(agent, alice, waiting_since=datetime(2020, 1, 1, 10, 30, tzinfo=UTC))
    set_card(agent, bob, waiting_since=datetime(2020, 1, 1, 9, 0, tzinfo=UTC))
    set_card(agent, carla, waiting_since=datetime(2020, 1, 1, 10, 0, tzinfo=UTC))
    set_card(agent, dora, waiting_since=None)  # answered: still open, after those waiting

    rows = queue_rows(queue_page(client))

    assert [r["customer"].split()[0] for r in rows] == ["Bob", "Carla", "Alice", "Dora"]
    assert [r["#"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[3]["waiting"] == "answered"


def test_queue_leaves_out_resolved_cards(client: FlaskClient, agent: Config) -> None:
    customer_writes(client, agent, "+5511900000001", "Alice")
    done = customer_writes(client, agent, "+5511900000002", "Bob")
    set_card(agent, done, status="resolved", resolved_at=utcnow())

    rows = queue_rows(queue_page(client))

    assert [r["customer"] for r in rows] == ["Alice +5511900000001"]


def test_queue_row_shows_who_where_owner_message_and_waiting_time(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(client, agent, "+5511999990000", "Maria", body="First question")
    customer_writes(client, agent, "+5511999990000", "Maria", body="Are you there?")
    set_card(agent, card, waiting_since=utcnow() - timedelta(hours=2, minutes=5))

    page = queue_page(client)

    assert "Queue longest-waiting customer first · 1 open" in visible(page)
    [row] = queue_rows(page)
    assert row["customer"] == "Maria +5511999990000"
    assert row["where"] == "Support · New"
    assert row["owner"] == "Unassigned"
    assert row["last"] == "Are you there?"
    assert row["waiting"] == "2h 05m"


def test_queue_row_shows_the_owner_by_name(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(client, agent, "+5511999990000", "Maria")
    with session_factory(agent.database_url)() as s:
        bruno = s.scalars(select(User.id).where(User.email == "bruno@example.com")).one()
    set_card(agent, card, owner_id=bruno)

    [row] = queue_rows(queue_page(client))

    assert row["owner"] == "Bruno Agent"


def test_queue_shows_the_number_when_the_customer_has_no_profile_name(
    client: FlaskClient, agent: Config
) -> None:
    customer_writes(client, agent, "+5511999990000", "", ProfileName="")

    [row] = queue_rows(queue_page(client))

    assert row["customer"] == "+5511999990000 +5511999990000"


def test_queue_preview_of_a_long_message_is_cut(client: FlaskClient, agent: Config) -> None:
    body = "word " * 60
    customer_writes(client, agent, "+5511999990000", "Maria", body=body)

    [row] = queue_rows(queue_page(client))

    assert row["last"].startswith("word word")
    assert row["last"].endswith("...")
    assert len(row["last"]) <= 80


def test_queue_preview_of_a_photo_says_media(client: FlaskClient, agent: Config) -> None:
    customer_writes(
        client,
        agent,
        "+5511999990000",
        "Maria",
        body="",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/media/ME1",
        MediaContentType0="image/jpeg",
    )

    [row] = queue_rows(queue_page(client))

    assert row["last"] == "[media]"


def test_queue_shows_each_sla_state_in_words(client: FlaskClient, agent: Config) -> None:
    on_time = customer_writes(client, agent, "+5511900000001", "Olga")
    approaching = customer_writes(client, agent, "+5511900000002", "Paulo")
    breached = customer_writes(client, agent, "+5511900000003", "Rita")
    current = utcnow()
    set_timers(agent, on_time, current + timedelta(hours=2), current + timedelta(hours=3))
    set_timers(agent, approaching, current - timedelta(minutes=1), current + timedelta(hours=1))
    set_timers(agent, breached, current - timedelta(hours=4), current - timedelta(hours=3))

    rows = {r["customer"].split()[0]: r for r in queue_rows(queue_page(client))}

    assert rows["Olga"]["sla"] == "✓ On time 2h 59m left"
    assert re.fullmatch(r"⏳ Approaching 59m 5\ds left", rows["Paulo"]["sla"]), rows["Paulo"]
    assert rows["Rita"]["sla"] == "⚠ Breached 3h 00m over"


def test_each_row_shows_its_cards_current_stage_sla_and_newest_customer_message(
    client: FlaskClient, agent: Config
) -> None:
    olga = customer_writes(client, agent, "+5511900000001", "Olga", body="Olga here")
    paulo = customer_writes(client, agent, "+5511900000002", "Paulo", body="First question")
    customer_writes(client, agent, "+5511900000002", "Paulo", body="Are you there?")
    rita = customer_writes(client, agent, "+5511900000003", "Rita", body="Rita here")
    current = utcnow()
    for card in (olga, paulo, rita):  # all breached in the first stage, "New"
        set_timers(agent, card, current - timedelta(hours=2), current - timedelta(hours=1))
    with session_factory(agent.database_url)() as s:
        desk.move_card(s, paulo, "open", current)  # "In progress": SLA 1 h from now
        desk.move_card(s, rita, "waiting", current)  # "Waiting on customer": paused, no SLA
        s.commit()

    rows = {r["customer"].split()[0]: r for r in queue_rows(queue_page(client))}

    assert rows["Olga"]["where"] == "Support · New"
    assert rows["Olga"]["sla"] == "⚠ Breached 1h 00m over"
    assert rows["Olga"]["last"] == "Olga here"
    assert rows["Paulo"]["where"] == "Support · In progress"
    assert re.fullmatch(r"✓ On time 59m 5\ds left", rows["Paulo"]["sla"]), rows["Paulo"]
    assert rows["Paulo"]["last"] == "Are you there?"
    assert rows["Rita"]["where"] == "Support · Waiting on customer"
    assert rows["Rita"]["sla"] == "⏸ Paused"
    assert rows["Rita"]["last"] == "Rita here"


def test_queue_says_when_a_stage_has_no_sla(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(client, agent, "+5511900000001", "Olga")
    set_timers(agent, card, None, None)

    [row] = queue_rows(queue_page(client))

    assert row["sla"] == "– No SLA"


def test_customer_text_is_escaped(client: FlaskClient, agent: Config) -> None:
    customer_writes(
        client,
        agent,
        "+5511999990000",
        '<img src=x onerror="alert(2)">',
        body="<script>alert(1)</script>",
    )

    page = queue_page(client)

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    [row] = queue_rows(page)
    assert row["last"] == "<script>alert(1)</script>"


def test_fragment_returns_just_the_rows_and_the_pager(client: FlaskClient, agent: Config) -> None:
    customer_writes(client, agent, "+5511900000001", "Alice")
    customer_writes(client, agent, "+5511900000002", "Bob")

    answer = client.get("/queue?fragment=1")

    assert answer.status_code == 200
    fragment = answer.get_data(as_text=True)
    assert '<tbody id="queue-rows"' in fragment
    assert '<div id="queue-pager">' in fragment
    for whole_page_only in ("<html", "<head", "<thead", "<h1", "Log out", "queue.js", "<form"):
        assert whole_page_only not in fragment
    assert [r["customer"].split()[0] for r in queue_rows(fragment)] == ["Alice", "Bob"]


def test_fragment_needs_a_login(client: FlaskClient, seeded: Config) -> None:
    answer = client.get("/queue?fragment=1")

    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login")


def test_queue_with_nobody_waiting_says_so(client: FlaskClient, agent: Config) -> None:
    page = queue_page(client)

    assert "Nobody is waiting." in page
    assert queue_rows(page) == []
    assert "Nobody is waiting." in client.get("/queue?fragment=1").get_data(as_text=True)


@contextmanager
def statements_run(engine: Engine, wanted: Callable[[str], bool]) -> Iterator[list[Any]]:
    """The statements (SQL, parameters) run meanwhile whose SQL is `wanted`, to EXPLAIN."""
    seen: list[Any] = []

    def capture(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        if wanted(sql):
            seen.append((sql, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


def test_waiting_order_query_uses_the_queue_index(client: FlaskClient, agent: Config) -> None:
    for n in range(3):
        customer_writes(client, agent, f"+551190000000{n}", f"Customer {n}")
    engine = get_engine(agent.database_url)
    with session_factory(agent.database_url)() as s:
        with statements_run(engine, lambda sql: "ORDER BY cards.waiting_since" in sql) as seen:
            assert len(desk.waiting_queue(s, utcnow())) == 3
    assert len(seen) == 1
    statement, parameters = seen[0]

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " | ".join(
                str(row[-1])
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            assert "USING INDEX ix_cards_queue" in plan, plan
            assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
        else:
            # Three rows make a scan and a sort cheapest; ask whether the index can serve
            # both the filter and the order (a disabled plan still appears if nothing else can).
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                conn.execute(text(f"SET LOCAL {setting} = off"))
            plan = " | ".join(
                str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            )
            assert "Index Scan using ix_cards_queue on cards" in plan, plan
            assert "Sort" not in plan, plan


@pytest.mark.parametrize(
    ("narrowed", "index"), [("stage", "ix_cards_stage_queue"), ("owner", "ix_cards_owner_queue")]
)
def test_the_queue_narrowed_to_a_stage_or_an_owner_counts_and_pages_on_an_index_of_its_own(
    client: FlaskClient, agent: Config, narrowed: str, index: str
) -> None:
    """Not every open card read and filtered: at 100,000 open cards that is what kept the
    queue by stage over its 50 ms."""
    for n in range(3):
        customer_writes(client, agent, f"+551190000000{n}", f"Customer {n}")
    with session_factory(agent.database_url)() as s:
        card = s.scalars(select(Card)).first()
        assert card is not None
        card.owner_id = s.scalars(select(User.id)).first()
        s.commit()
        if narrowed == "stage":
            filters = desk.QueueFilter(stage_id=card.stage_id)
        else:
            filters = desk.QueueFilter(owner="mine", viewer_id=card.owner_id)
    engine = get_engine(agent.database_url)

    def the_count_or_the_page(sql: str) -> bool:
        return "FROM cards" in sql and ("count(*)" in sql or "ORDER BY cards.waiting_since" in sql)

    with session_factory(agent.database_url)() as s:
        with statements_run(engine, the_count_or_the_page) as seen:
            assert desk.queue_page(s, utcnow(), filters).total >= 1
    assert len(seen) == 2  # the count and the waiting customers' page

    column = f"{narrowed}_id"
    for statement, parameters in seen:
        with engine.connect() as conn, conn.begin() as transaction:
            if engine.dialect.name == "sqlite":
                explain = f"EXPLAIN QUERY PLAN {statement}"
                served = f"{column}=?"  # SEARCH cards USING INDEX … (status=? AND stage_id=?)
            else:
                # Which of the cards' indexes PostgreSQL picks for three rows depends on its
                # statistics; with the others set aside (dropped in this transaction, rolled
                # back below) and scans and sorts off, ask whether this one serves the
                # narrowing as an index condition.
                others = conn.execute(
                    text(
                        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                        "AND tablename = 'cards' AND indexname NOT IN ('pk_cards', :keep)"
                    ),
                    {"keep": index},
                ).scalars()
                for other in list(others):
                    conn.execute(text(f'DROP INDEX "{other}"'))
                for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                    conn.execute(text(f"SET LOCAL {setting} = off"))
                explain = f"EXPLAIN {statement}"
                served = f"{column} = "  # Index Cond: ((status = …) AND (stage_id = …))
            plan = " | ".join(str(row) for row in conn.exec_driver_sql(explain, parameters))
            transaction.rollback()
        assert index in plan and served in plan, plan
        assert f"Filter: ({column}" not in plan, plan


# --- filters and pages --------------------------------------------------------------------------

SALES_YAML = """
pipelines:
  - key: sales
    name: Sales
    stages:
      - key: lead
        name: Lead
        sla: 1h
"""


def rows_of(client: FlaskClient, path: str) -> list[dict[str, str]]:
    answer = client.get(path)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return queue_rows(answer.get_data(as_text=True))


def names(rows: list[dict[str, str]]) -> list[str]:
    return [r["customer"].rsplit(" ", 1)[0] for r in rows]


def id_of(config: Config, model: type[Pipeline] | type[Stage], key: str) -> int:
    with session_factory(config.database_url)() as s:
        return int(s.scalars(select(model.id).where(model.key == key)).one())


def user_id(config: Config, email: str) -> int:
    with session_factory(config.database_url)() as s:
        return int(s.scalars(select(User.id).where(User.email == email)).one())


def test_queue_filters_by_pipeline(client: FlaskClient, agent: Config) -> None:
    customer_writes(client, agent, "+5511900000001", "Alice")
    with session_factory(agent.database_url)() as s:
        pipeline_store.load(s, pipelines.parse(SALES_YAML), utcnow())
        s.commit()
    bob = customer_writes(client, agent, "+5511900000002", "Bob")
    sales = id_of(agent, Pipeline, "sales")
    set_card(agent, bob, pipeline_id=sales, stage_id=id_of(agent, Stage, "lead"))

    answer = client.get(f"/queue?pipeline={sales}")

    page = answer.get_data(as_text=True)
    assert [(r["customer"], r["where"]) for r in queue_rows(page)] == [
        ("Bob +5511900000002", "Sales · Lead")
    ]
    assert f'<option value="{sales}" selected>Sales</option>' in page
    assert "longest-waiting customer first · 1 open" in visible(page)


def test_queue_filters_by_stage(client: FlaskClient, agent: Config) -> None:
    customer_writes(client, agent, "+5511900000001", "Alice")
    bob = customer_writes(client, agent, "+5511900000002", "Bob")
    with session_factory(agent.database_url)() as s:
        desk.move_card(s, bob, "open", utcnow())
        s.commit()

    in_progress = rows_of(client, f"/queue?stage={id_of(agent, Stage, 'open')}")
    new = rows_of(client, f"/queue?stage={id_of(agent, Stage, 'new')}")

    assert [(r["customer"], r["where"]) for r in in_progress] == [
        ("Bob +5511900000002", "Support · In progress")
    ]
    assert names(new) == ["Alice"]


@pytest.mark.parametrize(
    ("owner", "shown"),
    [("mine", ["Alice"]), ("unassigned", ["Carla"]), ("anyone", ["Alice", "Bob", "Carla"])],
)
def test_queue_filters_by_owner(
    client: FlaskClient, agent: Config, owner: str, shown: list[str]
) -> None:
    alice = customer_writes(client, agent, "+5511900000001", "Alice")
    bob = customer_writes(client, agent, "+5511900000002", "Bob")
    customer_writes(client, agent, "+5511900000003", "Carla")
    set_card(agent, alice, owner_id=user_id(agent, "ana@example.com"))  # Ana is logged in
    set_card(agent, bob, owner_id=user_id(agent, "bruno@example.com"))

    assert names(rows_of(client, f"/queue?owner={owner}")) == shown


@pytest.mark.parametrize(
    ("state", "shown"),
    [("breached", "Rita"), ("approaching", "Paulo"), ("on_time", "Olga"), ("paused", "Pia")],
)
def test_queue_filters_by_sla_state(
    client: FlaskClient, agent: Config, state: str, shown: str
) -> None:
    on_time = customer_writes(client, agent, "+5511900000001", "Olga")
    approaching = customer_writes(client, agent, "+5511900000002", "Paulo")
    breached = customer_writes(client, agent, "+5511900000003", "Rita")
    paused = customer_writes(client, agent, "+5511900000004", "Pia")
    current = utcnow()
    set_timers(agent, on_time, current + timedelta(hours=2), current + timedelta(hours=3))
    set_timers(agent, approaching, current - timedelta(minutes=1), current + timedelta(hours=1))
    set_timers(agent, breached, current - timedelta(hours=4), current - timedelta(hours=3))
    with session_factory(agent.database_url)() as s:
        desk.move_card(s, paused, "waiting", current)  # "Waiting on customer" pauses
        s.commit()

    page = client.get(f"/queue?state={state}").get_data(as_text=True)

    assert names(queue_rows(page)) == [shown]
    assert re.search(rf'<option value="{state}" selected>', page)


def test_queue_filtered_to_no_sla_keeps_customers_still_choosing_a_team(
    client: FlaskClient, agent: Config
) -> None:
    """A customer at the team menu has no stage clock yet and their row says "No SLA": the
    "No SLA" filter shows them beside the cards in a stage without one."""
    in_a_stage = customer_writes(client, agent, "+5511900000001", "Olga")
    set_timers(agent, in_a_stage, None, None)
    customer_writes(client, agent, "+5511900000002", "Caio")  # on time
    with session_factory(agent.database_url)() as s:
        pipeline_store.load(s, pipelines.parse(SALES_YAML), utcnow())
        settings.save_menu(s, pipelines.MenuSpec(pipelines=["support", "sales"]), utcnow())
        s.commit()
    customer_writes(client, agent, "+5511900000003", "Jo")  # answered by the menu

    rows = rows_of(client, "/queue?state=no_sla")

    assert sorted((r["customer"].rsplit(" ", 1)[0], r["sla"]) for r in rows) == [
        ("Jo", "– No SLA"),
        ("Olga", "– No SLA"),
    ]


def test_queue_says_when_nothing_matches_the_filters(client: FlaskClient, agent: Config) -> None:
    customer_writes(client, agent, "+5511900000001", "Alice")

    page = client.get("/queue?owner=mine").get_data(as_text=True)

    assert queue_rows(page) == []
    assert "No open conversation matches these filters." in page


T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def crowded(agent: Config) -> Config:
    """120 open conversations: 70 customers waiting ("Waiting 01" longest), then 50 already
    answered ("Answered 01" opened first), every one of them opened before any of those
    waiting."""
    with session_factory(agent.database_url)() as s:
        answered = []
        for n in range(1, 51):
            form = inbound_form(phone=f"+55119100{n:05d}", name=f"Answered {n:02d}")
            at = T0 + timedelta(minutes=n)
            received = desk.receive_message(s, whatsapp.parse_inbound(form), at)
            answered.append(received.card)
        for n in range(1, 71):
            form = inbound_form(phone=f"+55119200{n:05d}", name=f"Waiting {n:02d}")
            desk.receive_message(
                s, whatsapp.parse_inbound(form), T0 + timedelta(hours=2, minutes=n)
            )
        for card in answered:
            assert card is not None
            card.waiting_since = None
        s.commit()
    return agent


def pager(page: str) -> str:
    found = re.search(r'<nav class="pages" aria-label="Pages">(.*?)</nav>', page, re.S)
    assert found, page
    return visible(found[1])


def link(page: str, rel: str) -> str:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', page)
    assert found, page
    return html.unescape(found[1])


def test_queue_shows_fifty_rows_a_page(client: FlaskClient, crowded: Config) -> None:
    first = client.get("/queue").get_data(as_text=True)
    second = client.get(link(first, "next")).get_data(as_text=True)
    third = client.get(link(second, "next")).get_data(as_text=True)

    assert [r["#"] for r in queue_rows(first)] == [str(n) for n in range(1, 51)]
    assert [r["#"] for r in queue_rows(second)] == [str(n) for n in range(51, 101)]
    assert [r["#"] for r in queue_rows(third)] == [str(n) for n in range(101, 121)]
    assert pager(first) == "Page 1 of 3 Next →"
    assert pager(second) == "← Previous Page 2 of 3 Next →"
    assert pager(third) == "← Previous Page 3 of 3"
    assert "longest-waiting customer first · 120 open" in visible(first)


def test_waiting_customers_come_before_answered_ones_across_pages(
    client: FlaskClient, crowded: Config
) -> None:
    pages = [rows_of(client, f"/queue?page={n}") for n in (1, 2, 3)]

    waiting = [f"Waiting {n:02d}" for n in range(1, 71)]
    answered = [f"Answered {n:02d}" for n in range(1, 51)]
    assert names(pages[0]) == waiting[:50]
    assert names(pages[1]) == waiting[50:] + answered[:30]
    assert names(pages[2]) == answered[30:]
    assert [r["waiting"] == "answered" for r in pages[1]] == [False] * 20 + [True] * 30


def test_the_pages_keep_the_filters(client: FlaskClient, crowded: Config) -> None:
    first = client.get("/queue?owner=unassigned").get_data(as_text=True)

    following = link(first, "next")

    assert parse_qs(urlsplit(following).query) == {"owner": ["unassigned"], "page": ["2"]}
    second = client.get(following).get_data(as_text=True)
    assert queue_rows(second)[0]["#"] == "51"
    assert parse_qs(urlsplit(link(second, "prev")).query) == {
        "owner": ["unassigned"],
        "page": ["1"],
    }


def refresh_source(page: str) -> str:
    """Where the page fetches its rows again every few seconds."""
    found = re.search(r'<tbody id="queue-rows" data-src="([^"]+)">', page)
    assert found, page
    return html.unescape(found[1])


def test_the_refreshing_rows_keep_the_filters(client: FlaskClient, agent: Config) -> None:
    alice = customer_writes(client, agent, "+5511900000001", "Alice")
    bob = customer_writes(client, agent, "+5511900000002", "Bob")
    carla = customer_writes(client, agent, "+5511900000003", "Carla")
    current = utcnow()
    for card in (alice, bob):
        set_timers(agent, card, current - timedelta(hours=2), current - timedelta(hours=1))
    set_timers(agent, carla, current + timedelta(hours=1), current + timedelta(hours=2))
    set_card(agent, bob, owner_id=user_id(agent, "bruno@example.com"))
    page = client.get("/queue?owner=unassigned&state=breached").get_data(as_text=True)

    source = refresh_source(page)

    assert parse_qs(urlsplit(source).query) == {
        "fragment": ["1"],
        "page": ["1"],
        "owner": ["unassigned"],
        "state": ["breached"],
    }
    assert names(queue_rows(page)) == ["Alice"]
    assert names(rows_of(client, source)) == ["Alice"]


def test_the_refreshing_rows_of_page_two_are_page_two(client: FlaskClient, crowded: Config) -> None:
    page = client.get("/queue?page=2").get_data(as_text=True)

    rows = rows_of(client, refresh_source(page))

    assert rows == queue_rows(page)
    assert rows[0]["#"] == "51"


def customers_wait(config: Config, count: int, first: int = 1) -> None:
    """`count` more customers waiting ("Waiting NN"), each with a conversation of their own."""
    with session_factory(config.database_url)() as s:
        for n in range(first, first + count):
            form = inbound_form(phone=f"+55119300{n:05d}", name=f"Waiting {n:02d}")
            desk.receive_message(s, whatsapp.parse_inbound(form), T0 + timedelta(minutes=n))
        s.commit()


def test_the_refresh_brings_the_pager_of_a_grown_backlog(
    client: FlaskClient, agent: Config
) -> None:
    customers_wait(agent, 50)
    page = client.get("/queue").get_data(as_text=True)
    assert '<nav class="pages"' not in page  # one page: no pager

    customers_wait(agent, 1, first=51)
    refreshed = client.get(refresh_source(page)).get_data(as_text=True)

    assert pager(refreshed) == "Page 1 of 2 Next →"
    assert parse_qs(urlsplit(link(refreshed, "next")).query) == {"page": ["2"]}
    assert len(queue_rows(refreshed)) == 50


def test_unknown_query_arguments_are_left_out_of_the_queues_links(
    client: FlaskClient, agent: Config
) -> None:
    customer_writes(client, agent, "+5511900000001", "Alice")
    answer = client.get("/queue?owner=unassigned&endpoint=x&table=y&_external=1")
    page = answer.get_data(as_text=True)

    assert answer.status_code == 200 and "Alice" in page
    assert parse_qs(urlsplit(refresh_source(page)).query) == {
        "fragment": ["1"],
        "page": ["1"],
        "owner": ["unassigned"],
    }


def test_the_refreshing_pager_keeps_the_filters(client: FlaskClient, crowded: Config) -> None:
    page = client.get("/queue?owner=unassigned&page=2").get_data(as_text=True)

    refreshed = client.get(refresh_source(page)).get_data(as_text=True)

    assert pager(refreshed) == pager(page) == "← Previous Page 2 of 3 Next →"
    assert parse_qs(urlsplit(link(refreshed, "prev")).query) == {
        "owner": ["unassigned"],
        "page": ["1"],
    }
    assert parse_qs(urlsplit(link(refreshed, "next")).query) == {
        "owner": ["unassigned"],
        "page": ["3"],
    }


def test_a_page_gone_with_a_shrunk_backlog_shows_the_last_page(
    client: FlaskClient, crowded: Config
) -> None:
    page = client.get("/queue?page=3").get_data(as_text=True)
    with session_factory(crowded.database_url)() as s:  # 30 answered: 90 left, two pages
        for card in s.scalars(select(Card).where(Card.waiting_since.is_(None)).limit(30)):
            card.status, card.resolved_at = "resolved", utcnow()
        s.commit()

    refreshed = client.get(refresh_source(page)).get_data(as_text=True)
    reloaded = client.get("/queue?page=3").get_data(as_text=True)

    for shown in (refreshed, reloaded):
        assert pager(shown) == "← Previous Page 2 of 2"
        assert [r["#"] for r in queue_rows(shown)] == [str(n) for n in range(51, 91)]
        # The next refresh stays on the page shown.
        assert parse_qs(urlsplit(refresh_source(shown)).query)["page"] == ["2"]


def test_each_row_opens_its_conversation(client: FlaskClient, agent: Config) -> None:
    alice = customer_writes(client, agent, "+5511900000001", "Alice", body="Where is my order?")
    bob = customer_writes(client, agent, "+5511900000002", "Bob", body="I need an invoice")
    page = queue_page(client)

    links = dict(
        re.findall(r'<tr class="sla-[a-z_]+" data-card="(\d+)">.*?<a href="([^"]+)"', page, re.S)
    )

    assert links == {str(alice): f"/cards/{alice}", str(bob): f"/cards/{bob}"}
    conversation = client.get(links[str(bob)]).get_data(as_text=True)
    assert "<h1>Bob <small>" in conversation
    assert "I need an invoice" in conversation
    assert "Where is my order?" not in conversation
