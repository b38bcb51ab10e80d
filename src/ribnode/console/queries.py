"""Every read the QA console makes of the ledger, and the audit events it writes.

The one module of the console that knows the ledger's tables: the pages get plain frozen
dataclasses from here, never ORM rows, so the ledger can change shape without the templates
noticing. All reads are single short sessions of :class:`Ledger`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, or_, select

from ribnode.ledger.schema import AuditEvent, Delivery, Instance, Job, JobState, JobTransition, OutputObject, Study
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: PS3.15 A.5.3 event names the console records besides the ledger's own (AuditEventName).
QUERY = "Query"  # A.5.3.10: a search of the ledger (job list, audit list, exports)
USER_AUTHENTICATION = "User Authentication"  # A.5.3.12: login, logout, failed login
#: Every event name the audit page offers as a filter.
EVENT_NAMES = (*(str(name) for name in AuditEventName), QUERY, USER_AUTHENTICATION)

JOB_SORTS = {
    "id": Job.id,
    "created": Job.created_at,
    "updated": Job.updated_at,
    "state": Job.state,
    "attempts": Job.attempts,
    "study": Study.study_instance_uid,
}
#: The job states in life-cycle order (columns of the stage times).
STAGES = tuple(str(state) for state in JobState)


# -- jobs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobFilter:
    """What the job list is narrowed to (every field optional), its order and page."""

    state: str | None = None
    created_from: date | None = None
    created_to: date | None = None  # inclusive
    study_uid: str | None = None
    accession: str | None = None
    model_name: str | None = None  # substring of the model's name
    model_version: str | None = None
    weights_sha256: str | None = None  # the whole hash or a prefix of at least 8 hex digits
    sort: str = "created"
    descending: bool = True
    page: int = 1

    def describe(self) -> str:
        """The filter as text, for the audit record of the query."""
        shown = {k: v for k, v in self.__dict__.items() if v not in (None, "") and k not in ("sort", "descending")}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "all"


@dataclass(frozen=True)
class JobRow:
    """One job as the list and the study page show it."""

    id: int
    study_uid: str
    patient_id: str | None
    accession: str | None
    state: str
    kind: str
    created_at: datetime
    updated_at: datetime
    attempts: int
    last_error: str | None
    stage_seconds: dict[str, float]  # seconds spent in each state it left
    models: tuple[str, ...]  # "name version" of each model that made its objects


@dataclass(frozen=True)
class JobPage:
    """One page of the job list."""

    rows: list[JobRow]
    total: int
    page: int
    pages: int


def _job_conditions(f: JobFilter) -> list[Any]:
    conditions: list[Any] = []
    if f.state:
        conditions.append(Job.state == f.state)
    if f.created_from:
        conditions.append(Job.created_at >= datetime.combine(f.created_from, datetime.min.time()))
    if f.created_to:
        conditions.append(Job.created_at < datetime.combine(f.created_to + timedelta(days=1), datetime.min.time()))
    if f.study_uid:
        conditions.append(Study.study_instance_uid == f.study_uid.strip())
    if f.accession:
        conditions.append(Study.accession_number == f.accession.strip())
    made: list[Any] = []
    if f.model_name:
        made.append(OutputObject.model_name.contains(f.model_name.strip()))
    if f.model_version:
        made.append(OutputObject.model_version.contains(f.model_version.strip()))
    if f.weights_sha256:
        made.append(OutputObject.weights_sha256.startswith(f.weights_sha256.strip().lower()))
    if made:
        conditions.append(exists().where(OutputObject.job_id == Job.id, *made))
    return conditions


def list_jobs(ledger: Ledger, f: JobFilter, page_size: int) -> JobPage:
    """A page of jobs matching ``f``, sorted by ``f.sort``."""
    conditions = _job_conditions(f)
    base = select(Job, Study).join(Study, Study.id == Job.study_id).where(*conditions)
    order = JOB_SORTS.get(f.sort, Job.created_at)
    with ledger.session() as s:
        total = s.scalar(select(func.count()).select_from(base.subquery())) or 0
        pages = max(1, math.ceil(total / page_size))
        page = min(max(1, f.page), pages)
        ordered = base.order_by(order.desc() if f.descending else order.asc(), Job.id.desc())
        found = s.execute(ordered.offset((page - 1) * page_size).limit(page_size)).all()
        rows = _job_rows(s, [(job, study) for job, study in found])
    return JobPage(rows, total, page, pages)


def _job_rows(s: Any, found: list[tuple[Job, Study]]) -> list[JobRow]:
    ids = [job.id for job, _ in found]
    transitions: dict[int, list[JobTransition]] = {i: [] for i in ids}
    for t in s.scalars(select(JobTransition).where(JobTransition.job_id.in_(ids)).order_by(JobTransition.id)):
        transitions[t.job_id].append(t)
    models: dict[int, set[str]] = {i: set() for i in ids}
    query = select(OutputObject.job_id, OutputObject.model_name, OutputObject.model_version).where(
        OutputObject.job_id.in_(ids)
    )
    for job_id, name, version in s.execute(query.distinct()):
        models[job_id].update(f"{n} {v}" for n, v in split_models(name, version))
    return [
        JobRow(
            id=job.id,
            study_uid=study.study_instance_uid,
            patient_id=study.patient_id,
            accession=study.accession_number,
            state=job.state,
            kind=job.kind,
            created_at=job.created_at,
            updated_at=job.updated_at,
            attempts=job.attempts,
            last_error=job.last_error,
            stage_seconds=stage_seconds(job.created_at, transitions[job.id]),
            models=tuple(sorted(models[job.id])),
        )
        for job, study in found
    ]


def stage_seconds(created_at: datetime, transitions: list[JobTransition]) -> dict[str, float]:
    """Seconds a job spent in each state it has left (a state entered twice adds up); the
    job starts "received" at ``created_at``."""
    out: dict[str, float] = {}
    previous = created_at
    for t in transitions:
        state = t.from_state or str(JobState.RECEIVED)
        out[state] = out.get(state, 0.0) + (t.at - previous).total_seconds()
        previous = t.at
    return out


def split_models(names: str, versions: str) -> list[tuple[str, str]]:
    """(name, version) of each model of a ledger row: the export records an object made by
    several models as "a + b" in both columns, the primary model first."""
    name_list, version_list = names.split(" + "), versions.split(" + ")
    if len(name_list) != len(version_list):
        return [(names, versions)]
    return list(zip(name_list, version_list))


# -- one study ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputRow:
    """An object ribnode created, as the ledger records it."""

    sop_instance_uid: str
    kind: str
    job_id: int
    source_sop_instance_uid: str
    model_name: str
    model_version: str
    weights_sha256: str
    path: Path  # absolute: under export.staging_dir
    created_at: datetime


@dataclass(frozen=True)
class SourceRow:
    """A received instance of the study and the objects made from it."""

    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    path: Path  # absolute: under the spool
    received_at: datetime
    state: str
    ignore_reason: str | None
    job_id: int | None
    outputs: list[OutputRow] = field(default_factory=list)


@dataclass(frozen=True)
class DeliveryRow:
    """One job's delivery to one destination, with every audited attempt."""

    job_id: int
    destination: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    results: list[AuditRow] = field(default_factory=list)


@dataclass(frozen=True)
class StudyView:
    """Everything the study page shows."""

    study_uid: str
    patient_id: str | None
    accession: str | None
    calling_aet: str | None
    first_received_at: datetime
    last_received_at: datetime
    sources: list[SourceRow]
    jobs: list[JobRow]
    deliveries: list[DeliveryRow]


def study_view(ledger: Ledger, study_uid: str, spool_dir: Path, staging_dir: Path) -> StudyView | None:
    """The study, its instances beside their outputs, its jobs and deliveries; None if unknown."""
    with ledger.session() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            return None
        instances = list(s.scalars(select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)))
        jobs = list(s.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)))
        job_ids = [job.id for job in jobs]
        outputs = list(
            s.scalars(select(OutputObject).where(OutputObject.job_id.in_(job_ids)).order_by(OutputObject.id))
        )
        deliveries = list(
            s.scalars(select(Delivery).where(Delivery.job_id.in_(job_ids)).order_by(Delivery.job_id, Delivery.id))
        )
        sends = list(
            s.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.study_instance_uid == study_uid,
                    AuditEvent.event == str(AuditEventName.INSTANCES_TRANSFERRED),
                    AuditEvent.destination_aet.is_not(None),
                )
                .order_by(AuditEvent.id)
            )
        )
        job_rows = _job_rows(s, [(job, study) for job in jobs])
    by_source: dict[str, list[OutputRow]] = {}
    for o in outputs:
        by_source.setdefault(o.source_sop_instance_uid, []).append(_output_row(o, staging_dir))
    sources = [
        SourceRow(
            sop_instance_uid=i.sop_instance_uid,
            sop_class_uid=i.sop_class_uid,
            modality=i.modality,
            path=spool_dir / i.path,
            received_at=i.received_at,
            state=i.state,
            ignore_reason=i.ignore_reason,
            job_id=i.job_id,
            outputs=by_source.get(i.sop_instance_uid, []),
        )
        for i in instances
    ]
    return StudyView(
        study_uid=study.study_instance_uid,
        patient_id=study.patient_id,
        accession=study.accession_number,
        calling_aet=study.calling_aet,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        sources=sources,
        jobs=job_rows,
        deliveries=[_delivery_row(d, sends) for d in deliveries],
    )


def _output_row(o: OutputObject, staging_dir: Path) -> OutputRow:
    return OutputRow(
        sop_instance_uid=o.sop_instance_uid,
        kind=o.kind,
        job_id=o.job_id,
        source_sop_instance_uid=o.source_sop_instance_uid,
        model_name=o.model_name,
        model_version=o.model_version,
        weights_sha256=o.weights_sha256,
        path=staging_dir / o.path,
        created_at=o.created_at,
    )


def _delivery_row(d: Delivery, sends: list[AuditEvent]) -> DeliveryRow:
    """A delivery with the audited sends to its destination (the export audits each attempt
    as "DICOM Instances Transferred", the detail starting with ``senders.describe``)."""
    named = f"destination {d.destination!r}"
    mine = [e for e in sends if named in (e.detail or "").split(": ", 1)[0]]
    return DeliveryRow(
        job_id=d.job_id,
        destination=d.destination,
        state=d.state,
        attempts=d.attempts,
        last_error=d.last_error,
        next_attempt_at=d.next_attempt_at,
        delivered_at=d.delivered_at,
        results=[_audit_row(e, None) for e in mine],
    )


def output_object(ledger: Ledger, sop_instance_uid: str, staging_dir: Path, spool_dir: Path) -> OutputPair | None:
    """An output object and the received instance it was made from (their files), or None."""
    with ledger.session() as s:
        row = s.scalar(select(OutputObject).where(OutputObject.sop_instance_uid == sop_instance_uid))
        if row is None:
            return None
        found = s.execute(
            select(Instance, Study.study_instance_uid)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.sop_instance_uid == row.source_sop_instance_uid)
        ).first()
    if found is None:
        return None
    instance, study_uid = found
    return OutputPair(_output_row(row, staging_dir), spool_dir / instance.path, study_uid)


@dataclass(frozen=True)
class OutputPair:
    """An output and the file of its source instance."""

    output: OutputRow
    source_path: Path
    study_uid: str


# -- models ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRow:
    """A model version the node has used: the objects it made as their primary model."""

    name: str
    version: str
    weights_sha256: str
    first_used: datetime
    last_used: datetime
    objects: int  # objects it made (primary model)
    contributed: int  # objects it took part in (any position)


def models_used(ledger: Ledger) -> list[ModelRow]:
    """Every (model, version, weights) that made objects, newest first."""
    query = select(
        OutputObject.model_name,
        OutputObject.model_version,
        OutputObject.weights_sha256,
        func.min(OutputObject.created_at),
        func.max(OutputObject.created_at),
        func.count(OutputObject.id),
    ).group_by(OutputObject.model_name, OutputObject.model_version, OutputObject.weights_sha256)
    merged: dict[tuple[str, str, str], list[Any]] = {}
    contributed: dict[tuple[str, str], int] = {}
    with ledger.session() as s:
        for names, versions, sha, first, last, count in s.execute(query):
            pairs = split_models(names, versions)
            for name, version in pairs:
                contributed[(name, version)] = contributed.get((name, version), 0) + count
            key = (*pairs[0], sha)
            row = merged.setdefault(key, [first, last, 0])
            row[0], row[1], row[2] = min(row[0], first), max(row[1], last), row[2] + count
    out = [
        ModelRow(name, version, sha, first, last, count, contributed.get((name, version), count))
        for (name, version, sha), (first, last, count) in merged.items()
    ]
    return sorted(out, key=lambda m: m.last_used, reverse=True)


# -- audit -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditFilter:
    """What the audit list is narrowed to, and its page."""

    event: str | None = None
    outcome: int | None = None
    since: date | None = None
    until: date | None = None  # inclusive
    study_uid: str | None = None
    text: str | None = None  # substring of the detail, the AE titles or the host
    page: int = 1

    def describe(self) -> str:
        shown = {k: v for k, v in self.__dict__.items() if v not in (None, "") and k != "page"}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "all"


@dataclass(frozen=True)
class AuditRow:
    """One audit event, with the patient of its study when the ledger knows it."""

    id: int
    at: datetime
    event: str
    outcome: int
    source_aet: str | None
    source_host: str | None
    destination_aet: str | None
    study_uid: str | None
    sop_class_uids: tuple[str, ...]
    instance_count: int | None
    detail: str | None
    patient_id: str | None


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditRow]
    total: int
    page: int
    pages: int


def _audit_query(f: AuditFilter) -> Any:
    """SELECT of the events matching ``f``, each with its study's patient ID."""
    conditions: list[Any] = []
    if f.event:
        conditions.append(AuditEvent.event == f.event)
    if f.outcome is not None:
        conditions.append(AuditEvent.outcome == f.outcome)
    if f.since:
        conditions.append(AuditEvent.at >= datetime.combine(f.since, datetime.min.time()))
    if f.until:
        conditions.append(AuditEvent.at < datetime.combine(f.until + timedelta(days=1), datetime.min.time()))
    if f.study_uid:
        conditions.append(AuditEvent.study_instance_uid == f.study_uid.strip())
    if f.text:
        like = f"%{f.text.strip()}%"
        conditions.append(
            or_(
                AuditEvent.detail.like(like),
                AuditEvent.source_aet.like(like),
                AuditEvent.destination_aet.like(like),
                AuditEvent.source_host.like(like),
            )
        )
    return (
        select(AuditEvent, Study.patient_id)
        .outerjoin(Study, Study.study_instance_uid == AuditEvent.study_instance_uid)
        .where(*conditions)
    )


def _audit_row(e: AuditEvent, patient_id: str | None) -> AuditRow:
    return AuditRow(
        id=e.id,
        at=e.at,
        event=e.event,
        outcome=e.outcome,
        source_aet=e.source_aet,
        source_host=e.source_host,
        destination_aet=e.destination_aet,
        study_uid=e.study_instance_uid,
        sop_class_uids=tuple((e.sop_class_uids or "").split()),
        instance_count=e.instance_count,
        detail=e.detail,
        patient_id=patient_id,
    )


def list_audit(ledger: Ledger, f: AuditFilter, page_size: int) -> AuditPage:
    """A page of audit events matching ``f``, newest first."""
    query = _audit_query(f)
    with ledger.session() as s:
        total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        pages = max(1, math.ceil(total / page_size))
        page = min(max(1, f.page), pages)
        found = s.execute(query.order_by(AuditEvent.id.desc()).offset((page - 1) * page_size).limit(page_size)).all()
    return AuditPage([_audit_row(row[0], row[1]) for row in found], total, page, pages)


def all_audit(ledger: Ledger, f: AuditFilter, limit: int = 100_000) -> list[AuditRow]:
    """Every audit event matching ``f``, oldest first (the exports), at most ``limit``."""
    with ledger.session() as s:
        found = s.execute(_audit_query(f).order_by(AuditEvent.id).limit(limit)).all()
    return [_audit_row(row[0], row[1]) for row in found]


def audit_after(ledger: Ledger, last_id: int, limit: int = 500) -> list[AuditRow]:
    """Audit events with an id above ``last_id``, oldest first (the syslog forwarder)."""
    query = (
        select(AuditEvent, Study.patient_id)
        .outerjoin(Study, Study.study_instance_uid == AuditEvent.study_instance_uid)
        .where(AuditEvent.id > last_id)
        .order_by(AuditEvent.id)
        .limit(limit)
    )
    with ledger.session() as s:
        return [_audit_row(e, p) for e, p in s.execute(query).all()]


def record(
    ledger: Ledger,
    event: str,
    user: str,
    host: str,
    detail: str,
    outcome: int = AuditOutcome.SUCCESS,
    study_uid: str | None = None,
    instance_count: int | None = None,
    sop_class_uids: str | None = None,
) -> None:
    """Write one console audit event. The person is named at the start of the detail
    ("user NAME: ...", see :func:`console_user`) and their address in ``source_host``."""
    ledger.audit(
        event,
        outcome,
        source_host=host[:255] or None,
        destination_aet="console",
        study_instance_uid=study_uid,
        sop_class_uids=sop_class_uids,
        instance_count=instance_count,
        detail=f"user {user}: {detail}"[:4000],
    )


def console_user(row: AuditRow) -> str | None:
    """The user name a console event names (see :func:`record`: "user NAME (ROLE): ..."),
    or None for other events."""
    if row.destination_aet != "console" or not (row.detail or "").startswith("user "):
        return None
    return (row.detail or "")[5:].split(":", 1)[0].split(" (", 1)[0]
