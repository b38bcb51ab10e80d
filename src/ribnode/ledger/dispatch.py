"""Dispatch: a committed job goes to the queue.

Every job reads received -> queued -> running: :func:`dispatch` commits "queued" *before* it
publishes (a worker can take the task the instant it is published), and moves the job back to
"received" with the error when publishing fails. The publishing itself is passed in
(:data:`Enqueue`, built by the composition root, ``ribnode.cli``, from the Celery app), so
that the node's completion thread and the workers' lease sweep send jobs the same way without
either importing the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ribnode.ledger.store import JobRef, Ledger

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# Publishes a job to the broker and returns the task id; raises when the broker is unreachable.
Enqueue = Callable[[JobRef], str]


class EnqueueError(RuntimeError):
    """The broker did not take a job's task (the job is back in "received")."""


def dispatch(ledger: Ledger, enqueue: Enqueue, job: JobRef) -> bool:
    """Send a "received" job to the broker: received -> queued is committed first, then the
    task is published (so it is enqueued only after the ledger commit, and a worker always
    finds it queued). Returns False when another dispatcher had already taken the job.
    When publishing fails the job goes back to "received" with the error and the exception
    :class:`EnqueueError` is raised (the caller retries later)."""
    if not ledger.mark_queued(job.id):
        return False
    try:
        task_id = enqueue(job)
    except Exception as exc:  # kombu/redis raise many types; any means "not sent"
        error = f"{type(exc).__name__}: {exc}"
        ledger.unqueue(job.id, f"enqueue failed: {error}")
        raise EnqueueError(error) from exc
    ledger.record_task_id(job.id, task_id)
    logger.info("job %d queued as task %s", job.id, task_id)
    return True
