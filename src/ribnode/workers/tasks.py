"""Celery tasks: thin. They turn ids into objects, call plain functions, handle retries.

- :func:`process_study` (GPU queue): :func:`ribnode.workers.jobs.run_job` with the model step.
- :func:`export_job_task` (CPU queue): :func:`ribnode.node.export.export_job`, asking Celery to
  run it again when a destination is due for a retry (the schedule itself is the ledger's).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from ribnode.config.settings import BrokerSettings, Settings, load_settings
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.export import export_job
from ribnode.workers.jobs import UnusableInputError, run_job
from ribnode.workers.pipeline_step import model_step
from ribnode.workers.queue import EXPORT_JOB, PROCESS_STUDY

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

LEDGER_RETRY_S = 5.0  # the ledger itself was unreachable


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
    """Run one job. A permanent error (the input, :func:`is_permanent`) fails the job at once;
    a transient one (broker, ledger, spool, a model error) retries with backoff. The attempt
    count is the ledger's (``jobs.attempts``, one per time a worker took the job), not the
    message's, so it survives re-sends, sweeps and restarts: after ``broker.max_retries``
    retries the job is "dead" with the reason."""
    settings, ledger = worker_context(self.app)
    try:
        run_job(job_id, settings, ledger, step=model_step(self.app, settings), worker=self.request.hostname or None)
    except Exception as exc:  # classified below: permanent fails the job, the rest retries
        error = f"{type(exc).__name__}: {exc}"
        if is_permanent(exc):
            logger.error("job %d failed (permanent): %s", job_id, error)
            ledger.transition(job_id, JobState.FAILED, error=error[:4000])
            return
        attempts = ledger.job_row(job_id).attempts
        if attempts > settings.broker.max_retries:
            logger.error("job %d dead after %d attempts: %s", job_id, attempts, error)
            ledger.transition(job_id, JobState.DEAD, error=f"retries exhausted: {error}"[:4000])
            return
        delay = retry_delay(max(attempts - 1, 0), settings.broker)
        logger.warning("job %d failed (%s); retry %d in %.1f s", job_id, error, attempts, delay)
        holder = self.request.hostname or "unknown"
        if not ledger.defer_retry(job_id, holder, delay, settings.broker.job_lease_s, error):
            ledger.record_job_error(job_id, f"retry {attempts} in {delay:.1f} s: {error}")
        raise self.retry(exc=exc, countdown=delay) from exc


def is_permanent(exc: BaseException) -> bool:
    """True for an error that retrying cannot fix: the input (decode error, invalid input, not
    a chest radiograph). Broker, ledger, PACS, disk and model errors are transient."""
    return isinstance(exc, UnusableInputError)


@shared_task(bind=True, name=EXPORT_JOB, acks_late=True, max_retries=None)
def export_job_task(self: Task, job_id: int) -> None:
    """Attempt the job's due deliveries; come back when the next one is due."""
    settings, ledger = worker_context(self.app)
    try:
        report = export_job(job_id, settings, ledger)
    except OperationalError as exc:
        logger.warning("job %d: ledger unavailable (%s); export retried in %.0f s", job_id, exc, LEDGER_RETRY_S)
        raise self.retry(exc=exc, countdown=LEDGER_RETRY_S) from exc
    if report.retry_in_s is not None:
        logger.info("job %d: %s pending; next attempt in %.1f s", job_id, ", ".join(report.pending), report.retry_in_s)
        raise self.retry(countdown=max(0.05, report.retry_in_s))
    logger.info("job %d export finished: %s", job_id, report.state)
