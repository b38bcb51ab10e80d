"""Spool recovery: a file whose ledger row was lost in a crash is registered at start-up."""

from __future__ import annotations

from pathlib import Path

from ribnode.config.settings import Settings
from ribnode.ledger.store import InstanceState, Ledger
from ribnode.node.recovery import recover_spool
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import Spool
from tests.node.helpers import c_store, dx_dataset, running_listener, write_dataset


def test_unrecorded_spool_file_is_registered(node_settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    with running_listener(node_settings, ledger) as lst:
        assert c_store(lst.port, [dx_dataset()]) == [0]  # a normal instance, recorded
    spool = Spool(node_settings.spool.directory)
    lost = dx_dataset(BodyPartExamined="SKULL")
    spool.write(lost.StudyInstanceUID, lost.SOPInstanceUID, write_dataset(lost, tmp_path / "l.dcm").read_bytes())
    (spool.path(spool.relative_path(lost.StudyInstanceUID, "x")).parent / ".1.2.3.dcm.abc.tmp").write_bytes(b"partial")
    (spool.directory / "9.9").mkdir()
    (spool.directory / "9.9" / "9.9.9.dcm").write_bytes(b"not dicom")
    report = recover_spool(spool, ledger, RoutingRule(node_settings.routing.rules))
    assert (report.registered, report.temporary_removed, report.unreadable) == (1, 1, 1)
    row = ledger.instance(lost.SOPInstanceUID)
    assert row.state == InstanceState.IGNORED and "SKULL" in row.ignore_reason
    assert recover_spool(spool, ledger, RoutingRule(None)).registered == 0  # idempotent
