"""Workers SIGKILLed at random moments, two web processes and three workers sharing one
PostgreSQL and one Redis: every notification reaches Twilio exactly once."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import func, select

from whatsdesk import jobs
from whatsdesk.alarms import Alarms, clock_queue_name, redis_for
from whatsdesk.config import Config
from whatsdesk.db import session_factory
from whatsdesk.models import Message, SlaEvent

from .harness import (
    Desk,
    ListingTwilio,
    PrivatePostgres,
    notification_key,
    post_inbound,
    private_redis,
    scheduler_pid,
)
from conftest import eventually, inbound_form, seed
from twilio_server import TwilioServer

pytestmark = pytest.mark.faults
AGENTS = ["whatsapp:+15550000001", "whatsapp:+15550000002"]  # the stage's alert list
SUPERVISORS = ["whatsapp:+15550000003", "whatsapp:+15550000004"]
PER_CARD = 1 + len(AGENTS) + len(SUPERVISORS)  # acknowledgement, warnings, breach alerts


@pytest.fixture
def desk_config(cluster: PrivatePostgres) -> Iterator[Config]:
    with private_redis() as redis_server:
        yield Config(
            database_url=cluster.new_database(),
            redis_url=redis_server.url,
            redis_url_is_private=False,
            secret_key="faults-secret",
        )


def sla_events(config: Config) -> list[SlaEvent]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(SlaEvent).order_by(SlaEvent.id)))


def outbound_states(config: Config) -> Counter[str]:
    with session_factory(config.database_url)() as s:
        return Counter(s.scalars(select(Message.status).where(Message.direction == "out")))


def job_state(alarms: Alarms, job_id: str) -> str:
    try:
        job = Job.fetch(job_id, connection=alarms.redis)
    except NoSuchJobError:
        return "none"
    return f"{job.get_status()} by {job.worker_name} live={alarms.is_live(job_id)}"


def wait_for_all(twilio: TwilioServer, config: Config, expected: int, timeout: float) -> None:
    """Every notification at Twilio, or a failure saying where the others are stuck."""
    try:
        twilio.wait_for(lambda forms: len(forms) >= expected, timeout=timeout)
    except TimeoutError:
        with session_factory(config.database_url)() as s:
            stuck = s.execute(
                select(Message.id, Message.status, Message.attempts, Message.error_message).where(
                    Message.direction == "out", Message.status != "queued"
                )
            ).all()
            alarms = Alarms(config.redis_url, config.queue_name)
            jobs = {m[0]: job_state(alarms, f"send-{m[0]}") for m in stuck}
            kinds = Counter(e.kind for e in s.scalars(select(SlaEvent)))
            outbound = s.scalar(select(func.count()).where(Message.direction == "out"))
        pytest.fail(
            f"{len(twilio.messages)} of {expected} sent; events {kinds}, {outbound} outbound, "
            f"not sent: {stuck}, their jobs: {jobs}"
        )


def assert_each_once(twilio: TwilioServer, cards: int) -> None:
    keys = Counter(notification_key(form) for form in twilio.messages)
    twice = {key: n for key, n in keys.items() if n > 1}
    assert twice == {}, f"sent more than once: {twice}"
    assert len(keys) == cards * PER_CARD


def test_workers_killed_at_random_moments_lose_and_repeat_no_notification(
    desk_config: Config, tmp_path: Path
) -> None:
    """2 web processes and 3 workers; every 0.3-2 s a random worker (scheduler child and all)
    is SIGKILLed and replaced. Each message is delivered by Twilio three times at once, to
    both web processes."""
    # The warning 10 s before the breach: a warning the breach overtakes is never sent.
    seed(desk_config.database_url, sla="20s", warning="10s", staff_windows=True)
    rng = random.Random(int(os.environ.get("FAULTS_SEED", time.time())))
    customers = 30
    with ListingTwilio() as twilio, Desk(desk_config, twilio, tmp_path) as desk:
        for name in ("web", "web", "worker", "worker", "worker", "sweep"):
            desk.start(name)
        killing = threading.Event()
        kills: list[str] = []

        def killer() -> None:
            while not killing.wait(rng.uniform(0.3, 2.0)):
                victim = rng.choice(desk.labels("worker"))
                desk.kill(victim)
                kills.append(victim)
                desk.start("worker")

        chaos = threading.Thread(target=killer, name="killer")
        chaos.start()
        try:
            with ThreadPoolExecutor(max_workers=3) as pool:
                for n in range(customers):
                    form = inbound_form(phone=f"+55119{n:08d}", name=f"Customer {n}")
                    bases = [desk.webs[(n + i) % 2] for i in range(3)]
                    answers = list(
                        pool.map(post_inbound, bases, [twilio.auth_token] * 3, [form] * 3)
                    )
                    assert answers == [200] * 3
                    time.sleep(rng.uniform(0.2, 0.8))
            time.sleep(20)  # the last cards' warnings and breaches come under fire too
        finally:
            killing.set()
            chaos.join()
        assert len(kills) >= 15, kills

        wait_for_all(twilio, desk_config, customers * PER_CARD, timeout=120)
        # A worker killed mid-call leaves its send "sending": the sweep asks Twilio about it
        # once the call has surely ended, and records what Twilio holds.
        settled = jobs.SEND_SETTLED_SECONDS + 2 * desk_config.sweep_seconds + 5
        all_queued = {"queued": customers * PER_CARD}
        eventually(lambda: outbound_states(desk_config) == all_queued, timeout=settled)
        # Two sweeps more: anything sent twice would show up now.
        time.sleep(2 * desk_config.sweep_seconds + 1)

    assert_each_once(twilio, customers)
    kinds = Counter(event.kind for event in sla_events(desk_config))
    assert kinds == {"warning": customers, "breach": customers}
    assert outbound_states(desk_config) == all_queued


def test_killing_the_worker_running_the_scheduler_keeps_deadlines_firing(
    desk_config: Config, tmp_path: Path
) -> None:
    """RQ hands a dead scheduler's lock on only after minutes; the sweep fires what is due
    meanwhile, each within a sweep interval of its instant."""
    seed(desk_config.database_url, sla="10s", warning="5s", staff_windows=True)
    customers = 5
    redis = redis_for(desk_config.redis_url)
    clock = clock_queue_name(desk_config.queue_name)
    with ListingTwilio() as twilio, Desk(desk_config, twilio, tmp_path) as desk:
        for name in ("web", "worker", "worker", "sweep"):
            desk.start(name)
        assert eventually(lambda: scheduler_pid(redis, clock) is not None, timeout=20)
        for n in range(customers):
            form = inbound_form(phone=f"+55118{n:08d}", name=f"Customer {n}")
            assert post_inbound(desk.webs[0], twilio.auth_token, form) == 200
        twilio.wait_for(lambda forms: len(forms) >= customers, timeout=20)  # the acks

        holder = desk.group_of(scheduler_pid(redis, clock) or 0)
        assert holder is not None and holder.startswith("worker-")
        desk.kill(holder)

        wait_for_all(twilio, desk_config, customers * PER_CARD, timeout=30)
        time.sleep(2 * desk_config.sweep_seconds + 1)

    assert_each_once(twilio, customers)
    events = sla_events(desk_config)
    assert len(events) == 2 * customers
    late = [e.lateness_seconds for e in events]
    assert max(late) <= desk_config.sweep_seconds + 1, late
