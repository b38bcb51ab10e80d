"""Celery tasks: thin. They turn ids into objects, call plain functions, handle retries."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task, shared_task

from ribnode.config.settings import BrokerSettings, Settings, load_settings
from ribnode.node.ledger import JobState, Ledger
from ribnode.workers.app import PROCESS_STUDY

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def retry_delay(retries: int, broker: BrokerSettings, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base * 2**retries, capped, times U(0.5, 1)."""
    delay = min(broker.retry_backoff_max_s, broker.retry_backoff_s * (2**retries))
    return delay * (rng or random).uniform(0.5, 1.0)


def worker_context(app: Any) -> tuple[Settings, Ledger]:
    """Settings and ledger of this worker process (the ledger is opened on first use, after
    the prefork pool has forked)."""
    settings: Settings = getattr(app, "ribnode_settings", None) or load_settings()
    ledger = getattr(app, "ribnode_ledger", None)
    if ledger is None:
        ledger = Ledger(settings.ledger.url)
        app.ribnode_ledger = ledger
    return settings, ledger


@shared_task(bind=True, name=PROCESS_STUDY, acks_late=True, max_retries=None)
def process_study(self: Task, job_id: int) -> None:
    """Run one job. A transient error retries with backoff; after ``broker.max_retries``
    retries the job is "dead" with the reason."""
    from ribnode.workers.jobs import run_job
    from ribnode.workers.pipeline_step import model_step

    settings, ledger = worker_context(self.app)
    try:
        run_job(job_id, settings, ledger, step=model_step(self.app, settings),
                worker=self.request.hostname or None)
    except Exception as exc:  # any error left by run_job is treated as transient: retry
        error = f"{type(exc).__name__}: {exc}"
        retries = int(self.request.retries or 0)
        if retries >= settings.broker.max_retries:
            logger.error("job %d dead after %d retries: %s", job_id, retries, error)
            ledger.transition(job_id, JobState.DEAD, error=f"retries exhausted: {error}")
            return
        delay = retry_delay(retries, settings.broker)
        logger.warning("job %d failed (%s); retry %d in %.1f s", job_id, error, retries + 1, delay)
        holder = self.request.hostname or "unknown"
        if not ledger.defer_retry(job_id, holder, delay, settings.broker.job_lease_s, error):
            ledger.record_job_error(job_id, f"retry {retries + 1} in {delay:.1f} s: {error}")
        raise self.retry(exc=exc, countdown=delay) from exc
