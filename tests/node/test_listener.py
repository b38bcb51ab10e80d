"""The listener against real dcmtk and pynetdicom clients on loopback: good input, bad input,
and the listener still up after each."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ribnode.ledger.store import AuditEventName, AuditOutcome, InstanceState, Ledger
from ribnode.node.listener import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, DicomListener
from tests.node.helpers import (
    BASIC_TEXT_SR,
    c_store,
    dx_dataset,
    make_settings,
    running_listener,
    wait_for,
    write_dataset,
)
from tests.peers.fixtures import echoscu, free_port, storescu


def assert_up(listener: DicomListener) -> None:
    """The listener still answers C-ECHO."""
    result = echoscu(listener.port, called_aet="RIBNODE", calling_aet="ECHOSCU")
    assert result.returncode == 0, result.stderr


def test_echoscu(listener: DicomListener) -> None:
    assert_up(listener)


def test_storescu_rg1_spooled_and_recorded(listener: DicomListener, ledger: Ledger, rg1_files) -> None:
    src = rg1_files["RG1_UNCR"]
    result = storescu([src], listener.port, called_aet="RIBNODE", options=["-x="])
    assert result.returncode == 0, result.stderr
    original = dcmread(src)
    row = ledger.instance(original.SOPInstanceUID)
    assert row is not None and row.state == InstanceState.PENDING and row.calling_aet == "STORESCU"
    spooled = dcmread(listener.context.spool.path(row.path))
    assert spooled.StudyInstanceUID == original.StudyInstanceUID
    assert np.array_equal(spooled.pixel_array, original.pixel_array)
    assert row.size_bytes == listener.context.spool.path(row.path).stat().st_size
    study = ledger.study(original.StudyInstanceUID)
    assert study is not None and study.instance_count == 1


def test_jpeg2000_kept_as_received(listener: DicomListener, ledger: Ledger, rg1_files) -> None:
    src = rg1_files["RG1_J2KR"]
    result = storescu([src], listener.port, called_aet="RIBNODE", options=["-xv"])
    assert result.returncode == 0, result.stderr
    original = dcmread(src)
    row = ledger.instance(original.SOPInstanceUID)
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    spooled = dcmread(listener.context.spool.path(row.path))
    assert spooled.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert spooled.PixelData == original.PixelData  # not re-encoded


def test_duplicate_counted_not_stored_twice(listener: DicomListener, ledger: Ledger, tmp_path: Path) -> None:
    path = write_dataset(dx_dataset(), tmp_path / "a.dcm")
    assert c_store(listener.port, [path, path]) == [0, 0]
    assert c_store(listener.port, [path]) == [0]
    sop = dcmread(path).SOPInstanceUID
    row = ledger.instance(sop)
    assert row.duplicate_count == 2
    assert ledger.summary().duplicates == 2
    assert len(list(listener.context.spool.path(row.path).parent.iterdir())) == 1


def test_unknown_calling_ae_rejected_and_audited(listener: DicomListener, ledger: Ledger) -> None:
    result = echoscu(listener.port, called_aet="RIBNODE", calling_aet="INTRUDER")
    assert result.returncode != 0
    assert "Rejected" in result.stderr + result.stdout
    alerts = ledger.audit_events(AuditEventName.SECURITY_ALERT)
    assert len(alerts) == 1
    assert alerts[0].source_aet == "INTRUDER" and alerts[0].source_host == "127.0.0.1"
    assert alerts[0].outcome == AuditOutcome.MINOR_FAILURE
    assert_up(listener)


def test_sender_bound_to_host(tmp_path: Path) -> None:
    wrong = make_settings(
        tmp_path / "a", free_port(), **{"listener.allowed_senders": [{"ae_title": "ECHOSCU", "host": "10.1.2.3"}]}
    )
    with running_listener(wrong) as lst:
        assert echoscu(lst.port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode != 0
    right = make_settings(
        tmp_path / "b", free_port(), **{"listener.allowed_senders": [{"ae_title": "ECHOSCU", "host": "127.0.0.1"}]}
    )
    with running_listener(right) as lst:
        assert echoscu(lst.port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0


def test_open_mode_accepts_anyone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port(), **{"listener.open_mode": True, "listener.allowed_senders": []})
    with running_listener(settings) as lst:
        assert echoscu(lst.port, called_aet="RIBNODE", calling_aet="WHOEVER").returncode == 0


@pytest.mark.parametrize("cut", ["pixel_data", "header"])
def test_truncated_dataset_answers_c210(listener: DicomListener, ledger: Ledger, tmp_path: Path, cut: str) -> None:
    ds = dx_dataset(rows=128, columns=128)
    full = write_dataset(ds, tmp_path / "full.dcm").read_bytes()
    keep = len(full) - 10_000 if cut == "pixel_data" else 400
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(full[:keep])
    assert c_store(listener.port, [truncated]) == [CANNOT_UNDERSTAND]
    assert ledger.instance(ds.SOPInstanceUID) is None
    failures = [e for e in ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert failures and "0xC210" in failures[-1].detail
    assert_up(listener)
    assert c_store(listener.port, [write_dataset(dx_dataset(), tmp_path / "ok.dcm")]) == [0]


def basic_text_sr() -> Dataset:
    """A minimal Basic Text SR: a storage SOP class without pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    return ds


def test_non_image_sop_class_kept_and_ignored(listener: DicomListener, ledger: Ledger) -> None:
    sr = basic_text_sr()
    assert c_store(listener.port, [sr]) == [0]
    row = ledger.instance(sr.SOPInstanceUID)
    assert row.state == InstanceState.IGNORED and "Modality 'SR'" in row.ignore_reason
    assert listener.context.spool.exists(row.path)
    assert_up(listener)


def test_rg3_extremity_ignored_by_routing(listener: DicomListener, ledger: Ledger, rg3_files) -> None:
    result = storescu([rg3_files["RG3_UNCR"]], listener.port, called_aet="RIBNODE")
    assert result.returncode == 0, result.stderr
    row = ledger.instance(dcmread(rg3_files["RG3_UNCR"], stop_before_pixels=True).SOPInstanceUID)
    assert row.state == InstanceState.IGNORED and "EXTREMITY" in row.ignore_reason
    assert ledger.due_studies(0, 0) == []  # nothing to dispatch
    assert_up(listener)


@pytest.fixture
def tiny_spool(tmp_path: Path):
    """A 256 KiB tmpfs to hold the spool; unmounted at teardown."""
    mount = tmp_path / "tiny-spool"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:  # not root / no CAP_SYS_ADMIN: the RLIMIT_FSIZE test below still runs
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); see test_file_size_limit_answers_a700")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_spool_answers_a700(tmp_path: Path, tiny_spool: Path) -> None:
    settings = make_settings(tmp_path, free_port(), **{"spool.directory": str(tiny_spool)})
    ledger = Ledger(settings.ledger.url)
    big = write_dataset(dx_dataset(rows=512, columns=512), tmp_path / "big.dcm")  # 512 KiB
    small = write_dataset(dx_dataset(rows=32, columns=32), tmp_path / "small.dcm")
    with running_listener(settings, ledger) as lst:
        assert c_store(lst.port, [big, small]) == [OUT_OF_RESOURCES, 0]
        assert_up(lst)
    assert ledger.instance(dcmread(big).SOPInstanceUID) is None
    assert ledger.instance(dcmread(small).SOPInstanceUID) is not None
    failures = [e for e in ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert failures and failures[-1].outcome == AuditOutcome.SERIOUS_FAILURE
    assert "0xA700" in failures[-1].detail and "No space" in failures[-1].detail
    assert not [p for p in tiny_spool.rglob("*.tmp")]


def test_association_audited_per_study(listener: DicomListener, ledger: Ledger, tmp_path: Path) -> None:
    study = generate_uid()
    files = [write_dataset(dx_dataset(study, seed=i), tmp_path / f"{i}.dcm") for i in range(3)]
    assert c_store(listener.port, files) == [0, 0, 0]

    def study_events() -> list:
        return [e for e in ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED) if e.study_instance_uid == study]

    # The event is written when the association is released, which the SCU does not wait for.
    events = wait_for(study_events, timeout_s=10, what="the association's audit event")
    assert len(events) == 1 and events[0].instance_count == 3 and events[0].source_aet == "PYNETDICOM"


def test_every_compressed_transfer_syntax_is_accepted(listener: DicomListener) -> None:
    """JPEG baseline, extended, lossless (SV1), JPEG-LS, JPEG 2000, RLE and deflate are all
    accepted at negotiation (one presentation context each)."""
    from pynetdicom import AE

    syntaxes = {
        "1.2.840.10008.1.2.4.50": "JPEG baseline",
        "1.2.840.10008.1.2.4.51": "JPEG extended",
        "1.2.840.10008.1.2.4.57": "JPEG lossless",
        "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
        "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
        "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
        "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
        "1.2.840.10008.1.2.4.91": "JPEG 2000",
        "1.2.840.10008.1.2.5": "RLE",
        "1.2.840.10008.1.2.1.99": "deflate",
        "1.2.840.10008.1.2": "implicit VR",
        "1.2.840.10008.1.2.1": "explicit VR",
    }
    ae = AE(ae_title="PYNETDICOM")
    for syntax in syntaxes:
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", [syntax])  # CR Image Storage
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="RIBNODE")
    try:
        accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert {syntaxes[s] for s in syntaxes if s not in accepted} == set()


def test_file_size_limit_answers_a700(tmp_path: Path) -> None:
    """The same failure without root: ``ribnode serve`` in a process whose RLIMIT_FSIZE is
    300 KiB (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    import resource
    import sys

    import yaml

    from tests.peers.fixtures import echoscu as echo

    port = free_port()
    config = tmp_path / "ribnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"port": port, "allowed_senders": [{"ae_title": "PYNETDICOM"}, {"ae_title": "ECHOSCU"}]},
                "spool": {"directory": str(tmp_path / "spool")},
                "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"},
                "broker": {"url": "filesystem://", "folder": str(tmp_path / "broker")},
            }
        )
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))

    big = write_dataset(dx_dataset(rows=512, columns=512), tmp_path / "big.dcm")  # 512 KiB
    small = write_dataset(dx_dataset(rows=32, columns=32), tmp_path / "small.dcm")
    serve = subprocess.Popen(
        [sys.executable, "-m", "ribnode", "--config", str(config), "serve"],
        preexec_fn=limit,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: echo(port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0, 60, "serve")
        assert c_store(port, [big, small]) == [OUT_OF_RESOURCES, 0]
        assert echo(port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assert ledger.instance(dcmread(big).SOPInstanceUID) is None
    assert ledger.instance(dcmread(small).SOPInstanceUID) is not None
    failures = [e for e in ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert failures and "0xA700" in failures[-1].detail and "too large" in failures[-1].detail
    assert not list((tmp_path / "spool").rglob("*.tmp"))


def test_overlong_uid_answers_c210_on_postgresql(tmp_path: Path, postgres_fresh_url: str) -> None:
    """A UID over 64 characters cannot be filed: 0xC210, never a database error; an overlong
    optional attribute is simply not recorded."""
    settings = make_settings(tmp_path, free_port(), **{"ledger.url": postgres_fresh_url})
    ledger = Ledger(settings.ledger.url)
    bad = dx_dataset(study_uid="1." + "2" * 70)
    odd = dx_dataset(Modality="DX", SeriesInstanceUID="1." + "3" * 70)
    with running_listener(settings, ledger) as lst:
        assert c_store(lst.port, [bad, odd]) == [CANNOT_UNDERSTAND, 0]
        assert_up(lst)
    assert ledger.instance(odd.SOPInstanceUID).series_instance_uid is None


def test_concurrent_associations_one_study(listener: DicomListener, ledger: Ledger) -> None:
    """Four senders at once, one study: every instance stored once, counts add up."""
    import threading

    study = generate_uid()
    results: list[list[int]] = []

    def send(n: int) -> None:
        results.append(c_store(listener.port, [dx_dataset(study, seed=10 * n + i) for i in range(5)]))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [[0] * 5] * 4
    assert ledger.study(study).instance_count == 20
    assert len(list((listener.context.spool.directory / study).iterdir())) == 20
