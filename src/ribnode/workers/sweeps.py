"""The worker's sweeps: bootsteps that run once at start, then periodically, in a daemon thread.

A daemon thread, so that stopping the worker is not delayed by a timer's sleep; started after
the pool, so prefork children are never forked from a process in mid-sweep. Each pass opens a
short-lived ledger connection (safe in a forking worker).

- :class:`ExportSweep`: the export's retry schedule lives in the ledger
  (``deliveries.next_attempt_at``, backoff with jitter, ``export.max_attempts``), not in Celery.
  A task lost with a worker or a broker loses no delivery: this sweep (or ``ribnode resend``)
  finds overdue exporting jobs in the ledger and enqueues their export again. Two tasks for one
  job are harmless: a delivery is claimed by one exporter at a time.
- :class:`LeaseSweep`: a worker holds each running job under a lease (``broker.job_lease_s``)
  that a heartbeat renews (:class:`ribnode.workers.jobs.LeaseHeartbeat`). When a whole worker
  is killed (main process and pool: host or container lost), its task message is gone
  (filesystem broker) or held until the Redis visibility timeout, and the job would stay
  "running" forever. This sweep moves such jobs back to "received"
  (:meth:`Ledger.reclaim_running`) and sends them again through the dispatcher's path
  (:func:`ribnode.ledger.dispatch.dispatch`): at start-up, every job this same node name held
  before it restarted; then every half lease, every job whose lease expired. ``ribnode serve``'s
  completion thread reclaims expired leases too. Running a job twice is safe: its outputs have
  deterministic UIDs and each delivery is sent once (``node.export``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, bootsteps
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import SQLAlchemyError

from ribnode.config.settings import Settings
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.dispatch import EnqueueError, dispatch
from ribnode.ledger.store import Ledger, utcnow
from ribnode.workers.queue import enqueue_job, schedule_export

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# What a sweep does: (the first pass, at start; each later pass; seconds between passes).
SweepPlan = tuple[Callable[[], object], Callable[[], object], float]


class PeriodicSweep(bootsteps.StartStopStep):
    """Base of the worker's sweeps; a subclass says what to run in :meth:`plan`."""

    requires = ("celery.worker.components:Pool",)
    thread_name = "ribnode-sweep"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def plan(self, parent: Any, settings: Settings) -> SweepPlan | None:
        """The passes to run for this worker, or None to run nothing."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        settings: Settings | None = getattr(parent.app, "ribnode_settings", None)
        plan = None if settings is None else self.plan(parent, settings)
        if plan is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=plan, name=self.thread_name, daemon=True)
        self._thread.start()

    def _loop(self, first: Callable[[], object], then: Callable[[], object], interval_s: float) -> None:
        first()
        while not self._stop.wait(interval_s):
            then()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


# -- exports -------------------------------------------------------------------------------


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


# -- leases --------------------------------------------------------------------------------


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
