"""`make run`: Redis (private unless REDIS_URL is set), an RQ worker with the scheduler,
the reconciling sweep (rq cron) and the web server; Ctrl-C stops all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import INSTANCE_DIR, PROJECT_ROOT, Config
from .redis_server import PrivateRedis

BIN = Path(sys.executable).parent


def main() -> int:
    config = Config.from_env()
    port = os.environ.get("PORT", "5000")
    redis = PrivateRedis(INSTANCE_DIR / "redis") if config.redis_url_is_private else None
    redis_url = redis.start() if redis else config.redis_url
    env = {**os.environ, "REDIS_URL": redis_url}
    commands = {
        "worker": [
            str(BIN / "rq"),
            "worker",
            "--with-scheduler",
            "--url",
            redis_url,
            config.queue_name,
        ],
        "sweep": [str(BIN / "rq"), "cron", "whatsdesk.cron", "--url", redis_url],
        "web": [
            str(BIN / "gunicorn"),
            "app:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--access-logfile",
            "-",
        ],
    }
    children = {
        name: subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env) for name, cmd in commands.items()
    }
    mode = "simulator mode (no Twilio credentials)" if config.simulator else "Twilio mode"
    print(
        f"\nwhatsdesk is running in {mode}.\n"
        f"  Queue:      http://127.0.0.1:{port}/queue\n"
        f"  Simulator:  http://127.0.0.1:{port}/simulator\n"
        f"  Health:     http://127.0.0.1:{port}/healthz\n"
        f"  Redis:      {redis_url}{' (private)' if redis else ''}\n"
        "Press Ctrl-C to stop everything.\n",
        flush=True,
    )
    try:
        return _watch(children)
    finally:
        _stop(children)
        if redis:
            redis.stop()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _watch(children: dict[str, subprocess.Popen[bytes]]) -> int:
    # Installed explicitly: a shell that starts us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"{name} stopped (exit {child.returncode}); stopping the rest.")
                    return child.returncode or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
