"""DICOM-SEG of the ribs: BINARY, on the source matrix, with the algorithm identified."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, build_outputs
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, model_inputs, synthetic_dx
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid

DxOutputs = tuple[pydicom.Dataset, OutputSet, dict[str, Path]]


def test_seg_is_valid_without_warnings_of_its_own(dx_outputs: DxOutputs) -> None:
    _, _, paths = dx_outputs
    warnings = assert_valid(paths["seg"])
    assert not [w for w in warnings if "RIBNODE" not in w and "Unrecognized tag" not in w], warnings


def test_mask_round_trip(dx_outputs: DxOutputs) -> None:
    source, _, paths = dx_outputs
    segmentation, _ = model_inputs(source)
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(paths["seg"]))
    assert seg.SegmentationType == "BINARY"
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.NumberOfFrames == 1
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), segmentation.mask)
    np.testing.assert_array_equal(pydicom.dcmread(paths["seg"]).pixel_array.astype(bool), segmentation.mask)


def test_segment_description(dx_outputs: DxOutputs) -> None:
    _, _, paths = dx_outputs
    seg = pydicom.dcmread(paths["seg"])
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Ribs" and segment.SegmentNumber == 1
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "113197003"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert algorithm.AlgorithmName == "ribnode rib-segmentation"
    assert algorithm.AlgorithmVersion == "1.0.0"
    assert "threshold=0.5" in algorithm.AlgorithmParameters
    assert "a1" * 32 in algorithm.AlgorithmParameters


def test_references_and_geometry(dx_outputs: DxOutputs) -> None:
    source, _, paths = dx_outputs
    seg = pydicom.dcmread(paths["seg"])
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "PlanePositionSequence" not in frame
    assert "FrameOfReferenceUID" not in seg
    # Imager Pixel Spacing only: no Pixel Measures (no calibrated spacing in the patient).
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert "SyntheticData" not in seg
    equipment = [i for i in seg.ContributingEquipmentSequence if i.Manufacturer == "ribnode"]
    assert equipment[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"


def test_pixel_measures_when_source_has_pixel_spacing(tmp_path: Path) -> None:
    source = synthetic_dx(spacing="pixel")
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    assert_valid(paths["seg"])
    measures = pydicom.dcmread(paths["seg"]).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.15, 0.15]


def test_synthetic_source_marks_seg_and_sr_synthetic() -> None:
    source = synthetic_dx(rows=64, columns=64, synthetic=True)
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    assert [d.SyntheticData for d in outputs.datasets()] == ["YES", "YES", "YES"]


def test_empty_mask_still_writes_one_frame(tmp_path: Path) -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    empty = type(segmentation)(np.zeros_like(segmentation.mask), segmentation.probability,
                               segmentation.model)
    outputs = build_outputs(source, empty, suppression, OutputSettings(), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    for path in paths.values():
        assert_valid(path)
    assert pydicom.dcmread(paths["seg"]).NumberOfFrames == 1


def test_mask_shape_is_checked() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    wrong = type(segmentation)(segmentation.mask[:, :32], segmentation.probability,
                               segmentation.model)
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
