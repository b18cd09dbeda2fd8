"""GET /healthz: 200 when the database and Redis answer, 503 otherwise."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from .. import current_alarms, get_session

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks = {
        "database": _check(lambda: get_session().execute(text("SELECT 1"))),
        "redis": _check(lambda: current_alarms().ping()),
    }
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503


def _check(probe) -> str:  # type: ignore[no-untyped-def]
    try:
        probe()
    except Exception as exc:  # any failure to answer is "down", with its kind for the operator
        return f"down ({type(exc).__name__})"
    return "ok"
