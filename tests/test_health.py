"""GET /healthz and /readyz: what a monitor and a load balancer see."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from whatsdesk import create_app
from whatsdesk.config import Config

from conftest import CLOSED_DATABASE, CLOSED_REDIS


@pytest.fixture(params=["postgresql-closed-port", "sqlite-impossible-path"])
def dead_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL nothing answers at: a closed port, or a file no one can create."""
    if request.param == "postgresql-closed-port":
        return CLOSED_DATABASE
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # a file where the database's folder should be (root-proof)
    return f"sqlite:///{blocker}/whatsdesk/whatsdesk.db"


def state(client: FlaskClient, path: str) -> tuple[int, dict[str, str]]:
    answer = client.get(path)
    return answer.status_code, answer.get_json()


def test_healthy_when_database_and_redis_answer(client: FlaskClient) -> None:
    assert state(client, "/healthz") == (200, {"status": "ok", "database": "ok", "redis": "ok"})


def test_unavailable_when_redis_does_not_answer(config: Config) -> None:
    client = create_app(config.with_(redis_url=CLOSED_REDIS)).test_client()
    assert state(client, "/healthz") == (
        503,
        {
            "status": "unavailable",
            "database": "ok",
            "redis": "down (ConnectionError)",
        },
    )


def test_unavailable_when_the_database_does_not_answer(config: Config, dead_database: str) -> None:
    client = create_app(config.with_(database_url=dead_database)).test_client()
    assert state(client, "/healthz") == (
        503,
        {
            "status": "unavailable",
            "database": "down (OperationalError)",
            "redis": "ok",
        },
    )


def test_unavailable_when_neither_answers(config: Config) -> None:
    broken = config.with_(redis_url=CLOSED_REDIS, database_url=CLOSED_DATABASE)
    answer = create_app(broken).test_client().get("/healthz")
    assert answer.status_code == 503
    data = answer.get_json()
    assert data["status"] == "unavailable"
    assert data["database"].startswith("down") and data["redis"].startswith("down")


def test_health_needs_no_login(client: FlaskClient) -> None:
    answer = client.get("/healthz", follow_redirects=False)
    assert answer.status_code == 200
    assert answer.mimetype == "application/json"


def test_ready_while_the_database_answers_and_a_pipeline_is_loaded(
    client: FlaskClient, seeded: Config
) -> None:
    assert state(client, "/readyz") == (200, {"status": "ok", "database": "ok", "pipeline": "ok"})


def test_ready_with_redis_down(seeded: Config) -> None:
    """Messages are still taken: a load balancer keeps sending Twilio's webhooks."""
    client = create_app(seeded.with_(redis_url=CLOSED_REDIS)).test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "ok"


def test_not_ready_without_a_pipeline(client: FlaskClient) -> None:
    """The webhook would answer 503: no pipeline says where a conversation goes."""
    assert state(client, "/readyz") == (
        503,
        {
            "status": "unavailable",
            "database": "ok",
            "pipeline": "none loaded",
        },
    )


def test_not_ready_when_the_database_does_not_answer(config: Config, dead_database: str) -> None:
    client = create_app(config.with_(database_url=dead_database)).test_client()
    assert state(client, "/readyz") == (
        503,
        {"status": "unavailable", "database": "down (OperationalError)"},
    )
