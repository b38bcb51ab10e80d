"""run_job: decode each instance of a job and record what the models will be given."""

from __future__ import annotations

import time

import pytest
from pydicom import dcmread

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobRef, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.node.listener import DicomListener
from ribnode.workers.jobs import process_instance, run_job
from tests.node.helpers import c_store, dx_dataset

VERSIONS = {"segmentation": "test", "suppression": "test"}


def make_job(settings: Settings, ledger: Ledger) -> JobRef:
    """Turn what was received into a job (as the completion thread would)."""
    time.sleep(settings.spool.quiet_period_s + 0.05)
    [job] = StudyCompletion(settings, ledger, lambda j: f"t{j.id}", versions=VERSIONS).tick()
    return job


def test_run_job_records_image_facts(
    node_settings: Settings, ledger: Ledger, listener: DicomListener, rg1_files
) -> None:
    files = [rg1_files["RG1_UNCR"], rg1_files["RG1_J2KR"], rg1_files["RG1_J2KI"]]
    assert c_store(listener.port, files) == [0, 0, 0]
    job = make_job(node_settings, ledger)
    run_job(job.id, node_settings, ledger)
    assert ledger.job(job.id).state == JobState.DONE
    for path in files:
        original = dcmread(path, stop_before_pixels=True)
        row = ledger.instance(original.SOPInstanceUID)
        assert (row.rows, row.columns) == (original.Rows, original.Columns)
        assert row.bits_stored == original.BitsStored and row.photometric == "MONOCHROME1"
        assert row.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        assert row.number_of_frames == 1 and row.error is None and row.validated_at is not None
    states = [t.to_state for t in ledger.transitions(job.id)]
    assert states == ["received", "queued", "running", "done"]


def test_run_job_is_idempotent(node_settings: Settings, ledger: Ledger, listener: DicomListener) -> None:
    assert c_store(listener.port, [dx_dataset()]) == [0]
    job = make_job(node_settings, ledger)
    run_job(job.id, node_settings, ledger)
    before = len(ledger.transitions(job.id))
    run_job(job.id, node_settings, ledger)  # a duplicate delivery
    assert len(ledger.transitions(job.id)) == before
    assert ledger.job_row(job.id).attempts == 1


def test_undecodable_instances_fail_the_job(node_settings: Settings, ledger: Ledger, listener: DicomListener) -> None:
    ds = dx_dataset()
    assert c_store(listener.port, [ds]) == [0]
    job = make_job(node_settings, ledger)
    spooled = listener.context.spool.path(ledger.instance(ds.SOPInstanceUID).path)
    spooled.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)  # corrupted on disk after receipt
    run_job(job.id, node_settings, ledger)
    row = ledger.job_row(job.id)
    assert row.state == JobState.FAILED and "no usable instance" in row.last_error
    assert ledger.instance(ds.SOPInstanceUID).error.startswith("cannot decode")


def test_one_bad_instance_does_not_sink_the_study(
    node_settings: Settings, ledger: Ledger, listener: DicomListener
) -> None:
    good, bad = dx_dataset(), dx_dataset()
    bad.StudyInstanceUID = good.StudyInstanceUID
    assert c_store(listener.port, [good, bad]) == [0, 0]
    job = make_job(node_settings, ledger)
    listener.context.spool.path(ledger.instance(bad.SOPInstanceUID).path).write_bytes(b"not dicom")
    run_job(job.id, node_settings, ledger)
    row = ledger.job_row(job.id)
    assert row.state == JobState.DONE and row.last_error.startswith("1 of 2 instances unusable")


def test_missing_spool_file_is_transient(node_settings: Settings, ledger: Ledger, listener: DicomListener) -> None:
    ds = dx_dataset()
    assert c_store(listener.port, [ds]) == [0]
    job = make_job(node_settings, ledger)
    listener.context.spool.path(ledger.instance(ds.SOPInstanceUID).path).unlink()
    with pytest.raises(OSError):
        run_job(job.id, node_settings, ledger)  # the task retries it (spool share not mounted?)


def test_process_instance_reports_geometry(tmp_path) -> None:
    path = tmp_path / "x.dcm"
    dx_dataset(rows=80, columns=96).save_as(path, enforce_file_format=True)
    check = process_instance(path, None)  # type: ignore[arg-type]
    assert (check.rows, check.columns, check.bits_stored, check.photometric) == (80, 96, 12, "MONOCHROME2")
    assert check.transfer_syntax_uid == "1.2.840.10008.1.2.1" and check.error is None


def test_process_instance_refuses_what_the_models_cannot_take(tmp_path) -> None:
    path = tmp_path / "tiny.dcm"
    dx_dataset(rows=40, columns=50).save_as(path, enforce_file_format=True)
    check = process_instance(path, None)  # type: ignore[arg-type]
    assert check.rows is None and "ImageSizeError" in check.error
