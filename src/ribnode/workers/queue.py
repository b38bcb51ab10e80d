"""The queue: the workers' task names and what publishes them.

Publishing does not retry inside Celery: the caller keeps what it could not send in the ledger
(a job stays "received" for the dispatcher, a delivery stays due for the export sweep) and
tries again itself, so a broker outage never blocks the listener. The GPU queue takes the model
job, the CPU queue the export.
"""

from __future__ import annotations

from celery import Celery

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobRef

PROCESS_STUDY = "ribnode.process_study"
EXPORT_JOB = "ribnode.export_job"


def enqueue_job(app: Celery, job: JobRef) -> str:
    """Publish the study task for a committed job; returns the task id (the job's
    idempotency key, so a re-publish is recognisably the same task). Raises when the broker
    cannot take it."""
    settings: Settings = app.ribnode_settings  # type: ignore[attr-defined]
    result = app.send_task(
        PROCESS_STUDY,
        args=[job.id],
        task_id=job.idempotency_key,
        queue=settings.broker.gpu_queue,
        retry=False,
    )
    return str(result.id)


def schedule_export(app: Celery, settings: Settings, job_id: int, countdown_s: float = 0.0) -> str:
    """Publish the export task of a job on the CPU queue; the task id. Raises when the broker
    cannot take it (the job stays "exporting" in the ledger; see
    :func:`ribnode.workers.sweeps.requeue_due_exports`)."""
    result = app.send_task(
        EXPORT_JOB,
        args=[job_id],
        queue=settings.broker.cpu_queue,
        countdown=countdown_s or None,
        retry=False,
    )
    return str(result.id)
