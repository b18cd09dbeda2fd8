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
    checks = _checks()
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    pipelines: list[int] = []
    database = _check(lambda: pipelines.extend(get_session().scalars(_ANY_PIPELINE)))
    if database != "ok":
        return jsonify(status="unavailable", database=database), 503
    if not pipelines:
        return jsonify(status="unavailable", database="ok", pipeline="none loaded"), 503
    return jsonify(status="ok", database="ok", pipeline="ok"), 200


_ANY_PIPELINE = select(Pipeline.id).limit(1)


def _checks() -> dict[str, str]:
    return {
        "database": _check(lambda: get_session().execute(text("SELECT 1"))),
        "redis": _check(lambda: current_alarms().ping()),
    }


def _check(probe) -> str:  # type: ignore[no-untyped-def]
    try:
        probe()
    except Exception as exc:  # any failure to answer is "down", with its kind for the operator
        return f"down ({type(exc).__name__})"
    return "ok"
