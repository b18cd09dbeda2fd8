"""Twilio's webhooks: inbound WhatsApp messages and delivery status callbacks."""

from __future__ import annotations

import logging
import re
import time

from flask import Blueprint, Response, abort, g, request
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from .. import current_alarms, current_config, desk, get_session, metrics, notifications, whatsapp
from ..db import utcnow

bp = Blueprint("webhooks", __name__, url_prefix="/twilio")
log = logging.getLogger(__name__)


@bp.before_request
def _start_clock() -> None:
    g.webhook_started = time.perf_counter()


@bp.after_request
def _observe(response: Response) -> Response:
    webhook = "whatsapp" if request.endpoint == "webhooks.inbound" else "status"
    seconds = time.perf_counter() - g.get("webhook_started", time.perf_counter())
    metrics.observe_webhook(webhook, response.status_code, seconds, g.get("duplicate", False))
    return response


def public_url_for(path: str) -> str:
    """The URL Twilio uses for `path` (an app path such as /twilio/whatsapp).

    PUBLIC_URL, when set, is the whole base Twilio calls, mount prefix included.
    """
    public = current_config().public_url
    if public:
        return public + path
    return request.host_url.rstrip("/") + request.script_root + path


def signed_url() -> str:
    """The URL Twilio called, with the raw (undecoded) query string it signed."""
    url = public_url_for(request.path)
    query = request.query_string.decode("latin-1")
    return f"{url}?{query}" if query else url


def require_signature() -> None:
    token = whatsapp.webhook_token(current_config())
    signature = request.headers.get("X-Twilio-Signature", "")
    if not whatsapp.signature_valid(token, signed_url(), request.form, signature):
        abort(403, "invalid or missing X-Twilio-Signature")


@bp.post("/whatsapp")
def inbound() -> Response:
    require_signature()
    try:
        message = whatsapp.parse_inbound(request.form)
    except whatsapp.BadInbound as exc:
        abort(400, str(exc))
    # Redis is not asked first: with Redis down the message is still stored, and the sweep
    # arms its timers and sends once Redis answers (a 503 would lose it after Twilio's one
    # retry).
    received = _store(message)
    g.duplicate = received.duplicate
    if not received.duplicate:
        _arm(received)
    return Response(whatsapp.EMPTY_TWIML, mimetype="text/xml")


def _store(message: whatsapp.Inbound) -> desk.Received:
    """Commit the message; a concurrent twin (same sid, same new contact, a conversation it
    opened) wins or we retry."""
    session = get_session()
    for attempt in (1, 2):
        try:
            received = desk.receive_message(session, message, utcnow())
            session.commit()
            return received
        except (IntegrityError, desk.Raced):
            session.rollback()
            if attempt == 2:
                raise
        except desk.DeskError as exc:
            session.rollback()
            log.error("inbound %s not stored: %s", message.sid, exc)
            abort(
                Response(
                    f"503 Service Unavailable: {exc}\n",
                    503,
                    mimetype="text/plain",
                    headers={"Retry-After": "60"},
                )
            )
    raise AssertionError("unreachable")


def _arm(received: desk.Received) -> None:
    """Hand the new timers and sends to Redis; if it fails now, the sweep re-arms them."""
    visit = received.new_visit
    menu = None
    if received.menu_deadline is not None and received.card is not None:
        menu = (received.card.id, received.menu_deadline)
    try:
        current_alarms().arm(
            ([(visit.id, visit.timers)] if visit is not None else []) + received.timers,
            [out.id for out in received.outbound],
            menu,
        )
    except RedisError as exc:
        metrics.observe_unarmed()
        log.warning("could not arm jobs for %s (%s); the sweep will", received.message.sid, exc)


@bp.post("/status")
def status() -> tuple[str, int]:
    require_signature()
    sid = request.form.get("MessageSid", "")
    state = request.form.get("MessageStatus", "")
    missing = [n for n, v in (("MessageSid", sid), ("MessageStatus", state)) if not v]
    if missing:
        abort(400, f"missing required field(s): {', '.join(missing)}")
    error_code = request.form.get("ErrorCode") or None
    if not whatsapp.SID_RE.match(sid):  # what is kept must fit its column (EarlyStatus)
        abort(400, "MessageSid is not a Twilio message SID")
    if error_code is not None and not re.fullmatch(r"[0-9]{1,16}", error_code):
        abort(400, "ErrorCode must be Twilio's numeric error code")
    session = get_session()
    desk.apply_status(session, sid, state.lower(), error_code, utcnow())
    again = notifications.retry_as_template(session, sid)
    session.commit()
    if again is not None:  # a staff alert refused as outside the window: send the template
        try:
            current_alarms().enqueue_send(again.id, again=True)
        except RedisError as exc:
            log.warning("could not enqueue template resend of %s (%s); the sweep will", sid, exc)
    return "", 200
