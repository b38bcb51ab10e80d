"""Ledger operations of the export: output objects and per-destination deliveries.

The tables (``deliveries``, ``output_objects``) belong to ``ribnode.ledger.schema``; this module
adds the operations the exporter needs on top of :class:`ribnode.ledger.store.Ledger`, each one
short transaction.

Concurrency: two exporters may look at the same job (a task delivered twice after a worker
died, a ``ribnode resend`` racing a retry). :meth:`DeliveryLedger.claim` is a conditional
UPDATE, so only one of them attempts a given delivery; the claim is a lease
(``next_attempt_at`` moves forward) that expires if its holder dies mid-send.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update

from ribnode.config.redact import redact
from ribnode.ledger.schema import Delivery, Job, JobState, OutputObject
from ribnode.ledger.store import Ledger, utcnow

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class DeliveryState:
    """States of one delivery (one job to one destination)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class OutputRecord:
    """A created DICOM object, as recorded in ``output_objects``."""

    sop_instance_uid: str
    kind: str  # "sc" | "seg" | "sr"
    source_sop_instance_uid: str
    model_name: str
    model_version: str
    weights_sha256: str
    path: str  # relative to ``export.staging_dir``


@dataclass(frozen=True)
class DeliveryRef:
    """One delivery row, detached from the session."""

    id: int
    job_id: int
    destination: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


@dataclass
class DestinationStatus:
    """How deliveries to one destination stand (``ribnode status``)."""

    name: str
    deliveries: dict[str, int] = field(default_factory=dict)  # by state
    last_error: str | None = None
    next_attempt_at: datetime | None = None


def _ref(row: Delivery) -> DeliveryRef:
    return DeliveryRef(
        id=row.id,
        job_id=row.job_id,
        destination=row.destination,
        state=row.state,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
    )


class DeliveryLedger:
    """Output objects and deliveries of jobs, on an open :class:`Ledger`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # The ledger's write transaction (serialised for SQLite); the node package shares it.
    def _write(self):  # type: ignore[no-untyped-def]
        return self.ledger._write()  # noqa: SLF001

    # -- output objects -------------------------------------------------------------------
    def record_outputs(self, job_id: int, records: Sequence[OutputRecord]) -> None:
        """Insert or update (same SOP Instance UID: a re-run) the job's created objects."""
        now = utcnow()
        with self._write() as s:
            for rec in records:
                row = s.scalar(select(OutputObject).where(OutputObject.sop_instance_uid == rec.sop_instance_uid))
                if row is None:
                    row = OutputObject(sop_instance_uid=rec.sop_instance_uid)
                    s.add(row)
                row.kind = rec.kind
                row.job_id = job_id
                row.source_sop_instance_uid = rec.source_sop_instance_uid
                row.model_name = rec.model_name[:128]
                row.model_version = rec.model_version[:64]
                row.weights_sha256 = rec.weights_sha256[:64]
                row.path = rec.path
                row.created_at = now

    def outputs(self, job_id: int) -> list[OutputObject]:
        """The job's created objects, in the order they were recorded (SC, SEG, SR...)."""
        query = select(OutputObject).where(OutputObject.job_id == job_id).order_by(OutputObject.id)
        with self.ledger.session() as s:
            return list(s.scalars(query))

    def earlier_outputs(self, source_sop_instance_uid: str) -> dict[str, list[dict[str, str]]]:
        """What earlier runs made from one source instance, by kind, newest first: each with
        ``sop_instance_uid``, ``series_instance_uid``, ``study_instance_uid`` (from the staged
        path ``<Study>/<Series>/<SOP>.dcm``), ``sop_class_uid`` (of the kind) and ``path``
        (relative to ``export.staging_dir``). A re-run's objects name what they replace
        (``dicom_sr.build_outputs(previous=...)``)."""
        classes = {
            "sc": "1.2.840.10008.5.1.4.1.1.7",
            "seg": "1.2.840.10008.5.1.4.1.1.66.4",
            "sr": "1.2.840.10008.5.1.4.1.1.88.34",
        }
        query = (
            select(OutputObject)
            .where(OutputObject.source_sop_instance_uid == source_sop_instance_uid)
            .order_by(OutputObject.created_at.desc(), OutputObject.id.desc())
        )
        found: dict[str, list[dict[str, str]]] = {}
        with self.ledger.session() as s:
            for row in s.scalars(query):
                parts = row.path.replace("\\", "/").split("/")
                if len(parts) < 3 or row.kind not in classes:
                    continue
                found.setdefault(row.kind, []).append(
                    {
                        "sop_instance_uid": row.sop_instance_uid,
                        "series_instance_uid": parts[-2],
                        "study_instance_uid": parts[-3],
                        "sop_class_uid": classes[row.kind],
                        "path": row.path,
                    }
                )
        return found

    # -- deliveries -----------------------------------------------------------------------
    def ensure(self, job_id: int, destinations: Sequence[str]) -> list[DeliveryRef]:
        """Create a pending delivery for each destination that has none yet; all of the job's."""
        with self._write() as s:
            have = set(s.scalars(select(Delivery.destination).where(Delivery.job_id == job_id)))
            for name in destinations:
                if name not in have:
                    s.add(
                        Delivery(
                            job_id=job_id,
                            destination=name,
                            state=DeliveryState.PENDING,
                            attempts=0,
                            next_attempt_at=None,
                        )
                    )
        return self.deliveries(job_id)

    def deliveries(self, job_id: int) -> list[DeliveryRef]:
        """All deliveries of a job, by id."""
        query = select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)
        with self.ledger.session() as s:
            return [_ref(row) for row in s.scalars(query)]

    def claim(self, delivery_id: int, lease_s: float, now: datetime | None = None) -> bool:
        """Take a due pending delivery for one attempt (counts the attempt).

        True when this caller won it: the row was pending and due, and its ``next_attempt_at``
        now lies ``lease_s`` ahead, so nobody else attempts it until then.
        """
        now = now or utcnow()
        with self._write() as s:
            result = s.execute(
                update(Delivery)
                .where(
                    Delivery.id == delivery_id,
                    Delivery.state == DeliveryState.PENDING,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                )
                .values(
                    attempts=Delivery.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=lease_s),
                )
            )
            return bool(result.rowcount)

    def mark_delivered(self, delivery_id: int) -> None:
        """The destination has every object of the job."""
        now = utcnow()
        with self._write() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(state=DeliveryState.DELIVERED, delivered_at=now, next_attempt_at=None, last_error=None)
            )

    def mark_failed(self, delivery_id: int, error: str, next_attempt_at: datetime | None) -> None:
        """An attempt failed: retry at ``next_attempt_at``, or dead when it is None."""
        values: dict[str, object] = {"last_error": redact(error), "next_attempt_at": next_attempt_at}
        if next_attempt_at is None:
            values["state"] = DeliveryState.DEAD
        with self._write() as s:
            s.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))

    def reset(self, job_id: int, destinations: Sequence[str]) -> list[DeliveryRef]:
        """For a re-send: every listed destination pending again, attempts zero, due now."""
        self.ensure(job_id, destinations)
        with self._write() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.job_id == job_id, Delivery.destination.in_(list(destinations)))
                .values(
                    state=DeliveryState.PENDING, attempts=0, last_error=None, next_attempt_at=None, delivered_at=None
                )
            )
        return self.deliveries(job_id)

    def jobs_due(self, now: datetime | None = None) -> list[int]:
        """Exporting jobs with a pending delivery that is due (for a sweeper that re-enqueues
        export tasks lost with a broker or a worker)."""
        now = now or utcnow()
        query = (
            select(Delivery.job_id)
            .join(Job, Job.id == Delivery.job_id)
            .where(
                Job.state == str(JobState.EXPORTING),
                Delivery.state == DeliveryState.PENDING,
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            )
            .distinct()
            .order_by(Delivery.job_id)
        )
        with self.ledger.session() as s:
            return list(s.scalars(query))

    def pending_jobs(self) -> dict[int, datetime | None]:
        """Exporting jobs with a pending delivery, and when the earliest one is due (None: now).
        A worker that starts schedules all of them: their retry tasks may have died with a
        killed worker."""
        query = (
            select(Delivery.job_id, func.min(Delivery.next_attempt_at))
            .join(Job, Job.id == Delivery.job_id)
            .where(Job.state == str(JobState.EXPORTING), Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.job_id)
            .order_by(Delivery.job_id)
        )
        with self.ledger.session() as s:
            return {job_id: due for job_id, due in s.execute(query)}

    def destination_status(self) -> list[DestinationStatus]:
        """Per destination: deliveries by state, the latest error and the next attempt due,
        for ``ribnode status`` (an outage shows here while its retries run)."""
        counts = select(Delivery.destination, Delivery.state, func.count(Delivery.id)).group_by(
            Delivery.destination, Delivery.state
        )
        next_due = (
            select(Delivery.destination, func.min(Delivery.next_attempt_at))
            .where(Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.destination)
        )
        # the latest failure: a pending delivery whose next attempt is furthest away was the
        # last to fail; otherwise the newest dead one
        errors = (
            select(Delivery.destination, Delivery.last_error)
            .where(Delivery.last_error.is_not(None), Delivery.state != DeliveryState.DELIVERED)
            .order_by(
                (Delivery.state == DeliveryState.PENDING).desc(), Delivery.next_attempt_at.desc(), Delivery.id.desc()
            )
        )
        out: dict[str, DestinationStatus] = {}
        with self.ledger.session() as s:
            for name, state, n in s.execute(counts):
                out.setdefault(name, DestinationStatus(name)).deliveries[state] = n
            for name, due in s.execute(next_due):
                out[name].next_attempt_at = due
            for name, error in s.execute(errors):
                if out[name].last_error is None:
                    out[name].last_error = error
        return [out[name] for name in sorted(out)]
