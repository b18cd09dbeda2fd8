"""The RQ worker class of the desk: `rq worker --worker-class whatsdesk.worker.Worker`."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.exceptions import StopRequested
from rq.worker import SimpleWorker

from . import freeze_heap, jobs  # noqa: F401  (the desk's jobs and their libraries, loaded once)
from .alarms import PULSE_SECONDS, free_silent_scheduler_lock, pulse

# RQ's own upkeep (abandoned jobs, a dead scheduler's lock taken over) runs this often rather
# than every 10 minutes: the sweep's job wakes some worker every SWEEP_INTERVAL.
MAINTENANCE_SECONDS = 30
# How often a worker looks whether RQ's scheduler needs a new home (see heartbeat).
SCHEDULER_LOOK_SECONDS = 1.0
# After RQ's loop ends on an error, this long before starting it again.
RESTART_PAUSE_SECONDS = 1.0


class QuietSweep(logging.Filter):
    """Leaves out RQ's INFO lines about the sweep's jobs (the job taken, completed, "Job OK",
    how long its result is kept): four lines every SWEEP_INTERVAL that buried everything
    else a worker says. They show with `--logging_level DEBUG`; a sweep that fails still logs."""

    SWEEP = f"{jobs.sweep.__module__}.{jobs.sweep.__qualname__}("

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.sweeps: deque[str] = deque(maxlen=16)  # ids of the sweep jobs lately taken

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or self.logger.isEnabledFor(logging.DEBUG):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        texts = [str(arg) for arg in args]
        if any(self.SWEEP in text for text in texts):
            if str(record.msg).endswith("(%s)"):  # "…: queue: description (id)"
                self.sweeps.append(texts[-1])
            return False
        return not any(text in self.sweeps for text in texts)


class Worker(SimpleWorker):
    """Runs each job in the worker process itself rather than in a fork per job: the
    desk's jobs are short and idempotent, and a warm process keeps its database pool, Redis
    connection and Twilio client. SIGKILL loses at most the job running: a pulse in Redis
    (refreshed every second by a thread, gone seconds after the process dies) tells the
    sweep that job is dead, and the sweep makes good (exactly-once comes from the database)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        super().__init__(*args, **kwargs)
        self._pulse_stop = threading.Event()
        self._next_scheduler_look = 0.0
        if not any(isinstance(f, QuietSweep) for f in self.log.filters):
            self.log.addFilter(QuietSweep(self.log))
        freeze_heap()  # the jobs and their libraries are loaded (see freeze_heap)

    @property
    def dequeue_timeout(self) -> int:
        """An idle worker wakes once a second (RQ's own wait is about 7 minutes): its
        heartbeat is where a dead scheduler is taken over, which must not wait for a job."""
        return 1

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat. The one of its loop (before each job and each wait for one, no
        pipeline) also, at most once a second, takes over RQ's scheduler from a dead one
        (see _take_over_dead_scheduler)."""
        super().heartbeat(timeout, pipeline)
        if pipeline is None and time.monotonic() >= self._next_scheduler_look:
            self._next_scheduler_look = time.monotonic() + SCHEDULER_LOOK_SECONDS
            try:
                self._take_over_dead_scheduler()
            except RedisError as exc:
                self.log.warning("Worker %s: scheduler check failed: %s", self.name, exc)

    def _take_over_dead_scheduler(self) -> bool:
        """A worker started --with-scheduler whose own scheduler is not running starts one
        as soon as the holder of RQ's scheduler lock stops refreshing it (killed with its
        worker): RQ itself would wait for the 61-second lease to run out and then for some
        worker's upkeep, and meanwhile nobody moves the clock's jobs to their queue (the
        sweep fires what is due, a sweep interval late). True if it started one."""
        scheduler = self.scheduler
        if self._asked_to_stop:  # its own scheduler has just been stopped: not another one
            return False
        if scheduler is None or (scheduler._process and scheduler._process.is_alive()):
            return False
        lease = scheduler.interval + 60  # what RQScheduler.acquire_locks asks for
        free = [
            name
            for name in self.queue_names()
            if free_silent_scheduler_lock(self.connection, scheduler.get_locking_key(name), lease)
        ]
        if not free:
            return False
        self.log.warning("Worker %s: taking over RQ's scheduler for %s", self.name, free)
        return bool(scheduler.acquire_locks(auto_start=True))

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """RQ's loop quits on a Redis error met outside a dequeue (Redis restarting while a
        job finishes): start it again once Redis answers, unless asked to stop.

        RQ's loop also quits, with only a log line, on any other error outside a job (the
        job's own errors fail the job, never the loop), so why it ended cannot be told
        apart reliably. It is started again whatever the cause — a worker that quits leaves
        the desk's sends and timers to nobody — but only after RESTART_PAUSE_SECONDS, so a
        lasting fault logs once a second instead of spinning. SIGTERM/SIGINT while waiting
        (RQ's handler raises StopRequested outside its loop) returns cleanly."""
        worked = False
        while True:
            try:
                worked = super().work(burst, *args, **kwargs) or worked
            except RedisError as exc:
                self.log.warning("Worker %s: Redis error %s", self.name, type(exc).__name__)
            except StopRequested:
                return worked
            if (
                burst
                or self._asked_to_stop
                or kwargs.get("max_jobs")
                or kwargs.get("max_idle_time")
            ):
                return worked
            self.log.warning("Worker %s: work loop ended; starting again", self.name)
            try:
                self._pause(RESTART_PAUSE_SECONDS)
                self._await_redis()
            except StopRequested:
                return worked
            if self._asked_to_stop:
                return worked

    @property
    def _asked_to_stop(self) -> bool:
        """SIGTERM/SIGINT: RQ notes when, and stops after the job at hand."""
        return self._stop_requested or self._shutdown_requested_date is not None

    def _pause(self, seconds: float) -> None:
        """Wait, unless asked to stop (a signal interrupts the sleep by raising)."""
        if not self._asked_to_stop:
            time.sleep(seconds)

    def _await_redis(self) -> None:
        """Wait until Redis answers (unless asked to stop). RQ's SIGTERM handler raises
        StopRequested in whatever runs when the signal arrives: callers catch it."""
        while not self._asked_to_stop:
            try:
                self.connection.ping()
                self.register_death()  # so that the same name can be born again
                return
            except RedisError:
                time.sleep(1)

    def register_birth(self) -> None:
        super().register_birth()
        self._pulse_stop = threading.Event()  # one pulse thread per birth
        thread = threading.Thread(
            target=self._beat, args=(self._pulse_stop,), name="whatsdesk-pulse", daemon=True
        )
        thread.start()

    def register_death(self) -> None:
        self._pulse_stop.set()
        super().register_death()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                pulse(self.connection, self.name)
            except RedisError:
                pass  # Redis restarting: the next beat writes the pulse again
            stop.wait(PULSE_SECONDS)
