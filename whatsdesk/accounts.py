"""Staff accounts: creation and changes with validation (each change audited), and password
checks. Accounts are deactivated, never deleted: cards, notes and alerts point at people."""

from __future__ import annotations

import hmac
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from . import audit
from .models import ROLES, BusinessCalendar, Card, User
from .whatsapp import E164_RE

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 8
# Spent on unknown emails too, so timing does not tell which accounts exist.
_DUMMY_HASH = generate_password_hash("whatsdesk-timing-equaliser")


# The audit log's action for every change to a staff account.
AUDIT_ACTION = "staff"


class AccountError(ValueError):
    """The account cannot be created or changed as asked; the text says why."""


def whatsapp_address(number: str) -> str:
    """'+5511999990000' → 'whatsapp:+5511999990000', refusing what is not E.164."""
    number = number.strip().removeprefix("whatsapp:")
    if not E164_RE.match(number):
        raise AccountError(f"WhatsApp number {number!r} is not in E.164 form, e.g. +14155550100")
    return f"whatsapp:{number}"


# What the columns hold.
MAX_NAME, MAX_EMAIL = User.__table__.c.name.type.length, User.__table__.c.email.type.length


def _name_and_email(name: str, email: str) -> tuple[str, str]:
    """A person's name and email as stored; AccountError on what the columns cannot hold."""
    name, email = name.strip(), email.strip().lower()
    if not name:
        raise AccountError("name must not be empty")
    if len(name) > MAX_NAME or "\x00" in name:
        raise AccountError(f"name must be at most {MAX_NAME} characters, without NUL characters")
    if len(email) > MAX_EMAIL:
        raise AccountError(f"email must be at most {MAX_EMAIL} characters")
    if not EMAIL_RE.match(email) or "\x00" in email:
        raise AccountError(f"{email!r} is not an email address")
    return name, email


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
    name, email = _name_and_email(name, email)
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
        name=name,
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
    # The hash is checked first, whatever the account: a deactivated one answering sooner
    # would tell who has (had) an account.
    if not check_password_hash(user.password_hash, password) or not user.active:
        return None
    return user


def staff(session: Session) -> list[User]:
    """Every account: active people first, then by name."""
    return list(session.scalars(select(User).order_by(User.active.desc(), User.name, User.id)))


def profile(user: User) -> dict[str, Any]:
    """What the audit log keeps of an account: never its password or hash."""
    return {
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "whatsapp": user.whatsapp,
        "shift_calendar": user.shift_calendar.key if user.shift_calendar else None,
        "can_edit_settings": user.can_edit_settings,
        "active": user.active,
        **alerts_state(user),
    }


def alerts_state(user: User) -> dict[str, str]:
    """Whether alerts reach the account's WhatsApp, as the audit log shows it."""
    return {"alerts": "on" if user.alerts_stopped_at is None else "stopped by STOP"}


def add_user(
    session: Session,
    by: User | None,
    now: datetime,
    *,
    name: str,
    email: str,
    role: str,
    password: str,
    whatsapp: str | None,
    shift_calendar: str | None = None,
    can_edit_settings: bool = False,
) -> User:
    """create_user, with a shift and a settings grant, audited."""
    calendar = _calendar(session, shift_calendar)
    user = create_user(
        session, name=name, email=email, role=role, password=password, whatsapp=whatsapp, now=now
    )
    user.shift_calendar = calendar
    user.can_edit_settings = can_edit_settings and role == "supervisor"
    session.flush()
    audit.record(session, by, AUDIT_ACTION, user.email, None, profile(user), now)
    return user


def update_user(
    session: Session,
    user: User,
    by: User | None,
    now: datetime,
    *,
    name: str,
    email: str,
    role: str,
    whatsapp: str | None,
    shift_calendar: str | None,
    can_edit_settings: bool,
) -> User:
    """Change an account's details and role, audited; AccountError (nothing changed) on
    anything a person must correct, and for demoting the last active admin."""
    name, email = _name_and_email(name, email)
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    address = whatsapp_address(whatsapp) if whatsapp and whatsapp.strip() else None
    other = find_by_email(session, email)
    if other is not None and other.id != user.id:
        raise AccountError(f"another account already uses email {email}")
    holder = _whatsapp_holder(session, address, user) if address else None
    if holder is not None:
        inactive = "" if holder.active else ", inactive"
        raise AccountError(
            f"WhatsApp {address} already belongs to {holder.name} ({holder.email}{inactive})"
        )
    calendar = _calendar(session, shift_calendar)
    if user.is_admin and role != "admin" and user.active and _last_admin(session, user):
        raise AccountError(
            f"{user.name} is the last active admin: make someone else an admin first"
        )
    before = profile(user)
    if address != user.whatsapp:
        user.alerts_stopped_at = None  # a STOP was the old number's, not the new one's
    user.name, user.email, user.role, user.whatsapp = name, email, role, address
    user.shift_calendar = calendar
    user.can_edit_settings = can_edit_settings and role == "supervisor"
    session.flush()
    audit.record(session, by, AUDIT_ACTION, user.email, before, profile(user), now)
    return user


def set_password(
    session: Session, user: User, by: User | None, password: str, now: datetime
) -> None:
    """A new password (set by an admin, or reset), audited without the password itself."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = generate_password_hash(password)
    end_sessions(user)  # whoever held the old password's session is logged out
    audit.record(session, by, AUDIT_ACTION, user.email, {}, {"password": "changed"}, now)


def start_session(user: User) -> None:
    """Before logging the person in: their sessions' token, made on their first login."""
    if user.session_token is None:
        end_sessions(user)


def end_sessions(user: User) -> None:
    """Every session the person is logged in with ends (its cookie names the old token)."""
    user.session_token = secrets.token_urlsafe(32)


def session_user(session: Session, session_id: str) -> User | None:
    """The active person a session's id ("<user id>:<token>") names, if the token is still
    theirs."""
    user_id, _, token = session_id.partition(":")
    if not (user_id.isascii() and user_id.isdigit()) or not token:
        return None
    user = session.get(User, int(user_id))
    if user is None or not user.active or user.session_token is None:
        return None
    return user if hmac.compare_digest(user.session_token, token) else None


def deactivate(session: Session, user: User, by: User | None, now: datetime) -> int:
    """The person can no longer log in, is told nothing and picked for nothing; their
    history stays. Returns how many open conversations they still own."""
    if by is not None and user.id == by.id:
        raise AccountError("you cannot deactivate your own account; another admin can")
    if user.is_admin and user.active and _last_admin(session, user):
        raise AccountError(f"{user.name} is the last active admin and cannot be deactivated")
    _set_active(session, user, by, False, now)
    end_sessions(user)
    return open_cards(session, user)


def reactivate(session: Session, user: User, by: User | None, now: datetime) -> None:
    """The person may log in again, as before."""
    _set_active(session, user, by, True, now)


def open_cards(session: Session, user: User) -> int:
    """How many open conversations the person owns."""
    query = select(func.count()).where(Card.owner_id == user.id, Card.status == "open")
    return int(session.scalar(query) or 0)


def _set_active(session: Session, user: User, by: User | None, active: bool, now: datetime) -> None:
    before = profile(user)
    user.active = active
    session.flush()
    audit.record(session, by, AUDIT_ACTION, user.email, before, profile(user), now)


def _last_admin(session: Session, user: User) -> bool:
    """Whether no other active admin would be left without `user`. The active admins' rows
    stay locked until commit (PostgreSQL), so two admins demoting or deactivating each
    other at the same moment cannot both succeed: the second waits for the first, then
    reads who is still an admin."""
    admins = session.scalars(
        select(User.id)
        .where(User.role == "admin", User.active.is_(True))
        .order_by(User.id)  # always the same order: two such checks never deadlock
        .with_for_update()
    )
    return all(admin == user.id for admin in admins)


def _whatsapp_holder(session: Session, address: str, user: User) -> User | None:
    query = select(User).where(User.whatsapp == address, User.id != user.id)
    return session.scalars(query).first()


def _calendar(session: Session, key: str | None) -> BusinessCalendar | None:
    if not key:
        return None
    calendar = session.scalars(select(BusinessCalendar).where(BusinessCalendar.key == key)).first()
    if calendar is None:
        raise AccountError(f"no calendar {key!r}")
    return calendar
