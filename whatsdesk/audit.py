"""The settings audit log: every change, who made it, when, before and after."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from .models import AuditEntry, User


def record(
    session: Session,
    user: User | None,
    action: str,
    target: str,
    before: Any,
    after: Any,
    now: datetime,
) -> AuditEntry | None:
    """Write one entry (in the caller's transaction); nothing when nothing changed."""
    if before == after:
        return None
    entry = AuditEntry(
        at=now,
        user_id=user.id if user is not None else None,
        action=action,
        target=target,
        before=before,
        after=after,
    )
    session.add(entry)
    return entry


def entries(session: Session, limit: int = 200, before_id: int | None = None) -> list[AuditEntry]:
    """The newest entries first; `before_id` pages back through older ones."""
    query = select(AuditEntry).options(joinedload(AuditEntry.user)).order_by(AuditEntry.id.desc())
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list(session.scalars(query.limit(limit)))
