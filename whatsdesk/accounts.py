"""Staff accounts: creation with validation, and password checks."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from .models import ROLES, BusinessCalendar, User
from .whatsapp import E164_RE

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 8
# Spent on unknown emails too, so timing does not tell which accounts exist.
_DUMMY_HASH = generate_password_hash("whatsdesk-timing-equaliser")


class AccountError(ValueError):
    """The account cannot be created as asked; the text says why."""


def whatsapp_address(number: str) -> str:
    """'+5511999990000' → 'whatsapp:+5511999990000', refusing what is not E.164."""
    number = number.strip().removeprefix("whatsapp:")
    if not E164_RE.match(number):
        raise AccountError(f"WhatsApp number {number!r} is not in E.164 form, e.g. +14155550100")
    return f"whatsapp:{number}"


def create_user(
    session: Session,
    *,
    name: str,
    email: str,
    role: str,
    password: str,
    whatsapp: str | None,
    now: datetime,
) -> User:
    """A new staff account; AccountError on anything a person must correct."""
    email = email.strip().lower()
    if not name.strip():
        raise AccountError("name must not be empty")
    if not EMAIL_RE.match(email):
        raise AccountError(f"{email!r} is not an email address")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    address = whatsapp_address(whatsapp) if whatsapp else None
    if find_by_email(session, email) is not None:
        raise AccountError(f"an account with email {email} already exists")
    if address and session.scalars(select(User).where(User.whatsapp == address)).first():
        raise AccountError(f"another account already uses WhatsApp {address}")
    user = User(
        name=name.strip(),
        email=email,
        role=role,
        whatsapp=address,
        password_hash=generate_password_hash(password),
        active=True,
        created_at=now,
    )
    session.add(user)
    session.flush()
    return user


def set_shift(session: Session, email: str, calendar_key: str | None) -> User:
    """When the person works: a calendar's opening hours, or None for any time. Reassignment
    to "the least-loaded agent on shift" picks only people on shift."""
    user = find_by_email(session, email)
    if user is None:
        raise AccountError(f"no account with email {email}")
    calendar = None
    if calendar_key:
        calendar = session.scalars(
            select(BusinessCalendar).where(BusinessCalendar.key == calendar_key)
        ).first()
        if calendar is None:
            raise AccountError(
                f"no calendar {calendar_key!r}: define it under `calendars:` in the pipeline file"
            )
    user.shift_calendar = calendar
    return user


def find_by_email(session: Session, email: str) -> User | None:
    return session.scalars(
        select(User).where(func.lower(User.email) == email.strip().lower())
    ).first()


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The active user with this email and password, or None."""
    user = find_by_email(session, email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not user.active or not check_password_hash(user.password_hash, password):
        return None
    return user
