"""Clear answers for bad input, and 503 (so Twilio retries) when the database is down."""

from __future__ import annotations

import logging

from flask import Flask, Response, render_template, request
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from werkzeug.exceptions import BadRequest, Conflict, HTTPException

from ..desk import Raced

log = logging.getLogger(__name__)


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(DBAPIError, unavailable("database"))
    app.register_error_handler(DataError, refused_by_database)
    app.register_error_handler(IntegrityError, conflict)
    # A webhook raced twice by the same customer's other messages: Twilio's retry takes it.
    app.register_error_handler(Raced, unavailable("database"))
    app.register_error_handler(RedisError, unavailable("redis"))


def _wants_text() -> bool:
    return request.path.startswith("/twilio/") or request.path in ("/healthz", "/readyz")


def http_error(exc: HTTPException) -> Response | tuple[str, int]:
    if _wants_text():
        return Response(
            f"{exc.code} {exc.name}: {exc.description}\n", exc.code, mimetype="text/plain"
        )
    return render_template("error.html", error=exc), exc.code or 500


def refused_by_database(exc: DataError) -> Response | tuple[str, int]:
    """A value the database cannot store (too long, a NUL character) that no check caught:
    the request is wrong, not the database down — 400, never a 503 that invites retries."""
    log.warning("the database refused a value: %s", exc.orig)
    return http_error(
        BadRequest("a value is too long, or holds a character, that the desk cannot store")
    )


def conflict(exc: IntegrityError) -> Response | tuple[str, int]:
    """A write the database refused as clashing with a row stored meanwhile (a duplicate, a
    row another still names) that no check caught. A webhook answers 503 (Twilio's retry
    finds the twin stored); a person is told the truth, not that the database is down."""
    if request.path.startswith("/twilio/"):
        return unavailable("database")(exc)
    log.error("the database refused a change as a conflict: %s", exc.orig, exc_info=exc)
    return http_error(
        Conflict(
            "the change clashes with something stored meanwhile (another person's change?): "
            "nothing was changed; reload the page and try again"
        )
    )


def unavailable(what: str):  # type: ignore[no-untyped-def]
    def handler(exc: Exception) -> Response:
        log.warning("%s unavailable: %s", what, type(exc).__name__)
        return Response(
            f"503 Service Unavailable: the {what} does not answer; try again shortly.\n",
            503,
            mimetype="text/plain",
            headers={"Retry-After": "5"},
        )

    return handler
