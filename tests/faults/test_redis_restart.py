"""Redis restarted without persistence while 1,000 deadlines run: nothing lost, nothing twice."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from whatsdesk import accounts, desk, jobs, pipeline_store, pipelines, whatsapp
from whatsdesk.alarms import Alarms
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import Message, SlaEvent, StageVisit
from whatsdesk.redis_server import PrivateRedis

from .harness import (
    Desk,
    ListingTwilio,
    PrivatePostgres,
    notification_key,
    private_redis,
    restart_without_persistence,
)
from conftest import PASSWORD, inbound_form, open_staff_windows

pytestmark = pytest.mark.faults
DEADLINES = 1000
AGENT, SUPERVISOR = "whatsapp:+15550000001", "whatsapp:+15550000003"
PIPELINE = """
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 55s
        warning: 20s
        alert: [ana@example.com]
notifications:
  digest_window: off
"""


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def open_cards(config: Config) -> list[StageVisit]:
    """1,000 cards opened over the next 20 s, whose warnings ring 35 s after each, then their
    breaches 20 s later; their acknowledgements are already delivered (only the alerts are
    counted here). Writing them takes seconds, and over 20 s on a host in a slow hour: the
    first warning is 35 s after the start, not sooner."""
    with session_factory(config.database_url)() as s:
        now = utcnow()
        for name, email, role, phone in (
            ("Ana Agent", "ana@example.com", "agent", AGENT),
            ("Sofia Supervisor", "sofia@example.com", "supervisor", SUPERVISOR),
        ):
            accounts.create_user(
                s, name=name, email=email, role=role, whatsapp=phone.removeprefix("whatsapp:"),
                password=PASSWORD, now=now,
            )  # fmt: skip
        pipeline_store.load(s, pipelines.parse(PIPELINE), now)
        open_staff_windows(s, now)
        start = now
        for n in range(DEADLINES):
            inbound = whatsapp.parse_inbound(inbound_form(phone=f"+55117{n:08d}", name=f"C{n}"))
            desk.receive_message(s, inbound, start + timedelta(milliseconds=20 * n))
        s.execute(update(Message).where(Message.direction == "out").values(status="delivered"))
        s.commit()
        return list(s.scalars(select(StageVisit)))


def test_redis_restarted_empty_while_a_thousand_deadlines_run_loses_and_repeats_nothing(
    cluster: PrivatePostgres, redis_server: PrivateRedis, tmp_path: Path
) -> None:
    config = Config(
        database_url=cluster.new_database(),
        redis_url=redis_server.url,
        redis_url_is_private=False,
        secret_key="faults-secret",
    )
    with ListingTwilio() as twilio, Desk(config, twilio, tmp_path) as processes:
        for name in ("worker", "worker", "worker", "sweep"):
            processes.start(name)
        processes.wait_for_workers(3)
        visits = open_cards(config)
        alarms = Alarms(config.redis_url, config.queue_name)
        for visit in visits:
            alarms.schedule_timers(visit.id, visit.timers)
        first_warning = min(v.timers.instant("warning") for v in visits)
        assert utcnow() < first_warning, "writing the cards took longer than the 35 s margin"
        # Half the warnings have rung when Redis dies and comes back with nothing.
        time.sleep(max((first_warning - utcnow()).total_seconds() + 10, 0))
        restart_without_persistence(redis_server)
        twilio.wait_for(lambda forms: len(forms) >= 2 * DEADLINES, timeout=150)
        time.sleep(2 * config.sweep_seconds + 1)  # anything sent twice would show up now

    with session_factory(config.database_url)() as s:
        events = list(s.scalars(select(SlaEvent)))
    assert Counter(e.kind for e in events) == {"warning": DEADLINES, "breach": DEADLINES}
    lateness = sorted(e.lateness_seconds for e in events)
    assert lateness[-1] <= config.sweep_seconds + 1, lateness[-20:]

    keys = Counter(notification_key(form) for form in twilio.messages)
    assert [k for k, n in keys.items() if n > 1] == []
    assert len(keys) == 2 * DEADLINES
    due = {(str(e.card_id), e.kind): e.due_at for e in events}
    notified = [
        (created - due[(card, "warning" if "warning" in kind else "breach")]).total_seconds()
        for (_, kind, card), created in zip(
            map(notification_key, twilio.messages), twilio.created, strict=True
        )
    ]
    # Alerts whose send job Redis lost go when the sweep finds them pending that long; the
    # restart can lose a sweep's own job too (its process queues the next one an interval
    # later), and a sweep resending all that the restart lost can outrun its interval on a
    # slow host, so that the next one finds the lock held and does nothing: three intervals.
    # CI runs in a slow hour saw 21.2 s and 23.1 s against two (every event on time, nothing
    # twice).
    bound = jobs.STALE_SEND_SECONDS + 3 * config.sweep_seconds + 5
    assert max(notified) <= bound, sorted(notified)[-20:]
