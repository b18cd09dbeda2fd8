"""Production metrics in the Prometheus format, summed across every desk process.

gunicorn's workers and the RQ workers are separate processes, so the counters and histograms
use prometheus_client's multiprocess mode: each process writes its own memory-mapped files in
one directory (PROMETHEUS_MULTIPROC_DIR, default instance/metrics), and a scrape adds them up.
The gauges (open cards by SLA state, queue depths) are read from the database and Redis when
scraped, so they are the same whichever process answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .config import INSTANCE_DIR

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_METRICS_DIR = INSTANCE_DIR / "metrics"
# Every process of one desk must write to the same directory, and prometheus_client reads
# the setting when it is imported: this module is the only one that imports it.
os.environ.setdefault(MULTIPROC_ENV, str(DEFAULT_METRICS_DIR))
os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from . import desk, sla  # noqa: E402
from .alarms import Alarms  # noqa: E402

if not getattr(values.ValueClass, "_multiprocess", False):  # imported before us: switch it
    values.ValueClass = values.MultiProcessValue()


def start_afresh() -> None:
    """Remove the counters that processes of an earlier run left in the metrics directory
    (Prometheus expects counters to restart from zero with the service); before any process
    of this run starts."""
    for leftover in Path(os.environ[MULTIPROC_ENV]).glob("*.db"):
        leftover.unlink(missing_ok=True)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

WEBHOOK_SECONDS = Histogram(
    "whatsdesk_webhook_seconds",
    "Time to answer a Twilio webhook, by webhook (whatsapp: inbound messages, status).",
    ["webhook"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
INBOUND = Counter(
    "whatsdesk_inbound_messages",
    "Inbound WhatsApp webhooks by outcome: stored, duplicate, bad_signature, invalid, "
    "too_large, unavailable, error.",
    ["outcome"],
)
OUTBOUND = Counter(
    "whatsdesk_outbound_messages",
    "Outbound send attempts by result: sent, retrying (Twilio busy or unreachable), failed, "
    "in_doubt (Twilio did not answer; the sweep asks it).",
    ["status"],
)
UNARMED = Counter(
    "whatsdesk_inbound_unarmed",
    "Inbound messages stored whose timers or sends could not reach Redis: they wait for the "
    "sweep to arm them once Redis answers.",
)
SLA_LATENESS = Histogram(
    "whatsdesk_sla_event_lateness_seconds",
    "Recorded minus due instant of each SLA event, by kind (level-N counted as level).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

INBOUND_OUTCOMES = {403: "bad_signature", 400: "invalid", 413: "too_large", 503: "unavailable"}


def observe_webhook(webhook: str, status_code: int, seconds: float, duplicate: bool) -> None:
    """One answered Twilio webhook (the inbound counter for the WhatsApp one)."""
    WEBHOOK_SECONDS.labels(webhook).observe(seconds)
    if webhook != "whatsapp":
        return
    if status_code == 200:
        outcome = "duplicate" if duplicate else "stored"
    else:
        outcome = INBOUND_OUTCOMES.get(status_code, "error")
    INBOUND.labels(outcome).inc()


def observe_unarmed() -> None:
    """A stored message whose timers and sends could not reach Redis (the sweep arms them)."""
    UNARMED.inc()


def observe_send(status: str) -> None:
    """The result of one send attempt: sent, retrying, failed or in_doubt."""
    OUTBOUND.labels(status).inc()


def observe_event(kind: str, due_at: datetime, fired_at: datetime) -> None:
    """An SLA event just recorded: how late after its instant."""
    family = "level" if sla.level_of(kind) is not None else kind
    SLA_LATENESS.labels(family).observe(max(0.0, (fired_at - due_at).total_seconds()))


class DeskCollector(Collector):
    """Gauges read at scrape time: open cards by SLA state and the RQ queues."""

    def __init__(self, sessions: sessionmaker[Session], alarms: Alarms, now: datetime) -> None:
        self.sessions, self.alarms, self.now = sessions, alarms, now

    def collect(self) -> Iterator[Metric]:
        yield self._open_cards()
        yield from self._queues()

    def _open_cards(self) -> Metric:
        cards = GaugeMetricFamily(
            "whatsdesk_open_cards",
            "Open cards by SLA state of their current stage.",
            labels=["state"],
        )
        with self.sessions() as session:
            for state in sla.STATE_LABELS:
                # The queue's own count and filter: one definition of each state.
                query = desk.open_count(desk.QueueFilter(state=state), self.now)
                cards.add_metric([state], session.scalar(query) or 0)
        return cards

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "whatsdesk_queue_jobs", "Jobs waiting in each RQ queue.", labels=["queue"]
        )
        failed = GaugeMetricFamily(
            "whatsdesk_failed_jobs", "Jobs in each RQ queue's failed registry.", labels=["queue"]
        )
        scheduled = GaugeMetricFamily(
            "whatsdesk_scheduled_jobs",
            "Jobs scheduled for later in each RQ queue (timers, retries, digests).",
            labels=["queue"],
        )
        try:
            for queue in (self.alarms.queue, self.alarms.clock):
                depth.add_metric([queue.name], queue.count)
                failed_jobs = queue.failed_job_registry.get_job_count(cleanup=False)
                failed.add_metric([queue.name], failed_jobs)
                later = queue.scheduled_job_registry.get_job_count(cleanup=False)
                scheduled.add_metric([queue.name], later)
        except RedisError:
            # Redis down: the scrape still answers, without these gauges, so that the
            # counters (whatsdesk_inbound_unarmed_total among them) show the outage.
            return
        yield from (depth, failed, scheduled)


def exposition(sessions: sessionmaker[Session], alarms: Alarms, now: datetime) -> bytes:
    """Every process's counters and histograms, and the gauges read now."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(DeskCollector(sessions, alarms, now))
    return generate_latest(registry)


def may_scrape(token: str, authorization: str, remote_addr: str | None, proxied: bool) -> bool:
    """With a token: the right bearer token. Without: only a direct loopback client (a
    request a local reverse proxy forwarded is refused, as it may come from anywhere)."""
    if token:
        scheme, _, given = authorization.partition(" ")
        # As bytes: compare_digest refuses str with anything but ASCII (a header may have it).
        given_bytes, token_bytes = (
            t.encode("utf-8", "surrogateescape") for t in (given.strip(), token)
        )
        return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token_bytes)
    if proxied or not remote_addr:
        return False
    try:
        return ipaddress.ip_address(remote_addr).is_loopback
    except ValueError:  # e.g. a unix socket's empty address
        return False
