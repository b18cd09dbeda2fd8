"""Desk-wide settings kept in the database, changed without code."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from .models import Setting
from .pipelines import (
    CannedReplySpec,
    CustomerTemplateSpec,
    MenuSpec,
    NotificationsSpec,
    RepliesSpec,
)

NOTIFICATIONS = "notifications"
REPLIES = "replies"
MENU = "menu"


def get(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(Setting, key)
    return default if row is None else row.value


def put(session: Session, key: str, value: Any, now: datetime) -> None:
    row = session.get(Setting, key)
    if row is None:
        row = Setting(key=key)
        session.add(row)
    row.value, row.updated_at = value, now


def notifications(session: Session) -> NotificationsSpec:
    """How staff alerts go out; the defaults until a configuration file sets them."""
    stored = get(session, NOTIFICATIONS) or {}
    return NotificationsSpec(
        digest_seconds=int(stored.get("digest_seconds", NotificationsSpec.digest_seconds)),
        template_sid=stored.get("template_sid"),
        template_variables=dict(stored.get("template_variables") or {}),
    )


def save_notifications(session: Session, spec: NotificationsSpec, now: datetime) -> None:
    value = {
        "digest_seconds": spec.digest_seconds,
        "template_sid": spec.template_sid,
        "template_variables": spec.template_variables,
    }
    put(session, NOTIFICATIONS, value, now)


def replies(session: Session) -> RepliesSpec:
    """Canned replies and the approved templates agents may send customers."""
    stored = get(session, REPLIES) or {}
    return RepliesSpec(
        canned=[CannedReplySpec(**c) for c in stored.get("canned", [])],
        templates=[CustomerTemplateSpec(**t) for t in stored.get("templates", [])],
    )


def save_replies(session: Session, spec: RepliesSpec, now: datetime) -> None:
    value = {"canned": [asdict(c) for c in spec.canned]}
    value["templates"] = [asdict(t) for t in spec.templates]
    put(session, REPLIES, value, now)


def menu(session: Session) -> MenuSpec | None:
    """The team menu for new conversations, or None when the number serves one pipeline."""
    stored = get(session, MENU)
    return MenuSpec(**stored) if stored and len(stored.get("pipelines", [])) >= 2 else None


def save_menu(session: Session, spec: MenuSpec, now: datetime) -> None:
    value = asdict(spec)
    value.pop("line")
    put(session, MENU, value, now)
