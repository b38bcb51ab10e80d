"""Every instance is either in the ledger or refused (issue 29, failure 1).

A header value pydicom cannot read (an unknown or wrong VR on a routing attribute) must not be
answered 0xA700, which a PACS retries for ever, and a spool file that cannot be registered must
not keep ``ribnode serve`` from starting: it is quarantined, logged and audited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ribnode.config.settings import Settings
from ribnode.ledger.store import AuditEventName, InstanceState, Ledger
from ribnode.node.listener import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS
from ribnode.node.spool import Spool
from tests.node.helpers import c_store, dx_dataset, running_listener, wait_for, write_dataset
from tests.peers.fixtures import echoscu, free_port

RIBNODE = [sys.executable, "-m", "ribnode"]
TAGS = {
    "Modality": b"\x08\x00\x60\x00",
    "PhotometricInterpretation": b"\x28\x00\x04\x00",
    "BodyPartExamined": b"\x18\x00\x15\x00",
    "StudyInstanceUID": b"\x20\x00\x0d\x00",
}


def with_vr(path: Path, keyword: str, vr: bytes) -> Path:
    """Rewrite the VR of ``keyword``'s element in an explicit VR little endian file (the
    2-byte length stays, so the file still parses element by element)."""
    data = bytearray(path.read_bytes())
    at = data.index(TAGS[keyword], 132)  # after the preamble and "DICM"
    data[at + 4 : at + 6] = vr
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("keyword", ["Modality", "PhotometricInterpretation", "BodyPartExamined"])
@pytest.mark.parametrize("vr", [b"ZZ", b"US"])
def test_unreadable_routing_attribute_is_kept_not_retried(
    node_settings: Settings, ledger: Ledger, tmp_path: Path, keyword: str, vr: bytes
) -> None:
    ds = dx_dataset()
    path = with_vr(write_dataset(ds, tmp_path / "odd.dcm"), keyword, vr)
    with running_listener(node_settings, ledger) as lst:
        statuses = c_store(lst.port, [path])  # sent as it is, undecoded
    assert statuses != [OUT_OF_RESOURCES]
    assert statuses == [SUCCESS]
    row = ledger.instance(ds.SOPInstanceUID)
    assert row is not None and row.state == InstanceState.IGNORED
    assert keyword in (row.ignore_reason or "")
    assert Spool(node_settings.spool.directory).exists(row.path)


def test_unreadable_identifier_is_refused_cleanly(node_settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    ds = dx_dataset()
    path = with_vr(write_dataset(ds, tmp_path / "odd.dcm"), "StudyInstanceUID", b"ZZ")
    with running_listener(node_settings, ledger) as lst:
        assert c_store(lst.port, [path]) == [CANNOT_UNDERSTAND]
    assert ledger.instance(ds.SOPInstanceUID) is None
    assert not any(p.is_file() for p in Path(node_settings.spool.directory).rglob("*.dcm"))


def _put_in_spool(spool: Spool, study: str, name: str, data: bytes) -> Path:
    folder = spool.directory / study
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def test_serve_starts_and_quarantines_what_it_cannot_register(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    odd_modality = dx_dataset()
    registrable = with_vr(write_dataset(odd_modality, tmp_path / "m.dcm"), "Modality", b"ZZ")
    _put_in_spool(spool, odd_modality.StudyInstanceUID, f"{odd_modality.SOPInstanceUID}.dcm", registrable.read_bytes())
    odd_study = dx_dataset()
    bad = with_vr(write_dataset(odd_study, tmp_path / "s.dcm"), "StudyInstanceUID", b"ZZ")
    bad_uid = _put_in_spool(spool, "1.2.3.4", f"{odd_study.SOPInstanceUID}.dcm", bad.read_bytes())
    not_dicom = _put_in_spool(spool, "1.2.3.5", "1.2.3.5.6.dcm", b"not dicom at all")

    port = free_port()
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    config = tmp_path / "ribnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"port": port, "allowed_senders": [{"ae_title": "ECHOSCU"}]},
                "spool": {"directory": str(spool.directory)},
                "ledger": {"url": ledger_url},
                "broker": {"url": "filesystem://", "folder": str(tmp_path / "broker")},
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RIBNODE_CONFIG", None)
    with (tmp_path / "serve.log").open("w") as log:
        serve = subprocess.Popen(
            [*RIBNODE, "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            wait_for(
                lambda: (
                    serve.poll() is not None
                    or echoscu(port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0
                ),
                60,
                "serve to answer C-ECHO",
            )
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=30)
    text = (tmp_path / "serve.log").read_text()
    assert serve.returncode == 0, text[-3000:]
    ledger = Ledger(ledger_url)
    row = ledger.instance(odd_modality.SOPInstanceUID)  # read leniently: registered, not routed
    assert row is not None and row.state == InstanceState.IGNORED and "Modality" in row.ignore_reason
    for lost in (bad_uid, not_dicom):
        assert not lost.exists()
        assert (spool.directory / "quarantine" / lost.parent.name / lost.name).is_file()
        assert f"{lost.parent.name}/{lost.name}" in text  # the log line names the file
    details = [e.detail or "" for e in ledger.audit_events(AuditEventName.APPLICATION_ACTIVITY)]
    assert sum("quarantine" in d for d in details) == 2, details
