"""Supervisors: every SLA event of the last day, whom it told and whether it arrived."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, render_template
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .. import get_session
from ..db import utcnow
from ..models import SlaEvent, StageVisit
from .roles import supervisor_required

bp = Blueprint("alerts", __name__)
FAILED = ("failed", "undelivered", "canceled")


@bp.get("/alerts")
@supervisor_required
def index() -> str:
    now = utcnow()
    events = (
        get_session()
        .scalars(
            select(SlaEvent)
            .where(SlaEvent.fired_at >= now - timedelta(days=1))
            .options(
                selectinload(SlaEvent.notifications),
                selectinload(SlaEvent.visit).selectinload(StageVisit.card),
            )
            .order_by(SlaEvent.fired_at.desc())
            .limit(500)
        )
        .all()
    )
    failed = sum(1 for e in events for m in e.notifications if m.delivery_status in FAILED)
    return render_template("alerts.html", events=events, failed=failed, failed_states=FAILED)
