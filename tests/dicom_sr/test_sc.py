"""Secondary Capture of the bone-suppressed image: written, read back, validated."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, build_outputs
from ribnode.dicom_sr.label import label_mask
from ribnode.dicom_sr.sc import DEFAULT_DERIVATION, SERIES_DESCRIPTION
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, SUP_MODEL, model_inputs, synthetic_dx
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid

DxOutputs = tuple[pydicom.Dataset, OutputSet, dict[str, Path]]


def test_sc_is_valid_and_reads_back(dx_outputs: DxOutputs) -> None:
    source, outputs, paths = dx_outputs
    warnings = assert_valid(paths["sc"])
    assert not [w for w in warnings if "Missing" in w], warnings
    sc = pydicom.dcmread(paths["sc"])
    image = hd.Image.from_dataset(sc)
    assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    np.testing.assert_array_equal(sc.pixel_array, outputs.sc.pixel_array)


def test_sc_pixels_matrix_depth_photometric(dx_outputs: DxOutputs) -> None:
    source, _, paths = dx_outputs
    sc = pydicom.dcmread(paths["sc"])
    _, suppression = model_inputs(source)
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert (sc.BitsAllocated, sc.BitsStored, sc.HighBit) == (16, 12, 11)
    assert sc.PhotometricInterpretation == "MONOCHROME2"
    box, _ = label_mask("AI SYNTHETIC - bone suppressed", sc.Rows, sc.Columns)  # on by default
    np.testing.assert_array_equal(sc.pixel_array[~box], suppression.soft_stored[~box])


def test_sc_synthetic_flags_and_references(dx_outputs: DxOutputs) -> None:
    source, _, paths = dx_outputs
    sc = pydicom.dcmread(paths["sc"])
    assert sc.SyntheticData == "YES"
    assert sc.ConversionType == "SYN"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert sc.Modality == "OT"
    assert sc.SeriesDescription == SERIES_DESCRIPTION + " PA"  # names the source's view
    assert sc.SeriesDescription.startswith("AI SYNTHETIC")
    assert sc.BurnedInAnnotation == "YES"  # the corner mark is on by default
    assert sc.ContentQualification == "RESEARCH"
    item = sc.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert item.ReferencedSOPClassUID == source.SOPClassUID
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert item.SpatialLocationsPreserved == "YES"
    assert sc.DerivationDescription.endswith(": " + DEFAULT_DERIVATION)
    assert "removed" not in sc.DerivationDescription
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.PatientID == source.PatientID and sc.PatientName == source.PatientName
    assert list(sc.PatientOrientation) == ["L", "F"]


def test_sc_contributing_equipment_names_the_model(dx_outputs: DxOutputs) -> None:
    _, _, paths = dx_outputs
    sc = pydicom.dcmread(paths["sc"])
    items = {
        i.PurposeOfReferenceCodeSequence[0].CodeValue + ":" + i.get("ManufacturerModelName", ""): i
        for i in sc.ContributingEquipmentSequence
    }
    synth = items["109100:ribnode rib-suppression"]
    assert list(synth.SoftwareVersions) == ["1.0.0", "0.1.0"]
    assert "b2" * 32 in synth.ContributionDescription
    for text in ("steps 4", "seed 42", "working resolution 512x512"):
        assert text in synth.ContributionDescription
    assert str(synth.ContributionDateTime).startswith("20261121010203")
    # IHE AIR 6.5.3.1: every algorithm has an item with "Processing Algorithm" and a Device UID.
    algorithm = items["Newcode1:ribnode rib-suppression"]
    assert algorithm.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert algorithm.DeviceUID == synth.DeviceUID
    assert items["Newcode1:ribnode rib-segmentation"].DeviceUID != synth.DeviceUID
    assert "99IHE" in {i.CodingSchemeDesignator for i in sc.CodingSchemeIdentificationSequence}
    assert sc.Manufacturer == "ribnode" and sc.DeviceSerialNumber == "ribnode-1"


def test_window_is_the_sources_by_default(dx_outputs: DxOutputs) -> None:
    """Side by side with the original, the only difference is the suppression, not contrast."""
    source, _, paths = dx_outputs
    sc = pydicom.dcmread(paths["sc"])
    assert (float(sc.WindowCenter), float(sc.WindowWidth)) == (float(source.WindowCenter), float(source.WindowWidth))
    assert "ribnode" not in str(sc.get("WindowCenterWidthExplanation", ""))


def test_own_window_is_an_option(tmp_path: Path) -> None:
    source = synthetic_dx()
    segmentation, suppression = model_inputs(source)
    settings = OutputSettings(sc_window="own", burned_in_label=False)
    outputs = build_outputs(source, segmentation, suppression, settings, created=CREATED)
    assert_valid(write_outputs(outputs, tmp_path)["sc"])
    sc = outputs.sc
    low, high = np.percentile(sc.pixel_array[::4, ::4], [0.5, 99.5])
    assert float(sc.WindowCenter) == pytest.approx((low + high) / 2, rel=1e-3)
    assert float(sc.WindowWidth) == pytest.approx(high - low, rel=1e-3)
    assert (float(sc.WindowCenter), float(sc.WindowWidth)) != (2048.0, 4096.0)
    assert sc.WindowCenterWidthExplanation == "ribnode: 0.5-99.5 percentile of the output"


def test_source_without_a_window_gets_the_outputs_own() -> None:
    source = synthetic_dx(rows=64, columns=64)
    del source.WindowCenter, source.WindowWidth
    segmentation, suppression = model_inputs(source)
    sc = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED).sc
    assert sc.WindowCenterWidthExplanation == "ribnode: 0.5-99.5 percentile of the output"


@pytest.mark.parametrize(
    ("spacing", "magnification", "expected", "calibration", "plane"),
    [
        ("imager", None, [0.2, 0.2], None, "detector plane"),  # Imager Pixel Spacing only
        ("imager", 1.1, [0.2 / 1.1, 0.2 / 1.1], "GEOMETRY", "isocenter plane"),
        ("pixel", None, [0.15, 0.15], None, "patient plane"),  # Pixel Spacing wins
        ("pixel", 1.1, [0.15, 0.15], None, "patient plane"),  # already in the patient
        ("pixel-only", None, [0.15, 0.15], None, "patient plane"),  # no Imager Pixel Spacing
        ("zero", 1.1, None, None, None),
        ("none", None, None, None, None),  # neither
    ],
)
def test_pixel_spacing_states_its_plane(
    spacing: str,
    magnification: float | None,
    expected: list[float] | None,
    calibration: str | None,
    plane: str | None,
    tmp_path: Path,
) -> None:
    """Regression: the SC's Pixel Spacing used to be the detector-plane Imager Pixel Spacing
    even when the source gave an Estimated Radiographic Magnification Factor (about 10 % too
    large), and nothing said which plane it was in."""
    source = synthetic_dx(rows=64, columns=64, spacing="pixel" if spacing == "pixel-only" else spacing)
    if spacing == "pixel-only":
        del source.ImagerPixelSpacing
    if magnification is not None:
        source.EstimatedRadiographicMagnificationFactor = magnification
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    assert_valid(write_outputs(outputs, tmp_path)["sc"])
    sc = outputs.sc
    if expected is None:
        assert "PixelSpacing" not in sc and "ImageComments" not in sc
        return
    assert [float(v) for v in sc.PixelSpacing] == pytest.approx(expected, rel=1e-6)
    assert sc.get("PixelSpacingCalibrationType") == calibration
    if calibration is not None:
        assert "1.1" in sc.PixelSpacingCalibrationDescription
    assert plane in sc.ImageComments


def test_burned_in_label_on(tmp_path: Path) -> None:
    source = synthetic_dx()
    segmentation, suppression = model_inputs(source)
    settings = OutputSettings(burned_in_label=True)
    outputs = build_outputs(source, segmentation, suppression, settings, created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    assert_valid(paths["sc"])
    sc = pydicom.dcmread(paths["sc"])
    assert sc.BurnedInAnnotation == "YES"
    box, ink = label_mask("AI SYNTHETIC - bone suppressed", sc.Rows, sc.Columns)
    pixels = sc.pixel_array
    assert ink.sum() > 50
    assert (pixels[ink] == 4095).all() and (pixels[box & ~ink] == 0).all()
    outside = ~box
    np.testing.assert_array_equal(pixels[outside], suppression.soft_stored[outside])


def test_label_can_be_turned_off_and_annotation_tells_the_truth() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    off = OutputSettings(burned_in_label=False)
    sc = build_outputs(source, segmentation, suppression, off, created=CREATED).sc
    assert sc.BurnedInAnnotation == "NO"
    np.testing.assert_array_equal(sc.pixel_array, suppression.soft_stored)
    # The source's own burned-in text is copied outside the lung fields: still YES.
    source.BurnedInAnnotation = "YES"
    sc = build_outputs(source, segmentation, suppression, off, created=CREATED).sc
    assert sc.BurnedInAnnotation == "YES"


def test_derivation_text_comes_from_the_model_json() -> None:
    source = synthetic_dx(rows=64, columns=64)
    model = type(SUP_MODEL)(
        **{
            **SUP_MODEL.__dict__,
            "parameters": {"derivation": "rib shadows attenuated inside the lung fields; not an acquired radiograph"},
        }
    )
    segmentation, suppression = model_inputs(source, sup_model=model)
    sc = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED).sc
    assert sc.DerivationDescription.endswith(
        ": rib shadows attenuated inside the lung fields; not an acquired radiograph"
    )


def test_label_keeps_display_white_on_monochrome1() -> None:
    source = synthetic_dx(rows=128, columns=128)
    source.PhotometricInterpretation = "MONOCHROME1"
    segmentation, suppression = model_inputs(source)
    settings = OutputSettings(burned_in_label=True)
    sc = build_outputs(source, segmentation, suppression, settings, created=CREATED).sc
    _, ink = label_mask("AI SYNTHETIC - bone suppressed", 128, 128)
    assert sc.PhotometricInterpretation == "MONOCHROME1"
    assert (sc.pixel_array[ink] == 0).all()


def test_wrong_shape_or_range_is_rejected() -> None:
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    too_big = suppression.soft_stored.copy()
    too_big[0, 0] = 5000
    bad = type(suppression)(**{**suppression.__dict__, "soft_stored": too_big})
    with pytest.raises(ValueError, match="outside the 12-bit range"):
        build_outputs(source, segmentation, bad, OutputSettings(), created=CREATED)
    small = type(suppression)(**{**suppression.__dict__, "soft_stored": too_big[:32]})
    with pytest.raises(ValueError, match="shape"):
        build_outputs(source, segmentation, small, OutputSettings(), created=CREATED)
