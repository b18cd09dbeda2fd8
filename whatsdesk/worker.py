"""The RQ worker class of the desk: `rq worker --worker-class whatsdesk.worker.Worker`."""

from rq.worker import SimpleWorker

from . import jobs  # noqa: F401  (the desk's jobs and their libraries, loaded once)


class Worker(SimpleWorker):
    """Runs each job in the worker process itself rather than in a fork per job: the
    desk's jobs are short and idempotent, and a warm process keeps its database pool, Redis
    connection and Twilio client. SIGKILL loses at most the job running, which RQ then
    counts as abandoned and the sweep makes good (exactly-once comes from the database)."""
