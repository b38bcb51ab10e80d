"""Comprehensive 3D SR, TID 1500: the tree dsrdump prints, and what highdicom reads back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, build_outputs
from ribnode.dicom_sr.uids import combined_sha256, device_observer_uid
from tests.dicom_sr.inputs import CREATED, SEG_MODEL, SUP_MODEL, model_inputs, synthetic_dx
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid
from tests.peers.fixtures import dsrdump

DxOutputs = tuple[pydicom.Dataset, OutputSet, dict[str, Path]]


def test_sr_is_valid(dx_outputs: DxOutputs) -> None:
    _, _, paths = dx_outputs
    warnings = assert_valid(paths["sr"])
    # The only warnings: ribnode's private coding scheme and private tags, both declared.
    own = [w for w in warnings if "99RIBNODE" not in w and "Unrecognized tag" not in w and "DeviceUID" not in w]
    assert not own, own


def test_dsrdump_prints_the_tree(dx_outputs: DxOutputs) -> None:
    source, outputs, paths = dx_outputs
    text = dsrdump(paths["sr"])
    observer = device_observer_uid(combined_sha256(SEG_MODEL.weights_sha256, SUP_MODEL.weights_sha256))
    for expected in (
        "Comprehensive 3D SR Document",
        "Completion Flag     : COMPLETE",
        "Verification Flag   : UNVERIFIED",
        '<CONTAINER:(,,"Imaging Measurement Report")=CONTINUOUS>',
        '<has obs context CODE:(,,"Observer Type")=(121007,DCM,"Device")>',
        f'<has obs context UIDREF:(,,"Device Observer UID")="{observer}">',
        '<has concept mod CODE:(,,"Procedure reported")=(399208008,SCT,"Plain chest X-ray")>',
        '<contains CODE:(,,"Finding")=(113197003,SCT,"Rib")>',
        '<has concept mod TEXT:(,,"Algorithm Name")="ribnode rib-segmentation">',
        '<has concept mod CODE:(,,"Algorithm Family")=(123110,DCM,"Artificial Intelligence")>',
        '<contains IMAGE:(,,"Referenced Segmentation Frame")=(SG image,,1)>',
        '<has obs context TEXT:(,,"Tracking Identifier")="Ribs">',
        '(mm2,UCUM,"mm2")>',
        '<contains NUM:(,,"Bone signal removed")=',
        '<has concept mod CODE:(,,"Derivation")=(373098007,SCT,"Mean")>',
        '<inferred from IMAGE:(,,"Source of Measurement")=(SC image,)>',
    ):
        assert expected in text, f"{expected!r} not in dsrdump output:\n{text}"


def test_measurements_cover_each_structure(dx_outputs: DxOutputs) -> None:
    source, outputs, paths = dx_outputs
    segmentation, suppression = model_inputs(source)
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(paths["sr"]))
    groups = sr.content.get_planar_roi_measurement_groups()
    expected = [
        ("ribs", "Ribs", "113197003"),
        ("clavicles", "Clavicles", "51299004"),
        ("lungs", "Lung fields", "39607008"),
    ]
    assert [g.tracking_identifier for g in groups] == [label for _, label, _ in expected]
    for frame, (group, (name, _label, code)) in enumerate(zip(groups, expected), start=1):
        mask = segmentation.structures[name]
        assert group.finding_type.value == code
        values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["Area"][0] == pytest.approx(mask.sum() * 0.2 * 0.2), name
        assert values["Area"][1] == "mm2"
        assert values["Bone signal removed"][0] == pytest.approx(float(np.mean(suppression.bone[mask])), rel=1e-6), name
        assert values["Bone signal removed"][1] == "1"
        reference = group.referenced_segmentation_frame
        assert reference is not None
        sop = reference[0].ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == outputs.seg.SOPInstanceUID
        assert [int(sop.ReferencedFrameNumber)] == [frame]  # the segment's own frame
    structures = outputs.provenance["sr"]["structures"]
    assert sorted(structures) == ["clavicles", "lungs", "ribs"]


@pytest.mark.parametrize(
    ("spacing", "magnification", "factor", "method"),
    [
        ("imager", None, 0.2 * 0.2, "RN0004"),  # detector plane, not corrected
        ("imager", 1.1, 0.2 * 0.2 / 1.21, "RN0003"),  # isocenter: about 21 % smaller
        ("pixel", 1.1, 0.15 * 0.15, "RN0002"),  # the source's calibrated Pixel Spacing
    ],
)
def test_area_states_its_plane(
    spacing: str,
    magnification: float | None,
    factor: float,
    method: str,
) -> None:
    """Regression: the area used the detector-plane Imager Pixel Spacing even with an
    Estimated Radiographic Magnification Factor, about 21 % too large, and named no plane."""
    source = synthetic_dx(rows=64, columns=64, spacing=spacing)
    if magnification is not None:
        source.EstimatedRadiographicMagnificationFactor = magnification
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    group = hd.sr.Comprehensive3DSR.from_dataset(outputs.sr).content.get_planar_roi_measurement_groups()[0]
    area = [m for m in group.get_measurements() if m.name.meaning == "Area"][0]
    assert area.value == pytest.approx(segmentation.mask.sum() * factor)
    assert area.method is not None and area.method.value == method


def test_area_in_pixels_without_spacing() -> None:
    source = synthetic_dx(rows=64, columns=64, spacing="zero")
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    group = hd.sr.Comprehensive3DSR.from_dataset(outputs.sr).content.get_planar_roi_measurement_groups()[0]
    area = [m for m in group.get_measurements() if m.name.meaning == "Area"][0]
    assert area.value == segmentation.mask.sum()
    assert area.unit.value == "{pixels}"
    assert outputs.provenance["sr"]["measurements"]["area_unit"] == "{pixels}"


def test_evidence_is_source_seg_and_sc(dx_outputs: DxOutputs) -> None:
    source, outputs, paths = dx_outputs
    sr = pydicom.dcmread(paths["sr"])
    referenced = {
        instance.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert referenced == {source.SOPInstanceUID, outputs.seg.SOPInstanceUID, outputs.sc.SOPInstanceUID}
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.ContentQualification == "RESEARCH"
    purposes = {
        i.PurposeOfReferenceCodeSequence[0].CodeValue
        for i in sr.ContributingEquipmentSequence
        if i.Manufacturer == "ribnode"
    }
    assert purposes == {"Newcode1"}  # IHE AIR "Processing Algorithm", both models
