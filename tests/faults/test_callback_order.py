"""Twilio's status callbacks in every order: the final status is the furthest one reached.
(Quick: runs in the normal suite.)"""

from __future__ import annotations

import itertools
import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from whatsdesk.config import Config
from whatsdesk.db import utcnow
from whatsdesk.models import Message

from conftest import fresh, signed_post

DELIVERED = ("queued", "sent", "delivered", "read")
FAILED = ("queued", "sent", "failed")


def status_form(sid: str, status: str) -> dict[str, str]:
    form = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "0" * 32}
    if status == "failed":
        form["ErrorCode"] = "30008"
    return form


@pytest.mark.parametrize(
    ("states", "final"),
    [(order, "read") for order in itertools.permutations(DELIVERED)]
    + [(order, "failed") for order in itertools.permutations(FAILED)],
)
def test_status_callbacks_in_any_order_end_at_the_furthest_status(
    client: FlaskClient, config: Config, session: Session, states: tuple[str, ...], final: str
) -> None:
    now = utcnow()
    message = Message(
        sid="SM" + uuid.uuid4().hex,
        direction="out",
        to_address="whatsapp:+5511999990000",
        from_address="whatsapp:+14155238886",
        body="Hi!",
        status="sending",
        media=[],
        created_at=now,
        updated_at=now,
    )
    session.add(message)
    session.commit()

    for state in states:
        answer = signed_post(client, config, "/twilio/status", status_form(str(message.sid), state))
        assert answer.status_code == 200  # type: ignore[attr-defined]

    fresh(session)
    stored = session.get(Message, message.id)
    assert stored is not None and stored.status == final
