"""Settings, read from the environment in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = PROJECT_ROOT / "instance"
DEFAULT_SECRET_KEY = "dev-insecure-change-me"
DEFAULT_DATABASE_URL = f"sqlite:///{INSTANCE_DIR / 'whatsdesk.db'}"
# The private Redis started by `make run` listens on this socket only.
PRIVATE_REDIS_SOCKET = INSTANCE_DIR / "redis" / "redis.sock"
DEFAULT_REDIS_URL = f"unix://{PRIVATE_REDIS_SOCKET}"
DEFAULT_TWILIO_API_URL = "https://api.twilio.com"
# Far above a Twilio form (1600-char body, ten media URLs), far below anything abusive.
DEFAULT_MAX_CONTENT_LENGTH = 256 * 1024


@dataclass(frozen=True)
class Config:
    """Everything the desk can be told from outside."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    redis_url_is_private: bool = True
    secret_key: str = DEFAULT_SECRET_KEY
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_whatsapp_from: str = "whatsapp:+14155238886"
    twilio_api_url: str = DEFAULT_TWILIO_API_URL
    public_url: str = ""
    queue_name: str = "whatsdesk"
    production: bool = False
    port: int = 5000
    sweep_seconds: int = 5
    # Outbound messages per second per sender number, across every worker (WhatsApp: 80).
    send_rate: float = 80
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH
    # Reverse proxies in front of the web process whose X-Forwarded-* headers are believed.
    trusted_proxies: int = 0
    # A login ends after this many hours without a request from it.
    session_idle_hours: int = 12
    # The bearer token Prometheus scrapes /metrics with; empty: loopback only.
    metrics_token: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Read the settings table of the README from the environment."""
        env = dict(os.environ if environ is None else environ)
        redis_url = env.get("REDIS_URL", "").strip()
        return cls(
            database_url=env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
            redis_url=redis_url or DEFAULT_REDIS_URL,
            redis_url_is_private=not redis_url,
            secret_key=env.get("SECRET_KEY", "").strip() or DEFAULT_SECRET_KEY,
            twilio_account_sid=env.get("TWILIO_ACCOUNT_SID", "").strip(),
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN", "").strip(),
            twilio_whatsapp_from=env.get("TWILIO_WHATSAPP_FROM", "").strip()
            or cls.twilio_whatsapp_from,
            twilio_api_url=(env.get("TWILIO_API_URL", "").strip() or DEFAULT_TWILIO_API_URL),
            public_url=env.get("PUBLIC_URL", "").strip().rstrip("/"),
            production=env.get("WHATSDESK_ENV", "").strip().lower() == "production",
            port=_port(env.get("PORT", "")),
            sweep_seconds=_sweep_seconds(env.get("SWEEP_INTERVAL", "")),
            send_rate=_send_rate(env.get("SEND_RATE_LIMIT", "")),
            trusted_proxies=_whole(env.get("TRUSTED_PROXIES", ""), "TRUSTED_PROXIES", 0, 0, 5),
            session_idle_hours=_whole(
                env.get("SESSION_IDLE_HOURS", ""), "SESSION_IDLE_HOURS", 12, 1, 720, " hours"
            ),
            metrics_token=_token(env.get("METRICS_TOKEN", "")),
        )

    @property
    def simulator(self) -> bool:
        """Without Twilio credentials the desk talks to the local outbox instead."""
        return not (self.twilio_account_sid and self.twilio_auth_token)

    def with_(self, **changes: object) -> Config:
        """A copy with some settings changed (tests, launchers)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def check(self) -> None:
        """Refuse settings that must never run."""
        if self.twilio_account_sid and not self.twilio_auth_token:
            raise RuntimeError("TWILIO_AUTH_TOKEN is required with TWILIO_ACCOUNT_SID")
        if self.secret_key == DEFAULT_SECRET_KEY and (self.production or not self.simulator):
            # Anyone could forge a session cookie signed with a key printed in the source.
            raise RuntimeError(
                "SECRET_KEY must be set (a long random string) in production and whenever "
                "Twilio credentials are set"
            )
        if self.production and self.simulator:
            raise RuntimeError(
                "WHATSDESK_ENV=production needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: "
                "the simulator is for trying the desk, not for running it"
            )
        if self.production and not self.public_url:
            # Without it no send asks Twilio for status callbacks: no delivery ticks, and a
            # reply that fails after Twilio took it would leave the customer answered.
            raise RuntimeError(
                "WHATSDESK_ENV=production needs PUBLIC_URL (e.g. https://desk.example.com): "
                "Twilio reports each message's delivery there"
            )


def _port(raw: str) -> int:
    raw = raw.strip() or "5000"
    # isdigit() alone lets through '²', which int() then refuses with an unclear ValueError.
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 65536:
        raise RuntimeError(f"PORT must be a TCP port number, not {raw!r}")
    return int(raw)


def _sweep_seconds(raw: str) -> int:
    return _whole(raw, "SWEEP_INTERVAL", 5, 1, 3600, " seconds")


def _send_rate(raw: str) -> float:
    raw = raw.strip() or "80"
    try:
        rate = float(raw)
    except ValueError:
        rate = float("nan")
    if not 0.01 <= rate <= 10_000:  # NaN fails this too
        raise RuntimeError(
            "SEND_RATE_LIMIT must be messages per second from 0.01 to 10000 "
            f"(80 for a WhatsApp sender, 0.33 for the Twilio sandbox), not {raw!r}"
        )
    return rate


def _token(raw: str) -> str:
    """METRICS_TOKEN as scrapers send it in a header: printable ASCII, no spaces."""
    token = raw.strip()
    if token and not (token.isascii() and token.isprintable() and " " not in token):
        raise RuntimeError("METRICS_TOKEN must be printable ASCII without spaces")
    return token


def _whole(raw: str, name: str, default: int, low: int, high: int, unit: str = "") -> int:
    raw = raw.strip() or str(default)
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise RuntimeError(f"{name} must be whole{unit} from {low} to {high}, not {raw!r}")
    return int(raw)
