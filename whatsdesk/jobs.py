"""RQ entry points: take ids, open a session, call the domain, nothing else."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from rq.timeouts import BaseTimeoutException
from sqlalchemy import ColumnElement, Row, Select, Text, cast, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import desk, escalation, metrics, notifications, settings, sla, whatsapp
from .alarms import (
    MAX_SEND_ATTEMPTS,
    TICK_AHEAD_SECONDS,
    Alarms,
    alerts_job_id,
    both_ids,
    menu_job_id,
    second_of,
    send_job_id,
    tick_job_id,
)
from .config import Config
from .db import session_scope, utcnow
from .models import Card, EarlyStatus, Message, StageVisit, timers_from
from .whatsapp import (
    PermanentSendError,
    SendInDoubt,
    Template,
    TransientSendError,
    sender_for,
)

log = logging.getLogger(__name__)
# RQ's scheduler keeps whole seconds and polls each second: a job can wake up to ~1 s early.
EARLY_WAIT_LIMIT = 3.0
# Outbound messages still pending this long after being queued, without a live send job,
# have lost it (Redis restarted, the enqueue after commit failed): the sweep sends them.
STALE_SEND_SECONDS = 5
# A send still "sending" this long was interrupted (killed worker, lost connection).
INTERRUPTED_SEND_SECONDS = 300
# A send "sending" this long without a live job has surely finished its call to Twilio
# (the HTTP client gives up after whatsapp.REQUEST_TIMEOUT_SECONDS): Twilio can be asked.
SEND_SETTLED_SECONDS = 20
# Twilio's clock and ours may differ a little: the window of a send's call is this much wider.
CLOCK_MARGIN_SECONDS = 5
INTERRUPTED = "interrupted while sending; not retried to avoid a duplicate"
# Timers ringing within this much of now are checked to be in Redis at every sweep.
LOOKAHEAD_SECONDS = 300
SWEEP_LOCK_SECONDS = 300
ALERTS_LOCK_SECONDS = 60
# Sends start evenly spaced at 90 % of SEND_RATE_LIMIT: the network can bunch messages on
# their way, and Twilio counts them as they arrive.
PACE_HEADROOM = 0.9
MAX_ID = 2**63  # sorts after every visit id: (instant, MAX_ID, 0, "") follows all of instant's
# Events fired in one transaction at most: their cards stay locked until it commits.
MAX_BATCH = 200
# A failed batch larger than this is tried again in halves, a smaller one event by event: a
# bad event costs a few tries, not one per event, and a fault that fails every event (the
# database gone) about 1.25 tries per event rather than 2.
SPLIT_DOWN_TO = 8


def _config() -> Config:
    return Config.from_env()


def _alarms(config: Config) -> Alarms:
    return Alarms(config.redis_url, config.queue_name)


def fire_second(second: int) -> str:
    """Clock job of one second: fire, each at its instant and never before, every event of
    an open visit that falls due in this second, and any whose own second's job is clearly
    lost (overdue by more than TICK_AHEAD_SECONDS). One job per second, whatever the number
    of deadlines in it; each event is recorded once."""
    config = _config()
    start = datetime.fromtimestamp(second, UTC)
    if not _at_instant(
        start - timedelta(seconds=TICK_AHEAD_SECONDS),
        lambda: _alarms(config).schedule_second(second),
    ):
        return "rescheduled"
    owed = owed_before(config, start, utcnow() - timedelta(seconds=TICK_AHEAD_SECONDS))
    fired = 0
    while owed:
        wait = (owed[0][0] - utcnow()).total_seconds()
        if wait > 0:
            time.sleep(wait)
        # Everything whose instant has come goes in one transaction: while one batch is
        # written, the next gathers, so a busy second costs a few commits, not one each.
        ready = min(bisect.bisect_right(owed, (utcnow(), MAX_ID, 0, "")), MAX_BATCH)
        batch, owed = owed[:ready], owed[ready:]
        fired += fire_events(config, [(visit_id, kind) for _at, visit_id, _o, kind in batch]).fired
    return f"fired {fired}"


def owed_before(
    config: Config, start: datetime, orphaned: datetime
) -> list[tuple[datetime, int, int, str]]:
    """The events open visits owe in the second from `start`, and those older than
    `orphaned` (another second's job would have fired them by now), earliest first: the
    instants from each visit's next one on (earlier ones are recorded). One indexed range
    query on the next instant, reading columns; `fire_many` checks each event again under
    the card's lock. Instants of an earlier second not yet overdue are left to its own job,
    so two jobs do not wait on each other's locks for the same events."""
    end = start + timedelta(seconds=1)
    owed = []
    with session_scope(config.database_url) as session:
        for visit_id, next_due, timers in _timers_of(session, StageVisit.next_due_at < end):
            # In the order of Timers.kinds within an instant, as the sweep fires them: a
            # warning before the stage timeout that falls due with it.
            for order, kind in enumerate(timers.kinds()):
                instant = timers.instant(kind)
                if instant is None or not next_due <= instant < end:
                    continue
                if instant >= start or instant < orphaned:
                    owed.append((instant, visit_id, order, kind))
    return sorted(owed)


def _timers_of(
    session: Session, *where: ColumnElement[bool]
) -> Iterator[tuple[int, datetime, sla.Timers]]:
    """Visits that may owe an event (id, next instant, the timers they can still fire:
    `owed_timers`) whose next instant matches `where`, read as rows of columns, without the
    ORM's loading (see `due_visits`). The escalation levels come as text, which `timers_from`
    decodes only where there are some: decoding thousands of empty lists was a fifth of a
    sweep with 10,000 timers in its look-ahead."""
    columns = [
        cast(StageVisit.escalations_at, Text)
        if name == "escalations_at"
        else getattr(StageVisit, name)
        for name in StageVisit.TIMER_COLUMNS
    ]
    session.flush()  # what the session changed counts (the connection's reads skip autoflush)
    rows = (
        session.connection()
        .execute(
            select(
                StageVisit.id,
                StageVisit.next_due_at,
                StageVisit.acknowledged_at,
                StageVisit.left_at,
                *columns,
            ).where(_owing(), *where)
        )
        .all()
    )  # fetched at once: row by row cost a fetch call each
    for visit_id, next_due, acknowledged, left_at, *values in rows:
        yield visit_id, next_due, escalation.owed(timers_from(*values), acknowledged, left_at)


def _owing() -> ColumnElement[bool]:
    """With a range on the next instant: visits that may owe an event, the current one of an
    open card and one left with an event still unrecorded (`desk.leave` keeps its next
    instant only then; a visit left otherwise has none). As `escalation.may_fire`.

    The card's status is a scalar subquery, looked up by id for each visit in range, never
    a join: joined, PostgreSQL, when its statistics still counted many visits due (their
    instants come and go faster than ANALYZE runs), hashed every open card for a sweep or a
    clock job that had nothing to do."""
    status = select(Card.status).where(Card.id == StageVisit.card_id).scalar_subquery()
    return or_(StageVisit.left_at.is_not(None), status == "open")


def _at_instant(instant: datetime, come_back: Callable[[], None]) -> bool:
    """Never early: a job woken well before its instant calls `come_back` (which schedules
    it again, under an id of its own: `alarms.own_id`) and says False; one woken a moment
    early waits (a clock job, woken the second before its own; jobs scheduled at
    `alarms.never_before` are never early)."""
    early = (instant - utcnow()).total_seconds()
    if early > EARLY_WAIT_LIMIT:
        come_back()
        return False
    if early > 0:
        time.sleep(early)
    return True


def menu_timeout(card_id: int) -> str:
    """Timer job: a team menu nobody answered hands the card to the default pipeline."""
    config = _config()
    with session_scope(config.database_url) as session:
        card = session.get(Card, card_id)
        deadline = card.menu_deadline_at if card is not None else None
    if deadline is None:
        return "already chosen"
    if not _at_instant(deadline, lambda: _alarms(config).schedule_menu(card_id, deadline)):
        return "rescheduled"
    return "default pipeline" if _time_out_menu(config, card_id, utcnow()) else "nothing to do"


def _time_out_menu(config: Config, card_id: int, now: datetime) -> bool:
    with session_scope(config.database_url) as session:
        received = desk.menu_timeout(session, card_id, now)
        if received is None:
            return False
        visit = received.new_visit
        timers = [(visit.id, visit.timers)] if visit is not None else []
        sends = [m.id for m in received.outbound]
    try:
        _alarms(config).arm(timers, sends)
    except RedisError as exc:  # committed: the sweep finds the waiting send and timers
        log.warning("card %s left the team menu but Redis did not take its jobs (%s)", card_id, exc)
    return True


def fire_and_send(config: Config, visit_id: int, kind: str, now: datetime) -> bool:
    """Fire one event at `now` (see fire_events)."""
    return fire_events(config, [(visit_id, kind)], lambda: now).fired == 1


@dataclass(frozen=True)
class Firing:
    fired: int = 0
    failed: int = 0

    def __add__(self, other: Firing) -> Firing:
        return Firing(self.fired + other.fired, self.failed + other.failed)


def fire_events(
    config: Config, owed: list[tuple[int, str]], now: Callable[[], datetime] = utcnow
) -> Firing:
    """Fire events in one transaction, each at `now()` as its turn comes; after commit,
    hand their messages to the sender (staff alerts through each recipient's digest: a job
    per person, unless one already waits for their window to end) and arm any stage visit
    they started. When the batch fails (a bad visit, a deadlock, another worker's twin),
    each half is tried again on its own, down to a few events tried one by one; an event
    that fails alone is logged and counted, and the others still fire."""
    try:
        with session_scope(config.database_url) as session:
            done = escalation.fire_many(session, owed, now)
            events = [(f.event.kind, f.event.due_at, f.event.fired_at) for f in done]
            staff = sorted({user_id for f in done for user_id in f.told})
            customer = [m.id for f in done for m in f.messages]
            visits = [(v.id, v.timers) for f in done for v in f.visits]
    except BaseTimeoutException:
        raise  # the job ran out of time: RQ's to handle, not one event's failure
    except Exception as exc:
        if len(owed) > SPLIT_DOWN_TO:  # one bad event among n: about 2·log2(n) tries, not n
            log.warning("a batch of %d events failed (%s); firing it in halves", len(owed), exc)
            half = len(owed) // 2
            return fire_events(config, owed[:half], now) + fire_events(config, owed[half:], now)
        if len(owed) > 1:
            log.warning("a batch of %d events failed (%s); firing each alone", len(owed), exc)
            return sum((fire_events(config, [one], now) for one in owed), Firing())
        if isinstance(exc, IntegrityError):
            log.info("sla event %s/%s already recorded by another worker", *owed[0])
            return Firing()
        log.exception("could not fire %s of visit %s", owed[0][1], owed[0][0])
        return Firing(failed=1)
    for kind, due_at, fired_at in events:
        metrics.observe_event(kind, due_at, fired_at)
    try:
        alarms = _alarms(config)
        alarms.enqueue_alerts(*staff)
        for message_id in customer:
            alarms.enqueue_send(message_id)
        for new_visit_id, timers in visits:
            alarms.schedule_timers(new_visit_id, timers)
    except RedisError as exc:  # committed: the sweep finds the waiting sends and timers
        log.warning("fired %d events but could not hand them to Redis (%s)", len(events), exc)
    return Firing(fired=len(events))


def deliver_alerts(user_id: int) -> str:
    """Alert job: a person's pending alerts go out alone, or as one digest when they come in
    a storm (see notifications.gather); comes back when the digest window ends."""
    config = _config()
    alarms = _alarms(config)
    with alarms.exclusive(f"alerts-{user_id}", ttl=ALERTS_LOCK_SECONDS) as mine:
        if not mine:  # another job is gathering this person's alerts: look again shortly
            alarms.retry_alerts(user_id, utcnow())
            return "busy: looking again in a second"
        alarms.alerts_due_reached(user_id)
        return _deliver_alerts(config, alarms, user_id)


def _deliver_alerts(config: Config, alarms: Alarms, user_id: int) -> str:
    try:
        with session_scope(config.database_url) as session:
            batch = notifications.gather(session, user_id, utcnow())
            ids = [m.id for m in batch.sends]
    except IntegrityError:  # the lock expired under a very slow job, which made it first
        return "already gathered"
    for message_id in ids:
        alarms.enqueue_send(message_id)
    if batch.wait_until is None:
        return f"sent {len(ids)}"
    # Never waits in the worker: a job comes back when the window ends (alarms.never_before).
    alarms.schedule_alerts(user_id, batch.wait_until)
    return "waiting for the digest window"


def send_message(message_id: int) -> str:
    """Send job: one outbound message through Twilio (or the simulator's outbox), once."""
    config = _config()
    with session_scope(config.database_url) as session:
        # Claiming with a conditional update means two copies of this job cannot both send.
        claimed = session.execute(
            update(Message)
            .where(Message.id == message_id, Message.status.in_(("pending", "retrying")))
            .values(status="sending", attempts=Message.attempts + 1, updated_at=utcnow())
        ).rowcount
        message = session.get(Message, message_id)
        if not claimed or message is None:
            return "already handled"
        message.from_address = message.from_address or config.twilio_whatsapp_from
        if not _window_checked(config, session, message):
            metrics.observe_send("failed")
            return "failed"
        to, sender, body = message.to_address, message.from_address, message.body
        template = _template_of(message)
        attempts = message.attempts
    try:
        wait = _alarms(config).pace(sender, config.send_rate * PACE_HEADROOM)
        if wait > 0:
            time.sleep(wait)
    except BaseException:  # Redis gone, the job's time-out: Twilio was never called
        _release_claim(config, message_id, attempts)
        raise
    if not _still_claimed(config, message_id, attempts):
        return "taken over by the sweep"
    try:
        sent = sender_for(config).send(to, body, sender, template)
    except TransientSendError as exc:
        final = attempts >= MAX_SEND_ATTEMPTS
        _record_failure(config, message_id, "failed" if final else "retrying", None, str(exc))
        metrics.observe_send("failed" if final else "retrying")
        if final:
            return "failed"
        raise  # RQ retries with backoff (alarms.SEND_RETRY_INTERVALS)
    except SendInDoubt as exc:
        # Left "sending", stamped with the call's start: once the call has surely ended the
        # sweep asks Twilio whether it took the message (_fail_interrupted_sends).
        log.warning("send %s in doubt (%s): the sweep will ask Twilio", message_id, exc)
        metrics.observe_send("in_doubt")
        return "in doubt: the sweep asks Twilio"
    except PermanentSendError as exc:
        if (
            exc.code == WINDOW_CLOSED
            and template is None
            and _retry_as_template(config, message_id)
        ):
            _alarms(config).enqueue_send(message_id, again=True)
            return "outside the 24-hour window: sending the template"
        _record_failure(config, message_id, "failed", exc.code, exc.message)
        metrics.observe_send("failed")
        return "failed"
    with session_scope(config.database_url) as session:
        message = session.get(Message, message_id)
        assert message is not None
        desk.record_sent(session, message, sent.sid, sent.status, utcnow())
        # A 63016 callback that beat us to the sid has just been applied.
        again = notifications.retry_as_template(session, sent.sid)
    metrics.observe_send("sent")
    if again is not None:
        _alarms(config).enqueue_send(message_id, again=True)
        return "sent; refused outside the 24-hour window: sending the template"
    return "sent"


def _release_claim(config: Config, message_id: int, attempts: int) -> None:
    """A send job failing before its call to Twilio hands its message back ("retrying", the
    attempt not counted), rather than leave it to wait SEND_SETTLED_SECONDS as a call that
    might have reached Twilio. Its job is gone (or RQ's retry has it, which the sweep sees
    as live): stamped as stale already, the message is sent by the next sweep, without the
    STALE_SEND_SECONDS grace a job still on its way to Redis gets. If the database cannot
    be reached either, the sweep settles it as interrupted."""
    stale = utcnow() - timedelta(seconds=STALE_SEND_SECONDS)
    try:
        with session_scope(config.database_url) as session:
            _update_claim(
                session,
                message_id,
                attempts,
                status="retrying",
                attempts=attempts - 1,
                updated_at=stale,
            )
    except Exception:
        log.exception("send %s: could not hand its claim back; the sweep will", message_id)


def _still_claimed(config: Config, message_id: int, attempts: int) -> bool:
    """Right before calling Twilio: is the message still "sending" under this attempt's
    claim? A job that slept long in the pacing wait after Redis lost its record looks
    interrupted to the sweep, which may have taken the message over ("retrying", then a
    claim of its own that counts another attempt): then this job must not send. Stamps
    updated_at with the call's start, from which the sweep reckons when the call was made;
    the sweep's take-over is conditional on that stamp being old, so of the two exactly one
    goes ahead."""
    with session_scope(config.database_url) as session:
        return bool(_update_claim(session, message_id, attempts))


def _update_claim(session: Session, message_id: int, attempt: int, **values: object) -> int:
    """Change a message only while it is "sending" under the claim of attempt number
    `attempt` (stamping updated_at with now, unless `values` say otherwise); how many rows
    changed (0 or 1)."""
    return session.execute(
        update(Message)
        .where(
            Message.id == message_id,
            Message.status == "sending",
            Message.attempts == attempt,
        )
        .values({"updated_at": utcnow(), **values})
    ).rowcount


WINDOW_CLOSED = notifications.WINDOW_CLOSED
NO_TEMPLATE = (
    "outside this person's 24-hour WhatsApp window and no alert template is configured "
    "(notifications.alert_template in the configuration file)"
)


def _window_checked(config: Config, session: Session, message: Message) -> bool:
    """A staff alert to someone whose 24-hour window is closed goes as the approved
    template; with none configured it is recorded as failed, never silently dropped. One
    to someone who sent STOP or left meanwhile (a retry, a send lost and sent again) is
    recorded as failed with why, not sent."""
    if notifications.is_alert(message) and message.user_id is not None:
        if message.user is None or not message.user.reachable_by_whatsapp:
            message.status, message.updated_at = "failed", utcnow()
            message.error_message = notifications.unreachable_reason(message.user, message.user_id)
            return False
    if config.simulator or not notifications.is_staff_alert(message) or message.content_sid:
        return True
    if notifications.window_is_open(session, message.to_address, utcnow()):
        return True
    if notifications.use_template(session, message):
        return True
    message.status, message.error_code, message.error_message = "failed", "window", NO_TEMPLATE
    return False


def _template_of(message: Message | Row[Any]) -> Template | None:
    """The template a message goes as (a row with its content columns will do)."""
    if not message.content_sid:
        return None
    return Template(message.content_sid, dict(message.content_variables or {}))


def _retry_as_template(config: Config, message_id: int) -> bool:
    """Twilio says the window is closed: a staff alert goes again as the template."""
    with session_scope(config.database_url) as session:
        message = session.get(Message, message_id)
        if message is None or not notifications.is_staff_alert(message):
            return False
        if not notifications.use_template(session, message):
            return False
        message.status, message.updated_at = "retrying", utcnow()
        return True


def _record_failure(
    config: Config, message_id: int, status: str, code: str | None, text: str
) -> None:
    with session_scope(config.database_url) as session:
        message = session.get(Message, message_id)
        if message is not None:
            message.status, message.error_code, message.error_message = status, code, text
            message.updated_at = utcnow()


def sweep() -> dict[str, int]:
    """Periodic reconciler: fire what is overdue, re-arm lost timers, resend lost sends."""
    config = _config()
    alarms = _alarms(config)
    with alarms.exclusive("sweep", ttl=SWEEP_LOCK_SECONDS) as mine:
        if not mine:  # the previous sweep is still running: never two at once
            return {}
        return reconcile(config, utcnow(), clock=utcnow)


def reconcile(
    config: Config, now: datetime, clock: Callable[[], datetime] | None = None
) -> dict[str, int]:
    """Make Redis agree with the database, which is the source of truth: what the timers
    owe and the sends waiting are read in one transaction, then acted on; kept status
    callbacks and refused alerts, when there are any, are settled last, in a transaction of
    their own (one that fails never holds back the firing). What is due is what is due at
    `now`; each event records the `clock`'s time as it is fired (`now` without one), not the
    sweep's start: a sweep firing many is seconds long."""
    fired_at = clock if clock is not None else lambda: now
    alarms = _alarms(config)
    counts = {"fired": 0, "rearmed": 0, "resent": 0, "interrupted": 0, "late_statuses": 0}
    horizon = now + timedelta(seconds=max(LOOKAHEAD_SECONDS, 3 * config.sweep_seconds))
    with session_scope(config.database_url) as session:
        due = [(visit, kind) for visit, kinds in _due_events(session, now) for kind in kinds]
        menus = _menus_due_before(session, horizon)
        seconds = _seconds_to_arm(session, now, horizon)
        waiting = _waiting_outbound(session, now)
        to_settle = bool(session.scalar(anything_to_settle(now)))
    firing = Firing()
    for start in range(0, len(due), MAX_BATCH):  # one bad visit: the others still fire
        firing += fire_events(config, due[start : start + MAX_BATCH], fired_at)
    counts["fired"], counts["errors"] = firing.fired, firing.failed
    for card_id, deadline in menus:
        if deadline <= now:
            counts["fired"] += _time_out_menu(config, card_id, fired_at())
    ahead = {menu_job_id(card_id): (card_id, at) for card_id, at in menus if at > now}
    armed = alarms.armed_seconds(horizon)  # two reads, not one check per second
    missing = {tick_job_id(second): second for second in sorted(seconds - armed)}
    # A few round trips, not some per job; a job that put itself back has its other id.
    live = alarms.live([i for job_id in [*ahead, *missing] for i in both_ids(job_id)])
    with alarms.together() as pipe:
        for job_id, (card_id, deadline) in ahead.items():
            if live.isdisjoint(both_ids(job_id)):
                alarms.schedule_menu(card_id, deadline, pipeline=pipe)
                counts["rearmed"] += 1
        for job_id, second in missing.items():
            if live.isdisjoint(both_ids(job_id)):
                alarms.schedule_second(second, pipeline=pipe)
                counts["rearmed"] += 1
    live = alarms.live(
        [i for m in waiting.stale_sends for i in both_ids(send_job_id(m))]
        + [alerts_job_id(u) for u in waiting.stale_alerts]
    )
    # A send handed on (a template after 63016, an in-doubt send Twilio never had) runs, or
    # waits out a 429's backoff, under its other id: it is in hand, not lost.
    lost_sends = [m for m in waiting.stale_sends if live.isdisjoint(both_ids(send_job_id(m)))]
    lost_alerts = [u for u in waiting.stale_alerts if alerts_job_id(u) not in live]
    for start in range(0, len(lost_sends), MAX_BATCH):  # a restart may have lost thousands
        with alarms.together() as pipe:
            for message_id in lost_sends[start : start + MAX_BATCH]:
                alarms.enqueue_send(message_id, pipeline=pipe)
    alarms.enqueue_alerts(*lost_alerts, overdue=True)
    counts["resent"] += len(lost_sends) + len(lost_alerts)
    counts["interrupted"], errors = _fail_interrupted_sends(config, alarms, waiting.in_doubt, now)
    counts["errors"] += errors
    as_template: list[int] = []
    waiting_again: list[tuple[int, sla.Timers]] = []
    if to_settle:
        with session_scope(config.database_url) as session:
            counts["late_statuses"] = desk.settle_early_statuses(session, now)
            as_template = [m.id for m in notifications.template_retries(session, now)]
            failed_replies = session.scalars(desk.failed_replies(now)).all()
        waiting_again, errors = _customers_waiting_again(config, failed_replies, now)
        counts["errors"] += errors
    for message_id in as_template:
        alarms.enqueue_send(message_id, again=True)
    counts["resent"] += len(as_template)
    for visit_id, timers in waiting_again:
        alarms.schedule_timers(visit_id, timers)
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


def _with_recorded(
    session: Session, query: Select[tuple[StageVisit]]
) -> list[tuple[StageVisit, set[str]]]:
    """The visits of `query`, each with the event kinds already recorded (two queries)."""
    visits = session.scalars(query).all()
    recorded = escalation.recorded_of(session, visits)
    return [(visit, recorded[visit.id]) for visit in visits]


def due_visits(now: datetime) -> Select[tuple[StageVisit]]:
    """The sweep's query: visits whose next instant has come (a range on the next instant's
    index) and which may still owe an event (`_owing`)."""
    return select(StageVisit).where(StageVisit.next_due_at <= now, _owing())


def _due_events(session: Session, now: datetime) -> list[tuple[int, list[str]]]:
    """Visits whose next instant has come (an indexed range query), with what they owe."""
    due, astray = [], []
    for visit, recorded in _with_recorded(session, due_visits(now)):
        kinds = sla.due_kinds(now, escalation.owed_timers(visit), recorded)
        if kinds:
            due.append((visit.id, kinds))
        else:  # recorded some other way (a clock job, an ACK)
            astray.append(visit.id)
    if astray:
        _repoint(session, astray)
    return due


def _repoint(session: Session, visit_ids: list[int]) -> None:
    """Point each visit at what it really owes next, as it is once locked (in id order, as
    every writer of visits locks them): a re-timing or a SNOOZE committed since the sweep
    read it must not be overwritten with an instant from its old timers."""
    visits = session.scalars(
        select(StageVisit)
        .where(StageVisit.id.in_(visit_ids))
        .order_by(StageVisit.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    recorded = escalation.recorded_of(session, visits)
    for visit in visits:
        visit.next_due_at = sla.next_instant(escalation.owed_timers(visit), recorded[visit.id])


def _seconds_to_arm(session: Session, now: datetime, horizon: datetime) -> set[int]:
    """The seconds in which open visits' timers ring after `now` and before `horizon`: each
    needs its clock job in Redis by then, whatever Redis lost (a restart, a flush, a failed
    write). A visit records nothing before its instant (never early), so at worst a second
    whose card recorded its resolution event on an earlier visit gets an idle clock job."""
    seconds = set()
    # Visits due now count too: what they owe after the event the sweep is about to fire.
    for _visit_id, _next, timers in _timers_of(session, StageVisit.next_due_at <= horizon):
        for instant in timers.instants():
            if now < instant <= horizon:
                seconds.add(second_of(instant))
    return seconds


def _menus_due_before(session: Session, horizon: datetime) -> list[tuple[int, datetime]]:
    """Team menus that run out before `horizon` (an indexed range query)."""
    return [
        (card_id, deadline)
        for card_id, deadline in session.execute(
            select(Card.id, Card.menu_deadline_at).where(
                Card.menu_deadline_at <= horizon, Card.status == "open"
            )
        ).all()
        if deadline is not None
    ]


@dataclass(frozen=True)
class _InDoubt:
    """A send found "sending" with no live job, as the sweep read it."""

    id: int
    attempts: int
    called_at: datetime  # its claim, or the start of its call to Twilio (_still_claimed)
    to: str
    sender: str
    body: str
    template: Template | None


def _fail_interrupted_sends(
    config: Config, alarms: Alarms, stuck: list[_InDoubt], now: datetime
) -> tuple[int, int]:
    """Sends cut off mid-call (a killed worker, a lost connection): Twilio may or may not
    have the message. Once the call has surely ended, Twilio is asked (see _verdict): what
    it took is recorded, what it never got goes again. When it cannot be asked (the
    simulator, Twilio unreachable for five minutes), or cannot tell, they are marked failed,
    where supervisors see them, rather than risk a duplicate. Each message is settled in a
    transaction of its own: one that cannot be (a SID taken meanwhile) never stops the
    sweep. Returns (settled, errors)."""
    settled = now - timedelta(seconds=SEND_SETTLED_SECONDS)
    resend, done, errors = [], 0, 0
    live = alarms.live([i for doubt in stuck for i in both_ids(send_job_id(doubt.id))])
    for doubt in stuck:
        if not live.isdisjoint(both_ids(send_job_id(doubt.id))):
            continue
        try:
            outcome = _settle_interrupted(config, doubt, now, settled)
        except Exception:  # one bad row must not stop the sweep for all the others
            log.exception("sweep could not settle interrupted send %s", doubt.id)
            errors += 1
            continue
        if outcome == "not sent":
            resend.append(doubt.id)
        if outcome in ("sent", "not sent", "failed"):
            done += 1
    for message_id in resend:
        alarms.enqueue_send(message_id, again=True)
    return done, errors


INTERRUPTED_DOUBTFUL = (
    "interrupted while sending; Twilio holds a message to this person from that moment "
    "that may be this one: not retried to avoid a duplicate"
)


def _settle_interrupted(config: Config, doubt: _InDoubt, now: datetime, settled: datetime) -> str:
    """Ask Twilio (outside any transaction), then take the message over, only if it is still
    as the sweep found it (its send job may have woken from a long pacing wait and stamped
    its call: then it is left alone), and record the verdict. "sent", "not sent", "failed",
    or "left" (unknown yet, or its job came back)."""
    listed = _ask_twilio(config, doubt)
    try:
        with session_scope(config.database_url) as session:
            verdict, found = (
                ("unknown", None) if listed is None else _verdict(session, doubt, listed)
            )
            if verdict == "unknown" and doubt.called_at > now - timedelta(
                seconds=INTERRUPTED_SEND_SECONDS
            ):
                return "left"  # ask again at the next sweep
            taken = session.execute(
                update(Message)
                .where(
                    Message.id == doubt.id,
                    Message.status == "sending",
                    Message.attempts == doubt.attempts,
                    Message.updated_at <= settled,
                )
                .values(updated_at=now)
            ).rowcount
            message = session.get(Message, doubt.id)
            if not taken or message is None:
                return "left"
            if verdict == "sent":
                assert found is not None
                log.info("interrupted send %s had reached Twilio as %s", doubt.id, found.sid)
                desk.record_sent(session, message, found.sid, found.status, utcnow())
                return "sent"
            if verdict == "not sent":
                log.info("interrupted send %s never reached Twilio: sending it again", doubt.id)
                message.status = "retrying"
                return "not sent"
            message.status = "failed"
            message.error_message = INTERRUPTED if verdict == "unknown" else INTERRUPTED_DOUBTFUL
            return "failed"
    except IntegrityError:  # the SID was stored for another message meanwhile: ask again
        log.warning("interrupted send %s: Twilio's SID is taken; asking again later", doubt.id)
        return "left"


def _ask_twilio(config: Config, doubt: _InDoubt) -> list[whatsapp.Listed] | None:
    """The messages Twilio holds to this person from around the send's own call (from its
    stamp to the HTTP client's time-out, with a margin for the clocks); None when Twilio
    cannot be asked."""
    sender = sender_for(config)
    between = getattr(sender, "sent_between", None)
    if between is None or not doubt.sender:
        return None
    margin = timedelta(seconds=CLOCK_MARGIN_SECONDS)
    start = doubt.called_at - margin
    end = doubt.called_at + timedelta(seconds=whatsapp.REQUEST_TIMEOUT_SECONDS) + margin
    try:
        return list(between(doubt.to, doubt.sender, start, end))
    except TransientSendError as exc:
        log.warning("could not ask Twilio about interrupted send %s: %s", doubt.id, exc)
        return None


def _verdict(
    session: Session, doubt: _InDoubt, listed: list[whatsapp.Listed]
) -> tuple[str, whatsapp.Listed | None]:
    """What Twilio's list says of an interrupted send. Messages whose SID another row holds
    are someone else's. Free text: exactly one other message with the same text is this
    one ("sent"); none means "not sent"; several are "doubtful". A template: Twilio's list
    shows neither its Content SID nor its variables, so no message can be told to be this
    one: none at all in the window means "not sent", any means "doubtful" — the message is
    marked failed rather than risk a duplicate or take another send's SID."""
    sids = [item.sid for item in listed]
    held = (
        set(
            session.scalars(
                select(Message.sid).where(Message.sid.in_(sids), Message.id != doubt.id)
            )
        )
        if sids
        else set()
    )
    free = [item for item in listed if item.sid not in held]
    if doubt.template is None:
        free = [item for item in free if item.body == doubt.body]
        if len(free) == 1:
            return "sent", free[0]
    if not free:
        return "not sent", None
    return "doubtful", None


def waiting_outbound(since: datetime) -> Select[Any]:
    """The sweep's read of outbound messages waiting or sending, untouched since `since`."""
    return select(
        Message.id,
        Message.status,
        Message.updated_at,
        Message.contact_id,
        Message.user_id,
        Message.sent_at,
        Message.attempts,
        Message.to_address,
        Message.from_address,
        Message.body,
        Message.content_sid,
        Message.content_variables,
    ).where(
        Message.direction == "out",
        Message.status.in_(("pending", "retrying", "sending")),
        Message.updated_at <= since,
    )


def anything_to_settle(now: datetime) -> Select[tuple[bool]]:
    """Are there kept status callbacks, refused alerts to send as the template, or replies
    that failed to reach their customer? (Mostly not: one statement then spares the sweep
    a transaction.)"""
    return select(
        or_(
            select(EarlyStatus.id).exists(),
            select(Message.id).where(notifications.refused_alerts(now)).exists(),
            desk.failed_replies(now).order_by(None).exists(),
        )
    )


def _customers_waiting_again(
    config: Config, message_ids: Sequence[int], now: datetime
) -> tuple[list[tuple[int, sla.Timers]], int]:
    """Each reply that failed to reach its customer has them waiting again
    (`desk.reply_failed`), each in a transaction of its own: one that fails is logged and
    the others go on. The new visits' timers to arm, and how many failed."""
    visits, errors = [], 0
    for message_id in message_ids:
        try:
            with session_scope(config.database_url) as session:
                visit = desk.reply_failed(session, message_id, now)
                if visit is not None:
                    visits.append((visit.id, visit.timers))
        except Exception:
            log.exception("sweep: the failed reply %s could not be handled", message_id)
            errors += 1
    return visits, errors


@dataclass(frozen=True)
class _Waiting:
    """What the sweep found among the outbound messages waiting or sending."""

    stale_sends: list[int]  # handed to the sender, whose send job is overdue
    stale_alerts: list[int]  # people whose alerts wait past their digest window
    in_doubt: list[_InDoubt]  # "sending" so long that their call has surely ended


def _waiting_outbound(session: Session, now: datetime) -> _Waiting:
    """Outbound messages waiting or sending for a while, in one read (a range on the
    direction, status and updated_at index): messages handed to the sender (customers',
    digests, alerts let through) whose send job is overdue; the people whose alerts still
    wait for their digest well after its window ended; and sends "sending" for so long that
    their call to Twilio has surely ended (in doubt)."""
    stale = now - timedelta(seconds=STALE_SEND_SECONDS)
    settled = now - timedelta(seconds=SEND_SETTLED_SECONDS)
    sends, alerts, in_doubt = [], [], []
    for m in session.execute(waiting_outbound(max(stale, settled))):
        handed_on = m.contact_id is not None or m.sent_at is not None
        if m.status == "sending":
            if m.updated_at <= settled:
                in_doubt.append(
                    _InDoubt(
                        m.id,
                        m.attempts,
                        m.updated_at,
                        m.to_address,
                        m.from_address,
                        m.body,
                        _template_of(m),  # the row has the message's template columns
                    )
                )
        elif handed_on:
            if m.updated_at <= stale:
                sends.append(m.id)
        elif m.status == "pending" and m.user_id is not None:
            alerts.append((m.user_id, m.updated_at))
    if not alerts:  # the digest window is read only when some alerts wait
        return _Waiting(sends, [], in_doubt)
    alerts_stale = stale - timedelta(seconds=settings.notifications(session).digest_seconds)
    people = dict.fromkeys(user_id for user_id, at in alerts if at <= alerts_stale)
    return _Waiting(sends, list(people), in_doubt)
