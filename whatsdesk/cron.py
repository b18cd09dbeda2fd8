"""`python -m whatsdesk.cron --url REDIS_URL` (the Procfile's `sweep`): queues the reconciling
sweep every SWEEP_INTERVAL seconds on the clock's queue, through RQ's cron scheduler.

RQ's scheduler loop ends on its first Redis error (a Redis restart that falls on one of its
ticks), and with it every sweep, so nothing a restart lost would be found again: like the
desk's workers, this process starts the loop again once Redis is back, and ends only when
asked to (SIGTERM, Ctrl-C), whatever state Redis is in then."""

from __future__ import annotations

import argparse
import dataclasses
import time
from types import FrameType

from redis.exceptions import RedisError
from rq.cron import CronScheduler
from rq.exceptions import SchedulerNotFound, StopRequested

from .alarms import clock_queue_name, redis_for
from .config import Config
from .jobs import sweep

REDIS_RETRY_SECONDS = 1.0
SWEEP_TIMEOUT_SECONDS = 300


class Scheduler(CronScheduler):
    """RQ's cron scheduler, remembering that it was asked to stop, and whose ending never
    fails on Redis: it unregisters itself from RQ's registry as it ends, which a Redis
    down (or back empty, without its entry) would turn into an error hiding the stop."""

    stop_requested = False

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        super()._request_stop(signum, frame)

    def register_death(self, pipeline: object = None) -> None:
        try:
            super().register_death(pipeline)  # type: ignore[arg-type]
        except (RedisError, SchedulerNotFound) as exc:
            self.log.warning("CronScheduler %s: could not unregister (%s)", self.name, exc)


def scheduler(config: Config) -> Scheduler:
    """The cron scheduler with the sweep registered on the desk's Redis and clock queue."""
    cron = Scheduler(connection=redis_for(config.redis_url))
    cron.register(
        sweep,
        clock_queue_name(config.queue_name),
        interval=config.sweep_seconds,
        job_timeout=SWEEP_TIMEOUT_SECONDS,
    )
    return cron


def run(cron: Scheduler) -> None:
    """Run the scheduler until it is asked to stop, starting it again after a Redis error."""
    while True:
        try:
            cron.start()  # returns when asked to stop while running
            return
        except (StopRequested, KeyboardInterrupt):  # asked while it registered itself
            return
        except RedisError as exc:
            if cron.stop_requested:
                return
            cron.log.warning(
                "CronScheduler: Redis error (%s); starting again in %.0f s",
                exc,
                REDIS_RETRY_SECONDS,
            )
        try:
            _pause()
        except (StopRequested, KeyboardInterrupt):  # its signal handlers outlive its loop
            return


def _pause() -> None:
    """Before starting again after a Redis error."""
    time.sleep(REDIS_RETRY_SECONDS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m whatsdesk.cron", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--url", required=True, help="the desk's Redis (REDIS_URL)")
    args = parser.parse_args(argv)
    config = dataclasses.replace(Config.from_env(), redis_url=args.url, redis_url_is_private=False)
    run(scheduler(config))


if __name__ == "__main__":
    main()
