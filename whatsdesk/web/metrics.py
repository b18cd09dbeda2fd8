"""GET /metrics: Prometheus scrapes the desk here (bearer token, or loopback only)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from .. import current_alarms, current_config, metrics
from ..db import utcnow

bp = Blueprint("metrics", __name__)

FORWARDED_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-Ip")


@bp.get("/metrics")
def scrape() -> Response:
    token = current_config().metrics_token
    proxied = any(name in request.headers for name in FORWARDED_HEADERS)
    authorization = request.headers.get("Authorization", "")
    if not token and current_config().production:
        # A reverse proxy on the same host that adds no forwarding header would make any
        # client look like a direct loopback one: in production only a token opens it.
        return _refused(403, "in production, set METRICS_TOKEN and scrape with it")
    if not metrics.may_scrape(token, authorization, request.remote_addr, proxied):
        if token:
            return _refused(401, "a valid bearer token (METRICS_TOKEN) is required")
        return _refused(403, "without METRICS_TOKEN set, only direct loopback requests")
    sessions = current_app.extensions["whatsdesk.sessions"]
    body = metrics.exposition(sessions, current_alarms(), utcnow())
    return Response(body, mimetype=None, content_type=metrics.CONTENT_TYPE)


def _refused(code: int, why: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else {}
    return Response(f"{code}: {why}\n", code, mimetype="text/plain", headers=headers)
