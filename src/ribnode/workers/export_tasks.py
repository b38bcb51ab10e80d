"""The export task (CPU queue): thin. It calls :func:`ribnode.node.export.export_job` and asks
Celery to run it again when a destination is due for a retry.

The retry schedule lives in the ledger (``deliveries.next_attempt_at``, backoff with jitter,
``export.max_attempts``), not in Celery: a task lost with a worker or a broker loses no
delivery, because :func:`requeue_due_exports` (called by a sweeper, or ``ribnode resend``)
finds overdue exporting jobs in the ledger and enqueues them again. Two tasks for one job are
harmless: a delivery is claimed by one exporter at a time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from celery import Celery, Task, shared_task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ribnode.config.settings import Settings
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import Ledger, utcnow
from ribnode.node.export import ExportReport, OutputSetLike, export_job, stage_outputs
from ribnode.workers.sweep import PeriodicSweep, SweepPlan
from ribnode.workers.tasks import worker_context

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

EXPORT_JOB = "ribnode.export_job"
LEDGER_RETRY_S = 5.0  # the ledger itself was unreachable


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


def schedule_export(app: Celery, settings: Settings, job_id: int, countdown_s: float = 0.0) -> str:
    """Publish the export task of a job on the CPU queue; the task id. Raises when the broker
    cannot take it (the job stays "exporting" in the ledger; see :func:`requeue_due_exports`)."""
    result = app.send_task(
        EXPORT_JOB,
        args=[job_id],
        queue=settings.broker.cpu_queue,
        countdown=countdown_s or None,
        retry=False,
    )
    return str(result.id)


def deliver_outputs(
    app: Celery,
    job_id: int,
    output_sets: Sequence[OutputSetLike],
    settings: Settings,
    ledger: Ledger,
) -> ExportReport:
    """What the model job calls once its objects are built: stage them, deliver now (no broker
    round trip on the fast path), and leave any retry to the export task.

    The job ends "done" or "dead" here, or stays "exporting" with the export task scheduled for
    the next due attempt. A broker that is down at that moment loses nothing: the deliveries
    are due in the ledger and :func:`requeue_due_exports` finds them.
    """
    stage_outputs(job_id, output_sets, settings, ledger)
    report = export_job(job_id, settings, ledger)
    if report.retry_in_s is not None:
        try:
            schedule_export(app, settings, job_id, countdown_s=max(0.05, report.retry_in_s))
        except BrokerError as exc:
            logger.error(
                "job %d: cannot schedule the export retry (%s); it stays exporting until a sweep re-enqueues it",
                job_id,
                exc,
            )
    return report


def requeue_due_exports(app: Celery, settings: Settings, ledger: Ledger, overdue_s: float = 60.0) -> list[int]:
    """Enqueue the export of every exporting job with a delivery overdue by ``overdue_s``
    (its task was lost with a worker or the broker). Returns the job ids enqueued."""
    due = DeliveryLedger(ledger).jobs_due(utcnow() - timedelta(seconds=overdue_s))
    for job_id in due:
        schedule_export(app, settings, job_id)
    if due:
        logger.warning("re-enqueued the export of overdue jobs %s", due)
    return due


def requeue_pending_exports(app: Celery, settings: Settings, ledger: Ledger) -> list[int]:
    """Schedule the export of every exporting job with a pending delivery, each for when its
    next attempt is due (what a starting worker does: retries scheduled by a worker that was
    killed died with it). Returns the job ids scheduled."""
    now = utcnow()
    pending = DeliveryLedger(ledger).pending_jobs()
    for job_id, due in pending.items():
        countdown = max(0.0, (due - now).total_seconds()) if due is not None else 0.0
        schedule_export(app, settings, job_id, countdown_s=countdown)
    if pending:
        logger.info("scheduled the export of pending jobs %s", sorted(pending))
    return sorted(pending)


def sweep_once(app: Celery, settings: Settings, overdue_s: float | None) -> list[int]:
    """One sweep with a short-lived ledger connection (safe in a forking worker): every
    pending export when ``overdue_s`` is None (start-up), else those overdue by that much."""
    ledger = Ledger(settings.ledger.url, migrate=False)
    try:
        if overdue_s is None:
            return requeue_pending_exports(app, settings, ledger)
        return requeue_due_exports(app, settings, ledger, overdue_s=overdue_s)
    except (SQLAlchemyError, BrokerError) as exc:
        logger.warning("export sweep failed (%s); trying again at the next sweep", exc)
        return []
    finally:
        ledger.dispose()


class ExportSweep(PeriodicSweep):
    """Worker bootstep: at start, schedule every pending export for when it is due (a restarted
    worker takes over the retries that died with its predecessor), then every
    ``export.sweep_interval_s`` re-enqueue exports overdue by twice that (a task lost with a
    broker). Duplicates are harmless: deliveries are claimed."""

    thread_name = "ribnode-export-sweep"

    def plan(self, parent: Any, settings: Settings) -> SweepPlan | None:
        interval = settings.export.sweep_interval_s
        if interval <= 0:
            return None
        app = parent.app
        return (
            functools.partial(sweep_once, app, settings, None),
            functools.partial(sweep_once, app, settings, 2 * interval),
            interval,
        )
