"""Redis as the alarm clock: RQ jobs at the instants the database says."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus, get_current_job
from rq.registry import ScheduledJobRegistry

from .sla import Timers

# Backoff for sends Twilio could not take (429, 5xx, time-outs): 2 s … 2 min.
SEND_RETRY_INTERVALS = [2, 5, 15, 45, 120]
MAX_SEND_ATTEMPTS = len(SEND_RETRY_INTERVALS) + 1
LIVE_STATUSES = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED, JobStatus.DEFERRED}
# The desk's workers (whatsdesk.worker.Worker) write a pulse this often, which expires when
# they die: a job "started" by a worker without one was cut off (SIGKILL, a lost machine).
PULSE_SECONDS = 1
PULSE_TTL_SECONDS = 5


def pulse(redis: Redis, worker_name: str) -> None:
    """A worker says it is alive (and that it is one that says so)."""
    with redis.pipeline() as pipe:
        pipe.set(f"whatsdesk:alive:{worker_name}", 1, ex=PULSE_TTL_SECONDS)
        pipe.set(f"whatsdesk:pulsing:{worker_name}", 1, ex=7 * 24 * 3600)
        pipe.execute()


def worker_died(redis: Redis, worker_name: str | None) -> bool:
    """Is this a desk worker whose pulse has stopped? (Others cannot tell: assume alive.)"""
    return bool(worker_name) and worker_name in workers_died(redis, {worker_name or ""})


def workers_died(redis: Redis, worker_names: set[str]) -> set[str]:
    """The desk workers among these whose pulse has stopped (one round trip)."""
    names = sorted(n for n in worker_names if n)

    def ask(pipe: Pipeline, name: str) -> None:
        pipe.exists(f"whatsdesk:alive:{name}")
        pipe.exists(f"whatsdesk:pulsing:{name}")

    found = _two_each(redis, names, ask)
    return {n for n, (alive, pulsing) in zip(names, found, strict=True) if pulsing and not alive}


_Item = TypeVar("_Item")


def _two_each(
    redis: Redis, items: Sequence[_Item], ask: Callable[[Pipeline, _Item], None]
) -> list[tuple[Any, Any]]:
    """The answers to the two commands `ask` sends for each item, in one round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for item in items:
            ask(pipe, item)
        found = pipe.execute()
    return list(zip(found[::2], found[1::2], strict=True))


# RQ's scheduler refreshes its lock (to a 61 s lease) every second; one silent this long is
# dead (its worker SIGKILLed, OOM-killed): another worker may take the lock over at once
# instead of waiting out the lease with nobody enqueueing the clock's jobs.
SCHEDULER_SILENT_SECONDS = 5
# Deletes the lock only if its lease has not been refreshed for ARGV[1] seconds, atomically.
_FREE_SILENT_LOCK = """
local left = redis.call('TTL', KEYS[1])
if left == -2 then return 1 end
if left >= 0 and left < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def free_silent_scheduler_lock(redis: Redis, lock_key: str, lease_seconds: int) -> bool:
    """Is RQ's scheduler lock `lock_key` free for the taking: absent, or held by a scheduler
    that has not refreshed its `lease_seconds` lease for SCHEDULER_SILENT_SECONDS (then it
    is deleted)? A live scheduler refreshes it every second and keeps it."""
    keep_above = lease_seconds - SCHEDULER_SILENT_SECONDS
    # EVALSHA: the script's text goes to Redis once, not with each check.
    free = redis.register_script(_FREE_SILENT_LOCK)
    return bool(free(keys=[lock_key], args=[keep_above]))


@lru_cache(maxsize=8)
def redis_for(url: str) -> Redis:
    """One connection pool per Redis URL per process."""
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def clock_queue_name(queue_name: str) -> str:
    return f"{queue_name}-clock"


def second_of(instant: datetime) -> int:
    """The whole second (Unix time) an instant falls in."""
    return math.floor(instant.timestamp())


def never_before(instant: datetime) -> datetime:
    """The first whole second at or after `instant`. RQ's scheduler drops a scheduled
    time's fraction and enqueues the job once that second has begun: a job scheduled for
    this is never woken before `instant`, and never has to sleep in a worker waiting for
    it (holding the worker the clock's jobs need)."""
    return datetime.fromtimestamp(math.ceil(instant.timestamp()), UTC)


TICK_ID = re.compile(r"tick-([0-9]+)(?:-again)?")  # either of a second's two ids (own_id)


def tick_job_id(second: int) -> str:
    """The clock job of one second: however many deadlines fall in it, one job."""
    return f"tick-{second}"


# A second's clock job is woken this long before the second begins (RQ's scheduler keeps
# whole seconds and polls once a second: it is enqueued anywhere in the second before its
# own), reads what its second owes (one indexed query, a few ms) and then waits in the
# worker for each instant: never early, and late by its own work only. It holds a worker for
# at most two seconds, so with three workers one stays free for sends however busy the clock.
TICK_AHEAD_SECONDS = 1


def menu_job_id(card_id: int) -> str:
    return f"menu-{card_id}"


def send_job_id(message_id: int) -> str:
    return f"send-{message_id}"


def alerts_job_id(user_id: int) -> str:
    return f"alerts-{user_id}"


# Spacing sends evenly (a generic cell rate algorithm on Redis's own clock) keeps every
# worker together under the sender's rate: it returns how many microseconds to wait.
_PACE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < t then slot = t end
redis.call('SET', KEYS[1], string.format('%d', slot + interval), 'PX',
           math.floor((slot + interval - t) / 1000) + 1000)
return slot - t
"""


_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""

# Release a lock only if it is still ours: a holder whose worker's pulse lapsed may have had
# its lock taken over, and must not delete the new holder's (GET then DEL is not atomic).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def both_ids(job_id: str) -> tuple[str, str]:
    """The two ids a job can run under: its own, and the one it comes back under (`own_id`,
    `Alarms.enqueue_send` with `again`). Either one live means the work is in hand."""
    return job_id, f"{job_id}-again"


def own_id(job_id: str) -> str:
    """The id for a job putting itself back while it runs (woken early): never the id it
    runs under, whose record is marked finished when it returns. A job under `job_id`
    comes back as `job_id-again`, one under that as `job_id`; any other caller gets
    `job_id`."""
    current = get_current_job()
    return f"{job_id}-again" if current is not None and current.id == job_id else job_id


def _current_worker() -> str:
    """The name of the worker running the current job ('' outside a job)."""
    job = get_current_job()
    return (job.worker_name or "") if job is not None else ""


class Alarms:
    """Schedules and checks the jobs that carry out what the database has decided."""

    def __init__(self, redis_url: str, queue_name: str) -> None:
        self.redis = redis_for(redis_url)
        self.queue = Queue(queue_name, connection=self.redis)
        # Timers and the sweep have a queue of their own, which every worker empties first:
        # a backlog of sends (paced to the sender's rate) never makes a deadline late.
        self.clock = Queue(clock_queue_name(queue_name), connection=self.redis)
        self._pace = self.redis.register_script(_PACE)
        self._take_over = self.redis.register_script(_TAKE_OVER)
        self._release = self.redis.register_script(_RELEASE)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def schedule_menu(
        self, card_id: int, instant: datetime, pipeline: Pipeline | None = None
    ) -> None:
        """When a new conversation's team menu runs out: the default pipeline takes it (woken
        at the whole second after: `never_before`)."""
        self.clock.enqueue_at(
            never_before(instant),
            "whatsdesk.jobs.menu_timeout",
            card_id,
            job_id=own_id(menu_job_id(card_id)),
            result_ttl=3600,
            pipeline=pipeline,
        )

    def arm(
        self,
        timers: list[tuple[int, Timers]],
        sends: list[int],
        menu: tuple[int, datetime] | None = None,
    ) -> None:
        """After a commit: the new stage visits' timers, the messages to send and a team
        menu's deadline (card id, instant), in one round trip to Redis (MULTI … EXEC)."""
        with self.together() as pipe:
            for visit_id, visit_timers in timers:
                self.schedule_timers(visit_id, visit_timers, pipe)
            for message_id in sends:
                self.enqueue_send(message_id, pipeline=pipe)
            if menu is not None:
                self.schedule_menu(*menu, pipeline=pipe)

    @contextmanager
    def together(self) -> Iterator[Pipeline]:
        """A MULTI pipeline: the jobs scheduled or enqueued through it reach Redis in one
        round trip (MULTI … EXEC), or none does if the connection fails before."""
        with self.redis.pipeline() as pipe:
            pipe.multi()  # RQ switches a pipeline it is given to MULTI, before any command
            yield pipe
            pipe.execute()

    def schedule_timers(
        self, visit_id: int, timers: Timers, pipeline: Pipeline | None = None
    ) -> None:
        """The clock job of each instant's second (the visit's id is not needed: the job
        reads from the database what falls due in its second)."""
        for instant in timers.instants():
            self.schedule_second(second_of(instant), pipeline=pipeline)

    def schedule_second(self, second: int, pipeline: Pipeline | None = None) -> None:
        """The job that fires what falls due in this second, woken just before it begins;
        the same id again replaces the job instead of adding one (but a job putting itself
        back comes under an id of its own: `own_id`)."""
        self.clock.enqueue_at(
            datetime.fromtimestamp(second - TICK_AHEAD_SECONDS, UTC),
            "whatsdesk.jobs.fire_second",
            second,
            job_id=own_id(tick_job_id(second)),
            result_ttl=600,
            pipeline=pipeline,
        )

    def armed_seconds(self, until: datetime) -> set[int]:
        """The seconds up to `until` whose clock job waits in the scheduler or in the clock
        queue (a job already taken is not listed: `is_live` tells those)."""
        registry = ScheduledJobRegistry(queue=self.clock)
        scheduled = self.redis.zrangebyscore(registry.key, "-inf", until.timestamp())
        ids = [i.decode() for i in scheduled] + self.clock.get_job_ids()
        return {int(m.group(1)) for i in ids if (m := TICK_ID.fullmatch(i))}

    def wakes_for(self, instant: datetime) -> datetime | None:
        """When the clock job covering this instant is woken; None when none is scheduled."""
        try:
            return ScheduledJobRegistry(queue=self.clock).get_scheduled_time(
                tick_job_id(second_of(instant))
            )
        except NoSuchJobError:
            return None

    @contextmanager
    def exclusive(self, name: str, ttl: int) -> Iterator[bool]:
        """A lock across every process sharing this Redis; yields whether we hold it."""
        key = f"whatsdesk:lock:{self.queue.name}:{name}"
        # The holder's worker is named in the lock: a lock whose worker died (SIGKILL in the
        # middle of a sweep) is taken over at once rather than blocking until its ttl.
        token = f"{_current_worker()}|{uuid.uuid4().hex}"
        held = bool(self.redis.set(key, token, nx=True, ex=ttl))
        if not held:
            holder = self.redis.get(key)
            if holder is not None and worker_died(self.redis, holder.decode().partition("|")[0]):
                held = bool(self._take_over(keys=[key], args=[holder, token, ttl]))
        try:
            yield held
        finally:
            if held:
                self._release(keys=[key], args=[token])

    def enqueue_send(
        self, message_id: int, again: bool = False, pipeline: Pipeline | None = None
    ) -> None:
        """The send job; `again` for a send job handing its message on (another id)."""
        first, other = both_ids(send_job_id(message_id))
        job_id = other if again else first
        self.queue.enqueue(
            "whatsdesk.jobs.send_message",
            message_id,
            job_id=job_id,
            retry=Retry(max=len(SEND_RETRY_INTERVALS), interval=SEND_RETRY_INTERVALS),
            result_ttl=3600,
            pipeline=pipeline,
        )

    def enqueue_alerts(self, *user_ids: int, overdue: bool = False) -> None:
        """Deliver each person's pending alerts (alone, or as a digest) now. A job for them
        still waiting in the queue will see these alerts too: no second one is added (but one
        a killed worker took from the queue, still marked queued, is replaced). Nor is one
        while their digest window is closed: the job that comes when it ends sends these
        with the rest (schedule_alerts), and a storm costs no job per batch of events —
        unless the alerts are `overdue` (the sweep found them waiting past their window: it
        was shortened meanwhile, or that job is lost)."""
        user_ids = tuple(dict.fromkeys(user_ids))  # one job per person, however often named
        queue_key = f"rq:queue:{self.queue.name}"

        def ask(pipe: Pipeline, user_id: int) -> None:
            pipe.exists(self._alerts_due_key(user_id))
            pipe.lpos(queue_key, alerts_job_id(user_id))

        found = _two_each(self.redis, user_ids, ask)  # one round trip for everyone
        wanted = [
            (user_id, position)
            for user_id, (mark, position) in zip(user_ids, found, strict=True)
            if overdue or not mark
        ]
        in_queue = [(alerts_job_id(u), position) for u, position in wanted if position is not None]
        waiting = _still_queued(
            self._fetch_many([job_id for job_id, _ in in_queue]),
            [position for _, position in in_queue],
        )
        with self.together() as pipe:
            for user_id, _position in wanted:
                job_id = alerts_job_id(user_id)
                if job_id not in waiting:
                    self.queue.enqueue(
                        "whatsdesk.jobs.deliver_alerts",
                        user_id,
                        job_id=job_id,
                        result_ttl=600,
                        pipeline=pipe,
                    )

    def schedule_alerts(self, user_id: int, instant: datetime) -> None:
        """Look at a person's pending alerts again when their digest window ends (at the
        whole second after: `never_before`); alerts meanwhile queue no job of their own."""
        at = never_before(instant)
        self._alerts_at(user_id, at, own_id(self._alerts_due_id(user_id, at)), mark=True)

    def retry_alerts(self, user_id: int, now: datetime) -> None:
        """Another job is gathering this person's alerts: look again in a moment (woken
        within the next second: RQ keeps whole seconds). New alerts still queue their own
        job meanwhile, as no window holds them back."""
        at = now + timedelta(seconds=1)
        self._alerts_at(user_id, at, f"{alerts_job_id(user_id)}-retry-{int(at.timestamp())}")

    def _alerts_at(self, user_id: int, at: datetime, job_id: str, mark: bool = False) -> None:
        """The job for a person's alerts at `at`; `mark`: with the mark that it is coming,
        which holds back other alert jobs until it is due (enqueue_alerts)."""
        with self.together() as pipe:
            self.queue.enqueue_at(
                at,
                "whatsdesk.jobs.deliver_alerts",
                user_id,
                job_id=job_id,
                result_ttl=600,
                pipeline=pipe,
            )
            if mark:
                pipe.set(self._alerts_due_key(user_id), job_id, pxat=int(at.timestamp() * 1000))

    def alerts_due_reached(self, user_id: int) -> None:
        """The scheduled job for a person's alerts has started: alerts from now on queue
        their own job again, whatever Redis's clock says about the mark's expiry (RQ's
        scheduler woke this job by its own host's clock). Only such a job can hold the mark:
        other alert jobs skip the round trip."""
        job = get_current_job()
        if job is not None and job.id.startswith(self._alerts_due_prefix(user_id)):
            self._release(keys=[self._alerts_due_key(user_id)], args=[job.id])

    @staticmethod
    def _alerts_due_prefix(user_id: int) -> str:
        """The start of the ids of the jobs for a person's alerts when a window ends."""
        return f"{alerts_job_id(user_id)}-at-"

    def _alerts_due_id(self, user_id: int, at: datetime) -> str:
        return f"{self._alerts_due_prefix(user_id)}{int(at.timestamp())}"

    def _alerts_due_key(self, user_id: int) -> str:
        """Set while a job for the person's alerts is scheduled (until it is due)."""
        return f"whatsdesk:alerts-due:{self.queue.name}:{user_id}"

    def pace(self, sender: str, per_second: float) -> float:
        """Take the next send slot of `sender`; the seconds to wait before using it."""
        key = f"whatsdesk:pace:{self.queue.name}:{sender}"
        wait = self._pace(keys=[key], args=[int(1_000_000 / per_second)])
        return int(wait) / 1_000_000

    def is_live(self, job_id: str) -> bool:
        """Is a job with this id waiting, or running in a worker that is still alive?"""
        return job_id in self.live([job_id])

    def live(self, job_ids: list[str]) -> set[str]:
        """Those of these jobs that are waiting, or running in a worker that is still alive,
        in a few round trips whatever their number (the sweep asks about every send a Redis
        restart lost)."""
        jobs = [job for job in self._fetch_many(job_ids) if job is not None]
        status = {job.id: job.get_status(refresh=False) for job in jobs}
        started = [job for job in jobs if status[job.id] == JobStatus.STARTED]
        dead = workers_died(self.redis, {job.worker_name or "" for job in started})
        waiting = self._waiting([job for job in jobs if status[job.id] == JobStatus.QUEUED])
        return {
            job.id
            for job in jobs
            if status[job.id] in LIVE_STATUSES
            and not (status[job.id] == JobStatus.STARTED and job.worker_name in dead)
            and not (status[job.id] == JobStatus.QUEUED and job.id not in waiting)
        }

    def _waiting(self, queued: list[Job]) -> set[str]:
        """The ids of these queued jobs still in their queue, or taken by a worker that
        started them. A worker killed between taking a job and starting it leaves it
        "queued" in neither place."""
        missing = self._not_in_queue(queued)
        if not missing:
            return {job.id for job in queued}
        time.sleep(0.5)  # a live worker starts what it takes within milliseconds
        again = self._fetch_many([job.id for job in missing])
        still = [job for job in again if job is not None]
        deleted = {job.id for job in missing} - {job.id for job in still}
        lost = self._not_in_queue(
            [job for job in still if job.get_status(refresh=False) == JobStatus.QUEUED]
        )
        return {job.id for job in queued} - deleted - {job.id for job in lost}

    def _fetch_many(self, job_ids: list[str]) -> list[Job | None]:
        """RQ's jobs by id in one round trip, None for each that is gone — or left as a
        partial record (Redis lost data while a worker wrote to it), which RQ refuses to
        read: such a job is as good as gone."""
        try:
            return Job.fetch_many(job_ids, connection=self.redis)
        except NoSuchJobError:  # rare: read each alone, as `Job.fetch` would
            return [self._fetch(job_id) for job_id in job_ids]

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return None

    def _not_in_queue(self, jobs: list[Job]) -> list[Job]:
        """Those of these queued jobs no longer in their queue."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.lpos(f"rq:queue:{job.origin}", job.id)
            positions = pipe.execute()
        waiting = _still_queued(jobs, positions)
        return [job for job in jobs if job.id not in waiting]


def _still_queued(jobs: Sequence[Job | None], positions: Sequence[int | None]) -> set[str]:
    """The ids of those jobs marked queued that are still in their queue (`positions`: where
    LPOS found each, None when it is not there)."""
    return {
        job.id
        for job, position in zip(jobs, positions, strict=True)
        if job is not None
        and position is not None
        and job.get_status(refresh=False) == JobStatus.QUEUED
    }
