"""GET /metrics: what Prometheus scrapes, and who may scrape it."""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from whatsdesk import create_app, jobs
from whatsdesk.alarms import second_of
from whatsdesk.config import Config
from whatsdesk.db import utcnow
from whatsdesk.models import Message, StageVisit

from conftest import CLOSED_REDIS, fresh, inbound_form, signed_post

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: FlaskClient, **kwargs: object) -> Samples:
    answer = client.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.content_type.startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def write_in(client: FlaskClient, config: Config, phone: str) -> None:
    answer = signed_post(client, config, "/twilio/whatsapp", inbound_form(phone=phone))
    assert answer.status_code == 200  # type: ignore[attr-defined]


def test_a_webhook_a_send_and_an_sla_event_show_in_the_scrape(
    client: FlaskClient, seeded: Config, env: Config, session: Session
) -> None:
    # Earlier tests of this process (and what they started) count in the same directory:
    # compare this test's scrapes by difference, at least what this test did.
    before = scrape(client)
    write_in(client, seeded, "+5511999990000")
    assert client.post("/twilio/whatsapp", data=inbound_form()).status_code == 403  # unsigned
    fresh(session)
    acknowledgement = session.scalars(select(Message).where(Message.direction == "out")).one()
    assert jobs.send_message(acknowledgement.id) == "sent"
    visit = session.scalars(select(StageVisit)).one()
    assert visit.deadline_at is not None
    assert jobs.fire_and_send(seeded, visit.id, "breach", visit.deadline_at + timedelta(seconds=3))
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("whatsdesk_inbound_messages_total", outcome="stored") >= 1
    assert grew("whatsdesk_inbound_messages_total", outcome="bad_signature") >= 1
    assert grew("whatsdesk_webhook_seconds_count", webhook="whatsapp") >= 2
    assert grew("whatsdesk_webhook_seconds_bucket", webhook="whatsapp", le="+Inf") >= 2
    assert grew("whatsdesk_outbound_messages_total", status="sent") >= 1
    assert grew("whatsdesk_sla_event_lateness_seconds_count", kind="breach") >= 1
    # Three seconds late: above the 2.5 s bucket, within the 5 s one.
    assert grew("whatsdesk_sla_event_lateness_seconds_bucket", kind="breach", le="5.0") >= 1
    assert grew("whatsdesk_sla_event_lateness_seconds_sum", kind="breach") >= 3


def test_a_message_stored_while_redis_is_down_is_counted_and_shows_in_a_scrape_then(
    client: FlaskClient, seeded: Config
) -> None:
    before = scrape(client)
    down = seeded.with_(redis_url=CLOSED_REDIS)
    without_redis = create_app(down).test_client()
    write_in(without_redis, down, "+5511999990001")  # a new conversation: timers, an answer
    during = scrape(without_redis)  # the counters, without the queues' gauges
    write_in(client, seeded, "+5511999990002")  # Redis answers: armed at once
    after = scrape(client)

    unarmed = "whatsdesk_inbound_unarmed_total"
    assert value(during, unarmed) - value(before, unarmed) == 1
    assert value(after, unarmed) - value(before, unarmed) == 1
    assert not any(name == "whatsdesk_queue_jobs" for name, _labels in during)
    assert any(name == "whatsdesk_queue_jobs" for name, _labels in after)


def test_open_cards_by_sla_state_and_the_queues_are_read_at_scrape_time(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    write_in(client, seeded, "+5511999990001")
    write_in(client, seeded, "+5511999990002")
    fresh(session)
    # The clock jobs armed: one for each second holding a warning or a breach.
    seconds = {
        second_of(instant)
        for visit in session.scalars(select(StageVisit))
        for instant in (visit.warning_at, visit.deadline_at)
        if instant is not None
    }
    first = session.scalars(select(StageVisit).order_by(StageVisit.id)).first()
    assert first is not None
    session.execute(
        update(StageVisit)
        .where(StageVisit.id == first.id)
        .values(deadline_at=utcnow() - timedelta(minutes=1))
    )
    session.commit()

    samples = scrape(client)

    assert value(samples, "whatsdesk_open_cards", state="breached") == 1
    assert value(samples, "whatsdesk_open_cards", state="on_time") == 1
    assert value(samples, "whatsdesk_open_cards", state="paused") == 0
    # Two acknowledgements to send; a clock job for each second holding a warning or a breach.
    assert value(samples, "whatsdesk_queue_jobs", queue="whatsdesk") == 2
    assert value(samples, "whatsdesk_scheduled_jobs", queue="whatsdesk-clock") == len(seconds)
    assert value(samples, "whatsdesk_failed_jobs", queue="whatsdesk") == 0


def with_token(config: Config) -> FlaskClient:
    """A client of a desk whose METRICS_TOKEN is s3cret-scrape-token."""
    return create_app(config.with_(metrics_token="s3cret-scrape-token")).test_client()


def test_without_a_token_only_direct_loopback_requests_are_answered(
    client: FlaskClient, config: Config
) -> None:
    assert config.metrics_token == ""
    assert client.get("/metrics").status_code == 200
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 403
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 403
    assert "loopback" in proxied.get_data(as_text=True)


def test_in_production_only_a_token_opens_the_metrics(config: Config) -> None:
    """A reverse proxy on the same host that adds no X-Forwarded-For would make every client
    a direct loopback one: in production the loopback rule does not apply."""
    production = config.with_(
        production=True,
        twilio_account_sid="AC" + "1" * 32,
        twilio_auth_token="tok-12345",
        secret_key="a-long-random-secret-for-this-test-only",
        public_url="https://desk.example.com",
    )
    answer = create_app(production).test_client().get("/metrics")
    assert answer.status_code == 403
    assert "in production, set METRICS_TOKEN" in answer.get_data(as_text=True)

    scraped = (
        create_app(production.with_(metrics_token="s3cret-scrape-token"))
        .test_client()
        .get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    )
    assert scraped.status_code == 200


def test_with_a_token_only_its_bearer_is_answered_from_anywhere(config: Config) -> None:
    client = with_token(config)
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    right = client.get(
        "/metrics",
        headers={"Authorization": "Bearer s3cret-scrape-token", "X-Forwarded-For": "203.0.113.9"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert right.status_code == 200
    assert "whatsdesk_open_cards" in right.get_data(as_text=True)


def test_a_token_that_is_not_ascii_is_refused_not_an_error(config: Config) -> None:
    client = with_token(config)

    answer = client.get("/metrics", headers={"Authorization": "Bearer é"})

    assert answer.status_code == 401
    assert "a valid bearer token" in answer.get_data(as_text=True)
