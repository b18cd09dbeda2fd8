"""GET /healthz: 200 when the database and Redis answer, 503 otherwise (for monitors).
GET /readyz: 200 while the desk can take messages: the database answers and a pipeline is
loaded (for a load balancer in front of the web). Redis is not asked: with Redis down
messages are still stored, and the sweep arms their timers and sends once Redis answers;
an unreachable Redis would also make the probe wait for its timeouts."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select, text

from .. import current_alarms, get_session
from ..models import Pipeline

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return _answer({"database": _database(), "redis": _check(lambda: current_alarms().ping())})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    checks = {"database": _database()}
    if checks["database"] == "ok":
        loaded = get_session().scalar(select(Pipeline.id).limit(1)) is not None
        checks["pipeline"] = "ok" if loaded else "none loaded"
    return _answer(checks)


def _answer(checks: dict[str, str]) -> ResponseReturnValue:
    good = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if good else "unavailable", **checks), 200 if good else 503


def _database() -> str:
    return _check(lambda: get_session().execute(text("SELECT 1")))


def _check(probe) -> str:  # type: ignore[no-untyped-def]
    try:
        probe()
    except Exception as exc:  # any failure to answer is "down", with its kind for the operator
        return f"down ({type(exc).__name__})"
    return "ok"
