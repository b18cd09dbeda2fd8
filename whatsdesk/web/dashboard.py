"""Supervisors' live dashboard: SLA counters and charts, refreshed in place every 5 s."""

from __future__ import annotations

from flask import Blueprint, make_response, render_template, request
from werkzeug.wrappers import Response

from .. import dashboard, get_session, sla
from ..db import utcnow
from ..durations import humanize
from .roles import supervisor_required

bp = Blueprint("dashboard", __name__)


@bp.get("/dashboard")
@supervisor_required
def index() -> Response:
    """The page; with ?fragment=1 only its body, which static/dashboard.js swaps in."""
    board = dashboard.build(get_session(), utcnow())
    fragment = bool(request.args.get("fragment"))
    answer = make_response(
        render_template(
            "_dashboard_body.html" if fragment else "dashboard.html",
            board=board,
            states=dashboard.STATES,
            state_labels=sla.STATE_LABELS,
            humanize=humanize,
        )
    )
    answer.headers["Cache-Control"] = "no-store"
    return answer
