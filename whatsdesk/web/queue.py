"""The agents' queue: open conversations, the longest-waiting customer first."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import login_required
from werkzeug.wrappers import Response

from .. import desk, get_session
from ..db import utcnow
from ..durations import humanize
from ..sla import STATE_LABELS

bp = Blueprint("queue", __name__)


@bp.get("/")
def home() -> Response:
    return redirect(url_for("queue.index"))


@bp.get("/queue")
@login_required
def index() -> str:
    now = utcnow()
    rows = desk.waiting_queue(get_session(), now)
    template = "_queue_rows.html" if request.args.get("fragment") else "queue.html"
    return render_template(
        template, rows=rows, now=now, humanize=humanize, state_labels=STATE_LABELS
    )
