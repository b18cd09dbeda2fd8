"""The agents' queue: open conversations, the longest-waiting customer first."""

from __future__ import annotations

from flask import Blueprint, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select
from werkzeug.wrappers import Response

from .. import desk, get_session, sla
from ..db import utcnow
from ..durations import humanize
from ..models import Pipeline
from ..sla import STATE_LABELS
from . import forms

bp = Blueprint("queue", __name__)
PER_PAGE = 50
FILTER_ARGS = ("pipeline", "stage", "owner", "state")
OWNERS = {"anyone": "Anyone", "mine": "Mine", "unassigned": "Unassigned"}


@bp.get("/")
def home() -> Response:
    return redirect(url_for("queue.index"))


def _number(name: str) -> int | None:
    return forms.count(request.args.get(name), forms.MAX_ID)


@bp.get("/queue")
@login_required
def index() -> str | Response:
    now = utcnow()
    owner = request.args.get("owner", "anyone")
    state = request.args.get("state") or None
    filters = desk.QueueFilter(
        pipeline_id=_number("pipeline"),
        stage_id=_number("stage"),
        owner=owner if owner in OWNERS else "anyone",
        viewer_id=current_user.id,
        state=state if state in STATE_LABELS else None,
    )
    session = get_session()
    page = desk.queue_page(session, now, filters, _number("page") or 1, PER_PAGE)
    fragment = bool(request.args.get("fragment"))
    args = forms.given(request.args, FILTER_ARGS)  # kept in the pager's and refresh's links
    html = render_template(
        "_queue_refresh.html" if fragment else "queue.html",
        rows=page.rows,
        page=page,
        filters=filters,
        args=args,
        pipelines=session.scalars(select(Pipeline).order_by(Pipeline.name)).all(),
        owners=OWNERS,
        states=[sla.ON_TIME, sla.APPROACHING, sla.BREACHED, sla.PAUSED, sla.NO_SLA],
        now=now,
        humanize=humanize,
        state_labels=STATE_LABELS,
        first=(page.page - 1) * page.per_page,
    )
    if not fragment:
        return html
    # The refresh (rows and pager) also updates the page's count of open conversations.
    answer = make_response(html)
    answer.headers["X-Queue-Total"] = str(page.total)
    return answer
