"""The only module that talks Twilio: signatures, inbound forms, outbound sends."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from urllib3.exceptions import ProtocolError

from .config import DEFAULT_TWILIO_API_URL, Config

REQUEST_TIMEOUT_SECONDS = 10
# At most this many of a person's latest messages are read when asking Twilio about a send.
LIST_LIMIT = 200
# Twilio's rate-limit codes: too many requests, and WhatsApp's per-sender throttle.
TRANSIENT_CODES = {20429, 63018}
# What a delivery error code means for the person who sent the message (Twilio's error
# dictionary); the code alone where it is not here.
ERROR_TEXTS = {
    "63016": "outside WhatsApp's 24-hour window: only an approved template can reach them",
    "63003": "that number is not on WhatsApp",
    "63024": "WhatsApp refused the recipient",
    "63018": "WhatsApp's rate limit for the sender",
    "63013": "WhatsApp's policy refused the message",
    "63015": "the number has not joined the WhatsApp sandbox",
    "30003": "the phone is unreachable",
    "30005": "unknown number, or the phone is off",
    "30006": "a landline or an unreachable carrier",
    "30008": "the carrier reported an unknown error",
}


def failure_reason(error_message: str | None, error_code: str | None) -> str:
    """Why a message did not reach the person, in words."""
    if error_message:
        return error_message
    if error_code:
        known = ERROR_TEXTS.get(error_code)
        return f"{known} (error {error_code})" if known else f"error {error_code}"
    return "no reason given"


E164_RE = re.compile(r"^\+[1-9]\d{6,14}\Z")  # \Z: "$" would let a final new line through
ADDRESS_RE = re.compile(r"^whatsapp:" + E164_RE.pattern.removeprefix("^"))
# TwiML for "no reply": the desk answers through the REST API, from its jobs.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'

SID_RE = re.compile(r"^[A-Za-z0-9]{10,64}\Z")
# What the desk stores from an inbound form, with its column's length: PostgreSQL refuses
# longer text, and a NUL character anywhere, so such a form gets a 400, not a 503 retried.
STORED_FIELDS = {
    "To": 64,
    "WaId": 32,
    "ProfileName": 255,
    "Body": None,
    "Label": 1000,  # a shared location's
    "Address": 1000,
}


# --- signatures -------------------------------------------------------------------------------


def webhook_token(config: Config) -> str:
    """The key webhooks are signed with: the auth token, or the simulator's own key."""
    if config.twilio_auth_token:
        return config.twilio_auth_token
    return hmac.new(config.secret_key.encode(), b"whatsdesk-simulator", hashlib.sha1).hexdigest()


def sign(token: str, url: str, form: Mapping[str, str]) -> str:
    """X-Twilio-Signature exactly as Twilio computes it."""
    return str(RequestValidator(token).compute_signature(url, dict(form)))


def signature_valid(token: str, url: str, form: Any, signature: str) -> bool:
    """Check X-Twilio-Signature against the URL Twilio called and every posted field (each
    value of a repeated one). The URL as the desk sees it is the one Twilio signed but for
    a port Twilio may add or drop (443 behind a proxy): that signature alone is computed
    first (one HMAC, on every message); the validator then tries the URL with and without
    its port."""
    if not signature:
        return False
    validator = RequestValidator(token)
    computed = validator.compute_signature(url, form)
    # As bytes: compare_digest refuses str with anything but ASCII (a header may have it).
    if hmac.compare_digest(computed.encode(), signature.encode("utf-8", "surrogateescape")):
        return True
    return bool(validator.validate(url, form, signature))


# --- inbound ----------------------------------------------------------------------------------


class BadInbound(ValueError):
    """A signed form that is not a message we can store; the text says why."""


@dataclass(frozen=True)
class Inbound:
    sid: str
    from_address: str
    to_address: str
    body: str
    profile_name: str | None
    wa_id: str | None
    media: list[dict[str, str]] = field(default_factory=list)
    button_payload: str | None = None  # the id of a quick-reply button the customer tapped
    # The message this one answers, when the sender used WhatsApp's "reply" on it.
    replied_to_sid: str | None = None


def parse_inbound(form: Mapping[str, str]) -> Inbound:
    """Read Twilio's inbound form; raise BadInbound naming what is missing or wrong."""
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or ""
    sender = form.get("From", "")
    missing = [name for name, value in (("MessageSid", sid), ("From", sender)) if not value]
    if missing:
        raise BadInbound(f"missing required field(s): {', '.join(missing)}")
    if not SID_RE.match(sid):
        raise BadInbound("MessageSid is not a Twilio message SID")
    if not ADDRESS_RE.match(sender):
        raise BadInbound("From must be a WhatsApp address like whatsapp:+14155550100")
    _check_storable(form)
    return Inbound(
        sid=sid,
        from_address=sender,
        to_address=form.get("To", ""),
        body="\n".join(text for text in (form.get("Body", ""), _location(form)) if text),
        profile_name=form.get("ProfileName") or None,
        wa_id=form.get("WaId") or None,
        media=_media(form),
        button_payload=form.get("ButtonPayload") or None,
        replied_to_sid=_sid_or_none(form.get("OriginalRepliedMessageSid", "")),
    )


def _location(form: Mapping[str, str]) -> str:
    """A location the customer shared, as the text agents read (with a map link when its
    coordinates are real ones); "" when the message shares none."""
    if not any(form.get(name) for name in ("Latitude", "Longitude", "Label", "Address")):
        return ""
    place = " — ".join(
        text for text in (form.get("Label", "").strip(), form.get("Address", "").strip()) if text
    )
    try:
        latitude, longitude = float(form.get("Latitude", "")), float(form.get("Longitude", ""))
    except ValueError:
        latitude = longitude = math.nan
    located = -90 <= latitude <= 90 and -180 <= longitude <= 180  # False for NaN
    if not located and not place:
        return ""
    said = ["📍 Location:", *([place] if place else [])]
    if located:
        lat, lon = _decimal(latitude), _decimal(longitude)
        said.append(
            f"({lat}, {lon}) https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=17/{lat}/{lon}"
        )
    return " ".join(said)


def _decimal(degrees: float) -> str:
    """Degrees as plain decimals (never 1e-05), to the seventh place at most."""
    return f"{degrees:.7f}".rstrip("0").rstrip(".")


def _sid_or_none(value: str) -> str | None:
    """A replied-to SID is context, not required: one that is not a SID is left out."""
    return value if SID_RE.match(value) else None


def _check_storable(form: Mapping[str, str]) -> None:
    for name, limit in STORED_FIELDS.items():
        value = form.get(name, "")
        if "\x00" in value:
            raise BadInbound(f"{name} contains a NUL character")
        if limit is not None and len(value) > limit:
            raise BadInbound(f"{name} is longer than {limit} characters")


def _media(form: Mapping[str, str]) -> list[dict[str, str]]:
    raw = form.get("NumMedia", "0") or "0"
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 10:
        raise BadInbound("NumMedia must be a whole number from 0 to 10")
    items = []
    for n in range(int(raw)):
        url = form.get(f"MediaUrl{n}", "")
        if not url:
            raise BadInbound(f"NumMedia is {raw} but MediaUrl{n} is missing")
        items.append({"url": url, "content_type": form.get(f"MediaContentType{n}", "")})
    return items


# --- outbound ---------------------------------------------------------------------------------


class TransientSendError(Exception):
    """Twilio could not take the message now; trying again later can help."""


class SendInDoubt(Exception):
    """The request reached Twilio but its answer never came: Twilio may have taken the
    message or not. Trying again could send it twice; the sweep asks Twilio instead."""


class PermanentSendError(Exception):
    """Twilio refused the message; trying again cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Sent:
    sid: str
    status: str


@dataclass(frozen=True)
class Listed:
    """A message as Twilio's Messages list shows it."""

    sid: str
    status: str
    body: str | None


@dataclass(frozen=True)
class Template:
    """An approved WhatsApp template: its Content SID and the values of its variables."""

    content_sid: str
    variables: dict[str, str]


class Sender(Protocol):
    def send(self, to: str, body: str, sender: str, template: Template | None = None) -> Sent: ...


class SimulatorSender:
    """Simulator mode: the message is 'delivered' to the local outbox (the messages table)."""

    def send(self, to: str, body: str, sender: str, template: Template | None = None) -> Sent:
        return Sent(sid="SM" + uuid.uuid4().hex, status="delivered")


class _ApiUrlHttpClient(TwilioHttpClient):
    """Points twilio-python at TWILIO_API_URL (a Twilio-compatible server) when set."""

    def __init__(self, api_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.api_url = api_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(DEFAULT_TWILIO_API_URL):
            url = self.api_url + url[len(DEFAULT_TWILIO_API_URL) :]
        return super().request(method, url, *args, **kwargs)


class TwilioSender:
    """Sends through twilio-python's REST client, built on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            http = _ApiUrlHttpClient(self.config.twilio_api_url, REQUEST_TIMEOUT_SECONDS)
            self._client = Client(
                self.config.twilio_account_sid, self.config.twilio_auth_token, http_client=http
            )
        return self._client

    def send(self, to: str, body: str, sender: str, template: Template | None = None) -> Sent:
        params: dict[str, Any] = {"to": to, "from_": sender}
        if template is not None:  # outside the 24-hour window: the template, no Body
            params["content_sid"] = template.content_sid
            params["content_variables"] = json.dumps(template.variables)
        else:
            params["body"] = body
        if self.config.public_url:
            params["status_callback"] = f"{self.config.public_url}/twilio/status"
        try:
            message = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise _classify(exc.status, exc.code, exc.msg) from exc
        except TwilioServiceException as exc:  # the API's newer RFC 9457 error format
            raise _classify(exc.status, exc.code, exc.detail or exc.title) from exc
        except requests.RequestException as exc:
            if _reached_twilio(exc):  # it may have taken the message: a retry could send twice
                raise SendInDoubt(f"no answer from Twilio: {type(exc).__name__}") from exc
            raise TransientSendError(f"Twilio unreachable: {type(exc).__name__}") from exc
        return Sent(sid=str(message.sid), status=str(message.status or "queued"))

    def sent_between(self, to: str, sender: str, start: datetime, end: datetime) -> list[Listed]:
        """Every message Twilio holds from `sender` to `to` created from `start` to `end`
        (Twilio keeps whole seconds: `start` is rounded down), newest first: what the sweep
        compares with a send cut off mid-call. Twilio's list gives the text it sent (a
        template's rendered text) but neither a template's Content SID nor its variables.
        TransientSendError when Twilio cannot be asked now."""
        start = start.replace(microsecond=0)
        found = []
        try:
            for message in self.client.messages.stream(
                to=to, from_=sender, limit=LIST_LIMIT, page_size=50
            ):  # newest first
                created = message.date_created
                if created is not None and created > end:
                    continue
                if created is not None and created < start:
                    break
                found.append(
                    Listed(
                        sid=str(message.sid),
                        status=str(message.status or "queued"),
                        body=message.body,
                    )
                )
        except (TwilioRestException, TwilioServiceException, requests.RequestException) as exc:
            raise TransientSendError(f"Twilio could not be asked: {type(exc).__name__}") from exc
        return found


def _reached_twilio(exc: requests.RequestException) -> bool:
    """Did the request go out before the call failed: no answer in time (ReadTimeout), or the
    connection closed or reset while waiting for it (urllib3's ProtocolError)? Not when it
    was refused, unresolvable or timed out connecting: Twilio never saw it, and trying
    again is safe."""
    if isinstance(exc, requests.ReadTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(cause, ProtocolError)


def _classify(status: int, code: int | None, text: str | None) -> Exception:
    if status == 429 or status >= 500 or code in TRANSIENT_CODES:
        return TransientSendError(f"Twilio answered {status} (code {code})")
    return PermanentSendError(str(code or status), text or "refused by Twilio")


@lru_cache(maxsize=4)
def sender_for(config: Config) -> Sender:
    """The simulator's outbox without credentials, Twilio with them (one client per
    configuration per process, kept warm between jobs)."""
    return SimulatorSender() if config.simulator else TwilioSender(config)
