"""Login throttling: after repeated failures an account (or an address) waits a while.

Counted in the database (LoginFailure), not in Redis: people can log in and read the
desk while Redis is down, and a login page that needed Redis would lock everyone out
exactly when a supervisor most needs to look."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import LoginFailure

FAILURES_PER_ACCOUNT = 5
FAILURES_PER_ADDRESS = 20
WINDOW_SECONDS = 15 * 60


def _keys(email: str, address: str) -> list[tuple[str, int]]:
    # Hashed: the table never holds the email in clear.
    who = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return [
        (f"account:{who}", FAILURES_PER_ACCOUNT),
        (f"address:{address[:64]}", FAILURES_PER_ADDRESS),
    ]


def wait_seconds(session: Session, email: str, address: str, now: datetime) -> int:
    """0 when a login may be tried now; else how long until it may."""
    limits = dict(_keys(email, address))
    rows = session.execute(
        select(LoginFailure.key, LoginFailure.failures, LoginFailure.window_ends_at).where(
            LoginFailure.key.in_(limits), LoginFailure.window_ends_at > now
        )
    )
    waits = [0]
    for key, failures, ends in rows:
        if failures >= limits[key]:
            waits.append(max(1, int((ends - now).total_seconds())))
    return max(waits)


def failed(session: Session, email: str, address: str, now: datetime) -> None:
    """Count a failure for the account and the address, each in its window (a new window
    when the last one is over); windows over are cleared. Committed by the caller. Counted
    in the database's own arithmetic, so failures tried at once all count."""
    session.execute(delete(LoginFailure).where(LoginFailure.window_ends_at <= now))
    ends = now + timedelta(seconds=WINDOW_SECONDS)
    for key, _limit in _keys(email, address):
        counted = update(LoginFailure).where(LoginFailure.key == key)
        counted = counted.values(failures=LoginFailure.failures + 1)
        if session.execute(counted).rowcount:  # type: ignore[attr-defined]
            continue
        try:
            with session.begin_nested():
                session.add(LoginFailure(key=key, failures=1, window_ends_at=ends))
        except IntegrityError:  # another failure for the same key inserted it meanwhile
            session.execute(counted)


def succeeded(session: Session, email: str, address: str) -> None:
    """A login that worked starts its account's count again (not its address's)."""
    session.execute(delete(LoginFailure).where(LoginFailure.key == _keys(email, address)[0][0]))
