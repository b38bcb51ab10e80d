"""Spool recovery at start-up: make the ledger agree with the spool after a crash.

The listener fsyncs and renames an instance into the spool *before* it records it in the
ledger, and SQLite runs with ``synchronous=NORMAL``: after a power loss the spool can hold a
file whose ledger row was lost (the sender got no success status, or got one and the last
ledger commit was not yet on disk). ``recover_spool`` registers such files and deletes the
temporary files of interrupted writes. Only study folders changed since shortly before the
newest ledger row are scanned, so a large spool does not slow the start.

A file that cannot be registered (not DICOM, no usable identifiers, a value the ledger refuses)
is moved to ``<spool>/quarantine/<study folder>/`` with an audit event (Application Activity,
serious failure) and a log line naming it and why. Recovery never stops ``ribnode serve`` from
starting: one bad file must not keep the node from receiving anything else.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path

import pydicom
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from ribnode.ledger.schema import Instance
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger
from ribnode.node.listener import received_instance
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import QUARANTINE, Spool

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MARGIN = timedelta(minutes=5)  # clock and file-system timestamp slack


@dataclass
class RecoveryReport:
    """What ``recover_spool`` did."""

    scanned_folders: int = 0
    registered: int = 0
    temporary_removed: int = 0
    unreadable: int = 0  # could not be registered: moved to the quarantine folder


def _scan_since(ledger: Ledger) -> float:
    """POSIX time from which folders may hold unrecorded files (0: scan everything)."""
    with ledger.session() as s:
        newest = s.scalar(select(func.max(Instance.received_at)))
    if newest is None:
        return 0.0
    return (newest - MARGIN).replace(tzinfo=UTC).timestamp()


class UnregistrableError(ValueError):
    """A spool file cannot be recorded in the ledger (names the file and why)."""


def _identifiers(path: Path) -> tuple[pydicom.Dataset, str, str]:
    """The dataset and its Study and SOP Instance UIDs, or :class:`UnregistrableError`."""
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB")
        study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    except Exception as exc:  # pydicom raises many types on bad input; all mean "unreadable"
        raise UnregistrableError(f"not readable DICOM: {type(exc).__name__}: {exc}") from exc
    if not (0 < len(study) <= 64 and 0 < len(sop) <= 64):  # PS3.5 9.1, and the ledger's columns
        raise UnregistrableError(f"no valid Study/SOP Instance UID ({study[:80]!r}, {sop[:80]!r})")
    return ds, study, sop


def _register(path: Path, spool: Spool, ledger: Ledger, routing: RoutingRule) -> str:
    """Record one spool file unknown by name: "registered" or "known"; raises
    :class:`UnregistrableError` when it cannot be recorded."""
    ds, _study, sop = _identifiers(path)
    if ledger.is_known(sop):
        return "known"
    try:
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except Exception as exc:  # no or malformed file meta
        raise UnregistrableError(f"no Transfer Syntax UID in the file meta: {exc}") from exc
    relative = os.path.relpath(path, spool.directory)
    record = received_instance(
        ds,
        routing,
        path=relative,
        size=path.stat().st_size,
        sop_class_uid=None,
        transfer_syntax_uid=syntax,
        calling_aet=None,
    )
    try:
        ledger.record_instance(record)
    except (OperationalError, InterfaceError):
        raise  # the database is unreachable: not the file's fault
    except (DBAPIError, ValueError) as exc:  # a value the database refuses (DataError, ...)
        raise UnregistrableError(f"the ledger refuses it: {type(exc).__name__}: {exc}"[:1000]) from exc
    logger.warning("recovered spool file %s (it had no ledger row)", relative)
    return "registered"


def _quarantine(path: Path, spool: Spool, ledger: Ledger, reason: str) -> None:
    """Move an unregistrable spool file aside, log it and audit it."""
    relative = os.path.relpath(path, spool.directory)
    target = spool.quarantine(path)
    message = f"spool file {relative} cannot be registered ({reason}); moved to {target}"
    logger.error(message)
    try:
        ledger.audit(AuditEventName.APPLICATION_ACTIVITY, AuditOutcome.SERIOUS_FAILURE, detail=message[:2000])
    except SQLAlchemyError as exc:
        logger.error("could not audit the quarantine of %s: %s", relative, exc)


def recover_spool(spool: Spool, ledger: Ledger, routing: RoutingRule) -> RecoveryReport:
    """Register spool files missing from the ledger; remove temporary files. Idempotent."""
    report = RecoveryReport()
    since = _scan_since(ledger)
    for folder in spool.directory.iterdir():
        if folder.name == QUARANTINE or not folder.is_dir() or folder.stat().st_mtime < since:
            continue
        report.scanned_folders += 1
        for path in folder.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                report.temporary_removed += 1
            elif path.suffix == ".dcm" and path.stat().st_mtime >= since:
                name = path.stem
                if ledger.is_known(name):  # the file name is the SOP Instance UID when valid
                    continue
                try:
                    report.registered += _register(path, spool, ledger, routing) == "registered"
                except UnregistrableError as exc:
                    _quarantine(path, spool, ledger, str(exc))
                    report.unreadable += 1
    if report.registered or report.temporary_removed or report.unreadable:
        logger.warning("spool recovery: %s", report)
    return report
