"""Spool recovery at start-up: make the ledger agree with the spool after a crash.

The listener fsyncs and renames an instance into the spool *before* it records it in the
ledger, and SQLite runs with ``synchronous=NORMAL``: after a power loss the spool can hold a
file whose ledger row was lost (the sender got no success status, or got one and the last
ledger commit was not yet on disk). ``recover_spool`` registers such files and deletes the
temporary files of interrupted writes. Only study folders changed since shortly before the
newest ledger row are scanned, so a large spool does not slow the start.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select

from ribnode.node.ledger import Ledger, ReceivedInstance
from ribnode.node.routing import RoutingRule
from ribnode.node.schema import Instance
from ribnode.node.spool import Spool

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MARGIN = timedelta(minutes=5)  # clock and file-system timestamp slack


@dataclass
class RecoveryReport:
    """What ``recover_spool`` did."""

    scanned_folders: int = 0
    registered: int = 0
    temporary_removed: int = 0
    unreadable: int = 0


def _scan_since(ledger: Ledger) -> float:
    """POSIX time from which folders may hold unrecorded files (0: scan everything)."""
    with ledger.session() as s:
        newest = s.scalar(select(func.max(Instance.received_at)))
    if newest is None:
        return 0.0
    return (newest - MARGIN).replace(tzinfo=timezone.utc).timestamp()


def _register(path: Path, spool: Spool, ledger: Ledger, routing: RoutingRule) -> str:
    """Record one spool file unknown by name: "registered", "known" or "unreadable"."""
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB")
        study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    except (InvalidDicomError, AttributeError, ValueError, EOFError) as exc:
        logger.error("spool file %s is not readable DICOM (%s); left in place", path, exc)
        return "unreadable"
    if ledger.is_known(sop):
        return "known"
    decision = routing(ds)
    relative = os.path.relpath(path, spool.directory)
    ledger.record_instance(ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        sop_instance_uid=sop,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=str(ds.get("Modality", "")) or None,
        path=relative,
        size_bytes=path.stat().st_size,
        calling_aet=None,
        routed=decision.routed,
        ignore_reason=decision.reason,
    ))
    logger.warning("recovered spool file %s (it had no ledger row)", relative)
    return "registered"


def recover_spool(spool: Spool, ledger: Ledger, routing: RoutingRule) -> RecoveryReport:
    """Register spool files missing from the ledger; remove temporary files. Idempotent."""
    report = RecoveryReport()
    since = _scan_since(ledger)
    for folder in spool.directory.iterdir():
        if not folder.is_dir() or folder.stat().st_mtime < since:
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
                outcome = _register(path, spool, ledger, routing)
                report.registered += outcome == "registered"
                report.unreadable += outcome == "unreadable"
    if report.registered or report.temporary_removed:
        logger.warning("spool recovery: %s", report)
    return report

