"""The conversation page and what an agent does there: claim, assign, answer, note, move,
resolve, reopen; customers' media fetched through the desk."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator

import requests
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required
from redis.exceptions import RedisError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from .. import current_alarms, current_config, get_session, workspace
from ..db import utcnow
from ..desk import DeskError
from ..durations import humanize
from ..models import Message
from ..sla import STATE_LABELS
from ..workspace import Done
from . import forms

bp = Blueprint("cards", __name__)
log = logging.getLogger(__name__)

MEDIA_TIMEOUT_SECONDS = 15
MEDIA_LIMIT_BYTES = 25 * 1024 * 1024


@bp.get("/cards/<int:card_id>")
@login_required
def show(card_id: int) -> str:
    return _page(card_id, {})


def _page(card_id: int, drafts: dict[str, str]) -> str:
    """The conversation page; `drafts`: text a refused form sent ("reply", "note"), shown
    again so that nothing typed is lost."""
    now = utcnow()
    try:
        page = workspace.conversation(get_session(), card_id, current_user, now)
    except LookupError:
        abort(404, f"there is no conversation #{card_id}")
    return render_template(
        "conversation.html",
        c=page,
        now=now,
        humanize=humanize,
        state_labels=STATE_LABELS,
        drafts=drafts,
        once=uuid.uuid4().hex,  # the forms' one-time token (see _once)
    )


def _typed() -> str:
    """The text typed in the form's textarea, its line breaks as one character each (a
    browser sends CRLF, and counts one in the textarea's maxlength)."""
    return _field("body").replace("\r\n", "\n")


def _act(
    card_id: int,
    use_case: Callable[[Session], Done],
    done: str,
    draft: tuple[str, str] | None = None,
) -> ResponseReturnValue:
    """Run a use-case on the card, commit, hand what it started to Redis, and go back to
    the conversation saying what happened (or why nothing did: with `draft`, the form's
    name and text, the page is shown again with the text kept)."""
    session = get_session()
    try:
        result = use_case(session)
        session.commit()
    except DeskError as exc:
        session.rollback()
        flash(str(exc), "error")
        if draft is not None:
            return _page(card_id, dict([draft])), 400
        return redirect(url_for("cards.show", card_id=card_id))
    except PermissionError as exc:
        session.rollback()
        abort(403, str(exc))
    try:
        current_alarms().arm(result.timers, result.sends)
    except RedisError as exc:  # the database has it; the sweep arms it within seconds
        log.warning("card %s: could not arm jobs now (%s); the sweep will", card_id, exc)
    flash(done, "ok")
    return redirect(url_for("cards.show", card_id=card_id))


def _field(name: str) -> str:
    return request.form.get(name, "")


ONCE_RE = re.compile(r"[0-9a-f]{32}")


def _once() -> str | None:
    """The form's one-time token (the page made it: a second submission of the same form
    repeats the first); anything else sent there is not one, and the message is new."""
    once = _field("once")
    return once if ONCE_RE.fullmatch(once) else None


@bp.post("/cards/<int:card_id>/claim")
@login_required
def claim(card_id: int) -> ResponseReturnValue:
    return _act(
        card_id,
        lambda s: workspace.claim(s, card_id, current_user, utcnow()),
        "The conversation is yours.",
    )


@bp.post("/cards/<int:card_id>/assign")
@login_required
def assign(card_id: int) -> ResponseReturnValue:
    user_id = forms.count(_field("user_id"), forms.MAX_ID)
    if user_id is None:
        flash("Choose who gets the conversation.", "error")
        return redirect(url_for("cards.show", card_id=card_id))
    return _act(
        card_id,
        lambda s: workspace.assign(s, card_id, current_user, user_id, utcnow()),
        "Assigned.",
    )


@bp.post("/cards/<int:card_id>/reply")
@login_required
def reply(card_id: int) -> ResponseReturnValue:
    body = _typed()
    return _act(
        card_id,
        lambda s: workspace.reply(s, card_id, current_user, body, utcnow(), _once()),
        "Reply sent.",
        draft=("reply", body),
    )


@bp.post("/cards/<int:card_id>/template")
@login_required
def template(card_id: int) -> ResponseReturnValue:
    return _act(
        card_id,
        lambda s: workspace.send_template(
            s, card_id, current_user, _field("key"), utcnow(), _once()
        ),
        "Template sent.",
    )


@bp.post("/cards/<int:card_id>/note")
@login_required
def note(card_id: int) -> ResponseReturnValue:
    body = _typed()
    return _act(
        card_id,
        lambda s: workspace.add_note(s, card_id, current_user, body, utcnow()),
        "Note added (the customer does not see it).",
        draft=("note", body),
    )


@bp.post("/cards/<int:card_id>/move")
@login_required
def move(card_id: int) -> ResponseReturnValue:
    return _act(
        card_id,
        lambda s: workspace.move(s, card_id, current_user, _field("stage"), utcnow()),
        "Moved.",
    )


@bp.post("/cards/<int:card_id>/acknowledge")
@login_required
def acknowledge(card_id: int) -> ResponseReturnValue:
    visit_id = forms.count(_field("visit_id"), forms.MAX_ID)
    if visit_id is None:
        abort(400, "the form did not say which stage visit to acknowledge")
    return _act(
        card_id,
        lambda s: workspace.acknowledge(s, card_id, current_user, visit_id, utcnow()),
        "Escalation acknowledged: its remaining levels will not fire in this stage.",
    )


@bp.post("/cards/<int:card_id>/resolve")
@login_required
def resolve(card_id: int) -> ResponseReturnValue:
    seen = forms.count(_field("seen"), forms.MAX_ID)
    if seen is None:
        abort(400, "the form did not say which of the customer's messages the page showed")
    return _act(
        card_id,
        lambda s: workspace.resolve(s, card_id, current_user, utcnow(), seen),
        "Resolved.",
    )


@bp.post("/cards/<int:card_id>/reopen")
@login_required
def reopen(card_id: int) -> ResponseReturnValue:
    return _act(
        card_id,
        lambda s: workspace.reopen(s, card_id, current_user, utcnow()),
        "Reopened.",
    )


@bp.get("/cards/<int:card_id>/media/<int:message_id>/<int:number>")
@login_required
def media(card_id: int, message_id: int, number: int) -> Response:
    """A customer's photo or file. Twilio's media URLs need the account's credentials, so
    the desk fetches it; only Twilio's own URLs are fetched, and anything but an image is
    served as a download, never rendered as a page of this site."""
    message = get_session().get(Message, message_id)
    if message is None or message.card_id != card_id or not 0 <= number < len(message.media):
        abort(404, "no such attachment")
    item = message.media[number]
    config = current_config()
    url = str(item.get("url", ""))
    if config.simulator or not url.startswith(config.twilio_api_url.rstrip("/") + "/"):
        abort(404, "this attachment is not stored at Twilio")
    try:
        upstream = requests.get(
            url,
            auth=(config.twilio_account_sid, config.twilio_auth_token),
            timeout=MEDIA_TIMEOUT_SECONDS,
            stream=True,
        )
    except requests.RequestException as exc:
        abort(502, f"Twilio did not send the attachment: {type(exc).__name__}")
    if upstream.status_code != 200:
        upstream.close()
        abort(502, f"Twilio answered {upstream.status_code} for the attachment")
    kind = str(item.get("content_type") or upstream.headers.get("Content-Type", ""))
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, max-age=3600",
    }
    if not kind.startswith("image/"):
        headers["Content-Disposition"] = f'attachment; filename="attachment-{message_id}-{number}"'
    return Response(
        _limited(upstream), mimetype=kind or "application/octet-stream", headers=headers
    )


def _limited(upstream: requests.Response) -> Iterator[bytes]:
    sent = 0
    try:
        for chunk in upstream.iter_content(64 * 1024):
            sent += len(chunk)
            if sent > MEDIA_LIMIT_BYTES:
                break
            yield chunk
    finally:
        upstream.close()
