"""The whole path with real processes: signed webhook → card → RQ worker with the scheduler →
acknowledgement, warning and breach arriving at a Twilio-compatible server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import inbound_form, seed, signed_post
from redis import Redis
from sqlalchemy import select
from twilio_server import TwilioServer

from whatsdesk import create_app, jobs
from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Message, SlaEvent

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
CUSTOMER = "whatsapp:+5511987654321"
AGENTS = {"whatsapp:+15550000001", "whatsapp:+15550000002"}  # the stage's alert list
SUPERVISORS = {"whatsapp:+15550000003", "whatsapp:+15550000004"}


@contextmanager
def processes(config: Config, twilio: TwilioServer, *commands: list[str]) -> Iterator[None]:
    """Run the desk's own processes (as the Procfile does) against the test databases."""
    env = {
        **os.environ,
        "DATABASE_URL": config.database_url,
        "REDIS_URL": config.redis_url,
        "SECRET_KEY": config.secret_key,
        **twilio.environ(),
    }
    running = [subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env) for cmd in commands]
    try:
        yield
    finally:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait(timeout=30)


def worker(config: Config) -> list[str]:
    return [
        str(BIN / "rq"),
        "worker",
        "--with-scheduler",
        "--url",
        config.redis_url,
        config.queue_name,
    ]


def sweep(config: Config) -> list[str]:
    return [str(BIN / "rq"), "cron", "whatsdesk.cron", "--url", config.redis_url]


def twilio_config(config: Config, twilio: TwilioServer) -> Config:
    return config.with_(
        twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token,
        twilio_api_url=twilio.url,
    )


def to(address: str | set[str]) -> object:
    wanted = {address} if isinstance(address, str) else address
    return lambda messages: {m["To"] for m in messages} >= wanted


def outbound_statuses(config: Config) -> set[str]:
    with session_factory(config.database_url)() as s:
        return set(s.scalars(select(Message.status).where(Message.direction == "out")))


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll until the condition holds or the time is up (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def events(config: Config) -> list[SlaEvent]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(SlaEvent).order_by(SlaEvent.id)))


def test_a_message_is_acknowledged_warned_and_escalated_on_time(config: Config) -> None:
    seed(config.database_url, sla="6s", warning="3s")
    with TwilioServer() as twilio, processes(config, twilio, worker(config)):
        app = create_app(twilio_config(config, twilio))
        answer = signed_post(
            app.test_client(),
            app.extensions["whatsdesk.config"],
            "/twilio/whatsapp",
            inbound_form(phone="+5511987654321", name="Maria Silva", body="My order is late"),
        )
        assert answer.status_code == 200

        ack = twilio.wait_for(to(CUSTOMER), timeout=15)
        assert "within 6s" in next(m["Body"] for m in ack if m["To"] == CUSTOMER)
        twilio.wait_for(to(AGENTS), timeout=20)
        sent = twilio.wait_for(to(SUPERVISORS), timeout=20)

        warning, breach = events(config)
        assert (warning.kind, breach.kind) == ("warning", "breach")
        assert warning.fired_at >= warning.due_at and breach.fired_at >= breach.due_at
        for message in sent:
            if message["To"] in SUPERVISORS:
                assert "SLA breached" in message["Body"] and "Maria Silva" in message["Body"]
                assert "New" in message["Body"]
            if message["To"] in AGENTS:
                assert "SLA warning" in message["Body"]
        # Exactly once: the sweep running now finds nothing left to do.
        assert jobs.reconcile(twilio_config(config, twilio), utcnow())["fired"] == 0
        assert sorted(m["To"] for m in twilio.messages) == sorted([CUSTOMER, *AGENTS, *SUPERVISORS])
        # Each send job stores Twilio's answer just after the server has it.
        assert eventually(lambda: outbound_statuses(config) == {"queued"}, timeout=10)


def test_a_redis_that_lost_its_data_loses_no_deadline(config: Config, redis: Redis) -> None:
    seed(config.database_url, sla="4s", warning="2s")
    with TwilioServer() as twilio:
        app = create_app(twilio_config(config, twilio))
        answer = signed_post(
            app.test_client(),
            app.extensions["whatsdesk.config"],
            "/twilio/whatsapp",
            inbound_form(phone="+5511987654321", name="Maria Silva"),
        )
        assert answer.status_code == 200
        redis.flushdb()  # a restart without persistence: timers and the ack's send job gone
        with processes(config, twilio, worker(config), sweep(config)):
            sent = twilio.wait_for(to({CUSTOMER, *AGENTS, *SUPERVISORS}), timeout=40)
        assert sorted(m["To"] for m in sent) == sorted([CUSTOMER, *AGENTS, *SUPERVISORS])
        assert [e.kind for e in events(config)] == ["warning", "breach"]
