"""Simulator mode: play the customer through the real, signed webhook; see every phone."""

from __future__ import annotations

import uuid

from flask import Blueprint, abort, current_app, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import login_required
from sqlalchemy import or_, select

from .. import current_config, get_session, whatsapp
from ..models import Message, User
from .webhooks import public_url_for

bp = Blueprint("simulator", __name__, url_prefix="/simulator")
SIM_ACCOUNT_SID = "AC" + "0" * 32


@bp.before_request
def only_in_simulator_mode() -> None:
    if not current_config().simulator:
        abort(404, "the simulator is off while Twilio credentials are set")


@bp.get("")
@login_required
def page() -> str:
    return render_template("simulator.html", business=current_config().twilio_whatsapp_from)


@bp.post("/send")
@login_required
def send() -> ResponseReturnValue:
    """Post a customer's message to the webhook, signed exactly as Twilio signs it."""
    phone = request.form.get("phone", "").strip()
    body = request.form.get("body", "")
    if not whatsapp.E164_RE.match(phone):
        return jsonify(error="phone must be in E.164 form, e.g. +5511999990000"), 400
    if not body.strip():
        return jsonify(error="write a message first"), 400
    form = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": SIM_ACCOUNT_SID,
        "From": f"whatsapp:{phone}",
        "To": current_config().twilio_whatsapp_from,
        "Body": body,
        "NumMedia": "0",
        "ProfileName": request.form.get("name", "").strip(),
        "WaId": phone.removeprefix("+"),
        "MessageType": "text",
        "ApiVersion": "2010-04-01",
    }
    path = url_for("webhooks.inbound")
    signature = whatsapp.sign(whatsapp.webhook_token(current_config()), public_url_for(path), form)
    # A fresh app context: the webhook gets its own database session and no logged-in user.
    with current_app.app_context():
        answer = current_app.test_client().post(
            path, data=form, base_url=request.host_url, headers={"X-Twilio-Signature": signature}
        )
    return jsonify(status=answer.status_code, sid=form["MessageSid"]), answer.status_code


@bp.get("/phones")
@login_required
def phones() -> ResponseReturnValue:
    """Every message to and from the customer's number and each staff member's phone."""
    phone = request.args.get("phone", "").strip()
    session = get_session()
    customer = []
    if whatsapp.E164_RE.match(phone):
        address = f"whatsapp:{phone}"
        customer = _thread(session, address)
    staff = [
        {
            "name": u.name,
            "role": u.role,
            "whatsapp": u.whatsapp,
            "messages": _thread(session, str(u.whatsapp)),
        }
        for u in session.scalars(
            select(User).where(User.whatsapp.is_not(None)).order_by(User.role.desc(), User.id)
        )
    ]
    return jsonify(customer=customer, staff=staff)


def _thread(session, address: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The phone's messages, as it shows them: an alert that went out inside a digest
    ("bundled") never reached it on its own; the digest did."""
    messages = session.scalars(
        select(Message)
        .where(or_(Message.to_address == address, Message.from_address == address))
        .where(Message.status != "bundled")
        .order_by(Message.created_at.desc(), Message.id.desc())
        .limit(50)
    ).all()
    return [
        {
            "direction": m.direction,
            "body": m.body,
            "status": m.status,
            "at": m.created_at.isoformat(),
        }
        for m in reversed(messages)
    ]
