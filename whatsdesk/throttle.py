"""Login throttling: after repeated failures an account (or an address) waits a while.

Counted in the database (LoginFailure), not in Redis: people can log in and read the
desk while Redis is down, and a login page that needed Redis would lock everyone out
exactly when a supervisor most needs to look.

Each try is counted before its password is checked, and committed at once: tries sent in
parallel all count, so no more than the limit are ever checked. A try refused, or a login
that works, takes its try back: only failed passwords count."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import LoginFailure

# An account from one address: someone guessing elsewhere does not lock the person out
# where they are; an account from anywhere: guesses spread over many addresses; an address.
FAILURES_PER_ACCOUNT = 5
FAILURES_PER_ACCOUNT_ANYWHERE = 50
FAILURES_PER_ADDRESS = 20
WINDOW_SECONDS = 15 * 60
EXPIRED_CLEARED = 100  # windows over, cleared by each try (those no other try holds)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _keys(email: str, address: str) -> list[tuple[str, int]]:
    """The counts a try adds to, with their limits: the account at this address first."""
    # Hashed: the table never holds the email in clear.
    who = _hash(email.strip().lower())
    return [
        (f"account-at:{_hash(who + ' ' + address)}", FAILURES_PER_ACCOUNT),
        (f"account:{who}", FAILURES_PER_ACCOUNT_ANYWHERE),
        (f"address:{address[:64]}", FAILURES_PER_ADDRESS),
    ]


def attempt(session: Session, email: str, address: str, now: datetime) -> int:
    """Count a try for the account and the address, each in its window (a new window when
    the last one is over). 0: the password may be checked; else the seconds to wait, when
    an earlier try used up a limit. The caller commits at once."""
    ends = now + timedelta(seconds=WINDOW_SECONDS)
    over = LoginFailure.window_ends_at <= now
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    waits = [0]
    for key, limit in _keys(email, address):
        counted = insert(LoginFailure).values(key=key, failures=1, window_ends_at=ends)
        counted = counted.on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={
                "failures": case((over, 1), else_=LoginFailure.failures + 1),
                "window_ends_at": case((over, ends), else_=LoginFailure.window_ends_at),
            },
        ).returning(LoginFailure.failures, LoginFailure.window_ends_at)
        failures, window_ends = session.execute(counted).one()
        if failures > limit:
            waits.append(max(1, int((window_ends - now).total_seconds())))
    if max(waits):  # refused, its password unchecked: the try counts for nothing
        _take_back(session, [key for key, _limit in _keys(email, address)])
    _clear_expired(session, now)
    return max(waits)


def succeeded(session: Session, email: str, address: str) -> None:
    """The login worked: the account's count at this address starts again, and its try is
    taken back from the others (a team behind one address does not lock itself out by
    logging in; guesses made elsewhere keep counting)."""
    (here, _), *others = _keys(email, address)
    session.execute(delete(LoginFailure).where(LoginFailure.key == here))
    _take_back(session, [key for key, _limit in others])


def _take_back(session: Session, keys: list[str]) -> None:
    session.execute(
        update(LoginFailure)
        .where(LoginFailure.key.in_(keys), LoginFailure.failures > 0)
        .values(failures=LoginFailure.failures - 1)
    )


def _clear_expired(session: Session, now: datetime) -> None:
    """Forget some windows that are over, skipping any another try holds (no waiting on it)."""
    expired = (
        select(LoginFailure.key)
        .where(LoginFailure.window_ends_at <= now)
        .limit(EXPIRED_CLEARED)
        .with_for_update(skip_locked=True)
    )
    session.execute(delete(LoginFailure).where(LoginFailure.key.in_(expired)))
