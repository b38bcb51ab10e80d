"""The ledger: ribnode's state store (SQLAlchemy 2; SQLite file by default, PostgreSQL by URL).

Every write is one short transaction. The listener calls :meth:`Ledger.record_instance` once per
C-STORE; the completion thread turns quiet studies into jobs; workers move jobs through their
states. Each job transition is timestamped in ``job_transitions`` with its error text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ribnode.config.redact import redact
from ribnode.ledger.engine import make_engine
from ribnode.ledger.schema import (
    TERMINAL_JOB_STATES,
    AuditEvent,
    AuditEventName,
    AuditOutcome,
    Instance,
    InstanceState,
    Job,
    JobState,
    JobTransition,
    ModelRun,
    Study,
)

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

__all__ = [
    "AuditEventName",
    "AuditOutcome",
    "InstanceCheck",
    "InstanceState",
    "JobRef",
    "JobState",
    "Ledger",
    "LedgerError",
    "LedgerSummary",
    "ReceivedInstance",
    "SpooledInstance",
    "idempotency_key",
    "utcnow",
]


class LedgerError(RuntimeError):
    """A ledger operation was asked for something the ledger's state does not allow."""


def utcnow() -> datetime:
    """Naive UTC now: the ledger stores naive UTC so SQLite and PostgreSQL compare alike."""
    return datetime.now(UTC).replace(tzinfo=None)


def idempotency_key(study_uid: str, sop_uids: Sequence[str], model_versions: dict[str, str]) -> str:
    """Job identity: sha256 of the study, the sorted instance set and the model versions."""
    text = "\n".join([study_uid, *sorted(sop_uids), json.dumps(model_versions, sort_keys=True)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReceivedInstance:
    """What the listener knows about an instance it has just written to the spool."""

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    path: str  # relative to the spool folder
    size_bytes: int
    calling_aet: str | None
    routed: bool
    ignore_reason: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None


@dataclass(frozen=True)
class JobRef:
    """A job as the dispatcher and workers see it."""

    id: int
    study_instance_uid: str
    idempotency_key: str
    state: str
    kind: str
    attempts: int


@dataclass(frozen=True)
class SpooledInstance:
    """An instance of a job, with its spool path (relative to the spool folder)."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str


@dataclass(frozen=True)
class InstanceCheck:
    """What a worker found when it decoded an instance: what the models would be given."""

    rows: int | None = None
    columns: int | None = None
    bits_stored: int | None = None
    photometric: str | None = None
    transfer_syntax_uid: str | None = None
    number_of_frames: int | None = None
    error: str | None = None


@dataclass
class LedgerSummary:
    """Counts for ``ribnode status``."""

    studies: int = 0
    instances: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    jobs: dict[str, int] = field(default_factory=dict)
    last_errors: list[tuple[int, str, str | None, datetime]] = field(default_factory=list)
    security_alerts: int = 0


class Ledger:
    """Typed access to the ledger tables. Thread safe: one short session per call."""

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; serialising writers in-process avoids busy waits.
        self._write_lock = threading.Lock() if url.startswith("sqlite") else None
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from ribnode.ledger.migrations import upgrade

        upgrade(self.engine)

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction, committed on exit (serialised in-process for SQLite)."""
        if self._write_lock is None:
            with self._sessions.begin() as session:
                yield session
            return
        with self._write_lock, self._sessions.begin() as session:
            yield session

    # -- listener (hot path: SQLAlchemy Core, one short transaction) ------------------------

    @contextmanager
    def _write_core(self) -> Iterator[Connection]:
        """A Core write transaction (no ORM unit of work: the C-STORE path is per instance)."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    def is_known(self, sop_instance_uid: str) -> bool:
        """True when an instance with this SOP Instance UID is already in the ledger."""
        with self.engine.connect() as conn:
            found = conn.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid))
        return found is not None

    def record_instance(self, rec: ReceivedInstance) -> bool:
        """Record a spooled instance. Returns False (and counts it) when it is a duplicate."""
        try:
            with self._write_core() as s:
                now = utcnow()
                study_id = self._study_id(s, rec, now)
                state = InstanceState.PENDING if rec.routed else InstanceState.IGNORED
                s.execute(insert(Instance).values(**_instance_values(rec, study_id, now, state)))
                # One SQL update, not read-modify-write: concurrent associations add up.
                s.execute(
                    update(Study)
                    .where(Study.id == study_id)
                    .values(instance_count=Study.instance_count + 1, last_received_at=now)
                )
            return True
        except IntegrityError:
            # Two copies in flight at once: the unique SOP Instance UID decides.
            if not self.is_known(rec.sop_instance_uid):
                raise
            self.count_duplicate(rec.sop_instance_uid)
            return False

    def _study_id(self, s: Connection, rec: ReceivedInstance, now: datetime) -> int:
        """The study's id, inserting it if new (INSERT .. ON CONFLICT DO NOTHING, so two
        associations opening the same study at once both succeed)."""
        query = select(Study.id).where(Study.study_instance_uid == rec.study_instance_uid)
        found = s.scalar(query)
        if found is not None:
            return found
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        s.execute(
            insert(Study)
            .values(
                study_instance_uid=rec.study_instance_uid,
                patient_id=rec.patient_id,
                accession_number=rec.accession_number,
                calling_aet=rec.calling_aet,
                first_received_at=now,
                last_received_at=now,
                instance_count=0,
                duplicate_count=0,
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
        study_id = s.scalar(query)
        if study_id is None:
            raise LedgerError(f"study {rec.study_instance_uid} vanished while being created")
        return study_id

    def count_duplicate(self, sop_instance_uid: str) -> None:
        """Count a second copy of an instance already received (it is not processed again)."""
        with self._write() as s:
            study_id = s.scalar(select(Instance.study_id).where(Instance.sop_instance_uid == sop_instance_uid))
            if study_id is None:
                raise LedgerError(f"no instance {sop_instance_uid!r} to count a duplicate of")
            s.execute(
                update(Instance)
                .where(Instance.sop_instance_uid == sop_instance_uid)
                .values(duplicate_count=Instance.duplicate_count + 1)
            )
            s.execute(
                update(Study)
                .where(Study.id == study_id)
                .values(duplicate_count=Study.duplicate_count + 1, last_received_at=utcnow())
            )

    def audit(
        self,
        event_name: AuditEventName | str,
        outcome: int = AuditOutcome.SUCCESS,
        **fields: Any,
    ) -> None:
        """Record a PS3.15 audit event (``fields``: columns of ``audit_events``); credentials
        in its text (a URL with a password) are masked."""
        for name in ("detail", "destination_aet", "source_host"):
            if isinstance(fields.get(name), str):
                fields[name] = redact(fields[name])
        with self._write() as s:
            s.add(AuditEvent(at=utcnow(), event=str(event_name), outcome=outcome, **fields))

    def audit_events(self, event_name: AuditEventName | str | None = None) -> list[AuditEvent]:
        """Audit events, oldest first, optionally of one kind."""
        query = select(AuditEvent).order_by(AuditEvent.id)
        if event_name is not None:
            query = query.where(AuditEvent.event == str(event_name))
        with self.session() as s:
            return list(s.scalars(query))

    def instance(self, sop_instance_uid: str) -> Instance | None:
        """The ledger row of one instance (detached)."""
        with self.session() as s:
            return s.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))

    def study(self, study_instance_uid: str) -> Study | None:
        """The ledger row of one study (detached)."""
        with self.session() as s:
            return s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))

    # -- completion and dispatch ------------------------------------------------------------

    def due_studies(self, quiet_period_s: float, max_wait_s: float) -> list[int]:
        """Studies with pending instances that are quiet for ``quiet_period_s`` or whose oldest
        pending instance waited ``max_wait_s``."""
        now = utcnow()
        quiet_before = now - timedelta(seconds=quiet_period_s)
        wait_before = now - timedelta(seconds=max_wait_s)
        oldest = func.min(Instance.received_at)
        query = (
            select(Study.id)
            .join(Instance, Instance.study_id == Study.id)
            .where(Instance.state == InstanceState.PENDING)
            .group_by(Study.id, Study.last_received_at)
            .having((Study.last_received_at <= quiet_before) | (oldest <= wait_before))
        )
        with self.session() as s:
            return list(s.scalars(query))

    def seconds_until_due(self, quiet_period_s: float, max_wait_s: float) -> float | None:
        """Seconds until the next study with pending instances becomes due (<= 0: due now);
        None when nothing is pending. Lets the completion thread wake exactly on time."""
        query = (
            select(Study.last_received_at, func.min(Instance.received_at))
            .join(Instance, Instance.study_id == Study.id)
            .where(Instance.state == InstanceState.PENDING)
            .group_by(Study.id, Study.last_received_at)
        )
        with self.session() as s:
            rows = s.execute(query).all()
        if not rows:
            return None
        quiet, wait = timedelta(seconds=quiet_period_s), timedelta(seconds=max_wait_s)
        due = min(min(last + quiet, oldest + wait) for last, oldest in rows)
        return (due - utcnow()).total_seconds()

    def request_rerun(self, study_instance_uid: str, sop_instance_uids: Sequence[str] | None = None) -> int:
        """Process a study (or some of its instances) again on purpose (``ribnode rerun``,
        ``spool.rerun_on_resend``): its routed, already dispatched instances go back to
        "pending" and the study is due after the quiet period, so the completion thread makes a
        "rerun" job of them. Returns how many instances were put back.

        Raises :class:`LedgerError` for an unknown study, or while a job of the study is not
        finished (its instances are still being worked on)."""
        with self._write() as s:
            study = s.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
            if study is None:
                raise LedgerError(f"no study {study_instance_uid!r} in the ledger")
            busy = list(
                s.scalars(
                    select(Job.id).where(
                        Job.study_id == study.id, Job.state.not_in([str(t) for t in TERMINAL_JOB_STATES])
                    )
                )
            )
            if busy:
                raise LedgerError(
                    f"study {study_instance_uid} has unfinished job(s) {busy}; rerun it when they are done"
                )
            query = select(Instance).where(Instance.study_id == study.id, Instance.state == InstanceState.DISPATCHED)
            if sop_instance_uids is not None:
                query = query.where(Instance.sop_instance_uid.in_(list(sop_instance_uids)))
            instances = list(s.scalars(query))
            for inst in instances:
                inst.state = InstanceState.PENDING  # job_id kept: create_job sees a rerun
            if instances:
                study.last_received_at = utcnow()
            return len(instances)

    def create_job(self, study_id: int, model_versions: dict[str, str]) -> JobRef | None:
        """Make a job of the study's pending instances (committed before it is enqueued).

        Returns None when nothing is pending (another dispatcher took them)."""
        with self._write() as s:
            study = s.get(Study, study_id)
            if study is None:
                raise LedgerError(f"no study with id {study_id}")
            pending = list(
                s.scalars(
                    select(Instance).where(Instance.study_id == study_id, Instance.state == InstanceState.PENDING)
                )
            )
            if not pending:
                return None
            previous = s.scalar(select(func.count(Job.id)).where(Job.study_id == study_id))
            # An instance that was in a job before is pending again on purpose (request_rerun):
            # the same instances and models make a new job, told apart by the job count.
            rerun = any(i.job_id is not None for i in pending)
            key = idempotency_key(
                study.study_instance_uid,
                [i.sop_instance_uid for i in pending],
                {**model_versions, "rerun": str(previous)} if rerun else model_versions,
            )
            now = utcnow()
            job = Job(
                study_id=study_id,
                idempotency_key=key,
                kind="rerun" if rerun else "follow-up" if previous else "initial",
                state=JobState.RECEIVED,
                created_at=now,
                updated_at=now,
                model_versions=json.dumps(model_versions, sort_keys=True),
            )
            s.add(job)
            s.flush()
            for inst in pending:
                inst.state = InstanceState.DISPATCHED
                inst.job_id = job.id
            s.add(JobTransition(job_id=job.id, from_state=None, to_state=JobState.RECEIVED, at=now))
            return _job_ref(job, study.study_instance_uid)

    def jobs_in_state(self, state: JobState | str) -> list[JobRef]:
        """Jobs in one state, oldest first."""
        query = (
            select(Job, Study.study_instance_uid)
            .join(Study, Study.id == Job.study_id)
            .where(Job.state == str(state))
            .order_by(Job.id)
        )
        with self.session() as s:
            return [_job_ref(job, uid) for job, uid in s.execute(query)]

    def job(self, job_id: int) -> JobRef:
        """One job; raises :class:`LedgerError` when it does not exist."""
        query = select(Job, Study.study_instance_uid).join(Study).where(Job.id == job_id)
        with self.session() as s:
            row = s.execute(query).first()
        if row is None:
            raise LedgerError(f"no job with id {job_id}")
        return _job_ref(row[0], row[1])

    def job_row(self, job_id: int) -> Job:
        """The full ledger row of a job (detached)."""
        with self.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise LedgerError(f"no job with id {job_id}")
        return job

    def mark_queued(self, job_id: int, task_id: str | None = None) -> bool:
        """received -> queued, committed *before* the task is published (so a worker always
        finds the job queued, never still received). Returns False when the job is not
        "received" (another dispatcher took it): the caller must then not publish."""
        with self._write() as s:
            if not self._move(s, job_id, JobState.QUEUED, {JobState.RECEIVED}):
                return False
            values: dict[str, Any] = {"enqueue_attempts": Job.enqueue_attempts + 1}
            if task_id is not None:
                values["task_id"] = task_id
            s.execute(update(Job).where(Job.id == job_id).values(**values))
            return True

    def record_task_id(self, job_id: int, task_id: str) -> None:
        """The broker accepted the job's task under ``task_id``."""
        with self._write() as s:
            s.execute(update(Job).where(Job.id == job_id).values(task_id=task_id))

    def unqueue(self, job_id: int, error: str) -> bool:
        """queued -> received with the error: publishing failed after :meth:`mark_queued`,
        so the dispatcher's retry loop sends it again. No-op (False) when a worker already
        holds the job (the publish went through after all)."""
        with self._write() as s:
            return self._move(s, job_id, JobState.RECEIVED, {JobState.QUEUED}, error)

    # -- leases: a running job belongs to one worker while its lease is renewed ------------

    def claim(self, job_id: int, worker: str, lease_s: float, from_states: set[JobState]) -> bool:
        """Move a job to "running" for ``worker`` with a lease of ``lease_s`` seconds, if it is
        in one of ``from_states``. Returns False when it was not, or when the job is running
        under another worker's valid lease (a duplicate delivery while its holder is alive)."""
        with self._write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise LedgerError(f"no job with id {job_id}")
            held = job.state == JobState.RUNNING and job.worker not in (None, worker)
            if held and job.lease_until is not None and job.lease_until > utcnow():
                logger.info("job %d is held by %s until %s", job_id, job.worker, job.lease_until)
                return False
            if not self._move(s, job_id, JobState.RUNNING, from_states):
                return False
            job.worker = worker
            job.lease_until = utcnow() + timedelta(seconds=lease_s)
            return True

    def renew_lease(self, job_id: int, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease on a running job; False when the job is no longer
        running for that worker (finished, or reclaimed after the lease expired)."""
        with self._write() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == str(JobState.RUNNING), Job.worker == worker)
                .values(lease_until=utcnow() + timedelta(seconds=lease_s))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def defer_retry(self, job_id: int, worker: str, delay_s: float, lease_s: float, error: str) -> bool:
        """A running job failed and ``worker`` re-sends it after ``delay_s``: move it to
        "queued" with a lease that ends ``lease_s`` after the retry is due. The retry message
        (a Celery ETA task) waits in one worker's memory; if that worker dies, nothing else
        would ever run the job, so :meth:`reclaim_running` sends it again once that lease ends.
        False when the job was not running."""
        with self._write() as s:
            if not self._move(s, job_id, JobState.QUEUED, {JobState.RUNNING}, error):
                return False
            job = s.get(Job, job_id)
            assert job is not None  # _move found it
            job.worker = worker
            job.lease_until = utcnow() + timedelta(seconds=delay_s + lease_s)
            return True

    def reclaim_running(
        self, lease_s: float, worker: str | None = None, started_at: datetime | None = None
    ) -> list[JobRef]:
        """Move back to "received" (so the dispatcher sends them again) the jobs whose holder
        is gone: running jobs with an expired lease (no lease: not updated for ``lease_s``),
        queued retries whose lease ended before a worker took them (:meth:`defer_retry`) and,
        when ``worker`` is given, the jobs ``worker`` last held before ``started_at`` (the same
        worker restarted: its predecessor died, with any retry it was holding). One
        transaction, so a heartbeat cannot renew a lease between the check and the move. Each
        is audited."""
        now = utcnow()
        expired = (Job.lease_until < now) | (
            Job.lease_until.is_(None) & (Job.updated_at < now - timedelta(seconds=lease_s))
        )
        retry_lost = Job.lease_until < now
        if worker is not None and started_at is not None:
            renewed_before = Job.lease_until < started_at + timedelta(seconds=lease_s)
            expired = expired | ((Job.worker == worker) & renewed_before)
            retry_lost = retry_lost | ((Job.worker == worker) & (Job.updated_at < started_at))
        lost = ((Job.state == str(JobState.RUNNING)) & expired) | (
            (Job.state == str(JobState.QUEUED)) & Job.lease_until.is_not(None) & retry_lost
        )
        query = (
            select(Job, Study.study_instance_uid)
            .join(Study, Study.id == Job.study_id)
            .where(lost)
            .order_by(Job.id)
            .with_for_update()
        )
        with self.session() as s:  # the usual answer is "none": no write lock for it
            if s.scalar(select(func.count(Job.id)).where(lost)) == 0:
                return []
        moved: list[JobRef] = []
        with self._write() as s:
            for job, study_uid in s.execute(query).all():
                holder, until, state = job.worker, job.lease_until, job.state
                what = "the job" if state == JobState.RUNNING else "the job's retry"
                error = f"worker {holder or 'unknown'} lost {what} (lease until {until}); sent again"
                if self._send_again(s, job, study_uid, {JobState.RUNNING, JobState.QUEUED}, error, now):
                    moved.append(_job_ref(job, study_uid))
        if moved:
            logger.warning("reclaimed running jobs %s (their worker is gone)", [j.id for j in moved])
        return moved

    def reclaim_stale_queued(self, queued_timeout_s: float) -> list[JobRef]:
        """Move back to "received" (so the dispatcher publishes them again) the jobs "queued"
        for longer than ``queued_timeout_s`` with no worker holding them: their message was
        lost (Redis restarted without persistence, or ``serve`` killed while publishing).
        Deferred retries (queued with a lease) are :meth:`reclaim_running`'s. Publishing again
        is harmless if the first message still arrives: the task id is the job's idempotency
        key and a worker runs a job only from a claimable state. Each is audited."""
        now = utcnow()
        stale = (
            (Job.state == str(JobState.QUEUED))
            & Job.lease_until.is_(None)
            & (Job.updated_at < now - timedelta(seconds=queued_timeout_s))
        )
        with self.session() as s:  # the usual answer is "none": no write lock for it
            if s.scalar(select(func.count(Job.id)).where(stale)) == 0:
                return []
        query = (
            select(Job, Study.study_instance_uid).join(Study, Study.id == Job.study_id).where(stale).order_by(Job.id)
        )
        moved: list[JobRef] = []
        with self._write() as s:
            for job, study_uid in s.execute(query).all():
                error = (
                    f"queued since {job.updated_at:%Y-%m-%d %H:%M:%S}Z and no worker took it "
                    "(broker message lost?); published again"
                )
                if self._send_again(s, job, study_uid, {JobState.QUEUED}, error, now):
                    moved.append(_job_ref(job, study_uid))
        if moved:
            logger.warning("re-publishing queued jobs %s (no worker took them)", [j.id for j in moved])
        return moved

    def record_enqueue_error(self, job_id: int, error: str) -> None:
        """The broker refused the task: the job stays "received" with the error."""
        with self._write() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    last_error=redact(error),
                    enqueue_attempts=Job.enqueue_attempts + 1,
                    updated_at=utcnow(),
                )
            )

    def record_job_error(self, job_id: int, error: str) -> None:
        """Note an error on a job without moving it (e.g. a worker could not even start it)."""
        with self._write() as s:
            s.execute(update(Job).where(Job.id == job_id).values(last_error=redact(error), updated_at=utcnow()))

    def transition(
        self,
        job_id: int,
        to_state: JobState,
        error: str | None = None,
        from_states: set[JobState] | None = None,
    ) -> bool:
        """Move a job to ``to_state`` if it is in one of ``from_states`` (any non-terminal
        state by default). Returns False when the job was not in such a state."""
        allowed = from_states or (set(JobState) - TERMINAL_JOB_STATES)
        with self._write() as s:
            return self._move(s, job_id, to_state, allowed, error)

    @classmethod
    def _send_again(
        cls, s: Session, job: Job, study_uid: str, allowed: set[JobState], error: str, now: datetime
    ) -> bool:
        """Move a lost job back to "received" (the dispatcher publishes it again), audited as a
        minor failure. False when it had already left ``allowed``."""
        if not cls._move(s, job.id, JobState.RECEIVED, allowed, error):
            return False
        s.add(
            AuditEvent(
                at=now,
                event=str(AuditEventName.APPLICATION_ACTIVITY),
                outcome=AuditOutcome.MINOR_FAILURE,
                study_instance_uid=study_uid,
                detail=f"job {job.id}: {error}",
            )
        )
        return True

    @staticmethod
    def _move(
        s: Session,
        job_id: int,
        to_state: JobState,
        allowed: set[JobState],
        error: str | None = None,
    ) -> bool:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LedgerError(f"no job with id {job_id}")
        if job.state not in {str(a) for a in allowed}:
            return False
        now = utcnow()
        # The state check again, inside the UPDATE: SQLite ignores FOR UPDATE, so two writers
        # that both read the old state (two dispatchers of one reclaimed job) must not both move it.
        moved = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == job.state)
            .values(state=str(to_state), updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            return False
        error = redact(error)
        s.add(JobTransition(job_id=job_id, from_state=job.state, to_state=to_state, at=now, error=error))
        job.state = str(to_state)
        job.updated_at = now
        if error is not None:
            job.last_error = error
        if to_state == JobState.RUNNING:
            job.attempts += 1
        else:
            job.lease_until = None  # only a running job holds a lease
        return True

    def transitions(self, job_id: int) -> list[JobTransition]:
        """A job's transitions, oldest first."""
        query = select(JobTransition).where(JobTransition.job_id == job_id).order_by(JobTransition.id)
        with self.session() as s:
            return list(s.scalars(query))

    # -- workers -----------------------------------------------------------------------------

    def job_instances(self, job_id: int) -> list[SpooledInstance]:
        """The instances of a job, in the order they were received."""
        query = select(Instance).where(Instance.job_id == job_id).order_by(Instance.id)
        with self.session() as s:
            return [
                SpooledInstance(
                    id=i.id,
                    sop_instance_uid=i.sop_instance_uid,
                    sop_class_uid=i.sop_class_uid,
                    transfer_syntax_uid=i.transfer_syntax_uid,
                    path=i.path,
                )
                for i in s.scalars(query)
            ]

    def record_check(self, instance_id: int, check: InstanceCheck) -> None:
        """Store what a worker found when it decoded an instance."""
        values: dict[str, Any] = {
            "rows": check.rows,
            "columns": check.columns,
            "bits_stored": check.bits_stored,
            "photometric": check.photometric,
            "number_of_frames": check.number_of_frames,
            "error": check.error,
            "validated_at": utcnow(),
        }
        if check.transfer_syntax_uid:
            values["transfer_syntax_uid"] = check.transfer_syntax_uid
        with self._write() as s:
            s.execute(update(Instance).where(Instance.id == instance_id).values(**values))

    def record_model_runs(self, instance_id: int, runs: Sequence[tuple[str, str, float]]) -> None:
        """Store how long each model (name, version, seconds) took on an instance."""
        if not runs:
            return
        now = utcnow()
        rows = [{"instance_id": instance_id, "model": m, "version": v, "seconds": sec, "at": now} for m, v, sec in runs]
        with self._write() as s:
            s.execute(insert(ModelRun), rows)

    # -- status ------------------------------------------------------------------------------

    def summary(self, errors: int = 10) -> LedgerSummary:
        """Studies, instances and jobs by state, and the last job errors."""
        out = LedgerSummary()
        with self.session() as s:
            out.studies = s.scalar(select(func.count(Study.id))) or 0
            rows = s.execute(select(Instance.state, func.count(Instance.id)).group_by(Instance.state))
            out.instances = {state: n for state, n in rows}
            out.duplicates = s.scalar(select(func.coalesce(func.sum(Study.duplicate_count), 0))) or 0
            out.jobs = {st: n for st, n in s.execute(select(Job.state, func.count(Job.id)).group_by(Job.state))}
            last = s.execute(
                select(Job.id, Job.state, Job.last_error, Job.updated_at)
                .where(Job.last_error.is_not(None))
                .order_by(Job.updated_at.desc())
                .limit(errors)
            )
            out.last_errors = [(i, st, err, at) for i, st, err, at in last]
            out.security_alerts = (
                s.scalar(
                    select(func.count(AuditEvent.id)).where(AuditEvent.event == str(AuditEventName.SECURITY_ALERT))
                )
                or 0
            )
        return out


def _instance_values(rec: ReceivedInstance, study_id: int, now: datetime, state: InstanceState) -> dict[str, Any]:
    return {
        "study_id": study_id,
        "series_instance_uid": rec.series_instance_uid,
        "sop_instance_uid": rec.sop_instance_uid,
        "sop_class_uid": rec.sop_class_uid,
        "transfer_syntax_uid": rec.transfer_syntax_uid,
        "modality": rec.modality,
        "path": rec.path,
        "size_bytes": rec.size_bytes,
        "calling_aet": rec.calling_aet,
        "received_at": now,
        "state": str(state),
        "ignore_reason": rec.ignore_reason,
        "duplicate_count": 0,
    }


def _job_ref(job: Job, study_uid: str) -> JobRef:
    return JobRef(
        id=job.id,
        study_instance_uid=study_uid,
        idempotency_key=job.idempotency_key,
        state=job.state,
        kind=job.kind,
        attempts=job.attempts,
    )
