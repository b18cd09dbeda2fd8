"""`rq cron whatsdesk.cron`: the periodic reconciling sweep, every SWEEP_INTERVAL seconds."""

from rq import cron

from .alarms import clock_queue_name
from .config import Config
from .jobs import sweep

_config = Config.from_env()
cron.register(
    sweep, clock_queue_name(_config.queue_name), interval=_config.sweep_seconds, job_timeout=300
)
