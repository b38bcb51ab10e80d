"""A real Orthanc (Debian package, DICOMweb plugin) takes the three objects into the source's
study, lists them over QIDO-RS and renders the SC."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from ribnode.config.settings import OutputSettings
from ribnode.demo.orthanc import OrthancServer
from ribnode.dicom_sr import build_outputs
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, model_inputs


def _preview(orthanc: OrthancServer, instance: str) -> np.ndarray:
    answer = orthanc.rest("GET", f"/instances/{instance}/preview")
    assert answer.headers["Content-Type"].startswith("image/png")
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("L"), dtype=np.int16)


def test_orthanc_files_the_objects_in_the_source_study(
    orthanc: OrthancServer,
    rg1_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    source_path = rg1_files["RG1_UNCR"]
    source = pydicom.dcmread(source_path)
    segmentation, suppression = model_inputs(source, change=3000)
    settings = OutputSettings(burned_in_label=False)  # the preview comparison below wants no label
    outputs = build_outputs(source, segmentation, suppression, settings, created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    source_id = orthanc.upload(source_path)
    ids = {kind: orthanc.upload(path) for kind, path in paths.items()}
    # A second upload of a re-run (same UIDs) replaces nothing and adds nothing.
    again = write_outputs(
        build_outputs(source, segmentation, suppression, settings, created=CREATED), tmp_path / "again"
    )
    for kind, path in again.items():
        assert orthanc.upload(path) == ids[kind]
    assert len(orthanc.instances()) == 4

    series = orthanc.series_of_study(str(source.StudyInstanceUID))
    assert len(series) == 4
    qido = orthanc.rest(
        "GET",
        f"/dicom-web/studies/{source.StudyInstanceUID}/series",
        headers={"Accept": "application/dicom+json"},
    ).json()
    descriptions = {item["0008103E"]["Value"][0] for item in qido if "0008103E" in item}
    assert {str(d.SeriesDescription) for d in outputs.datasets()} <= descriptions
    assert {
        "AI SYNTHETIC bone-suppressed (not original)",
        "AI chest anatomy segmentation",
        "AI chest anatomy measurements (TID 1500)",
    } == {text.rsplit(" ", 1)[0] for text in descriptions if text.startswith("AI ")}

    before, after = _preview(orthanc, source_id), _preview(orthanc, ids["sc"])
    assert before.shape == after.shape
    # Orthanc renders each with its own window; the rib bands must differ far more than the rest.
    difference = np.abs(after - before)
    mask = np.asarray(Image.fromarray(segmentation.mask).resize(before.shape[::-1]))
    assert difference[mask].mean() > 3 * difference[~mask].mean()
