"""The audit trail written out: CSV, and DICOM audit messages (PS3.15 Annex A.5).

Each ledger event becomes one ``AuditMessage`` (A.5.1 schema: EventIdentification,
ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*), with the
event's code from A.5.3 and the study and patient as participant objects. An export of several
events wraps the messages in ``<AuditMessages>``; the syslog forwarder sends them one by one.
"""

from __future__ import annotations

import base64
import csv
import io
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ribnode.console.queries import QUERY, USER_AUTHENTICATION, AuditRow, console_user
from ribnode.ledger.store import AuditEventName

#: PS3.15 A.5.3: EventID code (DCM) of each event name, and its default EventActionCode.
EVENT_CODES: dict[str, tuple[str, str]] = {
    str(AuditEventName.APPLICATION_ACTIVITY): ("110100", "E"),
    str(AuditEventName.BEGIN_TRANSFERRING): ("110102", "E"),
    str(AuditEventName.INSTANCES_ACCESSED): ("110103", "R"),
    str(AuditEventName.INSTANCES_TRANSFERRED): ("110104", "R"),
    QUERY: ("110112", "E"),
    str(AuditEventName.SECURITY_ALERT): ("110113", "E"),
    USER_AUTHENTICATION: ("110114", "E"),
}
#: PS3.15 A.5.2.4 / CID 400-403 role codes.
SOURCE_ROLE = ("110153", "Source Role ID")
DESTINATION_ROLE = ("110152", "Destination Role ID")
APPLICATION_ROLE = ("110150", "Application")
CSV_COLUMNS = (
    "id",
    "time_utc",
    "event",
    "outcome",
    "user",
    "source_aet",
    "source_host",
    "destination_aet",
    "study_instance_uid",
    "patient_id",
    "sop_class_uids",
    "instance_count",
    "detail",
)

Mask = Callable[[str | None], str | None]


def no_mask(value: str | None) -> str | None:
    return value


@dataclass(frozen=True)
class AuditSource:
    """Who writes the messages (A.5.1 AuditSourceIdentification) and the node's AE title."""

    source_id: str  # outputs.node_id
    ae_title: str  # listener.ae_title: events it is the source of are its sends


def to_csv(rows: Iterable[AuditRow], mask: Mask = no_mask) -> str:
    """The events as CSV (RFC 4180, header row; times naive UTC, ISO 8601)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r.id,
                r.at.isoformat(timespec="milliseconds") + "Z",
                r.event,
                r.outcome,
                console_user(r) or "",
                r.source_aet or "",
                r.source_host or "",
                r.destination_aet or "",
                r.study_uid or "",
                mask(r.patient_id) or "",
                " ".join(r.sop_class_uids),
                "" if r.instance_count is None else r.instance_count,
                r.detail or "",
            ]
        )
    return buffer.getvalue()


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> ET.Element:
    """A coded element (A.5.1 CodedValueType: csd-code, codeSystemName, originalText)."""
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def _action(row: AuditRow, source: AuditSource, default: str) -> str:
    """EventActionCode: the node's own sends are Reads, received instances Creates, created
    objects Creates (A.5.3.4, A.5.3.2)."""
    if row.event == str(AuditEventName.INSTANCES_TRANSFERRED):
        return "R" if row.source_aet == source.ae_title else "C"
    if row.event == str(AuditEventName.INSTANCES_ACCESSED) and (row.detail or "").startswith("created"):
        return "C"
    return default


def _participants(message: ET.Element, row: AuditRow, source: AuditSource) -> None:
    user = console_user(row)
    if user is not None:
        person = {"UserID": user, "UserIsRequestor": "true"}
        if row.source_host:
            person |= {"NetworkAccessPointID": row.source_host, "NetworkAccessPointTypeCode": "2"}
        _code(ET.SubElement(message, "ActiveParticipant", person), "RoleIDCode", SOURCE_ROLE[0], "DCM", SOURCE_ROLE[1])
        node = {"UserID": f"{source.source_id} console", "UserIsRequestor": "false"}
        _code(
            ET.SubElement(message, "ActiveParticipant", node),
            "RoleIDCode",
            DESTINATION_ROLE[0],
            "DCM",
            DESTINATION_ROLE[1],
        )
        return
    added = False
    if row.source_aet or row.source_host:
        sender = {"UserID": row.source_aet or row.source_host or "", "UserIsRequestor": "true"}
        if row.source_aet:
            sender["AlternativeUserID"] = f"AETITLES={row.source_aet}"
        if row.source_host:
            sender |= {"NetworkAccessPointID": row.source_host, "NetworkAccessPointTypeCode": "2"}
        _code(ET.SubElement(message, "ActiveParticipant", sender), "RoleIDCode", SOURCE_ROLE[0], "DCM", SOURCE_ROLE[1])
        added = True
    if row.destination_aet:
        receiver = {"UserID": row.destination_aet, "UserIsRequestor": "false"}
        destination = ET.SubElement(message, "ActiveParticipant", receiver)
        _code(destination, "RoleIDCode", DESTINATION_ROLE[0], "DCM", DESTINATION_ROLE[1])
        added = True
    if not added:  # the application itself (Application Activity, alerts without a peer)
        app = ET.SubElement(message, "ActiveParticipant", {"UserID": source.source_id, "UserIsRequestor": "false"})
        _code(app, "RoleIDCode", APPLICATION_ROLE[0], "DCM", APPLICATION_ROLE[1])


def _objects(message: ET.Element, row: AuditRow, mask: Mask) -> None:
    if row.event == QUERY:
        query = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": "ribnode console",
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "24",
            },
        )
        _code(query, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode((row.detail or "").encode()).decode()
    if row.study_uid:
        study = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": row.study_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        for uid in row.sop_class_uids:
            sop = {"UID": uid}
            if row.instance_count is not None and len(row.sop_class_uids) == 1:
                sop["NumberOfInstances"] = str(row.instance_count)
            ET.SubElement(study, "SOPClass", sop)
    patient = mask(row.patient_id)
    if patient:
        person = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {"ParticipantObjectID": patient, "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"},
        )
        _code(person, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")


def audit_message(row: AuditRow, source: AuditSource, mask: Mask = no_mask) -> ET.Element:
    """One PS3.15 A.5.1 ``AuditMessage`` for a ledger event."""
    code, default_action = EVENT_CODES.get(row.event, EVENT_CODES[str(AuditEventName.APPLICATION_ACTIVITY)])
    message = ET.Element("AuditMessage")
    event = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": _action(row, source, default_action),
            "EventDateTime": row.at.isoformat(timespec="milliseconds") + "Z",
            "EventOutcomeIndicator": str(row.outcome),
        },
    )
    _code(event, "EventID", code, "DCM", row.event)
    if row.event == USER_AUTHENTICATION:
        logout = "logout" in (row.detail or "").lower()
        _code(event, "EventTypeCode", "110123" if logout else "110122", "DCM", "Logout" if logout else "Login")
    if row.detail:
        ET.SubElement(event, "EventOutcomeDescription").text = row.detail
    _participants(message, row, source)
    audit_source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": source.source_id})
    _code(audit_source, "AuditSourceTypeCode", "4", "DCM", "Application Server Process")
    _objects(message, row, mask)
    return message


def message_xml(row: AuditRow, source: AuditSource, mask: Mask = no_mask) -> bytes:
    """One audit message as UTF-8 XML with its declaration (a syslog MSG)."""
    body: bytes = ET.tostring(audit_message(row, source, mask), encoding="utf-8", xml_declaration=True)
    return body


def to_xml(rows: Iterable[AuditRow], source: AuditSource, mask: Mask = no_mask) -> bytes:
    """Every event as an ``AuditMessage`` inside one ``<AuditMessages>`` document."""
    root = ET.Element("AuditMessages")
    for row in rows:
        root.append(audit_message(row, source, mask))
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body
