"""Supervisors: every SLA event of the last day, whom it told and whether it arrived."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, render_template
from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from .. import get_session
from ..db import utcnow
from ..models import Card, Message, SlaEvent, StageVisit
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
            .options(  # what the page shows, in a fixed number of queries
                selectinload(SlaEvent.notifications).options(
                    joinedload(Message.user), joinedload(Message.digest)
                ),
                selectinload(SlaEvent.visit).selectinload(StageVisit.card).joinedload(Card.contact),
            )
            .order_by(SlaEvent.fired_at.desc())
            .limit(500)
        )
        .all()
    )
    failed = sum(1 for e in events for m in e.notifications if m.delivery_status in FAILED)
    return render_template("alerts.html", events=events, failed=failed, failed_states=FAILED)
