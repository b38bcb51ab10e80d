"""UIDs follow content, end to end through a real Orthanc, both ways (issue 26, 1).

Orthanc sends a two-image study to the listener (C-STORE); the job's objects are built the
way the worker builds them (``pipeline_step.build_job_outputs``, with synthetic model results
instead of the models) and sent back by STOW-RS. Then the study is re-run:

- with the same inputs and settings: the same UIDs and byte-identical objects, so Orthanc (which
  keeps the first copy of a UID) holds exactly what ribnode says it delivered;
- with another inference parameter (sampling steps): new UIDs in new series, the new SR names
  the one it replaces, and the ledger still lists the earlier objects.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from ribnode.demo.orthanc import OrthancServer
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import JobRef, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.workers.app import make_celery
from ribnode.workers.pipeline_step import ModelStep, build_job_outputs, deliver_outputs
from tests.dicom_sr.inputs import model_inputs
from tests.node.helpers import dx_dataset, make_settings, running_listener
from tests.peers.fixtures import free_port


def _wait_job(settings, ledger: Ledger, completion: StudyCompletion, jobs: list) -> JobRef:  # type: ignore[no-untyped-def, type-arg]
    count = len(jobs)
    deadline = time.monotonic() + 30
    while len(jobs) == count and time.monotonic() < deadline:
        completion.tick()
        time.sleep(0.1)
    assert len(jobs) == count + 1, "no job was made"
    return jobs[-1]


def _run_as_worker(job: JobRef, settings, ledger: Ledger, steps: int) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """What the model job does after the models; returns the staged bytes by SOP Instance UID."""
    assert ledger.transition(job.id, JobState.RUNNING)
    spool = Path(settings.spool.directory)
    paths = [spool / inst.path for inst in ledger.job_instances(job.id)]
    series = ModelStep.result_series(paths)
    sets = []
    for path in paths:
        source = pydicom.dcmread(path)
        segmentation, suppression = model_inputs(source, change=300, steps=steps)
        sets.append(build_job_outputs(source, segmentation, suppression, settings, series, ledger))
    report = deliver_outputs(make_celery(settings), job.id, sets, settings, ledger)
    assert report.state == JobState.DONE, report
    staging = Path(settings.export.staging_dir)
    return {row.sop_instance_uid: (staging / row.path).read_bytes() for row in DeliveryLedger(ledger).outputs(job.id)}


def _ai_series(pacs: OrthancServer, study: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {
        s["MainDicomTags"]["SeriesInstanceUID"]: s
        for s in pacs.series_of_study(study)
        if s["MainDicomTags"].get("SeriesDescription", "").startswith("AI ")
    }


def _stored(pacs: OrthancServer, sop_uid: str) -> bytes:
    [found] = pacs.rest("POST", "/tools/lookup", data=sop_uid).json()
    return pacs.rest("GET", f"/instances/{found['ID']}/file").content


def test_same_content_same_uids_other_content_new_series(tmp_path: Path, orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    pacs: OrthancServer = orthanc_factory(modalities={"RIBNODE": ("RIBNODE", "127.0.0.1", port)})
    settings = make_settings(
        tmp_path,
        port,
        **{
            "export.destinations": [{"name": "pacs", "kind": "stow", "url": pacs.dicomweb_url}],
            "export.staging_dir": str(tmp_path / "outputs"),
        },
    )
    ledger = Ledger(settings.ledger.url)
    jobs: list[JobRef] = []
    completion = StudyCompletion(
        settings, ledger, lambda job: (jobs.append(job), f"t{job.id}")[1], versions={"test": "1"}
    )
    pa = dx_dataset(rows=96, columns=80, seed=1, InstanceNumber=1)
    ll = dx_dataset(study_uid=pa.StudyInstanceUID, rows=96, columns=80, seed=2, ViewPosition="LL", InstanceNumber=2)
    study = str(pa.StudyInstanceUID)
    for source in (pa, ll):
        pacs.upload(_encode(source))

    with running_listener(settings, ledger):
        pacs.send_to_modality("RIBNODE", [pacs.find_study(study)])
        first_job = _wait_job(settings, ledger, completion, jobs)
    first = _run_as_worker(first_job, settings, ledger, steps=1)

    # One series per kind for the whole study, distinct numbers, views named.
    series = _ai_series(pacs, study)
    assert len(series) == 3
    assert sorted(s["MainDicomTags"]["SeriesNumber"] for s in series.values()) == ["9901", "9902", "9903"]
    assert all(s["MainDicomTags"]["SeriesDescription"].endswith(" LL, PA") for s in series.values())
    assert all(len(s["Instances"]) == 2 for s in series.values())
    for uid, data in first.items():
        assert _stored(pacs, uid) == data

    # Same inputs and settings: same UIDs, identical bytes, nothing new in the PACS.
    instances = len(pacs.instances())
    assert ledger.request_rerun(study) == 2
    same = _run_as_worker(_wait_job(settings, ledger, completion, jobs), settings, ledger, steps=1)
    assert same == first
    assert len(pacs.instances()) == instances
    assert _ai_series(pacs, study).keys() == series.keys()

    # Another inference parameter: new UIDs, new SC and SR series; the SEG (which does not
    # depend on the suppression's steps) is the same object. The new SR names the old one.
    assert ledger.request_rerun(study) == 2
    other_job = _wait_job(settings, ledger, completion, jobs)
    other = _run_as_worker(other_job, settings, ledger, steps=2)
    assert len(set(other) & set(first)) == 2  # the two SEGs
    new_series = _ai_series(pacs, study).keys() - series.keys()
    assert len(new_series) == 2
    assert len(pacs.instances()) == instances + 4
    made = {row.sop_instance_uid: row for row in DeliveryLedger(ledger).outputs(other_job.id)}
    old_srs = [uid for uid in first if uid not in other and pydicom.dcmread(_file(first[uid])).Modality == "SR"]
    for uid, row in made.items():
        if row.kind != "sr":
            continue
        sr = pydicom.dcmread(_file(_stored(pacs, uid)))
        predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
        assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in old_srs
    # The earlier objects are still in the ledger, beside the new ones.
    with ledger.session() as session:
        from sqlalchemy import func, select

        from ribnode.ledger.schema import OutputObject

        assert session.scalar(select(func.count(OutputObject.id))) == 6 + 4
    ledger.dispose()


def _encode(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _file(data: bytes):  # type: ignore[no-untyped-def]
    from io import BytesIO

    return BytesIO(data)
