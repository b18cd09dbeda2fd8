"""/simulator: a logged-in person plays the customer through the real, signed webhook."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from whatsdesk import create_app, escalation, jobs, notifications, pipelines, settings
from whatsdesk.config import Config
from whatsdesk.db import utcnow
from whatsdesk.models import Card, Contact, Message, StageVisit, User

from conftest import count, csrf_token, fresh, login, page_token, seed

PHONE = "+5511987654321"
ADDRESS = f"whatsapp:{PHONE}"
ACK = (
    "Hi Maria Silva! Thanks for your message, it has reached us. "
    "You are 1st in line; a person from our Support team will answer within 2 minutes."
)


def send_token(client: FlaskClient) -> str:
    """The CSRF token the simulator's send form carries."""
    page = client.get("/simulator")
    assert page.status_code == 200
    form = page.get_data(as_text=True).split('id="sim-form"')[1].split("</form>")[0]
    return csrf_token(form)


def send(
    client: FlaskClient, body: str, phone: str = PHONE, name: str = "Maria Silva"
) -> TestResponse:
    data = {"phone": phone, "name": name, "body": body, "csrf_token": send_token(client)}
    return client.post("/simulator/send", data=data)


def phone_thread(client: FlaskClient, phone: str = PHONE) -> list[dict[str, str]]:
    answer = client.get("/simulator/phones", query_string={"phone": phone})
    assert answer.status_code == 200
    customer: list[dict[str, str]] = answer.get_json()["customer"]
    return customer


def test_simulator_page_requires_login(client: FlaskClient, seeded: Config) -> None:
    answer = client.get("/simulator")
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login")


def test_phones_require_login(client: FlaskClient, seeded: Config) -> None:
    answer = client.get("/simulator/phones", query_string={"phone": PHONE})
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login")


def test_send_requires_login_and_stores_nothing(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    data = {"phone": PHONE, "name": "Maria", "body": "Hello", "csrf_token": page_token(client)}
    answer = client.post("/simulator/send", data=data)
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login")
    assert count(session, Message) == 0


def test_send_without_csrf_token_is_refused(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    login(client)
    answer = client.post("/simulator/send", data={"phone": PHONE, "body": "Hello"})
    assert answer.status_code == 400
    assert "CSRF" in answer.get_data(as_text=True)
    assert count(session, Message) == 0


def test_send_opens_a_card_through_the_signed_webhook(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    login(client)
    answer = send(client, "My order never arrived")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    result = answer.get_json()
    assert result["status"] == 200 and result["sid"].startswith("SM")

    assert count(session, Card) == 1
    contact = session.scalars(select(Contact)).one()
    assert (contact.address, contact.profile_name, contact.wa_id) == (
        ADDRESS,
        "Maria Silva",
        "5511987654321",
    )
    inbound = session.scalars(select(Message).where(Message.direction == "in")).one()
    assert (inbound.sid, inbound.body) == (result["sid"], "My order never arrived")


def test_customer_phone_shows_the_message_then_the_pending_acknowledgement(
    client: FlaskClient, seeded: Config
) -> None:
    login(client)
    assert send(client, "My order never arrived").status_code == 200

    thread = phone_thread(client)
    assert [(m["direction"], m["body"], m["status"]) for m in thread] == [
        ("in", "My order never arrived", "received"),
        ("out", ACK, "pending"),
    ]


def test_staff_phones_are_listed(client: FlaskClient, seeded: Config) -> None:
    login(client)
    answer = client.get("/simulator/phones")
    assert answer.status_code == 200
    data = answer.get_json()
    assert data["customer"] == []
    assert {p["whatsapp"] for p in data["staff"]} == {
        "whatsapp:+15550000001",
        "whatsapp:+15550000002",
        "whatsapp:+15550000003",
        "whatsapp:+15550000004",
    }
    assert all(p["messages"] == [] for p in data["staff"])


def test_bad_phone_is_refused_with_a_clear_error(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    login(client)
    for phone in ("5511987654321", "+55 11 98765", "+0123456789", "hello"):
        answer = send(client, "Hello", phone=phone)
        assert answer.status_code == 400, phone
        assert answer.get_json() == {"error": "phone must be in E.164 form, e.g. +5511999990000"}
    assert count(session, Message) == 0 and count(session, Contact) == 0


def test_empty_message_is_refused_with_a_clear_error(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    login(client)
    answer = send(client, "   ")
    assert answer.status_code == 400
    assert answer.get_json() == {"error": "write a message first"}
    assert count(session, Message) == 0


def test_simulator_is_absent_when_twilio_credentials_are_set(seeded: Config) -> None:
    config = seeded.with_(twilio_account_sid="AC" + "1" * 32, twilio_auth_token="tok-12345")
    client = create_app(config).test_client()
    login(client)
    assert client.get("/simulator").status_code == 404
    assert client.get("/simulator/phones", query_string={"phone": PHONE}).status_code == 404
    page = client.get("/queue").get_data(as_text=True)
    assert 'href="/simulator"' not in page


def test_simulator_link_shows_in_simulator_mode(client: FlaskClient, seeded: Config) -> None:
    login(client)
    assert 'href="/simulator"' in client.get("/queue").get_data(as_text=True)


def test_send_is_absent_when_twilio_credentials_are_set(seeded: Config, session: Session) -> None:
    config = seeded.with_(twilio_account_sid="AC" + "1" * 32, twilio_auth_token="tok-12345")
    client = create_app(config).test_client()
    login(client)
    data = {"phone": PHONE, "body": "Hello", "csrf_token": page_token(client, "/queue")}
    answer = client.post("/simulator/send", data=data)
    assert answer.status_code == 404
    assert count(session, Message) == 0


def test_acknowledgement_shows_delivered_after_the_send_job(
    client: FlaskClient, env: Config, session: Session
) -> None:
    seed(env.database_url)
    login(client)
    assert send(client, "Hello").status_code == 200
    ack = session.scalars(select(Message).where(Message.direction == "out")).one()

    assert jobs.send_message(ack.id) == "sent"

    thread = phone_thread(client)
    assert [(m["direction"], m["status"]) for m in thread] == [
        ("in", "received"),
        ("out", "delivered"),
    ]
    fresh(session)
    sent = session.get(Message, ack.id)
    assert sent is not None
    assert sent.status == "delivered" and sent.attempts == 1
    assert sent.sid is not None and sent.sid.startswith("SM")


def test_send_job_run_twice_sends_once(client: FlaskClient, env: Config, session: Session) -> None:
    seed(env.database_url)
    login(client)
    assert send(client, "Hello").status_code == 200
    ack = session.scalars(select(Message).where(Message.direction == "out")).one()

    assert jobs.send_message(ack.id) == "sent"
    fresh(session)
    first_sid = session.get(Message, ack.id).sid  # type: ignore[union-attr]
    assert jobs.send_message(ack.id) == "already handled"

    fresh(session)
    again = session.get(Message, ack.id)
    assert again is not None
    assert (again.sid, again.attempts, again.status) == (first_sid, 1, "delivered")


def test_send_works_behind_a_public_url(seeded: Config, session: Session) -> None:
    client = create_app(seeded.with_(public_url="https://desk.example.com")).test_client()
    login(client)
    answer = send(client, "Hello from behind the proxy")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert [m["body"] for m in phone_thread(client)][0] == "Hello from behind the proxy"
    assert count(session, Card) == 1


def test_a_staff_phone_shows_a_digest_not_the_alerts_it_carried(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    settings.save_notifications(session, pipelines.NotificationsSpec(digest_seconds=30), utcnow())
    session.commit()
    login(client)
    for n in range(3):
        assert send(client, "Hello", phone=f"+551198765430{n}").status_code == 200
    for visit in session.scalars(select(StageVisit)).all():
        assert visit.deadline_at is not None
        escalation.fire(session, visit.id, "breach", visit.deadline_at)
    session.commit()
    sofia = session.scalars(select(User).where(User.email == "sofia@example.com")).one()
    [digest] = notifications.gather(session, sofia.id, utcnow()).sends
    session.commit()

    phones = client.get("/simulator/phones").get_json()["staff"]

    [shown] = [p["messages"] for p in phones if p["whatsapp"] == sofia.whatsapp]
    assert [(m["direction"], m["body"]) for m in shown] == [("out", digest.body)]
    assert digest.body.startswith("📋 3 SLA alerts")
