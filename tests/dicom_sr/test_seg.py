"""DICOM-SEG of the chest anatomy: one BINARY segment per structure (ribs, clavicles, lung
fields), each with its SNOMED CT type, on the source matrix, with the algorithm identified."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, build_outputs
from ribnode.dicom_sr.seg import SEGMENTS
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, model_inputs, synthetic_dx
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid
from tests.peers.fixtures import assert_dicom_valid

DxOutputs = tuple[pydicom.Dataset, OutputSet, dict[str, Path]]


def test_seg_is_valid_without_warnings_of_its_own(dx_outputs: DxOutputs) -> None:
    _, _, paths = dx_outputs
    warnings = assert_valid(paths["seg"])
    assert not [w for w in warnings if "RIBNODE" not in w and "Unrecognized tag" not in w and "DeviceUID" not in w], (
        warnings
    )


def test_mask_round_trip(dx_outputs: DxOutputs) -> None:
    source, _, paths = dx_outputs
    segmentation, _ = model_inputs(source)
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(paths["seg"]))
    assert seg.SegmentationType == "BINARY"
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.NumberOfFrames == 3  # one frame per segment
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2, 3]
    )
    for index, name in enumerate(("ribs", "clavicles", "lungs")):
        np.testing.assert_array_equal(pixels[0, :, :, index].astype(bool), segmentation.structures[name], err_msg=name)


# SNOMED CT codes as pydicom's dictionary has them (codes.SCT.Rib, .Clavicle, .Lung).
EXPECTED_SEGMENTS = [
    (1, "Ribs", "113197003", "Rib"),
    (2, "Clavicles", "51299004", "Clavicle"),
    (3, "Lung fields", "39607008", "Lung"),
]


def test_segment_descriptions(dx_outputs: DxOutputs) -> None:
    from pydicom.sr.codedict import codes

    assert [s.property_type.value for s in SEGMENTS] == [
        codes.SCT.Rib.value,
        codes.SCT.Clavicle.value,
        codes.SCT.Lung.value,
    ]
    _, outputs, paths = dx_outputs
    seg = pydicom.dcmread(paths["seg"])
    found = [
        (
            int(s.SegmentNumber),
            s.SegmentLabel,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning,
        )
        for s in seg.SegmentSequence
    ]
    assert found == EXPECTED_SEGMENTS
    sr_tracking = {
        g.tracking_identifier: g.tracking_uid
        for g in hd.sr.Comprehensive3DSR.from_dataset(outputs.sr).content.get_planar_roi_measurement_groups()
    }
    for segment in seg.SegmentSequence:
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        modifier = segment.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
        assert modifier[0].CodeValue == "51440002"  # right and left
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert algorithm.AlgorithmName == "ribnode rib-segmentation"
        assert algorithm.AlgorithmVersion == "1.0.0"
        assert "threshold=0.5" in algorithm.AlgorithmParameters
        assert "a1" * 32 in algorithm.AlgorithmParameters
        # IHE AIR: the segment and the SR's measurement group share tracking ID and UID.
        assert segment.TrackingID == segment.SegmentLabel
        assert sr_tracking[segment.TrackingID] == segment.TrackingUID


@pytest.mark.parametrize("structures", [(), ("ribs",), ("clavicles",), ("ribs", "lungs")])
def test_one_segment_per_structure_present(structures: tuple[str, ...], tmp_path: Path) -> None:
    """Until the model outputs all three, the SEG carries the ribs (from ``mask`` when the
    result has no "ribs") and whatever else is present, in the fixed order."""
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source, structures=structures)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    assert_valid(paths["seg"])
    assert_valid(paths["sr"])
    labels = [s.SegmentLabel for s in pydicom.dcmread(paths["seg"]).SegmentSequence]
    expected = ["Ribs"] + [
        label for name, label in (("clavicles", "Clavicles"), ("lungs", "Lung fields")) if name in structures
    ]
    assert labels == expected
    read = hd.seg.segread(paths["seg"])
    pixels = read.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=list(range(1, len(expected) + 1))
    )
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), segmentation.mask)
    groups = hd.sr.Comprehensive3DSR.from_dataset(outputs.sr).content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == expected


def test_references_and_geometry(dx_outputs: DxOutputs) -> None:
    source, _, paths = dx_outputs
    seg = pydicom.dcmread(paths["seg"])
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "PlanePositionSequence" not in frame
    assert "FrameOfReferenceUID" not in seg
    # Imager Pixel Spacing only: no Pixel Measures (no calibrated spacing in the patient).
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert "SyntheticData" not in seg
    equipment = [i for i in seg.ContributingEquipmentSequence if i.Manufacturer == "ribnode"]
    assert equipment[0].PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"  # IHE AIR
    assert equipment[0].DeviceUID  # IHE AIR: the algorithm's Device UID


@pytest.mark.parametrize("spacing", ["pixel", "imager", "zero", "none"])
def test_highdicom_reads_back_the_seg_whatever_the_source_spacing(tmp_path: Path, spacing: str) -> None:
    """Regression: a Pixel Spacing source used to give a Pixel Measures item without Slice
    Thickness, which dciodvfy accepts but highdicom 0.28 cannot read back. Projection geometry
    now has no Pixel Measures at all (docs/dicom-conformance.md 2.4)."""
    source = synthetic_dx(spacing=spacing)
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    assert_dicom_valid(paths["seg"])
    assert_valid(paths["seg"])
    written = pydicom.dcmread(paths["seg"])
    assert "PixelMeasuresSequence" not in written.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in written.PerFrameFunctionalGroupsSequence[0]
    # Viewers link the SEG to the radiograph through these two (guide: OHIF, Weasis).
    series = written.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    derivation = written.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert derivation.SourceImageSequence[0].SpatialLocationsPreserved == "YES"
    for seg in (hd.seg.segread(paths["seg"]), hd.seg.Segmentation.from_dataset(outputs.seg)):
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
        )
        assert pixels.shape == (1, source.Rows, source.Columns, 1)
        np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), segmentation.mask)


def test_source_with_a_frame_of_reference_but_no_position(tmp_path: Path) -> None:
    """A projection image that carries a Frame of Reference UID (some DX/MG do) but no plane
    position is still projection geometry: no Pixel Measures, valid and readable."""
    source = synthetic_dx(spacing="pixel")
    source.FrameOfReferenceUID = generate_uid(entropy_srcs=["for", source.SOPInstanceUID])
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    assert_dicom_valid(paths["seg"])
    assert "PixelMeasuresSequence" not in outputs.seg.SharedFunctionalGroupsSequence[0]
    pixels = hd.seg.segread(paths["seg"]).get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), segmentation.mask)


def test_synthetic_source_marks_seg_and_sr_synthetic() -> None:
    source = synthetic_dx(rows=64, columns=64, synthetic=True)
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    assert [d.SyntheticData for d in outputs.datasets()] == ["YES", "YES", "YES"]


def test_empty_mask_still_writes_one_frame(tmp_path: Path) -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    empty = type(segmentation)(np.zeros_like(segmentation.mask), segmentation.probability, segmentation.model)
    outputs = build_outputs(source, empty, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    for path in paths.values():
        assert_valid(path)
    assert pydicom.dcmread(paths["seg"]).NumberOfFrames == 1  # the ribs only: no structures


def test_mask_shape_is_checked() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    wrong = type(segmentation)(segmentation.mask[:, :32], segmentation.probability, segmentation.model)
    with pytest.raises(ValueError, match="shape"):
        build_outputs(source, wrong, suppression, OutputSettings(), created=CREATED)


def test_source_without_patient_orientation(tmp_path: Path) -> None:
    """Patient Orientation is Type 2(C): written empty on SC and SEG when the source has none."""
    source = synthetic_dx(rows=64, columns=64)
    del source.PatientOrientation
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    for kind in ("sc", "seg"):
        assert_valid(paths[kind])
        dataset = pydicom.dcmread(paths[kind])
        assert "PatientOrientation" in dataset and not dataset.PatientOrientation
