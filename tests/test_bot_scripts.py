"""The bot, as conversations written down as data: tests/scripts/*.yaml.

Each script loads a configuration file, then plays its steps in order, each at its own
instant: a customer writes, an agent answers, a card is resolved. After each step it checks
exactly what the bot said to that customer (nothing, when `replies: []`) and the state of
the customer's conversation."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from whatsdesk import accounts, desk, pipeline_store, pipelines, whatsapp
from whatsdesk.config import Config
from whatsdesk.models import Card, Contact, Message, User

from conftest import PASSWORD, STAFF, inbound_form

SCRIPTS = sorted((Path(__file__).parent / "scripts").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    script: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return script


def instant(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    assert moment.tzinfo is not None, f"{value}: give the instant's UTC offset"
    return moment


def card_of(session: Session, phone: str) -> Card | None:
    return session.scalars(
        select(Card)
        .join(Contact, Contact.id == Card.contact_id)
        .where(Contact.address == f"whatsapp:{phone}")
        .order_by(Card.id.desc())
        .limit(1)
    ).first()


def agent(session: Session, email: str = "ana@example.com") -> User:
    return session.scalars(select(User).where(User.email == email)).one()


def play(session: Session, step: dict[str, Any], now: datetime) -> list[str]:
    """Carry out one step; what the bot (not an agent) sent the customer during it."""
    phone = str(step["from"] if "from" in step else step["customer"])
    before = session.scalar(select(Message.id).order_by(Message.id.desc()).limit(1)) or 0
    if "body" in step and "from" in step:
        form = inbound_form(phone=phone, body=str(step["body"]), name=step.get("name", "Maria"))
        if "button" in step:
            form["ButtonPayload"] = str(step["button"])
        desk.receive_message(session, whatsapp.parse_inbound(form), now)
    elif step.get("do") == "agent_reply":
        card = card_of(session, phone)
        assert card is not None
        desk.agent_reply(session, card.id, agent(session), str(step.get("text", "Done!")), now)
    elif step.get("do") == "menu_timeout":
        card = card_of(session, phone)
        assert card is not None
        desk.menu_timeout(session, card.id, now)
    elif step.get("do") == "resolve":
        card = card_of(session, phone)
        assert card is not None
        desk.resolve(session, card.id, now)
    else:
        raise AssertionError(
            f"a step needs from+body, or do: agent_reply/resolve/menu_timeout: {step}"
        )
    session.commit()
    return list(
        session.scalars(
            select(Message.body)
            .where(
                Message.id > before,
                Message.direction == "out",
                Message.to_address == f"whatsapp:{phone}",
                Message.user_id.is_(None),
            )
            .order_by(Message.id)
        )
    )


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_conversation_script(path: Path, config: Config, session: Session) -> None:
    script = load(path)
    start = instant(script["steps"][0]["at"])
    for name, email, role, phone in STAFF:
        accounts.create_user(
            session, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD, now=start
        )
    pipeline_store.load(session, pipelines.parse(script["config"]), start)
    session.commit()
    for number, step in enumerate(script["steps"], start=1):
        said = play(session, step, instant(step["at"]))
        where = f"{path.name} step {number}"
        if "replies" in step:
            assert said == step["replies"], where
        expected = step.get("card")
        if expected is not None:
            card = card_of(session, str(step.get("from") or step.get("customer")))
            assert card is not None, where
            seen = {
                "status": card.status,
                "stage": card.stage.key,
                "pipeline": card.pipeline.key,
                "follows_earlier": card.previous_card_id is not None,
                "opted_out": card.contact.opted_out_at is not None,
            }
            assert {k: seen[k] for k in expected} == expected, where
        if step.get("cards") is not None:
            phone = str(step.get("from") or step.get("customer"))
            count = session.scalars(
                select(Card.id).join(Contact).where(Contact.address == f"whatsapp:{phone}")
            ).all()
            assert len(count) == step["cards"], where
