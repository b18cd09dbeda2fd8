"""PostgreSQL restarted during webhook traffic: 503 while it is down, nothing half-written,
and the running processes recover by themselves."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from whatsdesk import whatsapp
from whatsdesk.config import Config
from whatsdesk.db import get_engine, session_factory
from whatsdesk.models import Card, Contact, Message, StageVisit

from .harness import (
    Desk,
    ListingTwilio,
    PrivatePostgres,
    notification_key,
    private_postgres_or_skip,
    private_redis,
)
from conftest import inbound_form, seed

pytestmark = pytest.mark.faults
CUSTOMERS = 60


@pytest.fixture
def own_cluster() -> Iterator[PrivatePostgres]:
    """A cluster of this test's own: it is stopped and started under the desk."""
    postgres = private_postgres_or_skip()
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.destroy()


def post(base: str, token: str, form: dict[str, str]) -> tuple[int, str | None]:
    """One signed POST as Twilio makes it: the status and any Retry-After."""
    url = base + "/twilio/whatsapp"
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"X-Twilio-Signature": whatsapp.sign(token, url, form)},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return int(answer.status), answer.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        return int(error.code), error.headers.get("Retry-After")


def test_postgres_restarted_under_webhook_traffic_answers_503_and_loses_nothing(
    own_cluster: PrivatePostgres, tmp_path: Path
) -> None:
    with private_redis() as redis_server:
        config = Config(
            database_url=own_cluster.new_database(),
            redis_url=redis_server.url,
            redis_url_is_private=False,
            secret_key="faults-secret",
        )
        seed(config.database_url)
        get_engine(config.database_url).dispose()
        answers: list[tuple[int, str | None]] = []
        with ListingTwilio() as twilio, Desk(config, twilio, tmp_path) as desk:
            for name in ("web", "worker", "sweep"):
                desk.start(name)
            # Down from the 3rd second to the 10th, while customers keep writing.
            outage = threading.Timer(3, own_cluster.stop)
            back = threading.Timer(10, own_cluster.start)
            outage.start()
            back.start()
            for n in range(CUSTOMERS):
                form = inbound_form(phone=f"+55116{n:08d}", name=f"Customer {n}")
                # Twilio retries a 503; here until it is taken.
                for _ in range(60):
                    answers.append(post(desk.webs[0], twilio.auth_token, form))
                    if answers[-1][0] == 200:
                        break
                    time.sleep(0.5)
                time.sleep(0.1)
            back.join()
            twilio.wait_for(lambda forms: len(forms) >= CUSTOMERS, timeout=90)
            time.sleep(2 * config.sweep_seconds + 1)

        statuses = Counter(status for status, _ in answers)
        assert set(statuses) == {200, 503}, statuses
        assert statuses[200] == CUSTOMERS
        assert all(after == "5" for status, after in answers if status == 503)
        assert answers[-1][0] == 200  # recovered without a restart of the web process

        with session_factory(config.database_url)() as s:
            assert s.scalar(select(func.count()).select_from(Contact)) == CUSTOMERS
            assert s.scalar(select(func.count()).select_from(Card)) == CUSTOMERS
            assert s.scalar(select(func.count()).select_from(StageVisit)) == CUSTOMERS
            per_card = Counter(
                tuple(row) for row in s.execute(select(Message.card_id, Message.direction))
            )
            assert set(per_card.values()) == {1}  # one message in, one acknowledgement out
            assert len(per_card) == 2 * CUSTOMERS
        keys = Counter(notification_key(form) for form in twilio.messages)
        assert len(keys) == CUSTOMERS and set(keys.values()) == {1}
