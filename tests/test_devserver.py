"""`make run`'s launcher: a private Redis, and the Procfile's processes started and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from redis import Redis

from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.redis_server import PrivateRedis

from conftest import answers, eventually, free_port, migrate


def test_private_redis_answers_on_its_socket_and_stops() -> None:
    folder = Path("/tmp") / f"wd-private-{uuid.uuid4().hex[:8]}"
    private = PrivateRedis(folder / "redis.sock", persist=False)

    url = private.start()

    assert Redis.from_url(url).ping()
    private.stop()
    assert private.process is None
    assert eventually(lambda: not (folder / "redis.sock").exists(), timeout=10)


def test_a_second_private_redis_in_the_same_folder_is_refused_and_the_first_keeps_going() -> None:
    """A second `make run` in the same checkout: its Redis would take over the socket and
    remove it as it stopped, cutting the first desk off."""
    folder = Path("/tmp") / f"wd-private-{uuid.uuid4().hex[:8]}"
    first = PrivateRedis(folder / "redis.sock", persist=False)
    url = first.start()
    try:
        with pytest.raises(RuntimeError, match="another whatsdesk started here is using"):
            PrivateRedis(folder / "redis.sock", persist=False).start()
        assert Redis.from_url(url).ping()
    finally:
        first.stop()
    again = PrivateRedis(folder / "redis.sock", persist=False)  # the first has stopped
    assert Redis.from_url(again.start()).ping()
    again.stop()


def test_launcher_starts_web_worker_and_sweep_and_ctrl_c_stops_them(
    config: Config, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'run.db'}"
    migrate(database)
    port = free_port()
    counters = tmp_path / "metrics"
    counters.mkdir()
    (counters / "counter_99999.db").write_bytes(b"an earlier run's counts")
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "REDIS_URL": config.redis_url,
        "SECRET_KEY": "launcher-test-key",
        "PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(counters),
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "whatsdesk.devserver"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert eventually(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as page:
            assert "Log in" in page.read().decode()
        assert eventually(
            lambda: bool(Redis.from_url(config.redis_url).smembers("rq:workers")), timeout=30
        )
        # The metrics start from zero: an earlier run's counters are gone.
        assert not (counters / "counter_99999.db").exists()
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)
    output = launcher.stdout.read() if launcher.stdout else ""
    assert f"Queue:      http://127.0.0.1:{port}/queue" in output
    assert launcher.returncode == 0
    assert not answers(f"http://127.0.0.1:{port}/healthz")
