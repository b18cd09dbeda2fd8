"""Sends whose outcome is in doubt (a worker cut off mid-call, a send job outliving its record
in Redis), the sweep that settles them with Twilio's list, and the locks and worker loop
around them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from faults.harness import ListingTwilio
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.scheduler import RQScheduler
from sqlalchemy import select
from sqlalchemy.orm import Session

from whatsdesk import alarms as alarms_module
from whatsdesk import desk, jobs, whatsapp
from whatsdesk import worker as worker_module
from whatsdesk.alarms import Alarms
from whatsdesk.config import Config
from whatsdesk.db import session_factory, utcnow
from whatsdesk.models import EarlyStatus, Message

from conftest import eventually, seed

PERSON = "whatsapp:+5511977770000"
BUSINESS = "whatsapp:+14155238886"


@pytest.fixture
def twilio(env: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListingTwilio]:
    """A local Twilio that also answers the Messages list; the environment names it."""
    seed(env.database_url)
    with ListingTwilio() as server:
        for name, value in server.environ().items():
            monkeypatch.setenv(name, value)
        yield server


def queue_message(session: Session, body: str, template: bool = False) -> Message:
    out = desk.queue_outbound(
        session,
        to=PERSON,
        body=body,
        now=utcnow(),
        dedupe_key="doubt-" + uuid.uuid4().hex,
        from_address=BUSINESS,
    )
    if template:
        out.content_sid, out.content_variables = "HX" + "1" * 32, {"1": body}
    session.commit()
    return out


def interrupted(session: Session, out: Message, at: datetime) -> None:
    """Its send job claimed it at `at` and died (its record gone from Redis)."""
    out.status, out.attempts, out.updated_at = "sending", 1, at
    session.commit()


def row(config: Config, message_id: int) -> Message:
    with session_factory(config.database_url)() as s:
        found = s.get(Message, message_id)
        assert found is not None
        return found


def sent_by_its_job(config: Config, twilio: ListingTwilio, message_id: int) -> Message:
    """The message's send job runs now and sends it: the row as it then stands, with the
    SID Twilio gave its latest message."""
    assert jobs.send_message(message_id) == "sent"
    sent = row(config, message_id)
    assert sent.sid == twilio.sids[-1]
    return sent


def queued(config: Config, redis: Redis) -> list[str]:
    return Queue(config.queue_name, connection=redis).job_ids


def forgotten_callback(session: Session, now: datetime) -> None:
    """A status callback that matched nothing for over a day: the sweep's last step drops it."""
    session.add(
        EarlyStatus(sid="SM" + uuid.uuid4().hex, status="sent", received_at=now - timedelta(days=2))
    )
    session.commit()


def callbacks(config: Config) -> list[EarlyStatus]:
    with session_factory(config.database_url)() as s:
        return list(s.scalars(select(EarlyStatus)))


# --- the sweep asks Twilio ----------------------------------------------------------------------


@pytest.mark.parametrize("template", [False, True], ids=["free text", "template"])
def test_an_interrupted_send_is_not_given_the_sid_of_a_later_one_to_the_same_person(
    twilio: ListingTwilio, env: Config, session: Session, redis: Redis, template: bool
) -> None:
    config = jobs._config()
    claimed_at = utcnow()
    first = queue_message(session, "Your order is ready", template)
    second = queue_message(session, "Your order is ready", template)
    interrupted(session, first, claimed_at)  # died before its call reached Twilio
    assert jobs.send_message(second.id) == "sent"  # the next one goes through at once
    forgotten_callback(session, claimed_at)

    counts = jobs.reconcile(config, claimed_at + timedelta(seconds=jobs.SEND_SETTLED_SECONDS))

    assert (counts["interrupted"], counts["errors"]) == (1, 0)
    assert row(config, second.id).sid == twilio.sids[0]
    again = row(config, first.id)
    assert (again.status, again.sid) == ("retrying", None)
    assert queued(config, redis) == [f"send-{first.id}-again"]
    assert callbacks(config) == []  # the sweep's later steps ran


def test_an_interrupted_send_twilio_took_gets_its_own_sid_not_a_later_ones(
    twilio: ListingTwilio, env: Config, session: Session, redis: Redis
) -> None:
    config = jobs._config()
    claimed_at = utcnow()
    first = queue_message(session, "Your order is ready")
    second = queue_message(session, "Your order is ready")
    interrupted(session, first, claimed_at)
    # Its call reached Twilio, then the worker died before storing the answer.
    whatsapp.sender_for(config).send(PERSON, first.body, BUSINESS)
    assert jobs.send_message(second.id) == "sent"

    counts = jobs.reconcile(config, claimed_at + timedelta(seconds=jobs.SEND_SETTLED_SECONDS))

    assert (counts["interrupted"], counts["resent"], counts["errors"]) == (1, 0, 0)
    assert row(config, first.id).sid == twilio.sids[0]
    assert row(config, second.id).sid == twilio.sids[1]
    assert queued(config, redis) == [] and len(twilio.messages) == 2


def test_a_template_twilio_may_have_taken_is_failed_rather_than_guessed_or_resent(
    twilio: ListingTwilio, env: Config, session: Session, redis: Redis
) -> None:
    """Twilio's list shows no Content SID: an unclaimed message in the call's window may be
    this template (or not), so it is neither given that SID nor sent again."""
    config = jobs._config()
    claimed_at = utcnow()
    alert = queue_message(session, "Breach on #12", template=True)
    interrupted(session, alert, claimed_at)
    whatsapp.sender_for(config).send(PERSON, "rendered template text", BUSINESS)

    counts = jobs.reconcile(config, claimed_at + timedelta(seconds=jobs.SEND_SETTLED_SECONDS))

    assert counts["interrupted"] == 1
    failed = row(config, alert.id)
    assert (failed.status, failed.sid) == ("failed", None)
    assert failed.error_message == jobs.INTERRUPTED_DOUBTFUL
    assert queued(config, redis) == [] and len(twilio.messages) == 1


def test_messages_outside_the_sends_own_call_are_not_taken_for_it(
    twilio: ListingTwilio, env: Config, session: Session, redis: Redis
) -> None:
    config = jobs._config()
    earlier = queue_message(session, "Same words")
    whatsapp.sender_for(config).send(PERSON, earlier.body, BUSINESS)  # long before the claim
    later = queue_message(session, "Same words")
    claimed_at = utcnow() + timedelta(seconds=whatsapp.REQUEST_TIMEOUT_SECONDS + 30)
    interrupted(session, later, claimed_at)

    jobs.reconcile(config, claimed_at + timedelta(seconds=jobs.SEND_SETTLED_SECONDS))

    assert (row(config, later.id).status, row(config, later.id).sid) == ("retrying", None)
    assert queued(config, redis) == [f"send-{later.id}-again"]


def test_a_sid_that_cannot_be_stored_skips_that_message_and_the_sweep_goes_on(
    twilio: ListingTwilio,
    env: Config,
    session: Session,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = jobs._config()
    claimed_at = utcnow()
    taken = queue_message(session, "Taken")
    taken.status, taken.sid = "delivered", "SM" + "9" * 32
    clash = queue_message(session, "Clash")
    fine = queue_message(session, "Fine")
    interrupted(session, clash, claimed_at)
    interrupted(session, fine, claimed_at)
    forgotten_callback(session, claimed_at)
    real = jobs._verdict

    def verdict(s: Session, doubt: jobs._InDoubt, listed: list[whatsapp.Listed]) -> tuple:
        if doubt.id == clash.id:  # as if another row stored this SID just now
            return "sent", whatsapp.Listed(sid="SM" + "9" * 32, status="queued", body="Clash")
        return real(s, doubt, listed)

    monkeypatch.setattr(jobs, "_verdict", verdict)

    counts = jobs.reconcile(config, claimed_at + timedelta(seconds=jobs.SEND_SETTLED_SECONDS))

    assert row(config, clash.id).status == "sending"  # left for the next sweep
    assert row(config, fine.id).status == "retrying"
    assert queued(config, redis) == [f"send-{fine.id}-again"]
    assert callbacks(config) == []
    assert counts["interrupted"] == 1


# --- a send job outliving its record in Redis ---------------------------------------------------


def test_a_send_taken_over_by_the_sweep_during_its_pacing_wait_does_not_send(
    twilio: ListingTwilio,
    env: Config,
    session: Session,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis flushed while the job waited its turn: the sweep, seeing no live job, asks
    Twilio, finds nothing and queues the message again; the original, waking, must not send."""
    config = jobs._config()
    out = queue_message(session, "Paced")
    steps: list[str] = []
    real_pace = Alarms.pace

    def pace_then_sweep(self: Alarms, sender: str, per_second: float) -> float:
        steps.append("claimed")  # send_message has claimed the message; now it "sleeps"
        redis.flushdb()
        later = utcnow() + timedelta(seconds=jobs.SEND_SETTLED_SECONDS + 1)
        steps.append(f"sweep settled {jobs.reconcile(config, later)['interrupted']}")
        return 0.0

    monkeypatch.setattr(Alarms, "pace", pace_then_sweep)
    assert jobs.send_message(out.id) == "taken over by the sweep"
    assert steps == ["claimed", "sweep settled 1"]
    assert twilio.requests == []
    assert queued(config, redis) == [f"send-{out.id}-again"]

    monkeypatch.setattr(Alarms, "pace", real_pace)
    assert sent_by_its_job(config, twilio, out.id).attempts == 2  # the sweep's job
    assert len(twilio.requests) == 1


@pytest.mark.parametrize("trouble", ["late answer", "dropped connection"])
@pytest.mark.parametrize("took", [True, False], ids=["twilio took it", "twilio did not"])
def test_twilio_answering_too_late_leaves_the_send_to_the_sweep_which_asks_twilio(
    twilio: ListingTwilio,
    env: Config,
    session: Session,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    took: bool,
    trouble: str,
) -> None:
    """Twilio's answer never comes — not within the client's timeout, or the connection
    closes once the request is out: the job neither retries (Twilio may have the message)
    nor gives up. Once the call has surely ended the sweep asks Twilio: what it took is
    recorded with its SID, what it never got goes again — the person gets it once."""
    config = jobs._config()
    out = queue_message(session, "Hung")
    if trouble == "late answer":
        monkeypatch.setattr(whatsapp, "REQUEST_TIMEOUT_SECONDS", 0.5)
        twilio.hang_next(5)  # Twilio takes the message but answers too late
    else:
        twilio.drop_next()  # Twilio takes the message, then the connection closes

    assert jobs.send_message(out.id) == "in doubt: the sweep asks Twilio"
    hung = row(config, out.id)
    assert (hung.status, hung.sid, hung.attempts) == ("sending", None, 1)
    # The request went out: under load Twilio's handler may record it after the client gave up.
    assert eventually(lambda: len(twilio.requests) == 1, timeout=10)
    if not took:  # the request was lost on its way: Twilio's list never shows it
        twilio.forget()

    later = utcnow() + timedelta(seconds=jobs.SEND_SETTLED_SECONDS + 1)
    assert jobs.reconcile(config, later)["interrupted"] == 1
    if took:
        settled = row(config, out.id)
        assert (settled.status, settled.sid) == ("queued", twilio.sids[0])
        assert queued(config, redis) == []
        assert len(twilio.requests) == 1
    else:
        assert queued(config, redis) == [f"send-{out.id}-again"]
        sent = sent_by_its_job(config, twilio, out.id)
        assert (sent.status, sent.attempts) == ("queued", 2)
        assert len(twilio.requests) == 2


def test_a_send_that_loses_redis_before_calling_twilio_is_sent_by_the_next_sweep(
    twilio: ListingTwilio,
    env: Config,
    session: Session,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis dies between the claim and the call (the pacing slot): Twilio was never called,
    so the message is handed back and goes at the very next sweep, not after the
    SEND_SETTLED_SECONDS an interrupted call has to wait."""
    config = jobs._config()
    out = queue_message(session, "Paced")
    out.sent_at = utcnow()  # handed to the sender, as an alert let through is
    session.commit()
    real_pace = Alarms.pace

    def redis_gone(self: Alarms, sender: str, per_second: float) -> float:
        raise RedisConnectionError("connection reset")

    monkeypatch.setattr(Alarms, "pace", redis_gone)
    with pytest.raises(RedisConnectionError):
        jobs.send_message(out.id)
    handed_back = row(config, out.id)
    assert (handed_back.status, handed_back.attempts) == ("retrying", 0)

    monkeypatch.setattr(Alarms, "pace", real_pace)
    assert jobs.reconcile(config, utcnow())["resent"] == 1
    assert queued(config, redis) == [f"send-{out.id}"]
    sent = sent_by_its_job(config, twilio, out.id)
    assert (sent.status, sent.attempts) == ("queued", 1)
    assert len(twilio.requests) == 1


def test_a_send_job_that_wakes_while_the_sweep_asks_twilio_keeps_its_message(
    twilio: ListingTwilio,
    env: Config,
    session: Session,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other order: the job re-checks its claim (and calls Twilio) while the sweep is
    asking Twilio; the sweep's take-over then finds the claim freshly stamped and backs off."""
    config = jobs._config()
    out = queue_message(session, "Paced")
    claimed_at = utcnow()
    interrupted(session, out, claimed_at)
    real_ask = jobs._ask_twilio

    def job_wakes_first(c: Config, doubt: jobs._InDoubt) -> list[whatsapp.Listed] | None:
        answer = real_ask(c, doubt)  # Twilio has nothing yet
        assert jobs._still_claimed(config, out.id, 1)  # the job goes ahead with its call
        return answer

    monkeypatch.setattr(jobs, "_ask_twilio", job_wakes_first)

    later = claimed_at + timedelta(seconds=jobs.SEND_SETTLED_SECONDS)
    assert jobs.reconcile(config, later)["interrupted"] == 0

    assert row(config, out.id).status == "sending"
    assert queued(config, redis) == []


# --- locks --------------------------------------------------------------------------------------


def test_a_lock_taken_over_from_a_dead_worker_is_not_released_by_it(
    config: Config, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    alarms = Alarms(config.redis_url, config.queue_name)
    key = f"whatsdesk:lock:{config.queue_name}:sweep"
    monkeypatch.setattr(alarms_module, "_current_worker", lambda: "stalled")
    stalled = alarms.exclusive("sweep", ttl=60)
    assert stalled.__enter__()
    redis.set("whatsdesk:pulsing:stalled", 1)  # a desk worker whose pulse has lapsed

    monkeypatch.setattr(alarms_module, "_current_worker", lambda: "successor")
    successor = alarms.exclusive("sweep", ttl=60)
    assert successor.__enter__()  # taken over

    stalled.__exit__(None, None, None)  # the stalled holder finishes after all
    holder = redis.get(key)
    assert holder is not None and holder.startswith(b"successor|")
    successor.__exit__(None, None, None)
    assert redis.get(key) is None


# --- the worker loop ----------------------------------------------------------------------------


@pytest.fixture
def desk_worker(config: Config, redis: Redis) -> worker_module.Worker:
    return worker_module.Worker([Queue(config.queue_name, connection=redis)], connection=redis)


@pytest.mark.parametrize(
    ("lease_left", "free"),
    [(None, True), (61, False), (60 - alarms_module.SCHEDULER_SILENT_SECONDS, True), (-1, False)],
    ids=["no lock", "refreshed just now", "silent too long", "no lease"],
)
def test_a_scheduler_lock_is_free_for_the_taking_once_its_holder_stops_refreshing_it(
    redis: Redis, lease_left: int | None, free: bool
) -> None:
    key = "rq:scheduler-lock:whatsdesk-clock"
    if lease_left is not None:
        redis.set(key, "a-scheduler", ex=lease_left if lease_left > 0 else None)

    assert alarms_module.free_silent_scheduler_lock(redis, key, 61) is free

    expected = None if free else (None if lease_left is None else b"a-scheduler")
    assert redis.get(key) == expected


def test_a_worker_asked_to_stop_does_not_start_a_scheduler_of_its_own(
    desk_worker: worker_module.Worker, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM: RQ stops the worker's scheduler, which frees its lock; the worker's last
    heartbeat must not take that for a dead scheduler and start another (it would outlive
    the worker and keep the process from exiting)."""
    started: list[RQScheduler] = []
    monkeypatch.setattr(RQScheduler, "start", lambda self: started.append(self))
    desk_worker.scheduler = RQScheduler(desk_worker.queues, connection=redis)
    desk_worker._shutdown_requested_date = utcnow()

    assert desk_worker._take_over_dead_scheduler() is False
    assert started == []
    assert redis.keys("rq:scheduler-lock:*") == []


def test_sigterm_while_waiting_for_redis_ends_the_worker_cleanly(
    desk_worker: worker_module.Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stop_requested(*_args: object) -> bool:
        raise StopRequested()  # what RQ's SIGTERM handler raises when no job is running

    monkeypatch.setattr(SimpleWorker, "work", lambda *_args, **_kw: False)  # the loop ended
    monkeypatch.setattr(worker_module.time, "sleep", lambda _s: None)
    monkeypatch.setattr(desk_worker.connection, "ping", stop_requested)

    assert desk_worker.work() is False


def test_the_worker_pauses_before_starting_an_ended_loop_again(
    desk_worker: worker_module.Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    loops: list[str] = []
    pauses: list[float] = []

    def loop(self: worker_module.Worker, *_args: object, **_kw: object) -> bool:
        loops.append("loop")
        if len(loops) == 2:
            self._shutdown_requested_date = utcnow()  # SIGTERM during the second loop
        return True

    monkeypatch.setattr(SimpleWorker, "work", loop)
    monkeypatch.setattr(worker_module.time, "sleep", pauses.append)

    assert desk_worker.work() is True
    assert loops == ["loop", "loop"]
    assert pauses == [worker_module.RESTART_PAUSE_SECONDS]


def test_the_worker_log_leaves_out_the_routine_sweep_and_keeps_other_jobs(
    env: Config, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep runs every few seconds: RQ's four lines a run about it (taken, completed,
    "Job OK", result kept) would bury what else the worker says. They show at DEBUG."""
    queue = Queue(env.queue_name, connection=redis)

    def run_both(level: int) -> list[str]:
        caplog.clear()
        queue.enqueue(jobs.sweep)
        other = queue.enqueue(len, "abc")
        with caplog.at_level(level, logger="rq.worker"):
            worker_module.Worker([queue], connection=redis).work(burst=True)
        assert other.return_value() == 3
        return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]

    lines = run_both(logging.INFO)
    assert not [line for line in lines if "sweep" in line]
    assert len([line for line in lines if "Job OK" in line]) == 1  # len's
    assert any("builtins.len('abc')" in line for line in lines)

    shown = run_both(logging.DEBUG)
    assert any("whatsdesk.jobs.sweep()" in line for line in shown)
    assert len([line for line in shown if "Job OK" in line]) == 2
