"""`rq cron whatsdesk.cron`: the periodic reconciling sweep, every SWEEP_INTERVAL seconds."""

import functools
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from rq import cron

from .alarms import clock_queue_name
from .config import Config
from .jobs import sweep

# RQ's cron scheduler ends on the first Redis error (a Redis restart that falls on one of its
# ticks), and with it every sweep: like the desk's workers, it starts again once Redis is back.
REDIS_RETRY_SECONDS = 1.0


def start_again_after_redis_errors(
    start: Callable[[cron.CronScheduler], None],
) -> Callable[[cron.CronScheduler], None]:
    @functools.wraps(start)
    def start_until_stopped(scheduler: cron.CronScheduler) -> None:
        while True:
            try:
                return start(scheduler)  # returns when asked to stop (SIGTERM, Ctrl-C)
            except RedisError as exc:
                scheduler.log.warning(
                    "CronScheduler: Redis error (%s); starting again in %.0f s",
                    exc,
                    REDIS_RETRY_SECONDS,
                )
                time.sleep(REDIS_RETRY_SECONDS)

    return start_until_stopped


# `rq cron` builds its scheduler, then imports this module, then starts it.
if not hasattr(cron.CronScheduler.start, "__wrapped__"):
    cron.CronScheduler.start = start_again_after_redis_errors(cron.CronScheduler.start)  # type: ignore[method-assign]

_config = Config.from_env()
cron.register(
    sweep, clock_queue_name(_config.queue_name), interval=_config.sweep_seconds, job_timeout=300
)
