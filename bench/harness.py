"""What every benchmark shares: the machine, the sizes, a database and a Redis of their own,
the Procfile's processes, and a few statistics."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from whatsdesk import procfile
from whatsdesk.config import INSTANCE_DIR, PROJECT_ROOT, Config
from whatsdesk.db import Base, get_engine
from whatsdesk.redis_server import PrivateRedis

BIN = Path(sys.executable).parent
WORK = INSTANCE_DIR / "bench"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/whatsdesk_bench"
SECRET_KEY = "bench-secret-key-not-for-production"


@dataclass(frozen=True)
class Sizes:
    """The quick pass (`make bench`, under 5 minutes) or the full sizes (FULL=1)."""

    full: bool
    ingest_seconds: int
    precision_deadlines: int
    precision_window: int  # seconds the deadlines spread over
    storm_deadlines: int
    open_cards: int
    messages: int
    history_days: int
    history_visits_per_day: int
    page_requests: int

    @classmethod
    def pick(cls, full: bool) -> Sizes:
        if full:
            return cls(True, 60, 10_000, 60, 1_000, 100_000, 1_000_000, 365, 1_000, 500)
        return cls(False, 10, 500, 10, 500, 10_000, 100_000, 365, 100, 50)


def machine() -> dict[str, str]:
    """Cores, memory, CPU model, versions and the date: printed beside every figure."""
    memory_kib = 0
    cpu = platform.processor() or "unknown"
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    postgres = _first_line(["psql", "--version"])
    redis = _first_line(["redis-server", "--version"])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": redis,
        "wrk": _first_line(["wrk", "--version"]),
    }


def host_speed(database_url: str) -> dict[str, str]:
    """Two fixed measures of the host, beside every figure, so runs on different machines
    of the same size can be compared: pure Python, and a PostgreSQL round trip."""
    loops = []
    for _ in range(5):
        started = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        loops.append((time.perf_counter() - started) * 1000)
    trips = []
    with get_engine(database_url).connect() as conn:
        for _ in range(2_000):
            started = time.perf_counter()
            conn.exec_driver_sql("SELECT 1").scalar()
            trips.append((time.perf_counter() - started) * 1_000_000)
    return {
        "speed: Python (a million-step generator sum, best of 5)": f"{min(loops):.0f} ms",
        "speed: PostgreSQL round trip (`SELECT 1`, median of 2,000)": (
            f"{percentile(trips, 50):.0f} µs"
        ),
    }


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""
    )


# --- a database and a Redis of the benchmark's own ------------------------------------------


class Stores:
    """PostgreSQL database `whatsdesk_bench` (BENCH_DATABASE_URL), migrated once and emptied
    for each benchmark, and a private redis-server on a unix socket under instance/bench."""

    def __init__(self) -> None:
        self.database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
        name = make_url(self.database_url).database
        if not name or name in ("test", "postgres"):
            raise SystemExit(f"BENCH_DATABASE_URL must name a database of its own, not {name!r}")
        self.database = name
        self.redis = PrivateRedis(Path("/tmp") / f"whatsdesk-bench-{os.getpid()}" / "r.sock", False)
        self.redis_url = ""

    def __enter__(self) -> Stores:
        admin_url = make_url(self.database_url).set(database="postgres")
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        alembic = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
        alembic.attributes["database_url"] = self.database_url
        command.upgrade(alembic, "head")
        self.redis_url = self.redis.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.redis.stop()
        shutil.rmtree(self.redis.folder, ignore_errors=True)
        get_engine(self.database_url).dispose()

    @property
    def config(self) -> Config:
        return Config(
            database_url=self.database_url,
            redis_url=self.redis_url,
            redis_url_is_private=False,
            secret_key=SECRET_KEY,
        )

    def empty(self) -> None:
        """No rows, no Redis keys: the next benchmark starts from nothing."""
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with get_engine(self.database_url).begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        self.redis_client().flushdb()

    def redis_client(self):  # type: ignore[no-untyped-def]
        from redis import Redis

        return Redis.from_url(self.redis_url)


# --- the Procfile's processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventually(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@dataclass
class Running:
    base: str
    env: dict[str, str]
    processes: dict[str, list[subprocess.Popen[bytes]]]

    def pids(self, name: str) -> list[int]:
        return [p.pid for p in self.processes.get(name, [])]


def environment(stores: Stores, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    metrics_dir = WORK / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": stores.database_url,
        "REDIS_URL": stores.redis_url,
        "SECRET_KEY": SECRET_KEY,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **(extra or {}),
    }


@contextmanager
def processes(
    stores: Stores,
    names: Sequence[str],
    extra: dict[str, str] | None = None,
    workers: int = 1,
    swap: dict[str, str] | None = None,
    tag: str = "",
) -> Iterator[Running]:
    """The Procfile's command lines, as `make run` starts them (`workers` copies of the
    worker); `swap` replaces arguments (`app:app` by the floor endpoint, the worker class by
    the sweep-only one). Output goes to instance/bench, in logs named `tag` + name."""
    port = free_port()
    env = environment(stores, port, extra)
    WORK.mkdir(parents=True, exist_ok=True)
    running: dict[str, list[subprocess.Popen[bytes]]] = {}
    for name in names:
        argv = procfile.command(name, env)
        argv = [(swap or {}).get(arg, arg) for arg in argv]
        for copy in range(workers if name == "worker" else 1):
            log = open(WORK / f"{tag}{name}-{copy}.log", "ab")  # noqa: SIM115 (closed with it)
            running.setdefault(name, []).append(
                subprocess.Popen(
                    argv,
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    base = f"http://127.0.0.1:{port}"
    try:
        if "web" in names and not eventually(lambda: answers(base + "/healthz"), 60):
            raise RuntimeError(f"web did not start: see {WORK}/{tag}web-0.log")
        yield Running(base, env, running)
    finally:
        everyone = [p for group in running.values() for p in group]
        for proc in everyone:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in everyone:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as found:
            return [int(x) for x in found.read().split()]
    except OSError:
        return []


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and by the children it has reaped (0 once it
    has ended: its time is then in its parent's reaped children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            line = stat.read()
    except OSError:
        return 0.0
    fields = line[line.rindex(b")") + 2 :].split()  # after the command name, which may hold ")"
    return sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and every descendant (an RQ work horse that has
    ended counts in its parent's reaped time)."""
    return process_cpu(pid) + sum(tree_cpu(child) for child in children(pid))


def postgres_server_pid(database_url: str) -> int | None:
    """The pid of the PostgreSQL server behind this URL when it runs on this machine: the
    parent of a connection's backend (None for a server elsewhere)."""
    with get_engine(database_url).connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        with open(f"/proc/{backend}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def cpu_per_request(groups: Mapping[str, Sequence[int]]) -> Iterator[dict[str, float]]:
    """Milliseconds of CPU each group of processes (with their descendants) spends while the
    block runs, set on the yielded dict as `{group: total ms}` on exit (the load generator,
    a child that ends in the block, as "load generator"); divide by the requests served."""

    def used(pids: Sequence[int]) -> float:
        return sum(tree_cpu(pid) for pid in pids)

    spent: dict[str, float] = {}
    before = {name: used(pids) for name, pids in groups.items()}
    load = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield spent
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for name, pids in groups.items():
        spent[name] = (used(pids) - before[name]) * 1000
    spent["load generator"] = (
        after.ru_utime + after.ru_stime - load.ru_utime - load.ru_stime
    ) * 1000


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0–100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
    }


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    """Milliseconds of each of `repeat` calls."""
    spent = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent
