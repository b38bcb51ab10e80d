"""The audit trail out of the ledger: PS3.15 A.5 messages, CSV, and syslog over TLS (RFC 5424
messages, RFC 5425 framing) to a collector started here; no browser, no models."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ribnode.config.settings import ConsoleSettings, ConsoleUser, SyslogSettings
from ribnode.console import queries
from ribnode.console.audit_export import AuditSource, to_csv, to_xml
from ribnode.console.auth import Auth, LoginLimiter, hash_password, new_token
from ribnode.console.syslog import SyslogForwarder, frame, rfc5424
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger
from tests.console.helpers import SyslogReceiver, check_audit_message, make_pki
from tests.node.helpers import wait_for

SOURCE = AuditSource("ribnode-test", "RIBNODE")


def _ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.audit(AuditEventName.APPLICATION_ACTIVITY, detail="ribnode serve started")
    ledger.audit(
        AuditEventName.INSTANCES_TRANSFERRED,
        source_aet="MODALITY",
        source_host="10.0.0.7",
        destination_aet="RIBNODE",
        study_instance_uid="1.2.3",
        sop_class_uids="1.2.840.10008.5.1.4.1.1.1.1",
        instance_count=2,
    )
    queries.record(
        ledger,
        queries.USER_AUTHENTICATION,
        "alice (qa)",
        "127.0.0.1",
        "login failed for 'alice'",
        outcome=AuditOutcome.MINOR_FAILURE,
    )
    queries.record(ledger, queries.QUERY, "alice (qa)", "127.0.0.1", "jobs page 1: state=done (1 found)")
    return ledger


def test_audit_messages_follow_ps3_15_a5(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    rows = queries.all_audit(ledger, queries.AuditFilter())
    root = ET.fromstring(to_xml(rows, SOURCE))
    assert [m.find("EventIdentification/EventID").get("csd-code") for m in root] == [  # type: ignore[union-attr]
        "110100",
        "110104",
        "110114",
        "110112",
    ]
    for message in root:
        check_audit_message(message, {"110100", "110104", "110114", "110112"})
    received = root[1]
    assert received[0].get("EventActionCode") == "C"  # received by the node: created here
    sender, receiver = received.findall("ActiveParticipant")
    assert (sender.get("UserID"), sender.get("NetworkAccessPointID"), receiver.get("UserID")) == (
        "MODALITY",
        "10.0.0.7",
        "RIBNODE",
    )
    study = received.find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == "1.2.3"
    assert study.find("SOPClass").get("NumberOfInstances") == "2"  # type: ignore[union-attr]
    login = root[2]
    assert login[0].get("EventOutcomeIndicator") == "4"
    assert login.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"  # type: ignore[union-attr]
    assert login.find("ActiveParticipant").get("UserID") == "alice"  # type: ignore[union-attr]
    table = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [r["event"] for r in table] == [r.event for r in rows] and table[2]["user"] == "alice"


def test_rfc5424_message_and_rfc5425_frame() -> None:
    from datetime import datetime

    message = rfc5424(b"<AuditMessage/>", datetime(2026, 1, 2, 3, 4, 5, 678000), "node a", "ribnode")
    assert re.fullmatch(
        rb"<85>1 2026-01-02T03:04:05\.678Z nodea ribnode \d+ IHE\+RFC-3881 - \xef\xbb\xbf<AuditMessage/>", message
    )
    assert frame(b"abc") == b"3 abc"


def test_forwarder_sends_every_event_once_over_tls_and_resumes(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    pki = make_pki(tmp_path / "pki")
    receiver = SyslogReceiver(pki["server"], pki["server_key"])
    settings = SyslogSettings(host="127.0.0.1", port=receiver.port, tls_ca=pki["ca"], poll_s=0.2)
    cursor = tmp_path / "cursor"
    try:
        with SyslogForwarder(settings, ledger, SOURCE, cursor):
            wait_for(lambda: len(receiver.messages) == 4, 20, "4 messages")
            ledger.audit(AuditEventName.SECURITY_ALERT, AuditOutcome.MINOR_FAILURE, detail="after start")
            wait_for(lambda: len(receiver.messages) == 5, 20, "the 5th message")
        assert cursor.read_text().strip() == str(ledger.audit_events()[-1].id)
        ledger.audit(AuditEventName.APPLICATION_ACTIVITY, detail="while the forwarder was stopped")
        assert SyslogForwarder(settings, ledger, SOURCE, cursor).forward_once() == 1  # only the new one
        wait_for(lambda: len(receiver.messages) == 6, 20, "the 6th message")
    finally:
        receiver.close()
    bodies = [m.partition(b"\xef\xbb\xbf")[2] for m in receiver.messages]
    assert [ET.fromstring(b).find("EventIdentification/EventID").get("originalText") for b in bodies] == [  # type: ignore[union-attr]
        "Application Activity",
        "DICOM Instances Transferred",
        "User Authentication",
        "Query",
        "Security Alert",
        "Application Activity",
    ]
    assert receiver.messages[4].startswith(b"<84>1 ")  # a failure: warning severity


def test_forwarder_refuses_a_collector_it_cannot_verify(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    receiver = SyslogReceiver(other["server"], other["server_key"])
    settings = SyslogSettings(host="127.0.0.1", port=receiver.port, tls_ca=pki["ca"])
    try:
        forwarder = SyslogForwarder(settings, ledger, SOURCE, tmp_path / "cursor")
        assert forwarder.forward_once() == 0 and forwarder.last_sent() == 0  # nothing lost: retried later
    finally:
        receiver.close()
    assert receiver.messages == []


def test_passwords_tokens_and_the_login_limit() -> None:
    token, digest = new_token()
    user = ConsoleUser(name="alice", password_hash=hash_password("correct horse"), token_sha256=digest)
    auth = Auth.from_settings(ConsoleSettings(users=[user]))
    assert auth.users.check_password("alice", "correct horse") == auth.users.check_token(token)
    assert auth.users.check_password("alice", "wrong") is None and auth.users.check_password("bob", "x") is None
    assert auth.users.check_token("forged") is None
    limiter = LoginLimiter(max_failures=2, window_s=60)
    for _ in range(2):
        limiter.failed("10.0.0.1", "alice")
    assert limiter.blocked("10.0.0.1", "alice") > 0
    assert limiter.blocked("10.0.0.1", "bob") == 0  # the address is not blocked for everyone yet
    try:
        ConsoleUser(name="x", password_hash="plaintext")
    except ValueError as exc:
        assert "argon2" in str(exc)
    else:
        raise AssertionError("a clear password was accepted as a hash")
