"""End to end with a real PACS: Orthanc (Debian package, DICOMweb plugin) forwards a study to
ribnode by C-STORE; ribnode runs both models and returns SC, SEG and SR by STOW-RS; the three
series must land in the same study, reference the source, render, and validate.

Two studies go through one node: the real RG1 CR chest of pydicom-data (1955x1841,
MONOCHROME1) and a synthetic DX chest from ``ribnode.phantom``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from ribnode.demo.orthanc import OrthancServer
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import JobState
from ribnode.models.preprocess import dilate_mask
from ribnode.phantom import generate_chest, write_dicom_study
from tests.e2e.helpers import (
    Node,
    ai_kind,
    check_object,
    e2e_settings,
    job_of_study,
    json_value,
    qido_series,
    referenced_uids,
    require_weights,
    running_node,
    stow_destination,
    wado_metadata,
    wait_for_series,
)
from tests.node.helpers import wait_for
from tests.peers.fixtures import pydicom_data_dir


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancServer, Node]]:
    """One Orthanc and one ribnode wired both ways (Orthanc -> C-STORE -> ribnode -> STOW-RS)."""
    require_weights()
    tmp = tmp_path_factory.mktemp("e2e")
    with OrthancServer(tmp / "orthanc") as pacs:
        # Orthanc's preview stretches each image's min..max: the burned-in mark (on by default)
        # adds the extremes and would rescale the whole SC preview compared below. The mark
        # has its own tests (tests/dicom_sr/test_sc.py).
        settings = e2e_settings(
            tmp / "node", **{"export.destinations": [stow_destination(pacs)], "outputs.burned_in_label": False}
        )
        with running_node(settings) as node:
            pacs.add_modality("RIBNODE", settings.listener.ae_title, "127.0.0.1", node.listener.port)
            yield pacs, node


def _round_trip(pacs: OrthancServer, node: Node, source_path: Path) -> dict[str, Any]:
    """Send the study from Orthanc to ribnode; wait for the three series; return what the
    checks need."""
    source = pydicom.dcmread(source_path)
    study_uid = str(source.StudyInstanceUID)
    source_id = pacs.upload(source_path)
    result = pacs.send_to_modality("RIBNODE", [source_id])
    assert not result.get("FailedInstancesCount"), result
    series = wait_for_series(pacs, study_uid, 4)
    job = wait_for(lambda: job_of_study(node.ledger, study_uid), 60, "the job to be done")
    return {"source": source, "source_id": source_id, "series": series, "job": job}


def _orthanc_objects(pacs: OrthancServer, series: list[dict[str, Any]], tmp: Path) -> dict[str, Path]:
    """The AI objects as Orthanc stored them, by kind, downloaded to ``tmp``."""
    files: dict[str, Path] = {}
    for item in series:
        kind = ai_kind(item["MainDicomTags"].get("SeriesDescription", ""))
        if kind is None:
            continue
        [instance] = item["Instances"]  # exactly one object per AI series
        path = tmp / f"{kind}.dcm"
        path.write_bytes(pacs.rest("GET", f"/instances/{instance}/file").content)
        files[kind] = path
    assert sorted(files) == ["sc", "seg", "sr"], f"AI series found: {sorted(files)}"
    return files


def _preview(pacs: OrthancServer, instance: str) -> np.ndarray:
    answer = pacs.rest("GET", f"/instances/{instance}/preview")
    assert answer.headers["Content-Type"].startswith("image/png")
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("L"), dtype=np.int16)


def _check_study(pacs: OrthancServer, node: Node, run: dict[str, Any], tmp: Path) -> None:
    source: pydicom.Dataset = run["source"]
    study_uid, source_uid = str(source.StudyInstanceUID), str(source.SOPInstanceUID)

    # QIDO-RS: four series in the one study, the three AI ones with their descriptions.
    qido = qido_series(pacs, study_uid)
    descriptions = {json_value(item, "0008103E") for item in qido}
    assert {ai_kind(str(d)) for d in descriptions} >= {"sc", "seg", "sr"}
    assert len(qido) == 4
    modalities = sorted(str(json_value(item, "00080060")) for item in qido)
    assert {"SEG", "SR"} <= set(modalities)

    # WADO-RS metadata: each AI object references the source instance.
    ai_series = [item for item in qido if ai_kind(str(json_value(item, "0008103E")))]
    references: dict[str, set[str]] = {}
    for item in ai_series:
        [meta] = wado_metadata(pacs, study_uid, json_value(item, "0020000E"))
        references[json_value(item, "0008103E")] = referenced_uids(meta)
        assert json_value(meta, "0020000D") == study_uid
    for description, uids in references.items():
        assert source_uid in uids, f"{description} does not reference the source {source_uid}"

    # The objects as the PACS holds them: valid, readable, and what the ledger says was made.
    files = _orthanc_objects(pacs, run["series"], tmp)
    datasets = {kind: check_object(path, kind) for kind, path in files.items()}
    [sr_refs] = [uids for description, uids in references.items() if ai_kind(description) == "sr"]
    assert {str(datasets["sc"].SOPInstanceUID), str(datasets["seg"].SOPInstanceUID)} <= sr_refs
    made = {row.kind: row for row in DeliveryLedger(node.ledger).outputs(run["job"].id)}
    for kind, ds in datasets.items():
        assert made[kind].sop_instance_uid == str(ds.SOPInstanceUID)
        assert made[kind].source_sop_instance_uid == source_uid
        assert len(made[kind].weights_sha256) == 64

    # Pixels: the SC equals the source exactly outside the lung fields' region, differs inside.
    sc, seg = datasets["sc"], datasets["seg"]
    original = source.pixel_array.astype(np.int32)
    suppressed = sc.pixel_array.astype(np.int32)
    assert suppressed.shape == original.shape and sc.BitsStored == source.BitsStored
    assert sc.PhotometricInterpretation == source.PhotometricInterpretation
    frames = np.asarray(seg.pixel_array).reshape(-1, *original.shape) > 0
    labels = [str(item.SegmentLabel).lower() for item in seg.SegmentSequence]
    assert frames[0].any(), "the rib segmentation found no ribs"
    lungs = frames[next(i for i, label in enumerate(labels) if "lung" in label)]
    assert sc.BurnedInAnnotation == "NO"  # the mark is off in this loop (see ``loop``)
    # the region: the lung-field probability smoothed and ramped (rib-suppression json); it
    # ends within a few pixels of the thresholded lung fields, 16 px at 512 bound it
    region = dilate_mask(lungs, max(1, round(16 * max(lungs.shape) / 512)))
    changed = suppressed != original
    assert not changed[~region].any(), f"{int(changed[~region].sum())} pixels changed outside the mask"
    assert changed[region].any()

    # Orthanc renders the SC: its preview differs from the original's only in the region.
    before = _preview(pacs, run["source_id"])
    [sc_id] = [
        s["Instances"][0] for s in run["series"] if ai_kind(s["MainDicomTags"].get("SeriesDescription", "")) == "sc"
    ]
    after = _preview(pacs, sc_id)
    assert before.shape == after.shape
    small = np.asarray(Image.fromarray(region).resize(before.shape[::-1], Image.NEAREST))
    grown = dilate_mask(small, 2)  # preview resampling blurs the border by a pixel or two
    difference = np.abs(after - before)
    # The SC carries the source's window, but Orthanc may window each preview on its own, so
    # outside the region the previews may differ by a global window shift of a grey level or
    # two; inside, the bone removal shows.
    assert difference[~grown].mean() <= 2.0
    assert difference[small].mean() > 2 * max(difference[~grown].mean(), 0.25)


def test_rg1_cr_chest_round_trip(loop: tuple[OrthancServer, Node], tmp_path: Path) -> None:
    pacs, node = loop
    source_path = pydicom_data_dir() / "RG1_UNCR.dcm"
    run = _round_trip(pacs, node, source_path)
    _check_study(pacs, node, run, tmp_path)
    states = [t.to_state for t in node.ledger.transitions(run["job"].id)]
    assert states == ["received", "queued", "running", "exporting", "done"]


def test_synthetic_study_round_trip(loop: tuple[OrthancServer, Node], tmp_path: Path) -> None:
    pacs, node = loop
    chest = generate_chest(11, (1200, 1000))
    # Imager Pixel Spacing only (the usual DX header); a Pixel Spacing source: test below.
    [source_path] = write_dicom_study(chest, tmp_path / "study", 11, photometric="MONOCHROME1")
    run = _round_trip(pacs, node, source_path)
    _check_study(pacs, node, run, tmp_path)
    assert node.ledger.job(run["job"].id).state == JobState.DONE


def test_highdicom_reads_back_a_seg_made_from_a_pixel_spacing_source(tmp_path: Path) -> None:
    """Found end to end (was a strict xfail): a Pixel Spacing source gave a Pixel Measures item
    without Slice Thickness that highdicom 0.28 could not read; projection SEGs now have none."""
    import highdicom as hd

    from ribnode.config.settings import OutputSettings
    from ribnode.dicom_sr import build_outputs
    from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult

    chest = generate_chest(5, 256)
    [path] = write_dicom_study(chest, tmp_path, 5, pixel_spacing=True)
    source = pydicom.dcmread(path)
    model = ModelInfo("ribnode test", "0", "0" * 64)
    mask = chest.rib_mask
    segmentation = SegmentationResult(mask, mask.astype(np.float32), model)
    suppression = SuppressionResult(source.pixel_array, np.zeros(mask.shape, np.float32), mask, 0, 1, 256, model)
    seg = build_outputs(source, segmentation, suppression, OutputSettings()).seg
    read = hd.seg.Segmentation.from_dataset(seg)
    pixels = read.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask.astype(bool))
