"""Settings the desk refuses to start with, and the PORT it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from whatsdesk import create_app
from whatsdesk.config import DEFAULT_SECRET_KEY, Config

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "tok-12345"
STRONG_KEY = "a-long-random-secret-key-nobody-can-guess-0123456789"


@pytest.fixture
def local(tmp_path: Path) -> Config:
    """Simulator mode with the default secret key, on a database of this test's own."""
    return Config(
        database_url=f"sqlite:///{tmp_path / 'whatsdesk.db'}",
        redis_url="redis://127.0.0.1:6379/0",
        redis_url_is_private=False,
    )


def test_default_secret_key_is_refused_when_twilio_credentials_are_set(local: Config) -> None:
    config = local.with_(twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN)

    with pytest.raises(RuntimeError, match="SECRET_KEY must be set") as refused:
        create_app(config)

    assert "Twilio credentials" in str(refused.value)


def test_default_secret_key_is_refused_in_production(local: Config) -> None:
    config = local.with_(
        production=True, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN
    )

    with pytest.raises(RuntimeError, match="SECRET_KEY must be set") as refused:
        create_app(config)

    assert "production" in str(refused.value)


def test_production_in_simulator_mode_is_refused(local: Config) -> None:
    config = local.with_(production=True, secret_key=STRONG_KEY)

    with pytest.raises(
        RuntimeError,
        match="WHATSDESK_ENV=production needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
    ):
        create_app(config)


def test_production_without_a_public_url_is_refused(local: Config) -> None:
    """Without PUBLIC_URL no send asks Twilio for status callbacks: no delivery ticks, and a
    reply that failed after Twilio took it would go unnoticed."""
    config = local.with_(
        production=True,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        secret_key=STRONG_KEY,
    )

    with pytest.raises(RuntimeError, match="WHATSDESK_ENV=production needs PUBLIC_URL"):
        create_app(config)

    assert create_app(config.with_(public_url="https://desk.example.com")).name


def test_account_sid_without_auth_token_is_refused(local: Config) -> None:
    config = local.with_(twilio_account_sid=ACCOUNT_SID, secret_key=STRONG_KEY)

    with pytest.raises(RuntimeError, match="TWILIO_AUTH_TOKEN is required with TWILIO_ACCOUNT_SID"):
        create_app(config)


def test_simulator_mode_with_the_default_key_starts(local: Config) -> None:
    assert local.simulator and local.secret_key == DEFAULT_SECRET_KEY

    app = create_app(local)

    assert app.config["SECRET_KEY"] == DEFAULT_SECRET_KEY
    assert app.test_client().get("/login").status_code == 200


def test_port_is_read_from_the_environment_and_defaults_to_5000() -> None:
    assert Config.from_env({}).port == 5000
    assert Config.from_env({"PORT": ""}).port == 5000
    assert Config.from_env({"PORT": " 8080 "}).port == 8080
    assert Config.from_env({"PORT": "65535"}).port == 65535


@pytest.mark.parametrize("raw", ["http", "80a", "-1", "0", "65536", "5000.0", "²"])
def test_port_that_is_not_a_tcp_port_number_is_refused_naming_it(raw: str) -> None:
    with pytest.raises(RuntimeError) as refused:
        Config.from_env({"PORT": raw})

    assert str(refused.value) == f"PORT must be a TCP port number, not {raw!r}"


def test_sweep_interval_is_read_from_the_environment_and_checked() -> None:
    assert Config.from_env({}).sweep_seconds == 5
    assert Config.from_env({"SWEEP_INTERVAL": "2"}).sweep_seconds == 2
    for bad in ("0", "abc", "4000"):
        with pytest.raises(RuntimeError, match="SWEEP_INTERVAL must be whole seconds"):
            Config.from_env({"SWEEP_INTERVAL": bad})


def test_trusted_proxies_is_read_from_the_environment_and_checked() -> None:
    assert Config.from_env({}).trusted_proxies == 0
    assert Config.from_env({"TRUSTED_PROXIES": "2"}).trusted_proxies == 2
    for bad in ("-1", "yes", "6"):
        with pytest.raises(RuntimeError, match="TRUSTED_PROXIES must be whole from 0 to 5"):
            Config.from_env({"TRUSTED_PROXIES": bad})


def test_session_idle_hours_is_read_from_the_environment_and_checked() -> None:
    assert Config.from_env({}).session_idle_hours == 12
    assert Config.from_env({"SESSION_IDLE_HOURS": "8"}).session_idle_hours == 8
    for bad in ("0", "half", "721"):
        with pytest.raises(RuntimeError, match="SESSION_IDLE_HOURS must be whole hours from 1"):
            Config.from_env({"SESSION_IDLE_HOURS": bad})


def test_a_metrics_token_that_cannot_travel_in_a_header_is_refused_at_start() -> None:
    assert Config.from_env({"METRICS_TOKEN": " s3cret "}).metrics_token == "s3cret"
    for bad in ("two words", "é-token", "tab\tin"):
        with pytest.raises(RuntimeError, match="METRICS_TOKEN must be printable ASCII"):
            Config.from_env({"METRICS_TOKEN": bad})
