"""What the fault scenarios need: a private PostgreSQL and Redis (never the machine's), the
Procfile's processes in process groups of their own (so one can be SIGKILLed whole, scheduler
child included), and Twilio's side of the conversation."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from redis import Redis
from sqlalchemy import create_engine, text

from whatsdesk import procfile, whatsapp
from whatsdesk.config import PROJECT_ROOT, Config
from whatsdesk.db import get_engine
from whatsdesk.redis_server import PrivateRedis

from conftest import answers, eventually, free_port, migrate
from twilio_server import TwilioServer, _handler_for

BIN = Path(sys.executable).parent
TEMPLATE_DB = "wd_faults_template"


# --- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port. As root it runs
    as the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self, bindir: Path, folder: Path, user: str | None) -> None:
        self.bindir = bindir
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.user = user
        self.port = free_port()
        self._template_ready = False

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run(
            [*prefix, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> None:
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
            str(self.log), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown: sessions are cut off, open transactions rolled back."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop()
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, migrated database (a copy of a template migrated once); its URL."""
        if not self._template_ready:
            self._create(TEMPLATE_DB, template=None)
            migrate(self.url(TEMPLATE_DB))
            get_engine(self.url(TEMPLATE_DB)).dispose()
            self._template_ready = True
        name = f"wd_{uuid.uuid4().hex[:10]}"
        self._create(name, template=TEMPLATE_DB)
        return self.url(name)

    def _create(self, name: str, template: str | None) -> None:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                suffix = f" TEMPLATE {template}" if template else ""
                conn.execute(text(f"CREATE DATABASE {name}{suffix}"))
        finally:
            admin.dispose()


def private_postgres_or_skip() -> PrivatePostgres:
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser to start PostgreSQL as `postgres`")
        user = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="wd-faults-pg-", dir="/tmp"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    return PrivatePostgres(bindir, folder, user)


# --- Redis --------------------------------------------------------------------------------------


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of its own, without persistence: restarting it loses everything."""
    folder = Path(tempfile.mkdtemp(prefix="wd-faults-redis-", dir="/tmp"))
    server = PrivateRedis(folder / "redis.sock", persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def kill_redis(server: PrivateRedis) -> None:
    """Redis dies (SIGKILL): it keeps nothing, and its socket is gone."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(timeout=10)
    server.socket.unlink(missing_ok=True)


def restart_without_persistence(server: PrivateRedis) -> None:
    """Redis dies and comes back empty (no RDB, no AOF)."""
    kill_redis(server)
    server.start()


# --- the desk's processes -----------------------------------------------------------------------


class Desk:
    """The Procfile's processes, each in a process group of its own (SIGKILL takes the whole
    worker, its scheduler child too, as when a container or machine dies)."""

    def __init__(self, config: Config, twilio: TwilioServer, logs: Path, **settings: str) -> None:
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DATABASE_URL": config.database_url,
            "REDIS_URL": config.redis_url,
            "SECRET_KEY": config.secret_key,
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "1",
            "SEND_RATE_LIMIT": "1000",
            **twilio.environ(),
            **settings,
        }
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.webs: list[str] = []
        self._count = 0

    def start(self, name: str) -> str:
        """Start one process of the Procfile; its label (name-N)."""
        self._count += 1
        label = f"{name}-{self._count}"
        env = dict(self.env)
        if name == "web":
            env["PORT"] = str(free_port())
        with open(self.logs / f"{label}.log", "wb") as log:
            self.running[label] = subprocess.Popen(
                procfile.command(name, env),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if name == "web":
            base = f"http://127.0.0.1:{env['PORT']}"
            assert eventually(lambda: answers(base + "/healthz"), timeout=30), "web did not start"
            self.webs.append(base)
        return label

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        """Until `count` RQ workers are registered in Redis, listening for jobs: a slow host
        can take seconds to start them, and deadlines set before then would ring unheard."""
        from rq import Worker

        redis = Redis.from_url(self.env["REDIS_URL"])
        try:
            ready = eventually(lambda: len(Worker.all(connection=redis)) >= count, timeout)
        finally:
            redis.close()
        assert ready, f"{count} workers did not start within {timeout:.0f} s: see {self.logs}"

    def kill(self, label: str) -> None:
        """SIGKILL the process and every process it started."""
        proc = self.running.pop(label)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def labels(self, name: str) -> list[str]:
        return [label for label in self.running if label.startswith(name + "-")]

    def group_of(self, pid: int) -> str | None:
        """The label of the process group `pid` belongs to."""
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return None
        return next((lab for lab, proc in self.running.items() if proc.pid == group), None)

    def stop(self) -> None:
        for proc in self.running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for proc in self.running.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the group (a scheduler child) goes too
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        self.running.clear()

    def __enter__(self) -> Desk:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --- Twilio's side ------------------------------------------------------------------------------


def post_inbound(base: str, token: str, form: dict[str, str], timeout: float = 20) -> int:
    """POST to a web process as Twilio does (form-encoded, signed); the HTTP status."""
    url = base + "/twilio/whatsapp"
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"X-Twilio-Signature": whatsapp.sign(token, url, form)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# --- counting what reached Twilio ---------------------------------------------------------------

CARD_NUMBER = re.compile(r"Card #(\d+)")


def notification_key(form: dict[str, str]) -> tuple[str, str, str]:
    """(recipient, kind, card) of a message Twilio took: an acknowledgement, a warning or a
    breach alert of one card. Two messages with one key are one notification sent twice."""
    body = form.get("Body", "") or form.get("ContentVariables", "")
    card = CARD_NUMBER.search(body)
    kind = body.split(" — ")[0] if card else "acknowledgement"
    return form["To"], kind, card.group(1) if card else ""


def scheduler_pid(redis: Redis, queue: str) -> int | None:
    """The process running RQ's scheduler for `queue` (the holder of its lock)."""
    holder = redis.get(f"rq:scheduler-lock:{queue}")
    if holder is None:
        return None
    pid = redis.hget(f"rq:scheduler:{holder.decode()}", "pid")
    return int(pid) if pid else None


class ListingTwilio(TwilioServer):
    """The test Twilio server, also answering GET Messages.json?To=&From= (newest first), as
    Twilio does: the desk asks it about sends cut off mid-call."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[datetime] = []

    def _answer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status, payload = super()._answer(form)
        if status == 201:
            with self._changed:
                self.created.append(datetime.now(UTC))
        return status, payload

    def forget(self) -> None:
        """Twilio's list shows none of the messages taken so far (as if each request had
        been lost on its way); `.requests` still counts them."""
        with self._changed:
            self.sids.clear()
            self.messages.clear()
            self.created.clear()

    def listing(self, query: dict[str, str]) -> dict[str, Any]:
        with self._changed:
            rows = list(zip(self.sids, self.messages, self.created, strict=False))
        found = [
            {
                "sid": sid,
                "to": form.get("To"),
                "from": form.get("From"),
                "body": form.get("Body"),
                "status": "queued",
                "date_created": format_datetime(created, usegmt=True),
                "account_sid": self.account_sid,
            }
            for sid, form, created in reversed(rows)
            if form.get("To") == query.get("To", form.get("To"))
            and form.get("From") == query.get("From", form.get("From"))
        ]
        return {"messages": found[:50], "next_page_uri": None, "page": 0, "page_size": 50}

    def start(self) -> ListingTwilio:
        self._stopping.clear()
        base = _handler_for(self)
        server = self
        messages = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

        class Handler(base):  # type: ignore[valid-type,misc]
            def do_GET(self) -> None:  # noqa: N802
                path, _, raw = self.path.partition("?")
                if path != messages:
                    super().do_GET()
                    return
                if not server._authorized(self.headers.get("Authorization", "")):
                    self._reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
                    return
                query = {k: v[-1] for k, v in parse_qs(raw).items()}
                self._reply(200, server.listing(query))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-twilio", daemon=True
        )
        self._thread.start()
        return self
