"""The RQ worker class of the desk: `rq worker --worker-class whatsdesk.worker.Worker`."""

from rq.worker import Worker as RQWorker

from . import jobs  # noqa: F401  (imported before forking, so each job starts warm)


class Worker(RQWorker):
    """RQ's forking worker, with the desk's jobs and their libraries already loaded."""
