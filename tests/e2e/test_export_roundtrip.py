"""Round trip through a real PACS, model step aside: Orthanc forwards studies to ribnode's
listener, the study completes into a job, the test plays the worker (model results made as in
tests/dicom_sr, objects from ``ribnode.dicom_sr.build_outputs``) and ``deliver_outputs`` sends
them back by STOW-RS. Orthanc then holds three new series in the *same* study: checked over
QIDO-RS/WADO-RS (descriptions, references to the source) and over its REST API (the SC preview
differs from the source's only inside the rib mask)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pydicom
from dicomweb_client import DICOMwebClient
from PIL import Image

from ribnode.demo.orthanc import OrthancServer
from ribnode.dicom_sr import build_outputs
from ribnode.ledger.store import JobRef, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.workers.app import make_celery
from ribnode.workers.pipeline_step import deliver_outputs
from tests.dicom_sr.inputs import model_inputs, synthetic_dx
from tests.node.helpers import make_settings, running_listener
from tests.peers.fixtures import free_port

SC, SEG, SR = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _value(item: dict, tag: str) -> object:  # type: ignore[type-arg]
    return item.get(tag, {}).get("Value", [None])[0]


def _preview(pacs: OrthancServer, orthanc_id: str) -> np.ndarray:
    png = pacs.rest("GET", f"/instances/{orthanc_id}/preview").content
    return np.array(Image.open(io.BytesIO(png)))


def _run_as_worker(job: JobRef, settings, ledger: Ledger, spool: Path) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """What the model job does after the models: build the objects, hand them to export."""
    assert ledger.transition(job.id, JobState.RUNNING)
    sets, masks = [], {}
    for inst in ledger.job_instances(job.id):
        source = pydicom.dcmread(spool / inst.path)
        segmentation, suppression = model_inputs(source, change=300)
        sets.append(build_outputs(source, segmentation, suppression, settings.outputs))
        masks[inst.sop_instance_uid] = segmentation.mask
    report = deliver_outputs(make_celery(settings), job.id, sets, settings, ledger)
    assert report.state == JobState.DONE, report
    return masks


def test_orthanc_round_trip(tmp_path: Path, orthanc_factory, rg1_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    pacs: OrthancServer = orthanc_factory(
        modalities={"RIBNODE": ("RIBNODE", "127.0.0.1", port)},
        extra_config={"UnknownSopClassAccepted": False},
    )
    settings = make_settings(
        tmp_path,
        port,
        **{
            "export.destinations": [{"name": "pacs", "kind": "stow", "url": pacs.dicomweb_url}],
            "export.staging_dir": str(tmp_path / "outputs"),
            # Orthanc's preview stretches each image's min..max; the burned-in mark (on by default)
            # adds the extremes and would rescale the whole SC preview. Its own tests: test_sc.py.
            "outputs.burned_in_label": False,
        },
    )
    ledger = Ledger(settings.ledger.url)
    jobs: list[JobRef] = []
    completion = StudyCompletion(
        settings, ledger, lambda job: (jobs.append(job), f"t{job.id}")[1], versions={"test": "1"}
    )
    dx = synthetic_dx(rows=256, columns=224)
    buffer = io.BytesIO()
    dx.save_as(buffer, enforce_file_format=True)
    sources = {
        pacs.upload(rg1_files["RG1_UNCR"]): pydicom.dcmread(rg1_files["RG1_UNCR"]),
        pacs.upload(buffer.getvalue()): dx,
    }
    with running_listener(settings, ledger):
        for source in sources.values():
            pacs.send_to_modality("RIBNODE", [pacs.find_study(str(source.StudyInstanceUID))])
        deadline = time.monotonic() + 30
        while len(jobs) < 2 and time.monotonic() < deadline:
            completion.tick()
            time.sleep(0.1)
    assert len(jobs) == 2
    masks: dict[str, np.ndarray] = {}
    for job in jobs:
        masks.update(_run_as_worker(job, settings, ledger, Path(settings.spool.directory)))

    client = DICOMwebClient(pacs.dicomweb_url)
    for source_id, source in sources.items():
        study = str(source.StudyInstanceUID)
        series = client.search_for_series(study_instance_uid=study)
        assert len(series) == 4  # the source and the three results, in the same study
        ours = [s for s in series if _value(s, "0020000E") != source.SeriesInstanceUID]
        assert sorted(str(_value(s, "00080060")) for s in ours) == ["OT", "SEG", "SR"]
        for item in ours:
            uid = str(_value(item, "0020000E"))
            meta = client.retrieve_series_metadata(study, uid)[0]
            sop_class = _value(meta, "00080016")
            if sop_class == SC:
                assert str(_value(item, "0008103E")).startswith("AI SYNTHETIC")
                ref = _value(meta, "00082112")  # Source Image Sequence
                assert _value(ref, "00081155") == source.SOPInstanceUID
                assert _value(meta, "0008001C") == "YES"  # Synthetic Data
                sc_id = pacs.rest("POST", "/tools/lookup", data=_value(meta, "00080018")).json()[0]["ID"]
            elif sop_class == SEG:
                ref = _value(meta, "00081115")  # Referenced Series Sequence
                assert _value(ref, "0020000E") == source.SeriesInstanceUID
            else:
                assert sop_class == SR
                evidence = _value(meta, "0040A375")  # Current Requested Procedure Evidence
                assert _value(evidence, "0020000D") == study
        before, after = _preview(pacs, source_id), _preview(pacs, sc_id)
        assert before.shape == after.shape == (source.Rows, source.Columns)
        changed = before != after
        mask = masks[str(source.SOPInstanceUID)]
        assert changed[mask].mean() > 0.5
        if source.Modality == "CR":
            # RG1: outside the rib mask the preview is identical, pixel for pixel. (Orthanc
            # stretches each image's own min..max to 0-255; in the synthetic DX the lowered
            # mask pixels fall below the source's darkest pixel, so its whole preview rescales.)
            assert not changed[~mask].any()
    ledger.dispose()
