"""The sweep's process (`rq cron whatsdesk.cron`) outlives a Redis restart."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.cron import CronScheduler

from whatsdesk import cron


def test_the_cron_scheduler_starts_again_after_a_redis_error_and_ends_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RQ's scheduler ends on a Redis error (a restart falling on one of its ticks): with no
    sweep after it, lost timers and sends would never be found again."""
    monkeypatch.setattr(cron, "REDIS_RETRY_SECONDS", 0.0)
    runs: list[str] = []

    def start(scheduler: CronScheduler) -> None:
        runs.append("start")
        if len(runs) < 3:
            raise RedisConnectionError("Connection closed by server.")
        # the third run is stopped (SIGTERM): RQ's start returns

    scheduler = CronScheduler.__new__(CronScheduler)
    scheduler.log = logging.getLogger("test-cron")

    cron.start_again_after_redis_errors(start)(scheduler)

    assert runs == ["start", "start", "start"]


def test_rq_cron_starts_the_desks_scheduler_through_the_wrapper() -> None:
    """`rq cron` imports whatsdesk.cron after building its scheduler, before starting it."""
    assert CronScheduler.start.__wrapped__ is not None  # type: ignore[attr-defined]
