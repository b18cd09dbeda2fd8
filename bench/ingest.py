"""Inbound ingest: signed WhatsApp webhooks through gunicorn (the Procfile's web) into
PostgreSQL with full processing, against the stack's floor, in the same run."""

from __future__ import annotations

import json
import random
import subprocess
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from whatsdesk import whatsapp
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import Card, Message

from . import data
from .harness import WORK, Sizes, Stores, children, processes, rss_mib

CONNECTIONS = 8  # the Procfile's web: 2 workers × 4 threads
# The most the desk could take on this machine, so each request is a new message (a
# replayed one would be a cheap duplicate); a run that goes faster says it repeated some.
MAX_RATE = 1200
PATH = "/twilio/whatsapp"


def requests_file(base: str, token: str, count: int, contacts: int, name: str) -> Path:
    """`count` distinct messages from `contacts` customers, each signed for `base`."""
    rng = random.Random(3)
    path = WORK / f"{name}.requests"
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            phone = f"+55118{rng.randrange(contacts):07d}"
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


def floor(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    with get_engine(stores.database_url).begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, sid text, "
                "body text, created_at timestamptz DEFAULT now())"
            )
        )
    with processes(stores, ["web"], swap={"app:app": "bench.floor_app:app"}) as running:
        requests = requests_file(running.base, "floor", 20_000, 1000, "floor")
        wrk(running.base, requests, 3, "floor-warmup")
        result = wrk(running.base, requests, sizes.ingest_seconds, "floor")
    return result


def desk(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    """The Procfile's web, worker and sweep, as in production, on the same two cores."""
    data.seed(stores.database_url, datetime.now(UTC))
    count = MAX_RATE * sizes.ingest_seconds
    token = whatsapp.webhook_token(stores.config)
    with processes(stores, ["web", "worker", "sweep"]) as running:
        warmup = requests_file(running.base, token, 2000, 500, "warm")
        wrk(running.base, warmup, 3, "desk-warmup")
        requests = requests_file(running.base, token, count, max(1000, count // 5), "desk")
        result = wrk(running.base, requests, sizes.ingest_seconds, "desk")
        web = children(running.pids("web")[0])
        result["rss_web_mib"] = max((rss_mib(pid) for pid in web), default=0.0)
        result["rss_worker_mib"] = rss_mib(running.pids("worker")[0])
    result["repeated"] = max(0, result["requests"] - count)
    with session_factory(stores.database_url)() as session:
        stored = session.scalar(
            select(func.count(Message.id)).where(
                Message.direction == "in", Message.sid.like("SMdesk%")
            )
        )
        result["stored"] = stored or 0
        result["cards"] = session.scalar(select(func.count(Card.id))) or 0
    return result


def statements_per_message(stores: Stores, count: int = 50) -> float:
    """SQL statements one inbound message costs, counted in-process (test client)."""
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

    event.listen(engine, "before_cursor_execute", capture)
    try:
        for n in range(count):
            form = {"MessageSid": f"SMcount{n:026x}", "From": f"whatsapp:+5511700{n % 25:05d}",
                    "To": "whatsapp:+14155238886", "Body": "Hello", "NumMedia": "0"}  # fmt: skip
            signature = whatsapp.sign(token, "http://localhost" + PATH, form)
            client.post(PATH, data=form, headers={"X-Twilio-Signature": signature})
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return len(seen) / count


def run(stores: Stores, sizes: Sizes) -> dict[str, Any]:
    stores.empty()
    base = floor(stores, sizes)
    stores.empty()
    full = desk(stores, sizes)
    return {
        "floor": base,
        "desk": full,
        "ratio": full["rate"] / base["rate"] if base["rate"] else 0.0,
        "statements_per_message": statements_per_message(stores),
        "connections": CONNECTIONS,
        "seconds": sizes.ingest_seconds,
    }
