"""The stack's floor: a bare Flask endpoint that inserts one row and enqueues one job, run by
the same gunicorn command line as the desk (`bench.floor_app:app` instead of `app:app`)."""

from __future__ import annotations

import os

from flask import Flask, Response, request
from redis import Redis
from rq import Queue
from sqlalchemy import text

from whatsdesk.db import get_engine

app = Flask(__name__)
_engine = get_engine(os.environ["DATABASE_URL"])
_queue = Queue("bench-floor", connection=Redis.from_url(os.environ["REDIS_URL"]))
_INSERT = text("INSERT INTO bench_floor (sid, body) VALUES (:sid, :body)")


def noop(sid: str) -> str:
    """The job the floor enqueues (no worker takes it during the run)."""
    return sid


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.post("/twilio/whatsapp")
def floor() -> Response:
    sid = request.form.get("MessageSid", "")
    with _engine.begin() as conn:
        conn.execute(_INSERT, {"sid": sid, "body": request.form.get("Body", "")})
    _queue.enqueue("bench.floor_app.noop", sid)
    return Response("<Response/>", mimetype="text/xml")
