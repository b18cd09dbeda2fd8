"""The desk's worker with exact timer jobs switched off: nothing is scheduled at a deadline's
instant (not when a card enters a stage, not when the sweep re-arms), so every SLA event is
fired by the reconciling sweep alone, at its interval. For the benchmark only."""

from whatsdesk import alarms
from whatsdesk.worker import Worker as DeskWorker


def _no_exact_timer(*_args: object, **_kwargs: object) -> None:
    return None


alarms.Alarms.schedule_second = _no_exact_timer  # type: ignore[method-assign]


class Worker(DeskWorker):
    """`rq worker --worker-class bench.sweep_only.Worker`."""
