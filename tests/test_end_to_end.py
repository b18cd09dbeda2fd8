"""The whole path with real processes: signed webhook → card → RQ worker with the scheduler →
acknowledgement, warning and breach arriving at a Twilio-compatible server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import select

from whatsdesk import (
    accounts,
    create_app,
    desk,
    jobs,
    pipeline_store,
    pipelines,
    procfile,
    whatsapp,
)
from whatsdesk.alarms import Alarms, clock_queue_name
from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Message, SlaEvent, StageVisit

from conftest import (
    PASSWORD,
    answers,
    eventually,
    free_port,
    inbound_form,
    open_staff_windows,
    seed,
    signed_post,
)
from twilio_server import TwilioServer

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
CUSTOMER = "whatsapp:+5511987654321"
AGENTS = {"whatsapp:+15550000001", "whatsapp:+15550000002"}  # the stage's alert list
SUPERVISORS = {"whatsapp:+15550000003", "whatsapp:+15550000004"}


@contextmanager
def processes(
    config: Config, twilio: TwilioServer, *names: str, settings: dict[str, str] | None = None
) -> Iterator[str]:
    """Run the Procfile's processes against the test databases; yields the web base URL."""
    port = free_port()
    env = {
        **(settings or {}),
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
    seed(config.database_url, sla="6s", warning="3s", staff_windows=True)
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
    seed(config.database_url, sla="10s", warning="5s", staff_windows=True)
    with TwilioServer() as twilio, processes(config, twilio, "worker", "sweep"):
        app = create_app(twilio_config(config, twilio))
        answer = signed_post(
            app.test_client(),
            app.extensions["whatsdesk.config"],
            "/twilio/whatsapp",
            inbound_form(phone="+5511987654321", name="Maria Silva"),
        )
        assert answer.status_code == 200
        # A restart without persistence while the card runs: its timers and the ack's send
        # job are gone from Redis.
        redis.flushdb()
        sent = twilio.wait_for(to({CUSTOMER, *AGENTS, *SUPERVISORS}), timeout=40)
        assert sorted(m["To"] for m in sent) == sorted([CUSTOMER, *AGENTS, *SUPERVISORS])
        warning, breach = events(config)
        assert (warning.kind, breach.kind) == ("warning", "breach")
        for event in (warning, breach):  # each within one sweep interval of its instant
            assert 0 <= event.lateness_seconds <= Config().sweep_seconds


def test_a_worker_takes_over_the_scheduler_of_a_killed_one_and_deadlines_keep_their_time(
    config: Config, redis: Redis
) -> None:
    """The worker running RQ's scheduler was SIGKILLed: its lock's 61-second lease still
    runs, refreshed by nobody. A worker takes the scheduler over within seconds, so the
    clock's jobs fire on time (no sweep runs here to make up for them)."""
    seed(config.database_url, sla="6s", warning="3s", staff_windows=True)
    queues = (config.queue_name, clock_queue_name(config.queue_name))
    for queue in queues:  # as a scheduler killed 20 s after its last refresh leaves them
        redis.set(f"rq:scheduler-lock:{queue}", "killed-scheduler", ex=41)
    with TwilioServer() as twilio, processes(config, twilio, "web", "worker") as web:
        form = inbound_form(phone="+5511987654321", name="Maria Silva", body="My order is late")
        assert post_signed(web, twilio.auth_token, form) == 200
        twilio.wait_for(to({CUSTOMER, *AGENTS, *SUPERVISORS}), timeout=20)

        warning, breach = events(config)
        assert (warning.kind, breach.kind) == ("warning", "breach")
        assert max(warning.lateness_seconds, breach.lateness_seconds) < 1
        holders = {redis.get(f"rq:scheduler-lock:{queue}") for queue in queues}
        assert len(holders) == 1 and None not in holders and b"killed-scheduler" not in holders


STORM_FILE = """
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 8s
notifications:
  digest_window: 4s
"""


def test_an_alert_storm_reaches_supervisors_as_digests_within_the_rate_limit(
    config: Config, redis: Redis
) -> None:
    """200 deadlines in the same second, 3 supervisors: every breach recorded within seconds,
    each supervisor gets one alert and then digests, and sends never beat the rate limit."""
    seed(config.database_url)
    customers = 200
    rate = 25
    with session_factory(config.database_url)() as s:
        accounts.create_user(
            s,
            name="Third Supervisor",
            email="third@example.com",
            role="supervisor",
            whatsapp="+15550000005",
            password=PASSWORD,
            now=utcnow(),
        )
        pipeline_store.load(s, pipelines.parse(STORM_FILE), utcnow())
        open_staff_windows(s, utcnow())
        at = utcnow()
        for n in range(customers):
            inbound = whatsapp.parse_inbound(inbound_form(phone=f"+55119{n:08d}", name=f"C{n}"))
            desk.receive_message(s, inbound, at)
        s.commit()
        visits = s.scalars(select(StageVisit)).all()
        assert {v.deadline_at for v in visits} == {at + timedelta(seconds=8)}
        acks = s.scalars(select(Message.id).where(Message.direction == "out")).all()
    supervisors = {*SUPERVISORS, "whatsapp:+15550000005"}
    with (
        TwilioServer() as twilio,
        processes(
            config,
            twilio,
            "worker",
            "worker",
            "worker",
            "sweep",
            settings={"SEND_RATE_LIMIT": str(rate)},
        ),
    ):
        alarms = Alarms(config.redis_url, config.queue_name)
        for visit in visits:
            alarms.schedule_timers(visit.id, visit.timers)
        for message_id in acks:
            alarms.enqueue_send(message_id)

        def all_told(messages: list[dict[str, str]]) -> bool:
            return all(alerts_in(messages, to) == customers for to in supervisors)

        sent = twilio.wait_for(all_told, timeout=60)
        arrivals = list(twilio.arrivals)

    breaches = events(config)
    assert len(breaches) == customers
    assert max(e.lateness_seconds for e in breaches) < 10
    for supervisor in supervisors:
        theirs = [m["Body"] for m in sent if m["To"] == supervisor]
        assert len(theirs) <= 3, theirs  # one alert, then digests: not 200 messages
        assert all(body.startswith(("🚨 SLA breached", "📋 ")) for body in theirs)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= rate


def alerts_in(messages: list[dict[str, str]], to: str) -> int:
    """How many breach alerts reached `to`, counting each digest's alerts."""
    total = 0
    for message in messages:
        if message["To"] != to:
            continue
        body = message.get("Body", "")
        counted = re.match(r"📋 (\d+) SLA alerts", body)
        total += int(counted.group(1)) if counted else body.startswith("🚨 SLA breached")
    return total


def test_three_workers_and_the_sweep_send_every_alert_exactly_once(config: Config) -> None:
    seed(config.database_url, sla="4s", warning="2s", staff_windows=True)
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
