"""The ledger's tables (SQLAlchemy 2 declarative models).

The ledger is the state store of ribnode: the listener writes studies and instances, the
completion thread writes jobs, the workers write job transitions and what they found in each
instance, the exporter writes deliveries and output objects. All times are naive UTC.
Schema changes go through Alembic (``ribnode/ledger/migrations``), never ``create_all``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)
AE = String(16)


class JobState(StrEnum):
    """Job life cycle: received -> queued -> running -> exporting -> done | failed | dead."""

    RECEIVED = "received"  # in the ledger, not yet on the broker
    QUEUED = "queued"  # on the broker
    RUNNING = "running"  # a worker holds it
    EXPORTING = "exporting"  # results built, delivery under way
    DONE = "done"
    FAILED = "failed"  # permanent error in the input: retrying cannot help
    DEAD = "dead"  # retries exhausted


TERMINAL_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.DEAD})


class InstanceState(StrEnum):
    """What the node does with a received instance."""

    PENDING = "pending"  # routed to the pipeline, waiting for its study to complete
    DISPATCHED = "dispatched"  # part of a job
    IGNORED = "ignored"  # kept, acknowledged, not routed (reason in ``ignore_reason``)


class AuditEventName(StrEnum):
    """DICOM PS3.15 A.5.3 audit event names (EventID display names)."""

    APPLICATION_ACTIVITY = "Application Activity"
    INSTANCES_TRANSFERRED = "DICOM Instances Transferred"
    BEGIN_TRANSFERRING = "Begin Transferring DICOM Instances"
    INSTANCES_ACCESSED = "DICOM Instances Accessed"
    SECURITY_ALERT = "Security Alert"


class AuditOutcome:
    """PS3.15 A.5.3 EventOutcomeIndicator (RFC 3881) values."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class Base(DeclarativeBase):
    """Declarative base of the ledger tables."""


class Study(Base):
    """One study, as seen by the listener."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    calling_aet: Mapped[str | None] = mapped_column(AE)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    instance_count: Mapped[int] = mapped_column(default=0)
    duplicate_count: Mapped[int] = mapped_column(default=0)


class Instance(Base):
    """One received SOP instance and its spool file (path relative to the spool folder)."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_study_state", "study_id", "state"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int]
    calling_aet: Mapped[str | None] = mapped_column(AE)
    received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16))
    ignore_reason: Mapped[str | None] = mapped_column(Text)
    duplicate_count: Mapped[int] = mapped_column(default=0)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    # What the worker found when it decoded the instance (issue 2: what the models get).
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    bits_stored: Mapped[int | None]
    photometric: Mapped[str | None] = mapped_column(String(16))
    number_of_frames: Mapped[int | None]
    validated_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    """A unit of work for the workers: the pending instances of one study."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "initial" | "follow-up"
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    enqueue_attempts: Mapped[int] = mapped_column(default=0)
    task_id: Mapped[str | None] = mapped_column(String(64))
    model_versions: Mapped[str] = mapped_column(Text)  # JSON
    last_error: Mapped[str | None] = mapped_column(Text)
    # The worker holding a running job and until when (renewed by its heartbeat); a running
    # job whose lease expired is sent again (its worker died).
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column(index=True)


class JobTransition(Base):
    """One timestamped state change of a job, with the error text when there is one."""

    __tablename__ = "job_transitions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(Text)


class ModelRun(Base):
    """One model's inference on one instance, timed by the worker (``/metrics`` histogram of
    the inference time per model)."""

    __tablename__ = "model_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    model: Mapped[str] = mapped_column(String(32))  # "segmentation" | "suppression"
    version: Mapped[str] = mapped_column(String(64))
    seconds: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime]


class AuditEvent(Base):
    """An audit record named after DICOM PS3.15 A.5.3 events."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[int] = mapped_column(default=AuditOutcome.SUCCESS)
    source_aet: Mapped[str | None] = mapped_column(AE)
    source_host: Mapped[str | None] = mapped_column(String(255))
    destination_aet: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_class_uids: Mapped[str | None] = mapped_column(Text)  # space separated
    instance_count: Mapped[int | None]
    detail: Mapped[str | None] = mapped_column(Text)


class Delivery(Base):
    """Delivery of one job's outputs to one destination (written by the export code)."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|dead
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]


class OutputObject(Base):
    """A DICOM object ribnode created, mapped to its source instance and model."""

    __tablename__ = "output_objects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "sc" | "seg" | "sr"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    source_sop_instance_uid: Mapped[str] = mapped_column(UID)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime]
