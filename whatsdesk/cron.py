"""`rq cron whatsdesk.cron`: the periodic reconciling sweep."""

from rq import cron

from .config import Config
from .jobs import sweep

SWEEP_INTERVAL_SECONDS = 10

cron.register(sweep, Config.from_env().queue_name, interval=SWEEP_INTERVAL_SECONDS, job_timeout=300)
