"""Redis as the alarm clock: RQ jobs at the instants the database says."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from .sla import Timers

# Backoff for sends Twilio could not take (429, 5xx, time-outs): 2 s … 2 min.
SEND_RETRY_INTERVALS = [2, 5, 15, 45, 120]
MAX_SEND_ATTEMPTS = len(SEND_RETRY_INTERVALS) + 1
LIVE_STATUSES = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED, JobStatus.DEFERRED}


@lru_cache(maxsize=8)
def redis_for(url: str) -> Redis:
    """One connection pool per Redis URL per process."""
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def timer_job_id(visit_id: int, kind: str) -> str:
    return f"sla-{visit_id}-{kind}"


def send_job_id(message_id: int) -> str:
    return f"send-{message_id}"


class Alarms:
    """Schedules and checks the jobs that carry out what the database has decided."""

    def __init__(self, redis_url: str, queue_name: str) -> None:
        self.redis = redis_for(redis_url)
        self.queue = Queue(queue_name, connection=self.redis)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def schedule_timers(self, visit_id: int, timers: Timers) -> None:
        """A job at each instant; the same id again moves the job instead of adding one."""
        for kind in timers.kinds():
            instant = timers.instant(kind)
            if instant is not None:
                self.schedule_timer(visit_id, kind, instant)

    def schedule_timer(
        self, visit_id: int, kind: str, instant: datetime, again: bool = False
    ) -> None:
        """A job at the instant; `again` for a job re-scheduling itself (another id)."""
        job_id = timer_job_id(visit_id, kind)
        if again:
            job_id = f"{job_id}-at-{int(instant.timestamp())}"
        self.queue.enqueue_at(
            instant,
            "whatsdesk.jobs.fire_sla_event",
            visit_id,
            kind,
            job_id=job_id,
            result_ttl=3600,
        )

    @contextmanager
    def exclusive(self, name: str, ttl: int) -> Iterator[bool]:
        """A lock across every process sharing this Redis; yields whether we hold it."""
        key = f"whatsdesk:lock:{self.queue.name}:{name}"
        token = uuid.uuid4().hex
        held = bool(self.redis.set(key, token, nx=True, ex=ttl))
        try:
            yield held
        finally:
            if held and self.redis.get(key) == token.encode():
                self.redis.delete(key)

    def enqueue_send(self, message_id: int) -> None:
        self.queue.enqueue(
            "whatsdesk.jobs.send_message",
            message_id,
            job_id=send_job_id(message_id),
            retry=Retry(max=len(SEND_RETRY_INTERVALS), interval=SEND_RETRY_INTERVALS),
            result_ttl=3600,
        )

    def is_live(self, job_id: str) -> bool:
        """Is a job with this id waiting or running in Redis?"""
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        return job.get_status(refresh=False) in LIVE_STATUSES
