"""SLA timers: precision of 10,000 deadlines within a minute (exact jobs, then the sweep
alone), an alert storm of 1,000 deadlines in one second, and the sweep's own cost."""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rq import Worker as RqWorker
from sqlalchemy import func, select, update

from whatsdesk import jobs
from whatsdesk.alarms import Alarms, second_of
from whatsdesk.config import PROJECT_ROOT
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import Message, SlaEvent, StageVisit

from . import data
from .harness import Sizes, Stores, eventually, processes, rss_mib, summary, timed

WORKERS = 2  # one per core, as FACTS.md measured RQ with
SWEEP_ONLY = {"whatsdesk.worker.Worker": "bench.sweep_only.Worker"}


def _events(stores: Stores) -> int:
    with get_engine(stores.database_url).connect() as conn:
        return int(conn.execute(select(func.count(SlaEvent.id))).scalar_one())


def _lateness(stores: Stores) -> list[float]:
    """Recorded − due, in milliseconds, of every event."""
    with session_factory(stores.database_url)() as session:
        return [
            (fired - due).total_seconds() * 1000
            for due, fired in session.execute(select(SlaEvent.due_at, SlaEvent.fired_at))
        ]


def _workers_ready(stores: Stores, count: int) -> bool:
    return eventually(lambda: len(RqWorker.all(connection=stores.redis_client())) >= count, 60)


def _deadlines(start: datetime, count: int, window: float, rng: random.Random) -> list[datetime]:
    return sorted(start + timedelta(seconds=rng.uniform(0, window)) for _ in range(count))


def _arm(stores: Stores, visits: list[int], deadlines: list[datetime]) -> None:
    alarms = Alarms(stores.redis_url, stores.config.queue_name)
    for deadline in deadlines:  # as entering the stage does: the clock job of its second
        alarms.schedule_second(second_of(deadline))


def precision(stores: Stores, sizes: Sizes, exact: bool) -> dict[str, Any]:
    """`precision_deadlines` breaches spread over `precision_window` seconds, three
    supervisors told of each (through their digests), the Procfile's worker ×2 and sweep."""
    stores.empty()
    now = datetime.now(UTC)
    seeded = data.seed(stores.database_url, now)
    count, window = sizes.precision_deadlines, sizes.precision_window
    with processes(
        stores, ["worker", "sweep"], workers=WORKERS, swap=None if exact else SWEEP_ONLY
    ) as running:
        _workers_ready(stores, WORKERS)
        # Far enough ahead that the rows and the jobs are all in before the first instant.
        start = datetime.now(UTC) + timedelta(seconds=5 + count / 400)
        deadlines = _deadlines(start, count, window, random.Random(5))
        visits = data.open_cards(stores.database_url, seeded, count, now, deadlines=deadlines)
        armed_at = None
        if exact:
            _arm(stores, visits, deadlines)
            armed_at = datetime.now(UTC)
        finish = (deadlines[-1] - datetime.now(UTC)).total_seconds() + 60
        complete = eventually(lambda: _events(stores) >= count, finish, step=0.5)
        rss = [rss_mib(pid) for pid in running.pids("worker")]
    late = _lateness(stores)
    span = (max(late, default=0) / 1000) + (deadlines[-1] - deadlines[0]).total_seconds()
    return {
        "exact": exact,
        "events_per_s": len(late) / span if span else 0.0,
        "arriving_per_s": count / window,
        "deadlines": count,
        "window_s": window,
        "workers": WORKERS,
        "complete": complete,
        "recorded": len(late),
        "early": sum(1 for x in late if x < 0),
        "lateness_ms": summary(late),
        "distribution_ms": late,
        "armed_before_first": armed_at is None or armed_at < deadlines[0],
        "rss_worker_mib": max(rss, default=0.0),
    }


def redis_memory(stores: Stores, count: int = 10_000) -> dict[str, Any]:
    """Redis bytes per scheduled deadline, measured with no worker running (so nothing else
    moves `used_memory`): `count` deadlines each in a second of its own (one clock job each:
    the worst case), then the same number within one minute (one job per second)."""
    rows = {}
    start = second_of(datetime.now(UTC)) + 3600  # far enough that nothing fires meanwhile
    for name, seconds in (("one per second", count), ("within a minute", 60)):
        stores.empty()
        redis = stores.redis_client()
        alarms = Alarms(stores.redis_url, stores.config.queue_name)
        alarms.schedule_second(start - 10)  # the queue's own keys exist before measuring
        before = int(redis.info("memory")["used_memory"])
        for n in range(count):
            alarms.schedule_second(start + n % seconds)
        after = int(redis.info("memory")["used_memory"])
        rows[name] = {"jobs": min(count, seconds), "bytes": after - before}
    return {"deadlines": count, **rows}


def storm(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    """`storm_deadlines` deadlines in the same second, three supervisors, sent through a
    Twilio-compatible server on this machine that notes when each message arrives."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from twilio_server import TwilioServer  # the tests' fake Twilio: arrival times

    stores.empty()
    now = datetime.now(UTC)
    seeded = data.seed(stores.database_url, now)
    count = sizes.storm_deadlines
    with (
        TwilioServer() as twilio,
        processes(stores, ["worker", "sweep"], extra=twilio.environ(), workers=WORKERS),
    ):
        _workers_ready(stores, WORKERS)
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6 + count / 400)
        deadlines = _deadlines(start, count, 0.999, random.Random(9))
        visits = data.open_cards(stores.database_url, seeded, count, now, deadlines=deadlines)
        _arm(stores, visits, deadlines)
        eventually(
            lambda: _events(stores) >= count, (start - datetime.now(UTC)).total_seconds() + 60, 0.5
        )
        recorded_by = time.monotonic()

        def quiet() -> bool:
            with get_engine(stores.database_url).connect() as conn:
                busy = conn.execute(
                    select(func.count(Message.id)).where(
                        Message.direction == "out",
                        Message.status.in_(("pending", "sending", "retrying")),
                    )
                ).scalar_one()
            return busy == 0

        settled = eventually(quiet, 120, 0.5)
        arrivals = sorted(twilio.arrivals)
        received = [m.get("To", "") for m in twilio.messages]
    late = _lateness(stores)
    per_second = max((sum(1 for t in arrivals if a <= t < a + 1) for a in arrivals), default=0)
    with session_factory(stores.database_url)() as session:
        alerts = session.scalar(
            select(func.count(Message.id)).where(Message.sla_event_id.is_not(None))
        )
        bundled = session.scalar(select(func.count(Message.id)).where(Message.status == "bundled"))
    return {
        "deadlines": count,
        "recorded": len(late),
        "lateness_ms": summary(late),
        "within_10s": all(x <= 10_000 for x in late) and len(late) == count,
        "alerts": alerts or 0,
        "bundled": bundled or 0,
        "messages_sent": len(received),
        "per_supervisor": {to: received.count(to) for to in sorted(set(received))},
        "max_per_second": per_second,
        "rate_limit": stores.config.send_rate,
        "settled": settled,
        "seconds_to_settle": time.monotonic() - recorded_by,
    }


def sweep_cost(
    stores: Stores, seeded: dict[str, Any], open_cards: int, repeat: int
) -> dict[str, Any]:
    """ms per reconcile, in this process, with nothing due, then with N timers due soon."""
    config = stores.config
    now = datetime.now(UTC)
    rows = []
    for due in (0, 100, 1000):
        if due:
            soon = now + timedelta(seconds=200)  # inside the five-minute look-ahead
            with get_engine(stores.database_url).begin() as conn:
                ids = (
                    conn.execute(
                        select(StageVisit.id)
                        .where(StageVisit.next_due_at.is_not(None))
                        .order_by(StageVisit.id)
                        .limit(due)
                    )
                    .scalars()
                    .all()
                )
                conn.execute(
                    update(StageVisit)
                    .where(StageVisit.id.in_(ids))
                    .values(warning_at=None, deadline_at=soon, next_due_at=soon)
                )
        jobs.reconcile(config, now)  # the first re-arms what Redis lacks
        spent = timed(lambda: jobs.reconcile(config, now), repeat)
        rows.append({"open": open_cards, "due_soon": due, **summary(spent)})
    return {"rows": rows}


def sweep_nothing_due(stores: Stores, open_cards: int, repeat: int) -> dict[str, Any]:
    config = stores.config
    now = datetime.now(UTC)
    jobs.reconcile(config, now)
    return {
        "open": open_cards,
        "due_soon": 0,
        **summary(timed(lambda: jobs.reconcile(config, now), repeat)),
    }


def explain_sweep(stores: Stores) -> str:
    """The plan of the sweep's due-events query: an index range scan on next_due_at."""
    engine = get_engine(stores.database_url)
    query = jobs.due_visits(datetime.now(UTC))
    compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN {compiled}").scalars().all()
    return "\n".join(plan)
