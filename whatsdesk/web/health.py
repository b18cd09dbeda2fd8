"""GET /healthz: 200 when the database and Redis answer, 503 otherwise (for monitors).
GET /readyz: 200 while the desk can take messages, i.e. the database answers (for a load
balancer in front of the web: with Redis down messages are still stored, and the sweep
arms their timers and sends once Redis answers)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from .. import current_alarms, get_session

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks = _checks()
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    checks = _checks()
    if checks["database"] != "ok":
        return jsonify(status="unavailable", **checks), 503
    return jsonify(status="ok" if checks["redis"] == "ok" else "degraded", **checks), 200


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
