"""STOW-RS (PS3.18 10.5): one received instance takes the C-STORE path of
``ribnode.node.listener``: decoded and checked the same way (0xC210 when it cannot be),
deduplicated on its SOP Instance UID, fsynced and renamed into the spool *before* the answer,
routed and recorded in the ledger (0xA700 when the spool or the ledger cannot take it); study
completion then finds it like any other instance. The sender name of the credential is
recorded where a C-STORE records the calling AE title.

``store_part`` saves, records and returns an outcome; it never raises.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.exc import SQLAlchemyError

from ribnode.dicom_checks import UndecodableError, check_declared_lengths
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger, ReceivedInstance
from ribnode.node.listener import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    _audit_quietly,
    _check_pixel_data,
    received_instance,
)
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import Spool

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# PS3.4 GG.4-1 "Data Set does not match SOP Class" is what dcm4chee answers for an instance of
# another study than the one in the STOW-RS path (PS3.18 10.5.3: 409 when none is stored).
STUDY_MISMATCH = 0xA900
DEFER_BYTES = 64 * 1024  # larger values (Pixel Data) stay on disk while a part is checked
PROTOCOL = "STOW-RS"  # first word of the audit detail of every STOW-RS record (see metrics)


@dataclass(frozen=True)
class StowCaller:
    """Who sent a STOW-RS request: the sender name of its credential and its address."""

    sender: str
    host: str


@dataclass(frozen=True)
class PartOutcome:
    """What became of one multipart part: the status (C-STORE codes), the UIDs when known."""

    status: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    detail: str = ""
    duplicate: bool = False


@dataclass
class StowContext:
    """What STOW-RS needs, passed in (no module globals); the same objects the listener uses."""

    spool: Spool
    ledger: Ledger
    routing: RoutingRule
    ae_title: str  # ours, recorded as the destination of the audit records


def decode_part(path: Path) -> Dataset:
    """The dataset of a DICOM part file (PS3.10, as PS3.18 8.6.1.2 requires), checked as a
    C-STORE dataset is; raises :class:`UndecodableError`. Pixel Data is not read into memory
    (``defer_size``): its length is checked against the geometry and the file instead."""
    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
        study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    except Exception as exc:  # pydicom raises many types on bad input; all mean "undecodable"
        raise UndecodableError(f"part is not a DICOM file: {type(exc).__name__}: {exc}") from exc
    if not study_uid or not sop_uid:
        raise UndecodableError("dataset has no Study or SOP Instance UID")
    if len(study_uid) > 64 or len(sop_uid) > 64:  # PS3.5 9.1: at most 64 characters
        raise UndecodableError(f"UID longer than 64 characters: {max(study_uid, sop_uid, key=len)[:80]!r}")
    check_declared_lengths(ds, path.stat().st_size)
    _check_pixel_data(cast(Dataset, _PixelView(ds, path.stat().st_size)), syntax)
    return ds


class _PixelView:
    """What the listener's ``_check_pixel_data`` reads of a dataset (geometry, ``in``,
    ``get``, ``len(PixelData)``), with a deferred Pixel Data measured, not read: only as long
    as the bytes the file really holds (a truncated stream declares more than it has)."""

    GEOMETRY = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames")

    def __init__(self, ds: Dataset, file_size: int) -> None:
        self._values: dict[str, Any] = {k: ds[k].value for k in self.GEOMETRY if k in ds}
        if "PixelData" in ds:
            raw = ds.get_item("PixelData", keep_deferred=True)
            if isinstance(raw, RawDataElement) and raw.value is None:  # deferred: measure it
                present = max(0, min(raw.length, file_size - raw.value_tell))
            else:
                present = len(raw.value or b"")
            self._values["PixelData"] = bytes(0) if present == 0 else _Length(present)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self._values[keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)


class _Length:
    """Stands in for bytes of which only the length matters."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length


def _received(ds: Dataset, path: str, size: int, caller: StowCaller, routing: RoutingRule) -> ReceivedInstance:
    """The ledger record of a stored part: the listener's, with the sender as calling AE."""
    return received_instance(
        ds,
        routing,
        path=path,
        size=size,
        sop_class_uid=str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")) or None,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        calling_aet=caller.sender[:16],
    )


def store_part(ctx: StowContext, tmp: Path, caller: StowCaller, study_uid: str | None) -> PartOutcome:
    """Store one received part (a closed file from ``Spool.incoming``). Never raises: any
    surprise is logged with its traceback and answered 0xA700, as C-STORE does."""
    try:
        return _store(ctx, tmp, caller, study_uid)
    except Exception:  # the service must stay up whatever happens
        logger.exception("unexpected error storing a STOW-RS part; answering 0xA700")
        return PartOutcome(OUT_OF_RESOURCES, detail="internal error")
    finally:
        tmp.unlink(missing_ok=True)  # adopted parts were renamed away already


def _store(ctx: StowContext, tmp: Path, caller: StowCaller, path_study: str | None) -> PartOutcome:
    try:
        ds = decode_part(tmp)
    except UndecodableError as exc:
        logger.warning("STOW-RS part from %s refused (0xC210): %s", caller.sender, exc)
        return PartOutcome(CANNOT_UNDERSTAND, detail=str(exc))
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    sop_class = str(ds.get("SOPClassUID", ""))
    stored = PartOutcome(SUCCESS, sop_class, sop_uid, study_uid)
    if path_study is not None and study_uid != path_study:
        detail = f"instance of study {study_uid} posted to study {path_study}"
        logger.warning("STOW-RS part from %s refused (0xA900): %s", caller.sender, detail)
        return replace(stored, status=STUDY_MISMATCH, detail=detail)
    try:
        if ctx.ledger.is_known(sop_uid):
            ctx.ledger.count_duplicate(sop_uid)
            logger.info("duplicate SOP Instance UID %s from %s: counted, not stored again", sop_uid, caller.sender)
            return replace(stored, duplicate=True)
        size = tmp.stat().st_size
        path = ctx.spool.adopt(tmp, study_uid, sop_uid)
        ds.filename = str(ctx.spool.path(path))  # deferred values are read from where the file now is
        if not ctx.ledger.record_instance(_received(ds, path, size, caller, ctx.routing)):
            return replace(stored, duplicate=True)  # the same instance in flight twice
    except (OSError, SQLAlchemyError) as exc:
        logger.error("STOW-RS of %s from %s failed (0xA700): %s", sop_uid, caller.sender, exc)
        return replace(stored, status=OUT_OF_RESOURCES, detail=str(exc))
    return stored


# -- audit ------------------------------------------------------------------------------------


def audit_request(ctx: StowContext, caller: StowCaller, outcomes: list[PartOutcome], note: str = "") -> None:
    """PS3.15 "DICOM Instances Transferred": one success record per study (instances newly
    stored, as C-STORE counts them) and one failure record per refused part. Details start
    with ``STOW-RS`` so the metrics tell the protocols apart."""
    studies: dict[str, list[Any]] = defaultdict(lambda: [0, set()])
    for out in outcomes:
        if out.status == SUCCESS and not out.duplicate:
            studies[out.study_instance_uid][0] += 1
            studies[out.study_instance_uid][1].add(out.sop_class_uid)
        elif out.status != SUCCESS:
            audit_failure(
                ctx,
                caller,
                f"0x{out.status:04X} {out.detail}",
                AuditOutcome.SERIOUS_FAILURE if out.status == OUT_OF_RESOURCES else AuditOutcome.MINOR_FAILURE,
                out.study_instance_uid or None,
                out.sop_class_uid,
            )
    for study_uid, (count, classes) in studies.items():
        _audit_quietly(
            ctx.ledger,
            AuditEventName.INSTANCES_TRANSFERRED,
            AuditOutcome.SUCCESS,
            source_aet=caller.sender[:16],
            source_host=caller.host,
            destination_aet=ctx.ae_title,
            study_instance_uid=study_uid,
            sop_class_uids=" ".join(sorted(classes)),
            instance_count=count,
            detail=f"{PROTOCOL} received{note}",
        )


def audit_failure(
    ctx: StowContext,
    caller: StowCaller,
    detail: str,
    outcome: int = AuditOutcome.MINOR_FAILURE,
    study_uid: str | None = None,
    sop_class: str | None = None,
) -> None:
    """A refused part or request: "DICOM Instances Transferred" with a failure outcome; the
    detail is ``STOW-RS <status> <reason>`` (0xC210, 0xA700, 0xA900 per part; HTTP 400, 408,
    413, 415 per request)."""
    _audit_quietly(
        ctx.ledger,
        AuditEventName.INSTANCES_TRANSFERRED,
        outcome,
        source_aet=caller.sender[:16],
        source_host=caller.host,
        destination_aet=ctx.ae_title,
        study_instance_uid=study_uid,
        sop_class_uids=sop_class or None,
        instance_count=0,
        detail=f"{PROTOCOL} {detail}"[:2000],
    )


def audit_security_alert(ctx: StowContext, host: str, detail: str) -> None:
    """PS3.15 "Security Alert": a STOW-RS request with a missing or unknown credential."""
    _audit_quietly(
        ctx.ledger,
        AuditEventName.SECURITY_ALERT,
        AuditOutcome.MINOR_FAILURE,
        source_host=host,
        destination_aet=ctx.ae_title,
        detail=f"{PROTOCOL} {detail}"[:2000],
    )


# -- the store response (PS3.18 10.5.3, DICOM JSON) ------------------------------------------


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def store_response(outcomes: list[PartOutcome], base_url: str) -> dict[str, Any]:
    """The PS3.18 store response: Referenced SOP Sequence (0008,1199) for stored instances,
    Failed SOP Sequence (0008,1198) with Failure Reason (0008,1197) for the others."""
    stored, failed = [], []
    for out in outcomes:
        item = {"00081150": _uid(out.sop_class_uid), "00081155": _uid(out.sop_instance_uid)}
        if out.status == SUCCESS:
            item["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{out.study_instance_uid}"]}
            stored.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [out.status]}
            failed.append(item)
    response: dict[str, Any] = {}
    studies = {o.study_instance_uid for o in outcomes if o.status == SUCCESS}
    if len(studies) == 1:
        response["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{studies.pop()}"]}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    return response


def response_status(outcomes: list[PartOutcome]) -> int:
    """PS3.18 10.5.3.1: 200 all stored, 202 some stored, 400 none stored and every part
    undecodable (bad syntax), 409 none stored for other reasons (study mismatch, resources)."""
    ok = sum(o.status == SUCCESS for o in outcomes)
    if outcomes and ok == len(outcomes):
        return 200
    if ok:
        return 202
    if all(o.status == CANNOT_UNDERSTAND for o in outcomes):
        return 400
    return 409
