"""Deliver a job's results to every configured destination, reliably.

The worker calls, in order:

1. :func:`stage_outputs`: write the created objects to ``export.staging_dir``, map each to its
   source instance, model and weights hash in ``output_objects``, audit their creation
   ("DICOM Instances Accessed"), create one pending delivery per destination and move the job
   to "exporting".
2. :func:`export_job`: attempt every delivery that is due. A destination that fails
   transiently is retried later with capped exponential backoff and jitter; when all
   destinations have the objects the job is "done"; when one gave up (``max_attempts``
   reached, or a permanent refusal) and none is pending the job is "dead" with the reason.
   The return value says when to call it again (the Celery export task does so).

:func:`resend` (``ribnode resend JOB``) makes every delivery of a job pending again.

Nothing is sent twice in effect: the object UIDs are deterministic, a PACS keeps one copy per
SOP Instance UID, a folder delivery replaces the file, and a delivery is attempted by one
exporter at a time (:meth:`DeliveryLedger.claim`). Every attempt is audited under the PS3.15
names "Begin Transferring DICOM Instances" and "DICOM Instances Transferred".
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pydicom
import pydicom.errors

from ribnode.config.settings import DestinationSettings, Settings
from ribnode.ledger.deliveries import (
    DeliveryLedger,
    DeliveryRef,
    DeliveryState,
    OutputRecord,
)
from ribnode.ledger.schema import JobState
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger, LedgerError, utcnow
from ribnode.node.senders import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    describe,
    folder_path,
    send_cstore,
    send_folder,
    send_stow,
    write_atomic,
)

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

__all__ = [
    "DeliveryError",
    "ExportError",
    "ExportReport",
    "OutputSetLike",
    "PermanentDeliveryError",
    "TransientDeliveryError",
    "backoff_delay",
    "schedule_minimum_s",
    "deliver",
    "export_job",
    "resend",
    "stage_outputs",
]


class ExportError(LedgerError):
    """The ledger holds nothing to export for a job (no outputs, or their files are gone)."""


class OutputSetLike(Protocol):
    """What :func:`stage_outputs` needs of ``ribnode.dicom_sr.OutputSet`` (read-only, so a
    frozen dataclass satisfies it)."""

    @property
    def provenance(self) -> Mapping[str, Any]: ...

    def datasets(self) -> list[pydicom.Dataset]: ...


@dataclass(frozen=True)
class ExportReport:
    """What one :func:`export_job` call achieved."""

    job_id: int
    state: str  # the job's state afterwards
    delivered: list[str] = field(default_factory=list)  # destinations that have everything
    pending: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    retry_in_s: float | None = None  # when the earliest pending delivery is due (None: none)


# -- one attempt ------------------------------------------------------------------------------
def deliver(
    datasets: Sequence[pydicom.Dataset],
    destination: DestinationSettings,
    calling_ae_title: str = "RIBNODE",
) -> None:
    """Send the datasets to one destination, in order; one attempt, no retry.

    Raises :class:`TransientDeliveryError` (retry later) or :class:`PermanentDeliveryError`.
    """
    if not datasets:
        return
    if destination.kind == "folder":
        send_folder(datasets, destination)
    elif destination.kind == "stow":
        send_stow(datasets, destination)
    elif destination.kind == "cstore":
        send_cstore(datasets, destination, calling_ae_title=calling_ae_title)
    else:  # pragma: no cover - the settings model allows only the three kinds
        raise PermanentDeliveryError(describe(destination), f"unknown kind {destination.kind!r}")


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped, with
    "equal" jitter (uniform in [c/2, c], c = min(max, base * 2**(attempt-1))) so that many
    jobs failing together do not retry together (no retry storm when a PACS comes back), while
    the schedule still lasts a known minimum: ``export.max_attempts`` attempts cover at least
    :func:`schedule_minimum_s` (more than 24 h with the defaults)."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")
    ceiling = min(max_s, base_s * (2 ** min(attempt - 1, 62)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def schedule_minimum_s(max_attempts: int, base_s: float, max_s: float) -> float:
    """The shortest time from the first to the last of ``max_attempts`` attempts: how long a
    destination may be down before its delivery is dead."""
    return sum(min(max_s, base_s * 2 ** min(a - 1, 62)) / 2 for a in range(1, max_attempts))


# -- staging ----------------------------------------------------------------------------------
def _records_by_uid(output_set: OutputSetLike) -> dict[str, dict[str, Any]]:
    return {
        str(rec["sop_instance_uid"]): {"kind": kind, **rec}
        for kind, rec in output_set.provenance.items()
        if isinstance(rec, dict) and "sop_instance_uid" in rec
    }


def _output_record(dataset: pydicom.Dataset, prov: dict[str, Any], path: str) -> OutputRecord:
    models = prov.get("models") or []
    primary = models[0] if models else {}
    return OutputRecord(
        sop_instance_uid=str(dataset.SOPInstanceUID),
        kind=str(prov.get("kind", "other")),
        source_sop_instance_uid=str(prov.get("source_sop_instance_uid", "")),
        model_name=" + ".join(str(m.get("name", "?")) for m in models) or "unknown",
        model_version=" + ".join(str(m.get("version", "?")) for m in models) or "unknown",
        weights_sha256=str(primary.get("weights_sha256", "")),
        path=path,
    )


def stage_outputs(job_id: int, output_sets: Sequence[OutputSetLike], settings: Settings, ledger: Ledger) -> list[Path]:
    """Keep the job's created objects for delivery and move the job to "exporting".

    Each dataset must have a provenance record (``OutputSet.provenance``) naming its SOP
    Instance UID. Returns the staged file paths, in sending order.
    """
    staging = Path(settings.export.staging_dir)
    deliveries = DeliveryLedger(ledger)
    paths: list[Path] = []
    for output_set in output_sets:
        by_uid = _records_by_uid(output_set)
        records: list[OutputRecord] = []
        datasets = output_set.datasets()
        for dataset in datasets:
            prov = by_uid.get(str(dataset.SOPInstanceUID))
            if prov is None:
                raise ValueError(
                    f"no provenance record for output {dataset.SOPInstanceUID}; records exist for {sorted(by_uid)}"
                )
            target = folder_path(staging, dataset)
            write_atomic(dataset, target)
            paths.append(target)
            records.append(_output_record(dataset, prov, str(target.relative_to(staging))))
        deliveries.record_outputs(job_id, records)
        _audit_created(ledger, settings, datasets, records)
    deliveries.ensure(job_id, [d.name for d in settings.export.destinations])
    moved = ledger.transition(
        job_id,
        JobState.EXPORTING,
        from_states={JobState.RUNNING, JobState.QUEUED, JobState.EXPORTING},
    )
    if not moved:
        logger.warning("job %d staged outputs but was not running; state unchanged", job_id)
    return paths


def _audit_created(
    ledger: Ledger,
    settings: Settings,
    datasets: Sequence[pydicom.Dataset],
    records: Sequence[OutputRecord],
) -> None:
    """PS3.15 "DICOM Instances Accessed" (action Create) for the derived objects."""
    if not datasets:
        return
    detail = "; ".join(
        f"created {r.kind} {r.sop_instance_uid} from {r.source_sop_instance_uid} by "
        f"{r.model_name} {r.model_version} weights sha256:{r.weights_sha256}"
        for r in records
    )
    ledger.audit(
        AuditEventName.INSTANCES_ACCESSED,
        source_aet=settings.listener.ae_title,
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        sop_class_uids=" ".join(sorted({str(d.SOPClassUID) for d in datasets})),
        instance_count=len(datasets),
        detail=detail,
    )


# -- the export loop --------------------------------------------------------------------------
def _load_outputs(job_id: int, settings: Settings, deliveries: DeliveryLedger) -> list[pydicom.Dataset]:
    outputs = deliveries.outputs(job_id)
    if not outputs:
        raise ExportError(f"job {job_id} has no output objects recorded; nothing to export")
    staging = Path(settings.export.staging_dir)
    datasets: list[pydicom.Dataset] = []
    for row in outputs:
        path = staging / row.path
        if not path.is_file():
            raise ExportError(f"job {job_id}: staged output {path} ({row.kind}) is missing")
        datasets.append(pydicom.dcmread(path))
    return datasets


def _audit_send(
    ledger: Ledger,
    settings: Settings,
    destination: DestinationSettings,
    datasets: Sequence[pydicom.Dataset],
    event: AuditEventName,
    outcome: int,
    detail: str,
) -> None:
    ledger.audit(
        event,
        outcome=outcome,
        source_aet=settings.listener.ae_title,
        destination_aet=(destination.ae_title or destination.name)[:64],
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        sop_class_uids=" ".join(sorted({str(d.SOPClassUID) for d in datasets})),
        instance_count=len(datasets),
        detail=f"{describe(destination)}: {detail}",
    )


def _attempt(
    delivery: DeliveryRef,
    destination: DestinationSettings,
    datasets: Sequence[pydicom.Dataset],
    settings: Settings,
    ledger: Ledger,
    rng: random.Random | None,
) -> None:
    """One attempt of a claimed delivery: send, audit, record the outcome."""
    deliveries = DeliveryLedger(ledger)
    attempt = delivery.attempts + 1  # the claim counted it
    job = f"job {delivery.job_id} attempt {attempt}/{settings.export.max_attempts}"
    _audit_send(
        ledger,
        settings,
        destination,
        datasets,
        AuditEventName.BEGIN_TRANSFERRING,
        AuditOutcome.SUCCESS,
        f"{job}: sending",
    )
    try:
        deliver(datasets, destination, calling_ae_title=settings.listener.ae_title)
    except TransientDeliveryError as exc:
        if attempt >= settings.export.max_attempts:
            error = f"gave up after {attempt} attempts: {exc}"
            deliveries.mark_failed(delivery.id, error, None)
            outcome = AuditOutcome.SERIOUS_FAILURE
        else:
            delay = backoff_delay(attempt, settings.export.backoff_s, settings.export.backoff_max_s, rng)
            error = str(exc)
            deliveries.mark_failed(delivery.id, error, utcnow() + timedelta(seconds=delay))
            outcome = AuditOutcome.MINOR_FAILURE
            logger.warning("%s failed (%s); retry in %.1f s", job, exc, delay)
        _audit_send(
            ledger, settings, destination, datasets, AuditEventName.INSTANCES_TRANSFERRED, outcome, f"{job}: {error}"
        )
        return
    except PermanentDeliveryError as exc:
        error = f"refused permanently: {exc}"
        deliveries.mark_failed(delivery.id, error, None)
        _audit_send(
            ledger,
            settings,
            destination,
            datasets,
            AuditEventName.INSTANCES_TRANSFERRED,
            AuditOutcome.SERIOUS_FAILURE,
            f"{job}: {error}",
        )
        logger.error("%s: %s", job, error)
        return
    deliveries.mark_delivered(delivery.id)
    _audit_send(
        ledger,
        settings,
        destination,
        datasets,
        AuditEventName.INSTANCES_TRANSFERRED,
        AuditOutcome.SUCCESS,
        f"{job}: delivered {len(datasets)} instance(s)",
    )
    logger.info("%s: delivered %d instance(s) to %s", job, len(datasets), destination.name)


def _lease_s(destination: DestinationSettings, count: int) -> float:
    """How long a claim holds a delivery: long enough for a send of every object to time out
    (association, then each C-STORE response). A worker killed mid-send delays the next
    attempt by at most this much."""
    return max(5.0, destination.timeout_s * (2 + count))


def export_job(job_id: int, settings: Settings, ledger: Ledger, rng: random.Random | None = None) -> ExportReport:
    """Attempt every due delivery of an exporting job once, then settle the job's state."""
    job = ledger.job(job_id)
    deliveries = DeliveryLedger(ledger)
    if job.state != JobState.EXPORTING:
        return _report(job_id, job.state, deliveries.deliveries(job_id))
    try:
        datasets = _load_outputs(job_id, settings, deliveries)
    except (ExportError, OSError, pydicom.errors.InvalidDicomError) as exc:
        ledger.transition(job_id, JobState.DEAD, error=str(exc), from_states={JobState.EXPORTING})
        return _report(job_id, JobState.DEAD, deliveries.deliveries(job_id))
    destinations = {d.name: d for d in settings.export.destinations}
    for delivery in deliveries.ensure(job_id, list(destinations)):
        if delivery.state != DeliveryState.PENDING:
            continue
        destination = destinations.get(delivery.destination)
        if destination is None:
            deliveries.mark_failed(delivery.id, f"destination {delivery.destination!r} is no longer configured", None)
            continue
        if deliveries.claim(delivery.id, _lease_s(destination, len(datasets))):
            _attempt(delivery, destination, datasets, settings, ledger, rng)
    return _settle(job_id, ledger, deliveries.deliveries(job_id))


def _settle(job_id: int, ledger: Ledger, rows: list[DeliveryRef]) -> ExportReport:
    """done when every destination has the objects; dead when one gave up and none is
    pending; otherwise still exporting."""
    pending = [r for r in rows if r.state == DeliveryState.PENDING]
    dead = [r for r in rows if r.state == DeliveryState.DEAD]
    if not pending and not dead:
        ledger.transition(job_id, JobState.DONE, from_states={JobState.EXPORTING})
    elif not pending:
        reason = "; ".join(f"{r.destination}: {r.last_error}" for r in dead)
        ledger.transition(job_id, JobState.DEAD, error=f"delivery failed: {reason}", from_states={JobState.EXPORTING})
    return _report(job_id, ledger.job(job_id).state, rows)


def _report(job_id: int, state: str, rows: list[DeliveryRef]) -> ExportReport:
    now = utcnow()
    pending = [r for r in rows if r.state == DeliveryState.PENDING]
    due: list[datetime] = [r.next_attempt_at or now for r in pending]
    retry_in = max(0.0, (min(due) - now).total_seconds()) if due else None
    return ExportReport(
        job_id=job_id,
        state=str(state),
        delivered=[r.destination for r in rows if r.state == DeliveryState.DELIVERED],
        pending=[r.destination for r in pending],
        dead=[r.destination for r in rows if r.state == DeliveryState.DEAD],
        retry_in_s=retry_in,
    )


def resend(job_id: int, settings: Settings, ledger: Ledger) -> list[DeliveryRef]:
    """Make every configured delivery of a job pending again and the job "exporting".

    Raises :class:`LedgerError` when the job does not exist and :class:`ExportError` when it
    has no outputs to send.
    """
    ledger.job(job_id)
    deliveries = DeliveryLedger(ledger)
    if not deliveries.outputs(job_id):
        raise ExportError(f"job {job_id} has no output objects; there is nothing to re-send")
    rows = deliveries.reset(job_id, [d.name for d in settings.export.destinations])
    ledger.transition(job_id, JobState.EXPORTING, error=None, from_states=set(JobState))
    logger.info("job %d: re-send to %s", job_id, ", ".join(r.destination for r in rows))
    return rows
