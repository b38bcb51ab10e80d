"""Orthanc (Debian package) as the forwarding PACS: it sends the real RG1 CR chest study
(uncompressed, JPEG 2000 lossless and lossy) to ribnode. Ledger on PostgreSQL, broker Redis,
a real Celery worker: the study completes, the job reaches "done", and the spooled files decode
to the same pixels as Orthanc's copies."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from pydicom import dcmread

from ribnode.ledger.store import InstanceState, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.workers.app import make_celery
from ribnode.workers.queue import enqueue_job
from tests.node.helpers import celery_worker as worker
from tests.node.helpers import make_settings, running_listener, wait_for
from tests.peers.fixtures import free_port

VERSIONS = {"segmentation": "test", "suppression": "test"}


def test_orthanc_forwards_rg1_study(tmp_path: Path, orthanc_factory, rg1_files, postgres_fresh_url, redis_url) -> None:
    port = free_port()
    # a quiet period longer than the helpers' 0.5 s: on a loaded 2-core machine Orthanc's three
    # stores can be more than 0.5 s apart, and the study would be split into a job and a follow-up
    overrides = {"ledger.url": postgres_fresh_url, "broker.url": redis_url, "spool.quiet_period_s": 3.0}
    settings = make_settings(tmp_path, port, **overrides)
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app), versions=VERSIONS)
    pacs = orthanc_factory(modalities={"RIBNODE": ("RIBNODE", "127.0.0.1", port)})
    names = ["RG1_UNCR", "RG1_J2KR", "RG1_J2KI"]
    ids = [pacs.upload(rg1_files[n]) for n in names]
    study_uid = str(dcmread(rg1_files["RG1_UNCR"], stop_before_pixels=True).StudyInstanceUID)
    study_id = pacs.find_study(study_uid)
    with running_listener(settings, ledger) as lst, completion, worker(app, settings):
        pacs.send_to_modality("RIBNODE", [study_id])
        done = wait_for(lambda: ledger.jobs_in_state(JobState.DONE), 120, "the study's job to be done")
    summary = ledger.summary()
    assert summary.studies == 1 and summary.jobs == {"done": 1} and len(done) == 1
    assert summary.instances == {InstanceState.DISPATCHED: 3}
    assert len(ledger.job_instances(done[0].id)) == 3
    for name, orthanc_id in zip(names, ids):
        theirs = dcmread(io.BytesIO(pacs.rest("GET", f"/instances/{orthanc_id}/file").content))
        row = ledger.instance(str(theirs.SOPInstanceUID))
        ours = dcmread(lst.context.spool.path(row.path))
        assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID, name
        assert np.array_equal(ours.pixel_array, theirs.pixel_array), name
        assert row.calling_aet == "ORTHANC" and row.rows == theirs.Rows and row.error is None
