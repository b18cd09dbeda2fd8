"""The sweep's process (`python -m whatsdesk.cron`, the Procfile's `sweep`): it queues the
sweep on the clock's queue every SWEEP_INTERVAL, outlives a Redis restart and stops on
SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import harness as faults
from redis import Redis
from rq import Queue

from whatsdesk import cron, procfile
from whatsdesk.alarms import clock_queue_name
from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.devserver import BIN
from whatsdesk.redis_server import PrivateRedis

from conftest import eventually


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with faults.private_redis() as server:
        yield server


@pytest.fixture
def sweep_process(
    private_redis: PrivateRedis, tmp_path: Path
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "REDIS_URL": private_redis.url,
        "SWEEP_INTERVAL": "1",
    }
    log = tmp_path / "sweep.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            procfile.command("sweep", env), cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out
        )
    yield log, process
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def sweeps_queued(url: str) -> int:
    clock = Queue(clock_queue_name("whatsdesk"), connection=Redis.from_url(url))
    return sum(job.func_name == "whatsdesk.jobs.sweep" for job in clock.get_jobs())


def test_the_sweep_is_queued_on_the_clock_every_interval_and_the_process_stops_on_sigterm(
    sweep_process: tuple[Path, subprocess.Popen[bytes]], private_redis: PrivateRedis
) -> None:
    _log, process = sweep_process

    assert eventually(lambda: sweeps_queued(private_redis.url) >= 2, timeout=20)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_after_a_redis_restart_the_sweep_is_queued_again(
    sweep_process: tuple[Path, subprocess.Popen[bytes]], private_redis: PrivateRedis
) -> None:
    """RQ's own loop ends on a Redis error (a restart falling on one of its ticks); with no
    sweep after it, timers and sends the restart lost would never be found again."""
    log, process = sweep_process
    assert eventually(lambda: sweeps_queued(private_redis.url) >= 1, timeout=20)

    faults.kill_redis(private_redis)  # Redis dies, and comes back empty
    assert eventually(lambda: b"Redis error" in log.read_bytes(), timeout=20)
    private_redis.start()

    assert eventually(lambda: sweeps_queued(private_redis.url) >= 1, timeout=20)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_sigterm_while_redis_is_down_ends_the_process(
    sweep_process: tuple[Path, subprocess.Popen[bytes]], private_redis: PrivateRedis
) -> None:
    """Stopping the desk while Redis is away (a deploy during an outage) must not wait for
    Redis: the scheduler's own ending, which writes to Redis, cannot hide the request."""
    log, process = sweep_process
    assert eventually(lambda: sweeps_queued(private_redis.url) >= 1, timeout=20)
    faults.kill_redis(private_redis)
    assert eventually(lambda: b"Redis error" in log.read_bytes(), timeout=20)

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=20) == 0


def test_a_scheduler_ending_after_redis_came_back_empty_ends_cleanly(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarted without its data has no entry for the scheduler: RQ's unregistering
    fails on that, which would end the process instead of letting it start again."""
    scheduler = cron.scheduler(Config(redis_url=redis_url, redis_url_is_private=False))

    with caplog.at_level(logging.WARNING):
        scheduler.register_death()  # never registered: as after Redis came back empty

    assert "could not unregister" in caplog.text


def test_asked_to_stop_as_redis_goes_down_it_stops_rather_than_starting_again(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM at a tick while Redis goes away: RQ's loop stops, then fails to unregister
    the scheduler from Redis; that error must not be taken for an outage to ride out."""
    config = Config(redis_url=private_redis.url, redis_url_is_private=False, sweep_seconds=1)
    scheduler = cron.scheduler(config)

    def outage_then_sigterm() -> list[object]:
        faults.kill_redis(private_redis)
        scheduler._request_stop(signal.SIGTERM, None)  # what RQ's SIGTERM handler runs
        return []

    def starting_again() -> None:
        raise AssertionError("it started again after being asked to stop")

    monkeypatch.setattr(scheduler, "enqueue_jobs", outage_then_sigterm)
    monkeypatch.setattr(cron, "_pause", starting_again)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        cron.run(scheduler)  # returns: stopped
    finally:
        for signum, handler in handlers.items():  # RQ's handlers raise StopRequested
            signal.signal(signum, handler)

    assert scheduler.stop_requested
