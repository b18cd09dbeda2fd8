"""The conversation page, as staff use it: the history, taking and giving a conversation,
answering inside and outside WhatsApp's 24-hour window, notes, moves, and customers' photos
and files fetched through the desk."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, joinedload

from whatsdesk import (
    create_app,
    desk,
    escalation,
    jobs,
    pipeline_store,
    pipelines,
    whatsapp,
    workspace,
)
from whatsdesk.config import Config
from whatsdesk.db import get_engine, session_factory, utcnow
from whatsdesk.models import Card, Message, StageVisit, User

from conftest import (
    PIPELINE_YAML,
    csrf_token,
    eventually,
    inbound_form,
    keeps_another_waiting,
    login,
)
from twilio_server import TwilioServer

# 4 March 2025, long before the tests run: a customer who wrote then has no open window.
T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
TEMPLATE_SID = "HX" + "0123456789abcdef" * 2
REPLIES_YAML = f"""
replies:
  canned:
    - title: Greeting
      text: "Hello {{customer}}, this is {{agent}}. How can I help?"
    - title: Closing
      text: "Anything else for conversation {{card}}?"
  templates:
    - key: follow_up
      name: Follow-up
      content_sid: {TEMPLATE_SID}
      text: "Hi {{customer}}, we have news about your request. Reply to continue."
      variables: {{"1": "{{customer}}"}}
"""
ACTIONS = ("claim", "assign", "reply", "template", "note", "move", "resolve", "reopen")


# --- what a person sees -------------------------------------------------------------------------


def visible(fragment: str) -> str:
    """The text a person sees: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def history(page: str) -> list[tuple[str, str]]:
    """The conversation's lines, top to bottom: (who or what, the text shown)."""
    thread = re.search(r'<ol class="thread" id="history">(.*?)</ol>', page, re.S)
    assert thread, page
    lines = re.findall(r'<li class="(?:msg|activity) ([a-z-]+)"[^>]*>(.*?)</li>', thread[1], re.S)
    return [(kind, visible(body)) for kind, body in lines]


def flashes(page: str) -> list[str]:
    return [visible(m) for m in re.findall(r'<p class="flash [a-z]+" role="alert">(.*?)</p>', page)]


def owner_line(page: str) -> str:
    found = re.search(r'<p class="owner">(.*?)</p>', page, re.S)
    assert found, page
    return visible(found[1])


def where_line(page: str) -> str:
    found = re.search(r'<p class="where">(.*?)</p>', page, re.S)
    assert found, page
    return visible(found[1])


def timeline(page: str) -> list[list[str]]:
    """The stage timeline's rows: stage, entered, time there, SLA, events."""
    section = re.search(r'<section class="timeline card">(.*?)</section>', page, re.S)
    assert section, page
    rows = re.findall(r'<tr class="outcome-[a-z_]+">(.*?)</tr>', section[1], re.S)
    return [[visible(cell) for cell in re.findall(r"<td>(.*?)</td>", row, re.S)] for row in rows]


def without_time_there(rows: list[list[str]]) -> list[list[str]]:
    """Timeline rows without their time in the stage, which grows while a page is read."""
    return [[stage, entered, *rest] for stage, entered, _time_there, *rest in rows]


def options(page: str, select_attributes: str) -> list[tuple[str, str]]:
    """(value, label) of each option of the <select> with these attributes."""
    found = re.search(rf"<select {re.escape(select_attributes)}>(.*?)</select>", page, re.S)
    assert found, page
    return [
        (html.unescape(value), visible(label))
        for value, label in re.findall(r'<option value="([^"]*)"[^>]*>(.*?)</option>', found[1])
    ]


def conversation(client: FlaskClient, card_id: int) -> str:
    answer = client.get(f"/cards/{card_id}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def hidden_fields(page: str, action: str) -> dict[str, str]:
    """The hidden inputs of the page's form posting to `action` (its CSRF token among them);
    the page's CSRF token alone when it shows no such form (a post from an older page)."""
    form = re.search(
        rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>', page, re.S
    )
    if form is None:
        return {"csrf_token": csrf_token(page)}
    return {
        name: html.unescape(value)
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form[1]
        )
    }


def press(
    client: FlaskClient, card_id: int, action: str, expected: int = 200, **fields: str
) -> str:
    """Submit one of the conversation page's forms, as the browser does (its CSRF token
    included); the page it leads back to. `expected` 400: a refused reply or note, the page
    shown again with what was typed."""
    page = conversation(client, card_id)
    answer = client.post(
        f"/cards/{card_id}/{action}",
        data={**hidden_fields(page, f"/cards/{card_id}/{action}"), **fields},
        follow_redirects=True,
    )
    assert answer.status_code == expected, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


# --- the desk behind the page -------------------------------------------------------------------


def customer_writes(
    config: Config,
    body: str = "Hello",
    *,
    name: str = "Maria",
    phone: str = "+5511999990000",
    at: datetime | None = None,
    media: tuple[tuple[str, str], ...] = (),
) -> int:
    """A customer's WhatsApp message, taken by the desk at `at`; their card's id."""
    form = inbound_form(phone=phone, body=body, name=name)
    form["NumMedia"] = str(len(media))
    for n, (url, content_type) in enumerate(media):
        form[f"MediaUrl{n}"], form[f"MediaContentType{n}"] = url, content_type
    with session_factory(config.database_url)() as s:
        received = desk.receive_message(s, whatsapp.parse_inbound(form), at or utcnow())
        s.commit()
        assert received.card is not None
        return received.card.id


def person(session: Session, email: str) -> User:
    return session.scalars(select(User).where(User.email == email)).one()


def user_id(config: Config, email: str) -> int:
    with session_factory(config.database_url)() as s:
        return person(s, email).id


def outbound_count(config: Config) -> int:
    with session_factory(config.database_url)() as s:
        return int(s.scalar(select(func.count()).where(Message.direction == "out")) or 0)


def load_replies(config: Config) -> None:
    """The desk's configuration file with canned replies and an approved template."""
    source = PIPELINE_YAML.format(sla="2m", warning="1m") + REPLIES_YAML
    with session_factory(config.database_url)() as s:
        pipeline_store.load(s, pipelines.parse(source), utcnow())
        s.commit()


def run_worker(config: Config, redis: Redis) -> None:
    """A worker runs every queued job, then stops."""
    SimpleWorker([Queue(config.queue_name, connection=redis)], connection=redis).work(burst=True)


@pytest.fixture
def agent(client: FlaskClient, seeded: Config) -> Config:
    """Ana, an agent, logged in on `client`; the seeded desk."""
    login(client)
    return seeded


@pytest.fixture
def supervisor(client: FlaskClient, seeded: Config) -> Config:
    """Sofia, a supervisor, logged in on `client`; the seeded desk."""
    login(client, "sofia@example.com")
    return seeded


@pytest.fixture
def twilio_server(env: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[TwilioServer]:
    """A local Twilio; the environment (what the send job reads) points at it."""
    with TwilioServer() as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        yield server


# --- the history --------------------------------------------------------------------------------


def test_the_history_reads_in_time_order_with_timestamps(
    client: FlaskClient, seeded: Config
) -> None:
    card = customer_writes(seeded, "My order has not arrived", at=T0)
    with session_factory(seeded.database_url)() as s:
        ana = person(s, "ana@example.com")
        workspace.claim(s, card, ana, T0 + timedelta(minutes=1))
        workspace.reply(s, card, ana, "Let me check with the courier", T0 + timedelta(minutes=2))
        workspace.add_note(s, card, ana, "Courier says Friday", T0 + timedelta(minutes=3))
        s.commit()
    customer_writes(seeded, "Thanks!", at=T0 + timedelta(minutes=4))
    login(client)

    lines = history(conversation(client, card))

    assert lines[0] == ("from-customer", "My order has not arrived 2025-03-04 09:00:00 UTC")
    assert lines[1][0] == "from-desk"
    assert lines[1][1].startswith("Hi Maria! Thanks for your message, it has reached us.")
    assert lines[1][1].endswith("2025-03-04 09:00:00 UTC · the desk · 🕓 queued")
    assert lines[2:] == [
        ("claimed", "Ana Agent took the conversation 2025-03-04 09:01:00 UTC"),
        (
            "from-desk",
            "Let me check with the courier 2025-03-04 09:02:00 UTC · Ana Agent · 🕓 queued",
        ),
        ("note", "📝 Note by Ana Agent Courier says Friday 2025-03-04 09:03:00 UTC"),
        ("from-customer", "Thanks! 2025-03-04 09:04:00 UTC"),
    ]


def test_customer_text_is_shown_as_text_never_as_markup(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(
        agent, "<script>alert(1)</script>", name='<img src=x onerror="alert(2)">'
    )

    page = conversation(client, card)

    assert "<script>alert(1)</script>" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert history(page)[0][1].startswith("<script>alert(1)</script> ")
    heading = re.search(r"<h1>(.*?)</h1>", page, re.S)
    assert heading and visible(heading[1]).startswith('<img src=x onerror="alert(2)">')


def test_a_note_is_shown_to_staff_and_never_sent_to_the_customer(
    client: FlaskClient, agent: Config, redis: Redis
) -> None:
    card = customer_writes(agent)
    sent_before = outbound_count(agent)  # the desk's acknowledgement

    page = press(client, card, "note", body="VIP customer, <b>be quick</b>")

    assert flashes(page) == ["Note added (the customer does not see it)."]
    kind, line = history(page)[-1]
    assert kind == "note"
    assert line.startswith("📝 Note by Ana Agent VIP customer, <b>be quick</b> ")
    assert outbound_count(agent) == sent_before
    assert Queue(agent.queue_name, connection=redis).job_ids == []


def test_an_empty_note_is_refused(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(agent)

    page = press(client, card, "note", expected=400, body="   ")

    assert flashes(page) == ["the note is empty"]
    assert [kind for kind, _ in history(page)] == ["from-customer", "from-desk"]


def test_a_refused_note_keeps_what_was_typed(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(agent)
    long = "Called the courier twice. " * 200  # over 4,000 characters

    page = press(client, card, "note", expected=400, body=long)

    assert flashes(page) == ["the note is 5199 characters; keep it under 4000"]
    assert f'maxlength="4000" required>{long}</textarea>' in page


def test_line_breaks_count_once_toward_the_reply_limit_as_the_browser_counts_them(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)
    lines = ["x" * 99] * 16  # 1,599 characters with a line break between each two
    sent = "\r\n".join(lines)  # as the browser sends them

    page = press(client, card, "reply", body=sent)

    assert flashes(page) == ["Reply sent."]
    with session_factory(agent.database_url)() as s:
        last = s.scalars(select(Message).order_by(Message.id.desc()).limit(1)).one()
        assert last.body == "\n".join(lines)


def reply_with_status(config: Config, card: int, status: str, error_code: str | None) -> None:
    """Ana answered the customer; Twilio took the message, then called back with `status`."""
    with session_factory(config.database_url)() as s:
        replied = desk.agent_reply(s, card, person(s, "ana@example.com"), "On its way", utcnow())
        s.flush()
        desk.record_sent(s, replied.message, f"SM{replied.message.id:032d}", "queued", utcnow())
        if status != "queued":
            desk.apply_status(s, f"SM{replied.message.id:032d}", status, error_code, utcnow())
        s.commit()


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("queued", "🕓 queued"),
        ("sent", "✓ sent"),
        ("delivered", "✓✓ delivered"),
        ("read", "✓✓ read"),
    ],
)
def test_each_reply_shows_its_delivery_tick(
    client: FlaskClient, agent: Config, status: str, shown: str
) -> None:
    card = customer_writes(agent)
    reply_with_status(agent, card, status, None)

    page = conversation(client, card)

    kind, line = history(page)[-1]
    assert kind == "from-desk"
    assert line.startswith("On its way ")
    assert line.endswith(f"UTC · Ana Agent · {shown}")
    assert f'<span class="tick {status}" title="{status}">' in page  # styled per status


def test_a_failed_delivery_shows_a_warning_and_the_error(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)
    reply_with_status(agent, card, "failed", "30008")

    kind, line = history(conversation(client, card))[-1]

    assert kind == "from-desk"
    assert line.endswith(
        "UTC · Ana Agent · ⚠ failed the carrier reported an unknown error (error 30008)"
    )


AUTOMATED = PIPELINE_YAML.format(sla="2m", warning="1m").replace(
    "    default: true\n",
    "    default: true\n"
    "    automation:\n      agent_reply: waiting\n      customer_message: open\n",
)


def card_row(config: Config, card_id: int) -> Card:
    with session_factory(config.database_url)() as s:
        return s.scalars(
            select(Card).where(Card.id == card_id).options(joinedload(Card.stage))
        ).one()


def test_a_reply_that_never_reaches_the_customer_has_them_waiting_again(
    client: FlaskClient, agent: Config
) -> None:
    """Answered on the page, the card went to "Waiting on customer" (its clock paused); the
    reply then failed. The sweep puts the customer back in line since their question, the
    `customer_message` automation applies, and the history says why."""
    with session_factory(agent.database_url)() as s:
        pipeline_store.load(s, pipelines.parse(AUTOMATED), utcnow())
        s.commit()
    asked = utcnow() - timedelta(minutes=10)
    card = customer_writes(agent, "Where is my order?", at=asked)
    reply_with_status(agent, card, "undelivered", "63016")
    assert card_row(agent, card).waiting_since is None
    assert card_row(agent, card).stage.key == "waiting"

    jobs.reconcile(agent, utcnow())
    jobs.reconcile(agent, utcnow())  # once only

    again = card_row(agent, card)
    assert (again.waiting_since, again.stage.key) == (asked, "open")
    failed = [line for kind, line in history(conversation(client, card)) if kind == "reply-failed"]
    [line] = failed  # once only
    assert line.startswith(
        "⚠️ Ana Agent's message did not reach the customer (outside WhatsApp's 24-hour window: "
        "only an approved template can reach them (error 63016)): they are waiting for an "
        "answer again. "
    )
    queue = client.get("/queue").get_data(as_text=True)
    assert re.findall(r'<tr class="sla-[a-z_]+" data-card="(\d+)">', queue) == [str(card)]


def test_a_failed_reply_followed_by_one_that_arrived_leaves_the_customer_answered(
    agent: Config,
) -> None:
    card = customer_writes(agent, "Where is my order?")
    reply_with_status(agent, card, "failed", "30008")
    reply_with_status(agent, card, "delivered", None)

    jobs.reconcile(agent, utcnow())

    assert card_row(agent, card).waiting_since is None


def test_a_reply_that_fails_after_the_card_was_resolved_reopens_it(
    client: FlaskClient, agent: Config
) -> None:
    """Answer, then Resolve, is the usual way: the answer never arriving reopens the card,
    the customer waiting since their question."""
    asked = utcnow() - timedelta(minutes=10)
    card = customer_writes(agent, "Where is my order?", at=asked)
    reply_with_status(agent, card, "queued", None)
    with session_factory(agent.database_url)() as s:
        desk.resolve(s, card, utcnow())
        message = s.scalars(select(Message).where(Message.user_id.is_not(None))).one()
        desk.apply_status(s, str(message.sid), "undelivered", "30003", utcnow())
        s.commit()

    jobs.reconcile(agent, utcnow())

    again = card_row(agent, card)
    assert (again.status, again.waiting_since) == ("open", asked)
    [line] = [t for kind, t in history(conversation(client, card)) if kind == "reply-failed"]
    assert "did not reach the customer (the phone is unreachable (error 30003))" in line
    assert "waiting for an answer again (reopened)." in line


def test_a_failed_reply_on_a_card_resolved_while_another_is_open_is_noted_not_reopened(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent, "Where is my order?")
    reply_with_status(agent, card, "queued", None)
    with session_factory(agent.database_url)() as s:
        desk.resolve(s, card, utcnow())
        s.commit()
    newer = customer_writes(agent, "Another question")  # a conversation of its own
    with session_factory(agent.database_url)() as s:
        message = s.scalars(select(Message).where(Message.user_id.is_not(None))).one()
        desk.apply_status(s, str(message.sid), "failed", "63016", utcnow())
        s.commit()

    jobs.reconcile(agent, utcnow())

    assert newer != card and card_row(agent, card).status == "resolved"
    [line] = [t for kind, t in history(conversation(client, card)) if kind == "reply-failed"]
    assert f"they have another conversation open (card #{newer})." in line


def test_a_failed_follow_up_the_customer_had_not_asked_for_leaves_them_answered(
    agent: Config,
) -> None:
    card = customer_writes(agent, "Where is my order?")
    reply_with_status(agent, card, "delivered", None)  # answered
    reply_with_status(agent, card, "failed", "30008")  # a follow-up of the agent's own

    jobs.reconcile(agent, utcnow())

    assert card_row(agent, card).waiting_since is None


def test_a_failed_reply_is_handled_once_even_after_the_card_is_resolved_and_reopened(
    agent: Config,
) -> None:
    card = customer_writes(agent, "Where is my order?")
    other = customer_writes(agent, "Hello?", phone="+5511999990001")
    reply_with_status(agent, card, "failed", "30008")
    reply_with_status(agent, other, "delivered", None)  # another customer's, arrived later
    jobs.reconcile(agent, utcnow())
    assert card_row(agent, card).waiting_since is not None
    with session_factory(agent.database_url)() as s:
        desk.resolve(s, card, utcnow())
        desk.reopen(s, card, utcnow())
        s.commit()

    jobs.reconcile(agent, utcnow())

    assert card_row(agent, card).waiting_since is None  # reopened: nobody asked since
    assert card_row(agent, other).waiting_since is None


def test_a_reply_twilio_refuses_shows_twilios_reason(
    client: FlaskClient,
    agent: Config,
    twilio_server: TwilioServer,
    redis: Redis,
) -> None:
    card = customer_writes(agent)
    press(client, card, "reply", body="Are you still there?")
    twilio_server.fail_next(400, 21610, message="Attempt to send to unsubscribed recipient")

    run_worker(agent, redis)

    kind, line = history(conversation(client, card))[-1]
    assert kind == "from-desk"
    assert line.startswith("Are you still there? ")
    assert "· Ana Agent · ⚠ failed " in line
    assert line.endswith("Attempt to send to unsubscribed recipient")


def test_the_stage_timeline_shows_each_visit_with_its_sla_outcome(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent, at=T0)  # "New": SLA 2 minutes
    with session_factory(agent.database_url)() as s:
        desk.move_card(s, card, "open", T0 + timedelta(minutes=1))  # "In progress": SLA 1 h
        s.commit()
        visit = s.scalars(
            select(StageVisit).where(StageVisit.card_id == card, StageVisit.left_at.is_(None))
        ).one()
        assert escalation.fire(s, visit.id, "breach", T0 + timedelta(hours=1, minutes=1))
        s.commit()
        desk.move_card(s, card, "waiting", T0 + timedelta(hours=1, minutes=30))
        s.commit()

    rows = timeline(conversation(client, card))

    assert rows[0] == ["New", "2025-03-04 09:00:00", "1m 00s", "✓ met", ""]
    assert rows[1] == [
        "In progress",
        "2025-03-04 09:01:00",
        "1h 29m",
        "⚠ breached",
        "breach 10:01:00",
    ]
    assert rows[2][0] == "Waiting on customer (paused)"
    assert rows[2][1] == "2025-03-04 10:30:00"
    assert rows[2][3:] == ["ongoing", ""]
    assert len(rows) == 3


def test_alerts_to_staff_about_the_conversation_are_not_shown_as_messages_to_the_customer(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent, "Where is my refund?", at=T0)
    with session_factory(agent.database_url)() as s:
        visit = s.scalars(select(StageVisit).where(StageVisit.card_id == card)).one()
        fired = escalation.fire(s, visit.id, "breach", T0 + timedelta(minutes=2))
        assert fired is not None and fired.told  # staff were alerted about this card
        s.commit()

    lines = history(conversation(client, card))

    assert [kind for kind, _ in lines] == ["from-customer", "from-desk"]  # message, its ack
    assert not any("SLA" in line for _, line in lines)


# --- taking and giving the conversation ---------------------------------------------------------


def test_taking_a_conversation_makes_it_yours(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(agent)
    assert owner_line(conversation(client, card)) == "Owner: nobody yet"

    page = press(client, card, "claim")

    assert flashes(page) == ["The conversation is yours."]
    assert owner_line(page) == "Owner: Ana Agent"
    assert history(page)[-1][0] == "claimed"
    assert history(page)[-1][1].startswith("Ana Agent took the conversation ")
    assert "Take it" not in page


def test_a_second_agent_is_told_who_already_has_the_conversation(
    app: Flask, client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)
    press(client, card, "claim")
    bruno = app.test_client()
    login(bruno, "bruno@example.com")

    page = press(bruno, card, "claim")

    assert flashes(page) == ["Ana Agent already has this conversation"]
    assert owner_line(page) == "Owner: Ana Agent"
    assert [kind for kind, _ in history(page)].count("claimed") == 1


@pytest.mark.usefixtures("without_sqlite_write_lock")  # on SQLite: both read, then write
def test_two_agents_taking_it_at_once_one_gets_it_and_the_other_is_told_who(
    app: Flask, seeded: Config
) -> None:
    card = customer_writes(seeded)
    clients = {}
    for email in ("ana@example.com", "bruno@example.com"):
        clients[email] = app.test_client()
        login(clients[email], email)
    tokens = {email: csrf_token(conversation(c, card)) for email, c in clients.items()}
    engine = get_engine(seeded.database_url)
    claimers: set[int] = set()
    have_read: set[int] = set()
    together: list[bool] = []

    def after_execute(conn: Connection, _cursor: object, statement: str, *_rest: object) -> None:
        # Each agent, having read the card, goes on only once the other has read it too,
        # or is being kept waiting for it: both clicks are truly at the same moment.
        me = threading.get_ident()
        if me not in claimers or me in have_read or not statement.startswith("SELECT cards."):
            return
        have_read.add(me)
        together.append(
            eventually(
                lambda: (
                    len(have_read) == 2
                    or keeps_another_waiting(seeded.database_url, conn.connection.dbapi_connection)
                ),
                timeout=10,
            )
        )

    statuses: dict[str, int] = {}

    def click(email: str) -> None:
        claimers.add(threading.get_ident())
        answer = clients[email].post(f"/cards/{card}/claim", data={"csrf_token": tokens[email]})
        statuses[email] = answer.status_code

    event.listen(engine, "after_cursor_execute", after_execute)
    try:
        threads = [threading.Thread(target=click, args=(email,)) for email in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        event.remove(engine, "after_cursor_execute", after_execute)
    assert together == [True, True]
    assert statuses == {email: 302 for email in clients}

    pages = {email: conversation(c, card) for email, c in clients.items()}
    told = sorted(flashes(page)[0] for page in pages.values())
    winner = "Ana Agent" if "yours" in flashes(pages["ana@example.com"])[0] else "Bruno Agent"
    assert told == [f"{winner} already has this conversation", "The conversation is yours."]
    for page in pages.values():
        assert owner_line(page) == f"Owner: {winner}"
        claims = [line for kind, line in history(page) if kind == "claimed"]
        assert len(claims) == 1 and claims[0].startswith(f"{winner} took the conversation")


def test_a_supervisor_gives_the_conversation_to_anyone(
    client: FlaskClient, supervisor: Config
) -> None:
    card = customer_writes(supervisor)
    with session_factory(supervisor.database_url)() as s:
        workspace.claim(s, card, person(s, "ana@example.com"), utcnow())
        s.commit()
    offered = options(conversation(client, card), 'name="user_id"')
    assert [label for _, label in offered] == [
        "Ana Agent (agent)",
        "Bruno Agent (agent)",
        "Otto Supervisor (supervisor)",
        "Sofia Supervisor (supervisor)",
    ]

    page = press(client, card, "assign", user_id=str(user_id(supervisor, "bruno@example.com")))

    assert flashes(page) == ["Assigned."]
    assert owner_line(page) == "Owner: Bruno Agent"
    assert history(page)[-1][0] == "assigned"
    assert history(page)[-1][1].startswith("Sofia Supervisor gave it to Bruno Agent ")


def test_an_agent_is_not_offered_assigning_and_posting_it_is_forbidden(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)
    page = conversation(client, card)
    assert 'name="user_id"' not in page

    answer = client.post(
        f"/cards/{card}/assign",
        data={"csrf_token": csrf_token(page), "user_id": str(user_id(agent, "bruno@example.com"))},
    )

    assert answer.status_code == 403
    assert "only supervisors can assign conversations to others" in answer.get_data(as_text=True)
    assert owner_line(conversation(client, card)) == "Owner: nobody yet"


# --- answering ----------------------------------------------------------------------------------


def test_a_reply_inside_the_window_is_queued_to_send_and_the_customer_is_answered(
    client: FlaskClient, agent: Config, redis: Redis
) -> None:
    card = customer_writes(agent, "Is the shop open on Sunday?")

    page = press(client, card, "reply", body="Yes, from 10:00 to 16:00.")

    assert flashes(page) == ["Reply sent."]
    kind, line = history(page)[-1]
    assert kind == "from-desk"
    assert line.startswith("Yes, from 10:00 to 16:00. ")
    assert line.endswith("UTC · Ana Agent · 🕓 queued")
    assert owner_line(page) == "Owner: Ana Agent"  # an unowned card becomes the replier's
    queue = client.get("/queue").get_data(as_text=True)
    row = re.search(rf'<tr class="sla-[a-z_]+" data-card="{card}">(.*?)</tr>', queue, re.S)
    assert row, queue
    waiting = [visible(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)][5]
    assert waiting == "answered"
    message_id = re.findall(r'<li class="msg from-desk" data-message="(\d+)">', page)[-1]
    assert Queue(agent.queue_name, connection=redis).job_ids == [f"send-{message_id}"]


def test_outside_the_window_the_page_explains_and_offers_only_templates(
    client: FlaskClient, agent: Config
) -> None:
    load_replies(agent)
    card = customer_writes(agent, at=T0)

    page = conversation(client, card)

    closed = re.search(r'<p class="window-closed" role="status">(.*?)</p>', page, re.S)
    assert closed and visible(closed[1]) == (
        "The customer's last message is more than 24 hours old: WhatsApp only delivers an "
        "approved template until they write again."
    )
    assert "Send reply" not in page
    assert options(page, 'name="key"') == [
        (
            "follow_up",
            "Follow-up — Hi Maria, we have news about your request. Reply to continue.",
        )
    ]
    assert "Send template" in page


def test_outside_the_window_without_templates_the_page_says_none_are_configured(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent, at=T0)

    page = conversation(client, card)

    assert "Send reply" not in page and "Send template" not in page
    said = [visible(p) for p in re.findall(r'<p class="window-closed"[^>]*>(.*?)</p>', page, re.S)]
    assert said[1] == (
        "No approved templates are configured ( replies.templates in the configuration file)."
    )


def test_a_reply_outside_the_window_is_refused(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(agent, at=T0)
    sent_before = outbound_count(agent)

    page = press(client, card, "reply", expected=400, body="Sorry for the wait!")

    assert flashes(page) == [
        "the customer's last message is more than 24 hours old: WhatsApp only accepts an "
        "approved template until they write again"
    ]
    assert outbound_count(agent) == sent_before
    assert all("Sorry for the wait!" not in text for _kind, text in history(page))
    assert "Your reply was not sent; copy it from here" in page and "Sorry for the wait!" in page


def test_a_template_is_sent_with_the_customers_details_filled_in(
    client: FlaskClient, agent: Config
) -> None:
    load_replies(agent)
    card = customer_writes(agent, at=T0)

    page = press(client, card, "template", key="follow_up")

    assert flashes(page) == ["Template sent."]
    kind, line = history(page)[-1]
    assert kind == "from-desk"
    assert line.startswith("Hi Maria, we have news about your request. Reply to continue. ")
    assert line.endswith("UTC · Ana Agent · template · 🕓 queued")


@pytest.mark.parametrize(
    ("action", "fields", "said"),
    [
        ("reply", {"body": "On its way"}, "Reply sent."),
        ("template", {"key": "follow_up"}, "Template sent."),
    ],
)
def test_a_form_sent_twice_sends_one_message(
    client: FlaskClient, agent: Config, action: str, fields: dict[str, str], said: str
) -> None:
    load_replies(agent)
    card = customer_writes(agent)
    before = outbound_count(agent)
    path = f"/cards/{card}/{action}"
    form = {**hidden_fields(conversation(client, card), path), **fields}  # a double click

    pages = [client.post(path, data=form, follow_redirects=True) for _ in range(2)]

    assert [flashes(p.get_data(as_text=True)) for p in pages] == [[said], [said]]
    assert outbound_count(agent) == before + 1
    press(client, card, action, **fields)  # the page opened again: a new message
    assert outbound_count(agent) == before + 2


def test_another_reply_from_a_page_come_back_to_is_sent(client: FlaskClient, agent: Config) -> None:
    card = customer_writes(agent)
    before = outbound_count(agent)
    path = f"/cards/{card}/reply"
    form = hidden_fields(conversation(client, card), path)
    client.post(path, data={**form, "body": "On its way"}, follow_redirects=True)

    # The browser's Back shows the page as it was, its form's token too: a new text.
    page = client.post(path, data={**form, "body": "Tracking: BR123"}, follow_redirects=True)

    assert flashes(page.get_data(as_text=True)) == ["Reply sent."]
    assert outbound_count(agent) == before + 2


def test_a_template_reaches_twilio_as_its_content_sid_and_variables(
    client: FlaskClient, agent: Config, twilio_server: TwilioServer, redis: Redis
) -> None:
    load_replies(agent)
    card = customer_writes(agent, at=T0, name="Maria Souza")
    press(client, card, "template", key="follow_up")

    run_worker(agent, redis)

    [form] = twilio_server.wait_for(lambda messages: len(messages) >= 1)
    assert form["To"] == "whatsapp:+5511999990000"
    assert form["ContentSid"] == TEMPLATE_SID
    assert json.loads(form["ContentVariables"]) == {"1": "Maria Souza"}
    assert "Body" not in form
    assert history(conversation(client, card))[-1][1].endswith("· template · 🕓 queued")


def test_an_unknown_template_is_refused(client: FlaskClient, agent: Config) -> None:
    load_replies(agent)
    card = customer_writes(agent, at=T0)
    sent_before = outbound_count(agent)

    page = press(client, card, "template", key="no_such_template")

    assert flashes(page) == ["choose one of the approved templates"]
    assert outbound_count(agent) == sent_before


def test_canned_replies_are_offered_filled_in_for_this_customer_and_agent(
    client: FlaskClient, agent: Config
) -> None:
    load_replies(agent)
    card = customer_writes(agent)

    offered = options(conversation(client, card), 'id="canned" aria-controls="reply-body"')

    assert offered == [
        ("", "—"),
        ("Hello Maria, this is Ana Agent. How can I help?", "Greeting"),
        (f"Anything else for conversation #{card}?", "Closing"),
    ]


# --- moving, resolving, reopening ---------------------------------------------------------------


def test_moving_the_conversation_changes_its_stage_and_writes_it_down(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)

    page = press(client, card, "move", stage="waiting")

    assert flashes(page) == ["Moved."]
    assert where_line(page) == "Support › Waiting on customer ⏸ Paused"
    assert history(page)[-1][0] == "moved"
    assert history(page)[-1][1].startswith("Ana Agent moved it to Waiting on customer ")
    assert [row[0] for row in timeline(page)] == ["New", "Waiting on customer (paused)"]


def test_moving_to_the_stage_it_is_in_is_refused_and_its_clock_keeps_running(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)
    before = timeline(conversation(client, card))

    page = press(client, card, "move", stage="new")

    assert flashes(page) == ["the conversation is already in New"]
    # The same visit, its deadline unchanged (its time there goes on with the clock).
    assert without_time_there(timeline(page)) == without_time_there(before)
    assert options(page, 'name="stage" required') == [
        ("", "—"),
        ("open", "In progress"),
        ("waiting", "Waiting on customer"),
    ]


def test_resolving_closes_the_conversation_and_writes_it_down(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)

    page = press(client, card, "resolve")

    assert flashes(page) == ["Resolved."]
    assert where_line(page) == "Support › New ✔ Resolved"
    assert history(page)[-1][0] == "resolved"
    assert history(page)[-1][1].startswith("Ana Agent resolved the conversation ")
    assert ">Reopen</button>" in page
    assert "Send reply" not in page and ">Resolve</button>" not in page
    assert f'data-card="{card}"' not in client.get("/queue").get_data(as_text=True)


def test_resolving_from_a_page_opened_before_the_customer_wrote_again_is_refused(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent, "My order is late")
    opened = conversation(client, card)
    customer_writes(agent, "Actually it is the wrong colour too")

    answer = client.post(
        f"/cards/{card}/resolve",
        data=hidden_fields(opened, f"/cards/{card}/resolve"),
        follow_redirects=True,
    )
    page = answer.get_data(as_text=True)

    assert flashes(page) == [
        "Maria wrote again since this page was opened: read it before resolving"
    ]
    assert "Actually it is the wrong colour too" in page and ">Resolve</button>" in page
    assert f'data-card="{card}"' in client.get("/queue").get_data(as_text=True)
    assert flashes(press(client, card, "resolve")) == ["Resolved."]  # from the page as it is now


def test_reopening_opens_the_conversation_again_and_writes_it_down(
    client: FlaskClient, agent: Config
) -> None:
    card = customer_writes(agent)
    press(client, card, "resolve")

    page = press(client, card, "reopen")

    assert flashes(page) == ["Reopened."]
    assert where_line(page).startswith("Support › New ")
    assert history(page)[-1][0] == "reopened"
    assert history(page)[-1][1].startswith("Ana Agent reopened it in New ")
    assert ">Resolve</button>" in page
    assert f'data-card="{card}"' in client.get("/queue").get_data(as_text=True)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_a_form_posted_without_its_csrf_token_is_refused(
    client: FlaskClient, supervisor: Config, action: str
) -> None:
    load_replies(supervisor)
    card = customer_writes(supervisor)
    before = history(conversation(client, card))
    fields = {
        "user_id": str(user_id(supervisor, "bruno@example.com")),
        "body": "Hello there",
        "key": "follow_up",
        "stage": "open",
    }

    answer = client.post(f"/cards/{card}/{action}", data=fields)

    assert answer.status_code == 400
    assert "The CSRF token is missing." in answer.get_data(as_text=True)
    page = conversation(client, card)
    assert history(page) == before
    assert owner_line(page) == "Owner: nobody yet"
    assert where_line(page).startswith("Support › New ")


def test_an_unknown_conversation_is_not_found(client: FlaskClient, agent: Config) -> None:
    answer = client.get("/cards/999")

    assert answer.status_code == 404
    assert "there is no conversation #999" in answer.get_data(as_text=True)


def test_the_conversation_page_needs_a_login(client: FlaskClient, seeded: Config) -> None:
    card = customer_writes(seeded)

    answer = client.get(f"/cards/{card}")

    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login")


# --- customers' photos and files ----------------------------------------------------------------

PHOTO = b"\xff\xd8\xff\xe0" + b"a photo of a broken parcel" + b"\xff\xd9"


def twilio_desk(config: Config, twilio: TwilioServer, auth_token: str | None = None) -> FlaskClient:
    """A desk connected to (fake) Twilio, Ana logged in."""
    app = create_app(
        config.with_(
            twilio_account_sid=twilio.account_sid,
            twilio_auth_token=auth_token or twilio.auth_token,
            twilio_api_url=twilio.url,
        )
    )
    app.config["TESTING"] = True
    client = app.test_client()
    login(client)
    return client


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server


def media_links(page: str) -> list[str]:
    return re.findall(r'href="(/cards/\d+/media/\d+/\d+)"', page)


def test_a_photo_is_fetched_from_twilio_and_shown_inline(
    seeded: Config, twilio: TwilioServer
) -> None:
    url = twilio.add_media("image/jpeg", PHOTO)
    card = customer_writes(seeded, "It arrived broken", media=((url, "image/jpeg"),))
    client = twilio_desk(seeded, twilio)
    page = conversation(client, card)
    [link] = media_links(page)
    assert f'<img class="media" src="{link}"' in page

    answer = client.get(link)

    assert answer.status_code == 200
    assert answer.data == PHOTO
    assert answer.mimetype == "image/jpeg"
    assert "Content-Disposition" not in answer.headers
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert twilio.media_requests == [url.removeprefix(twilio.url)]


def test_any_other_file_is_served_as_a_download(seeded: Config, twilio: TwilioServer) -> None:
    document = b"%PDF-1.4 <html><script>alert(1)</script></html>"
    url = twilio.add_media("application/pdf", document)
    card = customer_writes(seeded, "", media=((url, "application/pdf"),))
    client = twilio_desk(seeded, twilio)
    page = conversation(client, card)
    [link] = media_links(page)
    assert '<img class="media"' not in page
    assert "📎 application/pdf" in visible(page)

    answer = client.get(link)

    assert answer.status_code == 200
    assert answer.data == document
    assert answer.mimetype == "application/pdf"
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_media_is_fetched_with_the_accounts_credentials(
    seeded: Config, twilio: TwilioServer
) -> None:
    url = twilio.add_media("image/jpeg", PHOTO)
    card = customer_writes(seeded, media=((url, "image/jpeg"),))
    client = twilio_desk(seeded, twilio, auth_token="not-the-accounts-token")
    [link] = media_links(conversation(client, card))

    answer = client.get(link)

    assert answer.status_code == 502  # fake Twilio answered 401: nothing is passed on
    assert "Twilio answered 401 for the attachment" in answer.get_data(as_text=True)
    assert PHOTO not in answer.data


@pytest.mark.parametrize(
    "where",
    [
        "https://evil.example/photo.jpg",
        "{twilio}.evil.example/photo.jpg",
        "{twilio}@evil.example/photo.jpg",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_media_not_stored_at_twilio_is_never_fetched(
    seeded: Config, twilio: TwilioServer, where: str
) -> None:
    card = customer_writes(seeded, media=((where.format(twilio=twilio.url), "image/jpeg"),))
    client = twilio_desk(seeded, twilio)
    [link] = media_links(conversation(client, card))

    answer = client.get(link)

    assert answer.status_code == 404
    assert "this attachment is not stored at Twilio" in answer.get_data(as_text=True)
    assert twilio.media_requests == []


def test_media_in_simulator_mode_is_not_found(client: FlaskClient, agent: Config) -> None:
    url = "https://api.twilio.com/2010-04-01/Accounts/AC00/Messages/MM00/Media/ME00"
    card = customer_writes(agent, media=((url, "image/jpeg"),))
    [link] = media_links(conversation(client, card))

    answer = client.get(link)

    assert answer.status_code == 404


def test_an_attachment_of_another_conversation_is_not_found(
    seeded: Config, twilio: TwilioServer
) -> None:
    url = twilio.add_media("image/jpeg", PHOTO)
    card = customer_writes(seeded, media=((url, "image/jpeg"),))
    other = customer_writes(seeded, phone="+5511988887777", name="Otto")
    client = twilio_desk(seeded, twilio)
    [link] = media_links(conversation(client, card))

    answer = client.get(link.replace(f"/cards/{card}/", f"/cards/{other}/"))

    assert answer.status_code == 404
    assert twilio.media_requests == []


def test_the_page_says_when_the_customer_sent_stop(client: FlaskClient, agent: Config) -> None:
    """STOP is a command, not a question: the card stays open, and whoever answers it sees
    that the customer opted out (templates are refused until START)."""
    card = customer_writes(agent, "Where is my order?")
    customer_writes(agent, "STOP")

    page = conversation(client, card)

    assert re.search(
        r"🔕 Maria sent STOP on \d{4}-\d\d-\d\d \d\d:\d\d UTC: no template reaches them until "
        r"they send START",
        visible(page),
    )
    customer_writes(agent, "START")
    assert "sent STOP" not in visible(conversation(client, card))
