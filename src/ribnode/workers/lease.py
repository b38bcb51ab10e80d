"""Recovery of jobs whose worker died: the lease sweep (a worker bootstep).

A worker holds each running job under a lease (``broker.job_lease_s``) that a heartbeat renews
(:class:`ribnode.workers.jobs.LeaseHeartbeat`). When a whole worker is killed (main process and
pool: host or container lost), its task message is gone (filesystem broker) or held until the
Redis visibility timeout, and the job would stay "running" forever. This sweep moves such jobs
back to "received" (:meth:`Ledger.reclaim_running`) and sends them again through the
dispatcher's path (:func:`ribnode.ledger.dispatch.dispatch`): at start-up, every job this same
node name held before it restarted; then every half lease, every job whose lease expired.
``ribnode serve``'s completion thread reclaims expired leases too. Running a job twice is safe:
its outputs have deterministic UIDs and each delivery is sent once (``node.export``).
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from ribnode.config.settings import Settings
from ribnode.ledger.dispatch import EnqueueError, dispatch
from ribnode.ledger.store import Ledger, utcnow
from ribnode.workers.app import enqueue_job
from ribnode.workers.sweep import PeriodicSweep, SweepPlan

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def sweep_leases(
    app: Celery, settings: Settings, worker: str | None = None, started_at: datetime | None = None
) -> list[int]:
    """Reclaim running jobs whose worker is gone and send them again; the job ids sent. With
    ``worker`` and ``started_at`` (a starting worker), also the jobs that node name held
    before ``started_at``. A short-lived ledger connection (safe in a forking worker); a job
    the broker refuses stays "received" for the dispatcher's retry loop."""
    ledger = Ledger(settings.ledger.url, migrate=False)
    sent: list[int] = []
    try:
        reclaimed = ledger.reclaim_running(settings.broker.job_lease_s, worker, started_at)
        reclaimed += ledger.reclaim_stale_queued(settings.broker.queued_timeout_s)
        for job in reclaimed:
            try:
                if dispatch(ledger, functools.partial(enqueue_job, app), job):
                    sent.append(job.id)
            except EnqueueError as exc:
                logger.warning("job %d reclaimed but not sent (%s); the dispatcher retries it", job.id, exc)
    except SQLAlchemyError as exc:
        logger.warning("lease sweep failed (%s); trying again at the next sweep", exc)
    finally:
        ledger.dispose()
    if sent:
        logger.warning("sent again jobs %s (their worker died mid-job)", sent)
    return sent


class LeaseSweep(PeriodicSweep):
    """Worker bootstep: at start, reclaim the jobs this node name held before (its predecessor
    was killed), then every half lease reclaim jobs with an expired lease."""

    thread_name = "ribnode-lease-sweep"

    def plan(self, parent: Any, settings: Settings) -> SweepPlan | None:
        app = parent.app
        worker = str(getattr(parent, "hostname", "") or "") or None
        return (
            functools.partial(sweep_leases, app, settings, worker, utcnow()),
            functools.partial(sweep_leases, app, settings),
            settings.broker.job_lease_s / 2,
        )
