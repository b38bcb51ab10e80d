"""Study completion and dispatch: quiet studies become jobs, jobs go to the broker.

A background thread (:class:`StudyCompletion`) polls the ledger. A study whose last instance
arrived ``quiet_period_s`` ago, or whose oldest pending instance waited ``max_wait_s``, becomes a
job of its pending instances, committed in the ledger *before* the task is published. An
instance that arrives after its study was dispatched is pending again and makes a follow-up job
with only the new instances. When the broker refuses a task, the job stays "received" with the
error and is retried every ``enqueue_retry_s``; jobs left "received" by a crash are sent on start.

Every job reads received -> queued -> running: :func:`ribnode.ledger.dispatch.dispatch` commits
"queued" *before* it publishes (a worker can take the task the instant it is published), and
moves the job back to "received" with the error when publishing fails. Each pass also reclaims
jobs left "running" by a dead worker (their lease, ``broker.job_lease_s``, expired), and jobs
"queued" for longer than ``broker.queued_timeout_s`` that no worker took (their message was
lost): they go back to "received" and are sent again like any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from sqlalchemy.exc import SQLAlchemyError

from ribnode.config.settings import Settings
from ribnode.ledger.dispatch import Enqueue, EnqueueError, dispatch
from ribnode.ledger.store import JobRef, JobState, Ledger

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class StudyCompletion:
    """The completion thread of ``ribnode serve``. ``tick()`` does one pass (tests call it).

    ``enqueue`` publishes a job's task (:data:`ribnode.ledger.dispatch.Enqueue`); ``versions``
    is the model fingerprint (``ribnode.models.fingerprint.model_versions``), part of each
    job's idempotency key. Both are passed in by the composition root (``ribnode.cli``): the
    node neither imports the workers nor reads model files. Without ``versions`` the key
    covers the study and its instances only."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        enqueue: Enqueue,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        self.spool = settings.spool
        self.retry_s = settings.broker.enqueue_retry_s
        self.lease_s = settings.broker.job_lease_s
        self.queued_timeout_s = settings.broker.queued_timeout_s
        self.ledger = ledger
        self.enqueue = enqueue
        self.versions = dict(versions or {})
        self._next_try: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[JobRef]:
        """Create jobs for due studies, reclaim jobs whose worker died and (re)send unsent
        jobs; returns the jobs created."""
        created = []
        self.ledger.reclaim_running(self.lease_s)
        self.ledger.reclaim_stale_queued(self.queued_timeout_s)
        for study_id in self.ledger.due_studies(self.spool.quiet_period_s, self.spool.max_wait_s):
            job = self.ledger.create_job(study_id, self.versions)
            if job is not None:
                logger.info("study %s complete: job %d (%s)", job.study_instance_uid, job.id, job.kind)
                created.append(job)
        for job in self.ledger.jobs_in_state(JobState.RECEIVED):
            self._send(job)
        return created

    def _send(self, job: JobRef) -> None:
        now = time.monotonic()
        if self._next_try.get(job.id, 0.0) > now:
            return
        try:
            dispatch(self.ledger, self.enqueue, job)
        except EnqueueError as exc:
            self._next_try[job.id] = now + self.retry_s
            error = f"enqueue failed, will retry in {self.retry_s:g} s: {exc}"
            logger.warning("job %d: %s", job.id, error)
            self.ledger.record_job_error(job.id, error)
            return
        self._next_try.pop(job.id, None)

    def _next_wait(self) -> float:
        """Sleep until the next study is due, at most one poll interval (new instances can
        only make a study due later, so waking on the earliest due time never misses one)."""
        due_in = self.ledger.seconds_until_due(self.spool.quiet_period_s, self.spool.max_wait_s)
        poll = self.spool.completion_poll_s
        if due_in is None:
            return poll
        return min(poll, max(0.005, due_in + 0.005))

    def run(self) -> None:
        """Poll until ``stop()``; a ledger error is logged and the next poll tries again."""
        while not self._stop.is_set():
            wait = self.spool.completion_poll_s
            try:
                self.tick()
                wait = self._next_wait()
            except SQLAlchemyError as exc:
                logger.error("completion pass failed (ledger): %s", exc)
            self._stop.wait(wait)

    def start(self) -> None:
        """Run in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="study-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> StudyCompletion:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
