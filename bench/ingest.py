"""Inbound ingest: signed WhatsApp webhooks through gunicorn (the Procfile's web) into
PostgreSQL with full processing, against the stack's floor, in the same run.

The desk runs twice: its `web` alone, measured as the floor is (the jobs it queues wait in
Redis, no worker takes them), and `web` with the Procfile's `worker` and `sweep` carrying
them out on the same cores. The traffic: one message in five opens a conversation (a number
never seen before) and four continue one already open (see `customer_of`).

The host's speed drifts within a run, so the ratio is also taken in short rounds: the
floor and the desk's web, both up, take turns (which goes first alternates), and each
round's ratio compares two runs seconds apart. The median of the rounds is the ratio the
target is checked on; the long runs' ratio is shown beside it. Then each kind of message is
measured alone against the floor, in rounds the same way (`by_kind`): what one joining an
open conversation costs, and what one opening a conversation costs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from whatsdesk import whatsapp
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import Card, Contact, Message

from . import data
from .harness import (
    WORK,
    Running,
    Sizes,
    Stores,
    children,
    cpu_per_request,
    postgres_server_pid,
    processes,
    rss_mib,
)

CONNECTIONS = 8  # the Procfile's web: 2 workers × 4 threads
CORES = len(os.sched_getaffinity(0))  # the cores this run may use
# The most the desk could take on this machine, so each request is a new message (a
# replayed one would be a cheap duplicate); a run that goes faster says it repeated some.
MAX_RATE = 1200
PATH = "/twilio/whatsapp"
FLOOR = {"app:app": "bench.floor_app:app"}  # the floor under the Procfile's web command line


# Each requests file writes from numbers of its own, so a warm-up opens none of the
# conversations its run then counts as new ("new": each message from a number of its own).
SERIES = {"floor": 1, "warm": 2, "desk": 3, "new": 4}
NEW_EVERY = 5  # one message in this many opens a conversation
# The rounds of the ratio (quick pass, full sizes): how many, and each side's seconds.
ROUNDS = {False: 3, True: 6}
ROUND_SECONDS = {False: 3, True: 5}
# The rounds by kind of message (the floor, then each kind alone, as long as a round's side).
KIND_ROUNDS = {False: 2, True: 4}
KINDS = ("floor", "open", "new")
KIND_FIGURES = ("rate", "p99_ms", "cpu_ms", "cpu_busy", "repeated", "errors")  # kept of each

# Who writes message n of a requests file, given the file's seeded random numbers.
Writer = Callable[[int, random.Random], str]


def customer_of(n: int, rng: random.Random) -> int:
    """Who writes message n (from 0): every fifth message (n = 0, 5, 10 …) comes from a new
    customer, n // 5; each of the others from a customer drawn (seeded, uniformly) among
    those seen so far, 0 … n // 5, whose conversation is open (nothing answers or resolves
    it during the run). So at any point of the run one message in five opens a
    conversation and four continue one, whatever rate the run reaches."""
    newest = n // NEW_EVERY
    return newest if n % NEW_EVERY == 0 else rng.randrange(newest + 1)


def numbers_of(name: str) -> str:
    """The start of series `name`'s phone numbers."""
    return f"+551{SERIES[name]}"


def series_writer(name: str) -> Writer:
    """The mix of `customer_of`, from the series' own numbers."""
    return lambda n, rng: f"{numbers_of(name)}{customer_of(n, rng):09d}"


def new_writer(n: int, _rng: random.Random) -> str:
    """Every message from a number never seen before: each opens a conversation."""
    return f"{numbers_of('new')}{n:09d}"


def open_writer(numbers: list[str]) -> Writer:
    """Every message from one of `numbers` (drawn, seeded, uniformly), customers whose
    conversation is open: each joins it."""
    return lambda _n, rng: rng.choice(numbers)


def requests_file(
    base: str, token: str, count: int, name: str, first: int = 0, writer: Writer | None = None
) -> Path:
    """`count` distinct messages, each signed for `base`: messages `first` … `first + count
    - 1` of the series, which continue those before them. Written by `writer` (by default
    the series' mix, `customer_of`)."""
    rng = random.Random(3 + first)
    who = writer or series_writer(name)
    path = WORK / (f"{name}.requests" if not first else f"{name}-{first}.requests")
    with path.open("w", encoding="utf-8") as out:
        for n in range(first, first + count):
            phone = who(n, rng)
            form = {
                "MessageSid": f"SM{name[:4]}{n:028x}",
                "AccountSid": "AC" + "0" * 32,
                "From": f"whatsapp:{phone}",
                "To": "whatsapp:+14155238886",
                "Body": f"Hello, my order #{n} has not arrived yet. Can you help?",
                "NumMedia": "0",
                "ProfileName": f"Customer {phone[-4:]}",
                "WaId": phone.lstrip("+"),
            }
            signature = whatsapp.sign(token, base + PATH, form)
            out.write(f"{signature}\t{urllib.parse.urlencode(form)}\n")
    return path


def wrk(base: str, requests: Path, seconds: int, name: str) -> dict[str, Any]:
    result = WORK / f"{name}.wrk.json"
    env = {"WRK_REQUESTS": str(requests), "WRK_RESULT": str(result), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(Path(__file__).with_name("replay.lua")), base + PATH],
        env=env, check=True, capture_output=True, timeout=seconds + 60,
    )  # fmt: skip
    answer: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    answer["rate"] = answer["requests"] / (answer["duration_us"] / 1e6)
    answer["percentiles_ms"] = [(p, us / 1000) for p, us in answer.pop("percentiles_us")]
    answer["p99_ms"] = dict(answer["percentiles_ms"])["99"]
    answer["p50_ms"] = dict(answer["percentiles_ms"])["50"]
    answer["errors"] = sum(answer[k] for k in answer if k.endswith("_errors")) + answer["timeouts"]
    return answer


def measured(
    stores: Stores, running: Running, requests: Path, seconds: int, name: str
) -> dict[str, Any]:
    """The wrk run, with the CPU each process group spent per request served: the
    Procfile's processes running (each name's copies together), PostgreSQL's server (the
    whole cluster, which is otherwise idle during a run), the Redis server, and wrk."""
    assert stores.redis.process is not None
    redis_pid = stores.redis.process.pid
    groups = {name: running.pids(name) for name in running.processes}
    postgres = postgres_server_pid(stores.database_url)
    if postgres is not None:  # a server on another machine is not counted
        groups["PostgreSQL"] = [postgres]
    groups["Redis"] = [redis_pid]
    with cpu_per_request(groups) as spent:
        result = wrk(running.base, requests, seconds, name)
    served = max(1, result["requests"])
    result["cpu_ms"] = {group: ms / served for group, ms in spent.items()}
    # The share of the cores' time the processes measured used: near 1, the cores were the
    # limit (the rest went to the harness, the kernel's own threads, or nobody).
    result["cpu_busy"] = sum(spent.values()) / 1000 / (result["duration_us"] / 1e6) / CORES
    return result


@dataclass
class Series:
    """The distinct messages one server is sent, run after run: each run's file goes on from
    the last message the runs before it sent, so every run has the same mix (a customer
    drawn to write again has had their first message served) and none repeats a message."""

    running: Running
    token: str
    name: str
    writer: Writer | None = None  # who writes each message (`requests_file`)
    served: int = 0

    def run(self, stores: Stores, seconds: int, label: str) -> dict[str, Any]:
        count = MAX_RATE * seconds
        requests = requests_file(
            self.running.base, self.token, count, self.name, self.served, self.writer
        )
        result = measured(stores, self.running, requests, seconds, label)
        result["repeated"] = max(0, result["requests"] - count)
        # wrk counts the answers: up to one request a connection was sent and not answered
        # when it stopped, and may be stored. The next run starts after those.
        self.served += min(result["requests"] + CONNECTIONS, count)
        return result


def web_rss_mib(running: Running) -> float:
    """The RSS of the largest of web's gunicorn workers."""
    return max((rss_mib(pid) for pid in children(running.pids("web")[0])), default=0.0)


def stored(database_url: str, name: str = "desk") -> dict[str, int]:
    """The inbound messages of series `name` stored, and the desk's cards."""
    with session_factory(database_url)() as session:
        count = session.scalar(
            select(func.count(Message.id)).where(
                Message.direction == "in", Message.sid.like(f"SM{name[:4]}%")
            )
        )
        return {"stored": count or 0, "cards": session.scalar(select(func.count(Card.id))) or 0}


def open_numbers(database_url: str, name: str = "desk") -> list[str]:
    """The numbers of series `name` whose conversation is open, as stored."""
    with session_factory(database_url)() as session:
        addresses = session.scalars(
            select(Contact.address)
            .join(Card, Card.contact_id == Contact.id)
            .where(Card.status == "open", Contact.address.like(f"whatsapp:{numbers_of(name)}%"))
            .order_by(Contact.address)
        )
        return [address.removeprefix("whatsapp:") for address in addresses]


def warm_up(token: str, desk: Running, *others: Running) -> None:
    """3 s of messages from numbers of their own (the "warm" series) into the desk, then
    into each of `others` (the floor reads no signature)."""
    warmup = requests_file(desk.base, token, 2000, "warm")
    for running in (desk, *others):
        wrk(running.base, warmup, 3, "warmup")


def in_turn(names: tuple[str, ...], k: int) -> tuple[str, ...]:
    """Round k's order: the names as given, and the other way round every other round."""
    return names if k % 2 == 0 else names[::-1]


def floor_and_web(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    """The floor and the desk's web alone, both up on the same cores, each idle while the
    other is measured: a long run of each, then the rounds, then the rounds by kind of
    message (see the module's doc)."""
    with get_engine(stores.database_url).begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, sid text, "
                "body text, created_at timestamptz DEFAULT now())"
            )
        )
    data.seed(stores.database_url, datetime.now(UTC))
    token = whatsapp.webhook_token(stores.config)
    with (
        processes(stores, ["web"], swap=FLOOR, tag="floor-") as floor_web,
        processes(stores, ["web"]) as desk_web,
    ):
        warm_up(token, desk_web, floor_web)
        series = {
            "floor": Series(floor_web, token, "floor"),
            "desk": Series(desk_web, token, "desk"),
        }
        floor = series["floor"].run(stores, sizes.ingest_seconds, "floor")
        web = series["desk"].run(stores, sizes.ingest_seconds, "desk")
        web.update(stored(stores.database_url))
        web["rss_web_mib"] = web_rss_mib(desk_web)
        rounds = []
        for k in range(ROUNDS[sizes.full]):
            order = in_turn(("floor", "desk"), k)
            ran = {
                name: series[name].run(stores, ROUND_SECONDS[sizes.full], f"{name}-round")
                for name in order
            }
            floor_rate, desk_rate = ran["floor"]["rate"], ran["desk"]["rate"]
            rounds.append({
                "first": order[0],
                "floor": floor_rate,
                "desk": desk_rate,
                "ratio": desk_rate / floor_rate if floor_rate else 0.0,
                "repeated": ran["desk"]["repeated"],
            })  # fmt: skip
        kinds = by_kind(stores, sizes, series["floor"], desk_web, token)
    return {"floor": floor, "web": web, "rounds": rounds, "kinds": kinds}


def by_kind(
    stores: Stores, sizes: Sizes, floor: Series, desk_web: Running, token: str
) -> dict[str, list[dict[str, Any]]]:
    """Each kind of message alone, in rounds as the ratio's, each round's order the other
    way round from the one before: the floor, messages on the conversations the mix has
    opened ("open"), and messages that each open one ("new")."""
    numbers = open_numbers(stores.database_url)
    if not numbers:
        raise RuntimeError("ingest: the mix's runs left no open conversation to write to")
    kinds = {
        "floor": floor,
        "open": Series(desk_web, token, "open", open_writer(numbers)),
        "new": Series(desk_web, token, "new", new_writer),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in KINDS}
    for k in range(KIND_ROUNDS[sizes.full]):
        for name in in_turn(KINDS, k):
            result = kinds[name].run(stores, ROUND_SECONDS[sizes.full], f"{name}-kind")
            runs[name].append({key: result[key] for key in KIND_FIGURES})
    return runs


def desk(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    """The desk as in production: the Procfile's `web`, `worker` and `sweep` on the same two
    cores, measured as the floor is."""
    data.seed(stores.database_url, datetime.now(UTC))
    token = whatsapp.webhook_token(stores.config)
    with processes(stores, ["web", "worker", "sweep"]) as running:
        warm_up(token, running)
        result = Series(running, token, "desk").run(stores, sizes.ingest_seconds, "desk")
        result["rss_web_mib"] = web_rss_mib(running)
        result["rss_worker_mib"] = rss_mib(running.pids("worker")[0])
    result.update(stored(stores.database_url))
    return result


def statements_per_message(stores: Stores, count: int = 25) -> dict[str, float]:
    """SQL statements one inbound message (a sentence, as in the runs) costs, counted
    in-process (test client), besides BEGIN and COMMIT: `count` messages that open a
    conversation each, then one more on each of those open conversations."""
    from sqlalchemy import event

    from whatsdesk import create_app

    stores.empty()
    data.seed(stores.database_url, datetime.now(UTC))
    client = create_app(stores.config).test_client()
    token = whatsapp.webhook_token(stores.config)
    seen: list[str] = []
    engine = get_engine(stores.database_url)

    def capture(*args: Any) -> None:
        seen.append(args[2])

    per_message: dict[str, float] = {}
    event.listen(engine, "before_cursor_execute", capture)
    try:
        for kind, first in (("new", 0), ("open", count)):
            seen.clear()
            for n in range(first, first + count):
                form = {
                    "MessageSid": f"SMcount{n:026x}",
                    "From": f"whatsapp:+5511700{n % count:05d}",
                    "To": "whatsapp:+14155238886",
                    "Body": f"Hello, my order #{n} has not arrived yet. Can you help?",
                    "NumMedia": "0",
                }
                signature = whatsapp.sign(token, "http://localhost" + PATH, form)
                client.post(PATH, data=form, headers={"X-Twilio-Signature": signature})
            per_message[kind] = len(seen) / count
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return per_message


def run(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    """The floor and the desk's web alone (the ratio: web alone ÷ floor, both measured
    alike, over a long run and as the median of the rounds), then the desk's web with its
    worker and sweep."""
    stores.empty()
    alike = floor_and_web(stores, sizes)
    stores.empty()
    full = desk(stores, sizes)
    base, alone = alike["floor"], alike["web"]
    return {
        "floor": base,
        "web": alone,
        "desk": full,
        "ratio": alone["rate"] / base["rate"] if base["rate"] else 0.0,
        "rounds": alike["rounds"],
        "kinds": alike["kinds"],
        "new_every": NEW_EVERY,
        "round_seconds": ROUND_SECONDS[sizes.full],
        "statements_per_message": statements_per_message(stores),
        "connections": CONNECTIONS,
        "seconds": sizes.ingest_seconds,
    }
