"""`python -m whatsdesk.cron` (the Procfile's `sweep`): queues the reconciling sweep every
SWEEP_INTERVAL seconds on the clock's queue, through RQ's cron scheduler.

RQ's scheduler loop ends on its first Redis error (a Redis restart that falls on one of its
ticks), and with it every sweep, so nothing a restart lost would be found again: like the
desk's workers, this process starts the loop again once Redis is back."""

from __future__ import annotations

import time

from redis.exceptions import RedisError
from rq.cron import CronScheduler
from rq.exceptions import StopRequested

from .alarms import clock_queue_name, redis_for
from .config import Config
from .jobs import sweep

REDIS_RETRY_SECONDS = 1.0
SWEEP_TIMEOUT_SECONDS = 300


def scheduler(config: Config) -> CronScheduler:
    """RQ's cron scheduler with the sweep registered on the desk's Redis and clock queue."""
    cron = CronScheduler(connection=redis_for(config.redis_url))
    cron.register(
        sweep,
        clock_queue_name(config.queue_name),
        interval=config.sweep_seconds,
        job_timeout=SWEEP_TIMEOUT_SECONDS,
    )
    return cron


def run(cron: CronScheduler) -> None:
    """Run the scheduler until it is asked to stop (SIGTERM, Ctrl-C), starting it again after
    a Redis error."""
    while True:
        try:
            cron.start()  # returns when asked to stop
            return
        except RedisError as exc:
            cron.log.warning(
                "CronScheduler: Redis error (%s); starting again in %.0f s",
                exc,
                REDIS_RETRY_SECONDS,
            )
        try:
            time.sleep(REDIS_RETRY_SECONDS)
        except (StopRequested, KeyboardInterrupt):  # its signal handlers outlive its loop
            return


def main() -> None:
    run(scheduler(Config.from_env()))


if __name__ == "__main__":
    main()
