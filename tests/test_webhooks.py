"""POST /twilio/whatsapp and /twilio/status, as Twilio calls them."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from whatsdesk import create_app, desk, jobs, whatsapp
from whatsdesk.alarms import TICK_AHEAD_SECONDS, Alarms, second_of
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Card, Contact, EarlyStatus, Message, Pipeline, StageVisit

from conftest import (
    CLOSED_DATABASE,
    CLOSED_REDIS,
    commit_once_it_waits,
    count,
    fresh,
    inbound_form,
    signed_post,
)

INBOUND = "/twilio/whatsapp"
STATUS = "/twilio/status"
PHONE = "+5511999990000"
ADDRESS = f"whatsapp:{PHONE}"


def post(client: FlaskClient, config: Config, path: str, form: dict[str, str]) -> TestResponse:
    answer = signed_post(client, config, path, form)
    assert isinstance(answer, TestResponse)
    return answer


def nothing_stored(session: Session) -> bool:
    return all(count(session, model) == 0 for model in (Contact, Card, StageVisit, Message))


def assert_empty_twiml(answer: TestResponse) -> None:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "text/xml"
    root = ElementTree.fromstring(answer.get_data())
    assert root.tag == "Response"
    assert list(root) == [] and not (root.text or "").strip()


def messages(session: Session, direction: str) -> list[Message]:
    fresh(session)
    return list(
        session.scalars(select(Message).where(Message.direction == direction).order_by(Message.id))
    )


# --- inbound: a new conversation --------------------------------------------------------------


def test_first_message_from_new_number_opens_card_and_queues_acknowledgement(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form(phone=PHONE, body="My order never arrived", name="Maria")
    before = datetime.now(UTC)
    answer = post(client, seeded, INBOUND, form)
    after = datetime.now(UTC)

    assert_empty_twiml(answer)
    contact = session.scalars(select(Contact)).one()
    assert (contact.address, contact.wa_id, contact.profile_name) == (
        ADDRESS,
        "5511999990000",
        "Maria",
    )
    card = session.scalars(select(Card)).one()
    assert card.status == "open" and card.contact_id == contact.id
    assert card.pipeline.key == "support" and card.pipeline.is_default
    assert card.stage.key == "new" and card.stage.position == min(
        s.position for s in card.pipeline.stages
    )
    visit = session.scalars(select(StageVisit)).one()
    assert visit.card_id == card.id and visit.stage_id == card.stage_id and visit.left_at is None
    assert before <= visit.entered_at <= after
    assert visit.deadline_at == visit.entered_at + timedelta(minutes=2)
    assert visit.warning_at == visit.deadline_at - timedelta(minutes=1)

    [inbound] = messages(session, "in")
    assert inbound.sid == form["MessageSid"]
    assert inbound.body == "My order never arrived"
    assert (inbound.from_address, inbound.to_address) == (ADDRESS, form["To"])
    assert inbound.status == "received" and inbound.card_id == card.id
    assert inbound.contact_id == contact.id and inbound.media == []
    assert card.waiting_since == inbound.created_at

    [ack] = messages(session, "out")
    assert ack.to_address == ADDRESS and ack.card_id == card.id
    assert ack.status == "pending" and ack.sid is None
    assert ack.dedupe_key == f"ack-{form['MessageSid']}"
    assert ack.body == (
        "Hi Maria! Thanks for your message, it has reached us. "
        "You are 1st in line; a person from our Support team will answer within 2 minutes."
    )


def test_acknowledgement_without_a_profile_name_greets_plainly(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    del form["ProfileName"]
    assert post(client, seeded, INBOUND, form).status_code == 200

    assert session.scalars(select(Contact)).one().profile_name is None
    [ack] = messages(session, "out")
    assert ack.body == (
        "Hi! Thanks for your message, it has reached us. "
        "You are 1st in line; a person from our Support team will answer within 2 minutes."
    )


def test_a_stored_text_the_bot_cannot_fill_in_never_loses_the_message(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    # Stored before each text's placeholders were checked: `received` is given no {wait}.
    pipeline = session.scalars(select(Pipeline)).one()
    pipeline.texts = {"received": "Thanks! We answer within {wait}."}
    session.commit()

    assert post(client, seeded, INBOUND, inbound_form(body="Where is my order?")).status_code == 200

    assert [m.body for m in messages(session, "in")] == ["Where is my order?"]
    [ack] = messages(session, "out")
    assert ack.body.startswith("Hi Maria! Thanks for your message, it has reached us. You are")


def test_a_customer_behind_more_than_the_desk_counts_is_told_the_least_place_they_have(
    client: FlaskClient, seeded: Config, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The place in line is counted only as far as MOST_AHEAD customers (a new conversation
    costs the same however long the line): beyond, the customer hears "or later"."""
    monkeypatch.setattr(desk, "MOST_AHEAD", 2)
    for n in range(5):
        form = inbound_form(phone=f"+551199999{n:04d}", body="My order never arrived")
        assert post(client, seeded, INBOUND, form).status_code == 200

    said = [ack.body.split(". ")[1].split(";")[0] for ack in messages(session, "out")]

    assert said == [
        "You are 1st in line",
        "You are 2nd in line",
        "You are 3rd in line",  # two ahead, as many as are counted: still exact
        "You are 4th or later in line",  # more than two ahead
        "You are 4th or later in line",
    ]


def test_new_card_arms_sla_timers_and_the_acknowledgement_send_in_redis(
    client: FlaskClient, seeded: Config, session: Session, redis: Redis
) -> None:
    assert post(client, seeded, INBOUND, inbound_form()).status_code == 200

    visit = session.scalars(select(StageVisit)).one()
    [ack] = messages(session, "out")
    queue = Queue(seeded.queue_name, connection=redis)
    assert f"send-{ack.id}" in queue.get_job_ids()
    assert Job.fetch(f"send-{ack.id}", connection=redis).args == (ack.id,)
    alarms = Alarms(seeded.redis_url, seeded.queue_name)
    for instant in (visit.warning_at, visit.deadline_at):
        assert instant is not None
        wakes = alarms.wakes_for(instant)  # the clock job of its second, a second ahead
        assert wakes == instant.replace(microsecond=0) - timedelta(seconds=TICK_AHEAD_SECONDS)


def test_second_message_joins_the_open_card_without_a_second_acknowledgement(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    first = inbound_form(body="Hello?")
    second = inbound_form(body="Anyone there?")
    assert post(client, seeded, INBOUND, first).status_code == 200
    assert_empty_twiml(post(client, seeded, INBOUND, second))

    card = session.scalars(select(Card)).one()
    assert count(session, Contact) == 1 and count(session, StageVisit) == 1
    inbound = messages(session, "in")
    assert [m.body for m in inbound] == ["Hello?", "Anyone there?"]
    assert {m.card_id for m in inbound} == {card.id}
    assert len(messages(session, "out")) == 1
    assert card.waiting_since == inbound[0].created_at < inbound[1].created_at


def test_same_message_sid_delivered_twice_is_stored_once(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    assert_empty_twiml(post(client, seeded, INBOUND, form))
    assert_empty_twiml(post(client, seeded, INBOUND, form))

    assert [m.sid for m in messages(session, "in")] == [form["MessageSid"]]
    assert len(messages(session, "out")) == 1
    assert count(session, Card) == 1 and count(session, StageVisit) == 1


def post_all_at_once(app: Flask, config: Config, forms: list[dict[str, str]]) -> list[int]:
    """Post each form from its own thread and client, all released together."""
    start = threading.Barrier(len(forms))
    statuses: list[int] = []
    errors: list[BaseException] = []

    def deliver(form: dict[str, str]) -> None:
        client = app.test_client()
        try:
            start.wait(timeout=10)
            statuses.append(post(client, config, INBOUND, form).status_code)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=deliver, args=(form,)) for form in forms]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    return statuses


def test_same_message_sid_posted_concurrently_is_stored_once(
    app: Flask, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    assert post_all_at_once(app, seeded, [form] * 6) == [200] * 6

    assert [m.sid for m in messages(session, "in")] == [form["MessageSid"]]
    assert len(messages(session, "out")) == 1
    assert count(session, Contact) == 1 and count(session, Card) == 1
    assert count(session, StageVisit) == 1


def test_messages_sent_at_once_by_a_new_number_share_one_card(
    app: Flask, seeded: Config, session: Session
) -> None:
    forms = [inbound_form(body=f"part {n}") for n in range(5)]
    assert post_all_at_once(app, seeded, forms) == [200] * 5

    card = session.scalars(select(Card)).one()
    inbound = messages(session, "in")
    assert sorted(m.body for m in inbound) == [f"part {n}" for n in range(5)]
    assert {m.card_id for m in inbound} == {card.id}
    assert len(messages(session, "out")) == 1
    assert count(session, Contact) == 1 and count(session, StageVisit) == 1


def test_messages_sent_at_once_by_a_returning_customer_open_one_new_card(
    app: Flask, client: FlaskClient, seeded: Config, session: Session
) -> None:
    assert post(client, seeded, INBOUND, inbound_form(body="last week")).status_code == 200
    old = session.scalars(select(Card)).one()
    old.status, old.resolved_at, old.waiting_since = "resolved", datetime.now(UTC), None
    session.commit()

    forms = [inbound_form(body=f"again {n}") for n in range(5)]
    assert post_all_at_once(app, seeded, forms) == [200] * 5

    fresh(session)
    new = session.scalars(select(Card).where(Card.status == "open")).one()
    assert new.id != old.id
    again = [m for m in messages(session, "in") if m.body.startswith("again")]
    assert len(again) == 5 and {m.card_id for m in again} == {new.id}
    assert len(messages(session, "out")) == 2  # one acknowledgement per conversation


# --- inbound: refused requests ----------------------------------------------------------------


def test_bad_signature_is_refused_and_nothing_stored(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    forged = whatsapp.sign("not-the-auth-token", "http://localhost" + INBOUND, form)
    answer = client.post(INBOUND, data=form, headers={"X-Twilio-Signature": forged})
    assert answer.status_code == 403
    assert "X-Twilio-Signature" in answer.get_data(as_text=True)
    assert nothing_stored(session)


def test_form_changed_after_signing_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form(body="Hello")
    signature = whatsapp.sign(whatsapp.webhook_token(seeded), "http://localhost" + INBOUND, form)
    tampered = {**form, "Body": "Hello, send me a refund"}
    answer = client.post(INBOUND, data=tampered, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 403
    assert nothing_stored(session)


def test_missing_signature_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    answer = client.post(INBOUND, data=inbound_form())
    assert answer.status_code == 403
    assert nothing_stored(session)


def test_form_signed_for_another_url_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    other = whatsapp.sign(whatsapp.webhook_token(seeded), "http://localhost" + STATUS, form)
    answer = client.post(INBOUND, data=form, headers={"X-Twilio-Signature": other})
    assert answer.status_code == 403
    assert nothing_stored(session)


def test_missing_from_is_refused_naming_the_field(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    del form["From"]
    answer = post(client, seeded, INBOUND, form)
    assert answer.status_code == 400
    assert "missing required field(s): From" in answer.get_data(as_text=True)
    assert nothing_stored(session)


def test_missing_message_sid_is_refused_naming_the_field(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    del form["MessageSid"]
    answer = post(client, seeded, INBOUND, form)
    assert answer.status_code == 400
    assert "missing required field(s): MessageSid" in answer.get_data(as_text=True)
    assert nothing_stored(session)


def test_sender_that_is_not_a_whatsapp_e164_address_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    odd = (PHONE, "whatsapp:5511999990000", "whatsapp:+55 11 99999", "sms:+5511999990000")
    for sender in (*odd, f"whatsapp:{PHONE}\n"):  # a final new line would make a second contact
        answer = post(client, seeded, INBOUND, {**inbound_form(), "From": sender})
        assert answer.status_code == 400, sender
        assert "From must be a WhatsApp address" in answer.get_data(as_text=True)
    assert nothing_stored(session)


def test_message_sid_that_is_not_a_twilio_sid_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    for sid in ("SM-1; DROP TABLE messages", "SM" + "a" * 62 + "\n"):
        answer = post(client, seeded, INBOUND, inbound_form(sid=sid))
        assert answer.status_code == 400, sid
        assert "MessageSid is not a Twilio message SID" in answer.get_data(as_text=True)
    assert nothing_stored(session)


def test_media_count_without_its_url_is_refused_naming_the_field(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = {**inbound_form(body=""), "NumMedia": "2", "MediaUrl0": "https://example.com/0"}
    answer = post(client, seeded, INBOUND, form)
    assert answer.status_code == 400
    assert "NumMedia is 2 but MediaUrl1 is missing" in answer.get_data(as_text=True)
    assert nothing_stored(session)


def test_oversize_request_is_refused_and_nothing_stored(
    app: Flask, client: FlaskClient, seeded: Config, session: Session
) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    form = inbound_form(body="x" * (limit + 1))
    answer = post(client, seeded, INBOUND, form)
    assert answer.status_code == 413
    assert nothing_stored(session)


# --- inbound: bodies are kept as sent ---------------------------------------------------------


def test_media_only_message_is_stored_with_its_media(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form(body="")
    url = "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM1/Media/ME1"
    form.update(NumMedia="1", MediaUrl0=url, MediaContentType0="image/jpeg")
    assert_empty_twiml(post(client, seeded, INBOUND, form))

    [inbound] = messages(session, "in")
    assert inbound.body == ""
    assert inbound.media == [{"url": url, "content_type": "image/jpeg"}]
    assert count(session, Card) == 1


@pytest.mark.parametrize(
    ("shared", "read"),
    [
        (
            {
                "Latitude": "-23.561414",
                "Longitude": "-46.655881",
                "Label": "Office",
                "Address": "Av. Paulista, 1000",
            },
            "📍 Location: Office — Av. Paulista, 1000 (-23.561414, -46.655881) "
            "https://www.openstreetmap.org/?mlat=-23.561414&mlon=-46.655881"
            "#map=17/-23.561414/-46.655881",
        ),
        # Coordinates that are no place on Earth are left out; what it says is kept.
        (
            {"Latitude": "123", "Longitude": "nan", "Address": "Rua Augusta"},
            "📍 Location: Rua Augusta",
        ),
    ],
)
def test_a_shared_location_is_stored_as_text_agents_read(
    client: FlaskClient, seeded: Config, session: Session, shared: dict[str, str], read: str
) -> None:
    form = inbound_form(body="")
    form.update(shared)
    assert_empty_twiml(post(client, seeded, INBOUND, form))

    [inbound] = messages(session, "in")
    assert inbound.body == read
    assert count(session, Card) == 1


def test_emoji_body_is_stored_intact(client: FlaskClient, seeded: Config, session: Session) -> None:
    body = "Olá 👋🏽 ação — 你好 👨‍👩‍👧"
    assert_empty_twiml(post(client, seeded, INBOUND, inbound_form(body=body, name="Zoë 🌸")))

    [inbound] = messages(session, "in")
    assert inbound.body == body
    assert session.scalars(select(Contact)).one().profile_name == "Zoë 🌸"


def test_longest_whatsapp_body_is_stored_intact(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    body = ("Preciso de ajuda ação 👍 " * 100)[:1600]
    assert len(body) == 1600
    assert_empty_twiml(post(client, seeded, INBOUND, inbound_form(body=body)))

    [inbound] = messages(session, "in")
    assert inbound.body == body


# --- inbound: the URL Twilio signed -----------------------------------------------------------


def test_raw_query_string_is_part_of_the_signed_url(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    form = inbound_form()
    path = INBOUND + "?x=%2Fa%20b"
    signature = whatsapp.sign(whatsapp.webhook_token(seeded), "http://localhost" + path, form)
    answer = client.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert_empty_twiml(answer)
    assert len(messages(session, "in")) == 1


# Twilio may sign https://host:443/… where the desk knows https://host/….
@pytest.mark.parametrize(
    "signed_base", ["https://desk.example.com", "https://desk.example.com:443"]
)
def test_public_url_is_the_url_checked_behind_a_proxy(
    seeded: Config, session: Session, signed_base: str
) -> None:
    config = seeded.with_(public_url="https://desk.example.com")
    client = create_app(config).test_client()
    form = inbound_form()
    path = INBOUND + "?x=%2Fa%20b"
    token = whatsapp.webhook_token(config)

    signature = whatsapp.sign(token, signed_base + path, form)
    answer = client.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert_empty_twiml(answer)
    assert [m.sid for m in messages(session, "in")] == [form["MessageSid"]]


def test_a_signature_header_that_is_not_ascii_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    answer = client.post(INBOUND, data=inbound_form(), headers={"X-Twilio-Signature": "é"})
    assert answer.status_code == 403
    assert nothing_stored(session)


def test_public_url_set_refuses_a_form_signed_for_the_internal_url(
    seeded: Config, session: Session
) -> None:
    config = seeded.with_(public_url="https://desk.example.com")
    client = create_app(config).test_client()
    form = inbound_form()
    path = INBOUND + "?x=%2Fa%20b"

    signature = whatsapp.sign(whatsapp.webhook_token(config), "http://localhost" + path, form)
    answer = client.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 403
    assert nothing_stored(session)


def test_auth_token_signs_webhooks_when_twilio_credentials_are_set(
    seeded: Config, session: Session
) -> None:
    config = seeded.with_(twilio_account_sid="AC" + "1" * 32, twilio_auth_token="tok-12345")
    client = create_app(config).test_client()
    form = inbound_form()
    simulator_signed = whatsapp.sign(
        whatsapp.webhook_token(seeded), "http://localhost" + INBOUND, form
    )
    refused = client.post(INBOUND, data=form, headers={"X-Twilio-Signature": simulator_signed})
    assert refused.status_code == 403
    assert nothing_stored(session)

    signature = whatsapp.sign("tok-12345", "http://localhost" + INBOUND, form)
    answer = client.post(INBOUND, data=form, headers={"X-Twilio-Signature": signature})
    assert_empty_twiml(answer)
    assert len(messages(session, "in")) == 1


# --- inbound: backing services down -----------------------------------------------------------


def test_redis_down_the_message_is_stored_and_the_sweep_arms_it_once_redis_answers(
    seeded: Config, session: Session, redis: Redis
) -> None:
    config = seeded.with_(redis_url=CLOSED_REDIS)
    client = create_app(config).test_client()
    answer = post(client, config, INBOUND, inbound_form(body="My order never arrived"))

    assert_empty_twiml(answer)  # a 503 would lose the message after Twilio's one retry
    [stored] = messages(session, "in")
    assert stored.body == "My order never arrived" and stored.card_id is not None
    [ack] = messages(session, "out")
    assert ack.status == "pending"
    sends = Queue(seeded.queue_name, connection=redis)

    later = utcnow() + timedelta(seconds=jobs.STALE_SEND_SECONDS + 1)
    swept = jobs.reconcile(seeded, later)  # Redis answers again: the sweep
    assert (swept["resent"], swept["rearmed"]) == (1, 2)  # the answer; warning and breach
    assert f"send-{ack.id}" in sends.get_job_ids()
    visit = session.scalars(select(StageVisit)).one()
    assert visit.warning_at is not None and visit.deadline_at is not None
    armed = Alarms(seeded.redis_url, seeded.queue_name).armed_seconds(visit.deadline_at)
    assert armed == {second_of(visit.warning_at), second_of(visit.deadline_at)}


@pytest.mark.parametrize("dead", ["postgresql-closed-port", "sqlite-impossible-path"])
def test_database_down_answers_503_with_retry_after(
    seeded: Config, dead: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # a file where the database's folder should be (root-proof)
    url = {
        "postgresql-closed-port": CLOSED_DATABASE,
        "sqlite-impossible-path": f"sqlite:///{blocker}/whatsdesk/whatsdesk.db",
    }[dead]
    config = seeded.with_(database_url=url)
    client = create_app(config).test_client()
    answer = post(client, config, INBOUND, inbound_form())
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert "database does not answer" in answer.get_data(as_text=True)


def test_no_pipeline_configured_answers_503_and_stores_nothing(
    client: FlaskClient, config: Config, session: Session
) -> None:
    answer = post(client, config, INBOUND, inbound_form())
    assert answer.status_code == 503
    assert "no pipeline is configured" in answer.get_data(as_text=True)
    assert nothing_stored(session)


# --- status callbacks -------------------------------------------------------------------------


def outbound(session: Session, status: str = "queued") -> Message:
    now = datetime.now(UTC)
    message = Message(
        sid="SM" + uuid.uuid4().hex,
        direction="out",
        to_address=ADDRESS,
        from_address="",
        body="Hi!",
        status=status,
        media=[],
        created_at=now,
        updated_at=now,
    )
    session.add(message)
    session.commit()
    return message


def status_form(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": "AC" + "0" * 32,
        "To": ADDRESS,
        "From": "whatsapp:+14155238886",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def stored(session: Session, message_id: int) -> Message:
    fresh(session)
    found = session.get(Message, message_id)
    assert found is not None
    return found


def test_status_callbacks_out_of_order_never_move_a_message_back(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session, status="sending")
    seen = []
    for state in ("queued", "sent", "delivered", "read", "sent"):
        answer = post(client, config, STATUS, status_form(str(message.sid), state))
        assert answer.status_code == 200
        seen.append(stored(session, message.id).status)
    assert seen == ["queued", "sent", "delivered", "read", "read"]


def test_sent_and_delivered_arriving_together_leave_the_message_delivered(
    config: Config, session: Session
) -> None:
    if not config.database_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time: the two callbacks cannot overlap")
    message = outbound(session)
    sid = str(message.sid)
    sessions = session_factory(config.database_url)
    delivered, sent = sessions(), sessions()

    def sent_callback() -> None:  # a second web process, while "delivered" is not committed
        desk.apply_status(sent, sid, "sent", None, utcnow())
        sent.commit()

    try:
        assert desk.apply_status(delivered, sid, "delivered", None, utcnow())
        commit_once_it_waits(delivered, config.database_url, sent_callback)
    finally:
        delivered.close()
        sent.close()
    assert stored(session, message.id).status == "delivered"


def test_delivered_arriving_before_sent_is_kept(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session)
    for state in ("delivered", "queued", "sent"):
        assert post(client, config, STATUS, status_form(str(message.sid), state)).status_code == 200
    assert stored(session, message.id).status == "delivered"


def test_failed_after_sent_stores_the_error_code(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session)
    sid = str(message.sid)
    assert post(client, config, STATUS, status_form(sid, "sent")).status_code == 200
    answer = post(client, config, STATUS, status_form(sid, "failed", ErrorCode="63016"))
    assert answer.status_code == 200
    row = stored(session, message.id)
    assert (row.status, row.error_code) == ("failed", "63016")


def test_status_for_an_unknown_sid_is_accepted_and_changes_nothing(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session)
    unknown = "SM" + uuid.uuid4().hex
    answer = post(client, config, STATUS, status_form(unknown, "delivered"))
    assert answer.status_code == 200
    assert count(session, Message) == 1
    row = stored(session, message.id)
    assert (row.sid, row.status, row.updated_at) == (message.sid, "queued", message.updated_at)


def test_status_without_message_status_is_refused(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session)
    form = status_form(str(message.sid), "delivered")
    del form["MessageStatus"]
    answer = post(client, config, STATUS, form)
    assert answer.status_code == 400
    assert "MessageStatus" in answer.get_data(as_text=True)
    assert stored(session, message.id).status == "queued"


def test_status_for_a_sid_that_is_not_a_twilio_sid_is_refused(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session)
    answer = post(client, config, STATUS, status_form(f"{message.sid}\n", "delivered"))
    assert answer.status_code == 400
    assert "MessageSid is not a Twilio message SID" in answer.get_data(as_text=True)
    assert stored(session, message.id).status == "queued"


def test_status_with_bad_signature_is_refused(
    client: FlaskClient, config: Config, session: Session
) -> None:
    message = outbound(session)
    form = status_form(str(message.sid), "delivered")
    forged = whatsapp.sign("not-the-auth-token", "http://localhost" + STATUS, form)
    answer = client.post(STATUS, data=form, headers={"X-Twilio-Signature": forged})
    assert answer.status_code == 403
    assert stored(session, message.id).status == "queued"


def test_status_that_beats_the_send_job_to_the_sid_is_applied_when_it_lands(
    client: FlaskClient, config: Config, session: Session
) -> None:
    """Twilio can call back (e.g. a fast 63016 failure) before the send job stores the sid."""
    sid = "SM" + uuid.uuid4().hex
    answer = post(client, config, STATUS, status_form(sid, "failed", ErrorCode="63016"))
    assert answer.status_code == 200
    pending = desk.queue_outbound(
        session, to="whatsapp:+5511999990000", body="Hi", now=utcnow(), dedupe_key="early-test"
    )
    session.flush()

    desk.record_sent(session, pending, sid, "queued", utcnow())
    session.commit()

    row = stored(session, pending.id)
    assert (row.sid, row.status, row.error_code) == (sid, "failed", "63016")
    assert count(session, EarlyStatus) == 0
