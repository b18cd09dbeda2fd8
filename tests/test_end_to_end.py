"""The whole path with real processes: signed webhook → card → RQ worker with the scheduler →
acknowledgement, warning and breach arriving at a Twilio-compatible server."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import select

from whatsdesk import create_app, jobs, procfile, whatsapp
from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Message, SlaEvent

from conftest import answers, eventually, free_port, inbound_form, seed, signed_post
from twilio_server import TwilioServer

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
CUSTOMER = "whatsapp:+5511987654321"
AGENTS = {"whatsapp:+15550000001", "whatsapp:+15550000002"}  # the stage's alert list
SUPERVISORS = {"whatsapp:+15550000003", "whatsapp:+15550000004"}


@contextmanager
def processes(config: Config, twilio: TwilioServer, *names: str) -> Iterator[str]:
    """Run the Procfile's processes against the test databases; yields the web base URL."""
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": config.database_url,
        "REDIS_URL": config.redis_url,
        "SECRET_KEY": config.secret_key,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        **twilio.environ(),
    }
    running = [
        subprocess.Popen(procfile.command(name, env), cwd=PROJECT_ROOT, env=env) for name in names
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        if "web" in names:
            assert eventually(lambda: answers(base + "/healthz"), timeout=30), "web did not start"
        yield base
    finally:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait(timeout=30)


def post_signed(base: str, token: str, form: dict[str, str]) -> int:
    """POST to the running web process exactly as Twilio does: form-encoded and signed."""
    url = base + "/twilio/whatsapp"
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"X-Twilio-Signature": whatsapp.sign(token, url, form)},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


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


def events(config: Config) -> list[SlaEvent]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(SlaEvent).order_by(SlaEvent.id)))


def test_a_message_is_acknowledged_warned_and_escalated_on_time(config: Config) -> None:
    seed(config.database_url, sla="6s", warning="3s")
    with (
        TwilioServer() as twilio,
        processes(config, twilio, "web", "worker", "sweep") as web,
    ):
        form = inbound_form(phone="+5511987654321", name="Maria Silva", body="My order is late")
        assert post_signed(web, twilio.auth_token, form) == 200

        ack = twilio.wait_for(to(CUSTOMER), timeout=15)
        assert "within 6 seconds" in next(m["Body"] for m in ack if m["To"] == CUSTOMER)
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
        with processes(config, twilio, "worker", "sweep"):
            sent = twilio.wait_for(to({CUSTOMER, *AGENTS, *SUPERVISORS}), timeout=40)
        assert sorted(m["To"] for m in sent) == sorted([CUSTOMER, *AGENTS, *SUPERVISORS])
        assert [e.kind for e in events(config)] == ["warning", "breach"]


def test_three_workers_and_the_sweep_send_every_alert_exactly_once(config: Config) -> None:
    seed(config.database_url, sla="4s", warning="2s")
    customers = [f"+55119{n:08d}" for n in range(12)]
    with (
        TwilioServer() as twilio,
        processes(config, twilio, "web", "worker", "worker", "worker", "sweep") as web,
    ):
        for n, phone in enumerate(customers):
            form = inbound_form(phone=phone, name=f"Customer {n}", body="Help")
            assert post_signed(web, twilio.auth_token, form) == 200
        expected = len(customers) * (1 + len(AGENTS) + len(SUPERVISORS))
        twilio.wait_for(lambda messages: len(messages) >= expected, timeout=60)
        # Two sweeps more: anything sent twice would show up now.
        jobs.reconcile(twilio_config(config, twilio), utcnow())
        assert eventually(lambda: outbound_statuses(config) == {"queued"}, timeout=15)

    sent = [
        (m["To"], m["Body"].split(" — ")[0], m["Body"].rsplit("Card #", 1)[-1])
        for m in twilio.messages
    ]
    assert len(sent) == expected
    assert len(set(sent)) == expected  # no (recipient, kind, card) twice
    kinds = [e.kind for e in events(config)]
    assert kinds.count("warning") == kinds.count("breach") == len(customers)
