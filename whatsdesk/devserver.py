"""`make run`: Redis (private unless REDIS_URL is set) and the Procfile's worker, sweep and
web processes, on this machine only; Ctrl-C stops all of it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import metrics, procfile
from .config import INSTANCE_DIR, PRIVATE_REDIS_SOCKET, PROJECT_ROOT, Config
from .redis_server import PrivateRedis

BIN = Path(sys.executable).parent
PROCESSES = ("worker", "sweep", "web")
SECRET_KEY_FILE = INSTANCE_DIR / "secret_key"


def local_secret_key() -> str:
    """A random key kept in instance/, so sessions survive restarts of `make run`."""
    if not SECRET_KEY_FILE.exists():
        SECRET_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        SECRET_KEY_FILE.write_text(secrets.token_urlsafe(48), encoding="utf-8")
        SECRET_KEY_FILE.chmod(0o600)
    return SECRET_KEY_FILE.read_text(encoding="utf-8").strip()


def main() -> int:
    config = Config.from_env()
    redis = PrivateRedis(PRIVATE_REDIS_SOCKET) if config.redis_url_is_private else None
    try:
        redis_url = redis.start() if redis else config.redis_url
    except RuntimeError as exc:
        print(f"whatsdesk cannot start: {exc}", file=sys.stderr)
        return 1
    metrics.start_afresh()  # this run's counters start from zero, as Prometheus expects
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(config.port),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or local_secret_key(),
    }
    # Own sessions: Ctrl-C reaches only us, and each child gets exactly one SIGTERM (a
    # second signal would make RQ kill a running job).
    children = {
        name: subprocess.Popen(
            procfile.command(name, env), cwd=PROJECT_ROOT, env=env, start_new_session=True
        )
        for name in PROCESSES
    }
    base = f"http://127.0.0.1:{config.port}"
    mode = "simulator mode (no Twilio credentials)" if config.simulator else "Twilio mode"
    print(
        f"\nwhatsdesk is running in {mode}.\n"
        f"  Queue:      {base}/queue\n"
        + (f"  Simulator:  {base}/simulator\n" if config.simulator else "")
        + f"  Health:     {base}/healthz (monitors), {base}/readyz (load balancers)\n"
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
        print("\nStopping…", flush=True)
        return 0


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
