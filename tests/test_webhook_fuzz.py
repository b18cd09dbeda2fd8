"""Validly signed but arbitrary forms to the webhooks: never a 5xx; each request is stored or
refused with a 4xx that says why."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from whatsdesk.config import Config
from whatsdesk.models import EarlyStatus, Message

from conftest import fresh, inbound_form, signed_post

INBOUND = "/twilio/whatsapp"
STATUS = "/twilio/status"
# Every field Twilio documents for an inbound WhatsApp message (FACTS.md), and then some.
TWILIO_FIELDS = [
    "MessageSid",
    "SmsSid",
    "SmsMessageSid",
    "AccountSid",
    "MessagingServiceSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "MediaUrl0",
    "MediaUrl1",
    "MediaUrl10",
    "MediaContentType0",
    "ProfileName",
    "WaId",
    "MessageType",
    "ButtonText",
    "ButtonPayload",
    "OriginalRepliedMessageSid",
    "Latitude",
    "Longitude",
    "Address",
    "Label",
    "ApiVersion",
    "MessageStatus",
    "ErrorCode",
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout
    # One desk for every example: each posts a new request to the same app and database.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values a sender might not expect: numbers in odd forms, NUL, long and non-Latin text.
ODD_VALUES = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "11",
        "10",
        "99999999999999999999",
        "1e3",
        "٣",
        "²",
        " 2",
        "\x00",
        "a\x00b",
        "whatsapp:+",
        "whatsapp:+5511999990000",
        "whatsapp:+5511999990000" + "9" * 60,
        "SM" + "a" * 32,
        "SM" + "a" * 70,
        "https://example.com/" + "m" * 300,
        "STOP",
        "start",
        "💬" * 300,
        "ü" * 5000,
        "<script>alert(1)</script>",
        "'; DROP TABLE messages; --",
    ]
)
VALUES = st.one_of(st.text(max_size=80), ODD_VALUES)
KEYS = st.one_of(st.sampled_from(TWILIO_FIELDS), st.text(max_size=20))
BODIES = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["x" * 1600, "x" * 1601, "🙂" * 2000, "a\x00b", "x" * 300_000]),
)
PHONES = st.from_regex(r"\+[1-9][0-9]{7,13}", fullmatch=True)


@st.composite
def inbound_forms(draw: st.DrawFn) -> dict[str, str]:
    """A Twilio form with fields changed, removed and added at random."""
    form = inbound_form(phone=draw(PHONES), body=draw(BODIES))
    for name in draw(st.sets(st.sampled_from(sorted(form)), max_size=2)):
        del form[name]
    # Mostly the fields the desk reads, so most forms get past the required ones.
    form.update(draw(st.dictionaries(st.sampled_from(TWILIO_FIELDS[5:]), VALUES, max_size=4)))
    form.update(draw(st.dictionaries(KEYS, VALUES, max_size=3)))
    return form


def sid_of(form: dict[str, str]) -> str:
    """The message's id, read as the desk reads it."""
    return form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid") or ""


def stored_with_sid(session: Session, model: Any, sid: str) -> int:
    fresh(session)
    if "\x00" in sid:  # no column holds it (PostgreSQL refuses even to compare with it)
        return 0
    return int(session.scalar(select(func.count()).where(model.sid == sid[:64])) or 0)


def total(session: Session, model: Any) -> int:
    fresh(session)
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def post(client: FlaskClient, config: Config, path: str, form: dict[str, str]) -> TestResponse:
    answer = signed_post(client, config, path, form)
    assert isinstance(answer, TestResponse)
    return answer


def assert_refused_saying_why(answer: TestResponse) -> None:
    text = answer.get_data(as_text=True)
    assert 400 <= answer.status_code < 500, (answer.status_code, text[:500])
    assert answer.mimetype == "text/plain"
    reason = text.split(":", 1)[1].strip() if ":" in text else ""
    assert reason, text  # "400 Bad Request: <why>"


def test_signed_arbitrary_inbound_forms_are_stored_or_refused_with_a_reason(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    @FUZZ
    @given(form=inbound_forms())
    # What PostgreSQL refused (503: Twilio retried it once, then gave up) before parse_inbound
    # checked it.
    @example(form=inbound_form(body="a\x00b"))
    @example(form=inbound_form(sid="\x00"))
    @example(form={**inbound_form(), "ProfileName": "x" * 256})
    @example(form={**inbound_form(), "WaId": "1" * 33})
    @example(form={**inbound_form(), "To": "whatsapp:+1" + "4" * 60})
    @example(form={**inbound_form(), "NumMedia": "²"})  # a digit to str.isdigit, not to int()
    def check(form: dict[str, str]) -> None:
        sid = sid_of(form)
        already = stored_with_sid(session, Message, sid) if sid else 0
        messages_before = total(session, Message)

        answer = post(client, seeded, INBOUND, form)

        assert answer.status_code < 500, answer.get_data(as_text=True)[:500]
        if answer.status_code == 200:
            assert answer.mimetype == "text/xml"
            assert stored_with_sid(session, Message, sid) == 1
            assert already or total(session, Message) > messages_before
        else:
            assert_refused_saying_why(answer)
            assert total(session, Message) == messages_before

    check()


@st.composite
def status_forms(draw: st.DrawFn) -> dict[str, str]:
    form = {
        "MessageSid": draw(st.one_of(st.just("SM" + "b" * 32), VALUES)),
        "MessageStatus": draw(
            st.one_of(st.sampled_from(["sent", "delivered", "read", "failed"]), VALUES)
        ),
        "AccountSid": "AC" + "0" * 32,
    }
    if draw(st.booleans()):
        form["ErrorCode"] = draw(st.one_of(st.just("63016"), VALUES))
    form.update(draw(st.dictionaries(KEYS, VALUES, max_size=4)))
    return form


def test_signed_arbitrary_status_callbacks_are_taken_or_refused_with_a_reason(
    client: FlaskClient, seeded: Config, session: Session
) -> None:
    @FUZZ
    @given(form=status_forms())
    @example(form={"MessageSid": "\x00", "MessageStatus": "sent"})
    @example(form={"MessageSid": "SM" + "c" * 70, "MessageStatus": "sent"})
    @example(form={"MessageSid": "SM" + "c" * 32, "MessageStatus": "failed", "ErrorCode": "9" * 17})
    def check(form: dict[str, str]) -> None:
        kept_before = total(session, EarlyStatus)

        answer = post(client, seeded, STATUS, form)

        assert answer.status_code < 500, answer.get_data(as_text=True)[:500]
        if answer.status_code != 200:
            assert_refused_saying_why(answer)
            assert total(session, EarlyStatus) == kept_before

    check()
